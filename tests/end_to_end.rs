//! End-to-end tests of the `elasticface` command on real faces: a short training run on ORL
//! whose loss falls and whose verification accuracy on held-out identities beats chance,
//! resuming from a checkpoint, and the errors a user gets for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared_data() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    assert!(
        path.join("orl").is_dir(),
        "the face data sets are missing: expected ORL at {} (the tests read ../shared/data \
         beside the repository)",
        path.join("orl").display()
    );
    path.canonicalize().unwrap()
}

fn elasticface(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elasticface"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the elasticface binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// ORL subjects 1–30 train; 31–40 are held out for verification pairs.
fn orl_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let mut table = String::from("id\tnum_images\tfold\n");
    for subject in 1..=40 {
        let fold = if subject <= 30 { 1 } else { 2 };
        table.push_str(&format!("s{subject:02}\t10\t{fold}\n"));
    }
    let identities = dir.join("identities.tsv");
    std::fs::write(&identities, table).unwrap();

    // Same and different pairs of the held-out subjects, interleaved so that every one of
    // the contiguous folds holds both kinds.
    let held_out: Vec<usize> = (31..=40).collect();
    let mut same = Vec::new();
    for &s in &held_out {
        for i in 1..=10 {
            for j in (i + 1)..=10 {
                same.push(format!("s{s:02}/{i:02}.pgm,s{s:02}/{j:02}.pgm,1"));
            }
        }
    }
    let mut different = Vec::new();
    for (a_index, &a) in held_out.iter().enumerate() {
        for &b in &held_out[a_index + 1..] {
            for k in 1..=10 {
                let other = (k % 10) + 1;
                different.push(format!("s{a:02}/{k:02}.pgm,s{b:02}/{other:02}.pgm,0"));
            }
        }
    }
    assert_eq!((same.len(), different.len()), (450, 450));
    let mut csv = String::from("img1,img2,same\n");
    for (s, d) in same.iter().zip(&different) {
        csv.push_str(&format!("{s}\n{d}\n"));
    }
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, csv).unwrap();
    (identities, pairs)
}

fn orl_config(dir: &Path, identities: &Path, pairs: &Path, epochs: usize) -> PathBuf {
    let orl = shared_data().join("orl");
    let text = format!(
        r#"
seed = 3
output = "{output}"
backend = "cpu"

[data]
batch_size = 30

[[data.sources]]
root = "{orl}"
identities = "{identities}"
folds = [1]

[backbone]
architecture = "mobilefacenet"
embedding_size = 128

[head]
kind = "elastic-arc"
scale = 32.0

[optimizer]
lr = 0.05

[schedule]
kind = "polynomial"
warmup_steps = 5

[train]
epochs = {epochs}
checkpoint_every = 10
log_every = 5

[eval]
root = "{orl}"
pairs = "{pairs}"
protocol = {{ kind = "kfold", folds = 10 }}
"#,
        output = dir.join("run").display(),
        orl = orl.display(),
        identities = identities.display(),
        pairs = pairs.display(),
    );
    let path = dir.join("orl.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn summary(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn training_on_orl_lowers_the_loss_and_verifies_held_out_identities() {
    let dir = tempfile::tempdir().unwrap();
    let (identities, pairs) = orl_fixture(dir.path());
    let config = orl_config(dir.path(), &identities, &pairs, 8);
    let output = elasticface(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--eval-untrained",
    ]);
    assert!(
        output.status.success(),
        "training failed:\n{}",
        stderr(&output)
    );

    let run = dir.path().join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut reader = csv::Reader::from_reader(metrics.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let loss_column = headers.iter().position(|h| h == "loss").unwrap();
    let losses: Vec<f64> = reader
        .records()
        .map(|r| r.unwrap())
        .filter_map(|r| r[loss_column].parse().ok())
        .collect();
    assert!(losses.len() >= 4, "too few loss rows: {losses:?}");
    let first = losses[0];
    let last = *losses.last().unwrap();
    assert!(
        last < 0.7 * first,
        "loss did not fall: {first} → {last} ({losses:?})"
    );

    let summary = summary(&run);
    let trained = summary["final_eval"]["accuracy"].as_f64().unwrap();
    let untrained = summary["untrained_eval"]["accuracy"].as_f64().unwrap();
    // 900 balanced pairs: chance is 50 %, and one standard error of an accuracy near 80 % is
    // about 1.3 points, so 70 % is far outside what guessing can reach.
    assert!(
        trained > 0.70,
        "held-out ORL accuracy {trained} (untrained {untrained})"
    );
    assert!(
        trained > untrained,
        "training did not help: {untrained} → {trained}"
    );
    assert!(run.join("curves.png").is_file());

    // The same run, evaluated again from its checkpoint by `eval`, gives the same accuracy.
    let json = dir.path().join("eval.json");
    let output = elasticface(&[
        "eval",
        "--model",
        run.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--root",
        shared_data().join("orl").to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "eval failed:\n{}", stderr(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let again = report["accuracy"].as_f64().unwrap();
    assert!(
        (again - trained).abs() < 1e-9,
        "eval {again} vs training's final {trained}"
    );

    // The same model on InsightFace's own small `.bin` (numpy layout): 10 pairs, ten folds.
    let small = shared_data().join("bins/small_lfw.bin");
    let report = eval_json(
        &[
            "eval",
            "--model",
            run.to_str().unwrap(),
            "--backend",
            "cpu",
            "--bin",
            small.to_str().unwrap(),
        ],
        &dir.path().join("small.json"),
    );
    assert_eq!(report["pairs"], 10);
    assert_eq!(report["fold_accuracies"].as_array().unwrap().len(), 10);
}

/// The training losses of a run, by step.
fn losses_by_step(run: &Path) -> Vec<(usize, f64)> {
    let mut reader = csv::Reader::from_path(run.join("metrics.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let step = headers.iter().position(|h| h == "step").unwrap();
    let loss = headers.iter().position(|h| h == "loss").unwrap();
    reader
        .records()
        .map(|r| r.unwrap())
        .filter_map(|r| Some((r[step].parse().ok()?, r[loss].parse().ok()?)))
        .collect()
}

#[test]
fn a_stopped_and_resumed_run_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (identities, pairs) = orl_fixture(dir.path());
    let config = orl_config(dir.path(), &identities, &pairs, 1);
    let config = config.to_str().unwrap();
    let run = dir.path().join("run");
    let straight = dir.path().join("straight");
    let common = ["--log-every", "1"];

    let output = elasticface(
        &[
            &["train", "--config", config, "--max-steps", "3"],
            &common[..],
        ]
        .concat(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summary(&run)["steps"], 3);

    // Without --resume an existing run is refused rather than overwritten.
    let output = elasticface(&["train", "--config", config, "--max-steps", "6"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--resume"), "{}", stderr(&output));

    let resumed = [
        &["train", "--config", config, "--max-steps", "6", "--resume"],
        &common[..],
    ];
    let output = elasticface(&resumed.concat());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(summary(&run)["steps"], 6);

    // The same six steps without a stop: model, optimiser state, data order, flips and the
    // head's margin draws all continue where they were, so every loss agrees.
    let output = elasticface(
        &[
            &["train", "--config", config, "--max-steps", "6"][..],
            &["--output", straight.to_str().unwrap()],
            &common,
        ]
        .concat(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let expected = losses_by_step(&straight);
    let actual = losses_by_step(&run);
    assert_eq!(expected.len(), 6, "{expected:?}");
    assert_eq!(actual.len(), 6, "{actual:?}");
    for ((step, a), (_, b)) in actual.iter().zip(&expected) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs(),
            "step {step}: resumed {a}, uninterrupted {b}"
        );
    }
}

fn tiny_config(dir: &Path, root: &Path) -> PathBuf {
    let text = format!(
        r#"
output = "{output}"
backend = "cpu"
[data]
batch_size = 2
[[data.sources]]
root = "{root}"
[backbone]
architecture = "mobilefacenet"
embedding_size = 16
[head]
kind = "arcface"
[train]
epochs = 1
max_steps = 1
"#,
        output = dir.join("run").display(),
        root = root.display()
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn copy_orl_subject(subject: &str, to: &Path) {
    let from = shared_data().join("orl").join(subject);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_corrupt_image_is_named_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("faces");
    copy_orl_subject("s01", &root.join("a"));
    copy_orl_subject("s02", &root.join("b"));
    std::fs::write(
        root.join("b/broken.jpg"),
        b"\xff\xd8\xff\xe0 this is not a JPEG",
    )
    .unwrap();
    let config = tiny_config(dir.path(), &root);

    let output = elasticface(&["train", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("broken.jpg") && message.contains("--skip-bad"),
        "{message}"
    );

    let output = elasticface(&["train", "--config", config.to_str().unwrap(), "--skip-bad"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("skipped 1 unreadable images"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn empty_identity_folders_and_single_identities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("faces");
    copy_orl_subject("s01", &root.join("a"));
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let config = tiny_config(dir.path(), &root);

    let output = elasticface(&["train", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("empty") && message.contains("holds no images"),
        "{message}"
    );

    let output = elasticface(&["train", "--config", config.to_str().unwrap(), "--skip-bad"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("at least two identities"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_pair_list_naming_a_missing_image_is_refused_with_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(
        &pairs,
        "img1,img2,same\ns01/01.pgm,s01/02.pgm,1\ns01/01.pgm,s99/01.pgm,0\n",
    )
    .unwrap();
    let output = elasticface(&[
        "eval",
        "--raw-pixels",
        "--pairs",
        pairs.to_str().unwrap(),
        "--root",
        shared_data().join("orl").to_str().unwrap(),
        "--folds",
        "2",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("pair 2") && message.contains("s99/01.pgm"),
        "{message}"
    );
}

#[test]
fn raw_pixels_on_lfw_fold_ten_are_a_weak_baseline() {
    let data = shared_data();
    let output = Command::new(env!("CARGO_BIN_EXE_elasticface"))
        .args([
            "eval",
            "--raw-pixels",
            "--pairs",
            data.join("lfw150/pairs.txt").to_str().unwrap(),
            "--tune-folds",
            "9",
            "--test-folds",
            "10",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let accuracy: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("accuracy"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line in:\n{text}"));
    // Pixels carry some identity signal on aligned LFW crops, but far from what a network
    // reaches: between chance and 75 %.
    assert!(
        (50.0..75.0).contains(&accuracy),
        "raw-pixel accuracy {accuracy}"
    );
}

/// `pairs.csv` cut to ten same and ten different pairs of each LFW fold, in the file's order.
fn lfw_pair_subset(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shared_data().join("lfw150/pairs.csv")).unwrap();
    let mut kept = String::from("img1,img2,same\n");
    let mut taken = std::collections::HashMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let count = taken
            .entry((fields[0].to_string(), fields[3].to_string()))
            .or_insert(0);
        if *count < 10 {
            *count += 1;
            kept.push_str(&format!("{},{},{}\n", fields[1], fields[2], fields[3]));
        }
    }
    let path = dir.join("subset.csv");
    std::fs::write(&path, kept).unwrap();
    path
}

fn eval_json(args: &[&str], json: &Path) -> serde_json::Value {
    let output = elasticface(&[args, &["--json", json.to_str().unwrap()]].concat());
    assert!(
        output.status.success(),
        "eval {args:?} failed:\n{}",
        stderr(&output)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn bin_sets_in_all_three_layouts_score_as_the_folder_and_pair_list() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = lfw_pair_subset(dir.path());
    let lfw = shared_data().join("lfw150");
    let direct = eval_json(
        &[
            "eval",
            "--raw-pixels",
            "--pairs",
            pairs.to_str().unwrap(),
            "--root",
            lfw.to_str().unwrap(),
        ],
        &dir.path().join("direct.json"),
    );
    assert_eq!(direct["pairs"], 200);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/make_bin.py");
    for layout in ["py2-str", "py3-bytes", "numpy"] {
        let bin = dir.path().join(format!("{layout}.bin"));
        let made = Command::new("python3")
            .args([
                script.to_str().unwrap(),
                layout,
                pairs.to_str().unwrap(),
                lfw.to_str().unwrap(),
            ])
            .arg(&bin)
            .output()
            .expect("python3 runs (it writes the .bin fixtures)");
        assert!(
            made.status.success(),
            "{layout}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let from_bin = eval_json(
            &["eval", "--raw-pixels", "--bin", bin.to_str().unwrap()],
            &dir.path().join(format!("{layout}.json")),
        );
        assert_eq!(from_bin["pairs"], direct["pairs"], "{layout}");
        assert_eq!(from_bin["accuracy"], direct["accuracy"], "{layout}");
        assert_eq!(
            from_bin["fold_accuracies"], direct["fold_accuracies"],
            "{layout}"
        );
        assert_eq!(from_bin["thresholds"], direct["thresholds"], "{layout}");
    }
}

#[test]
fn a_bin_set_that_is_not_a_pickle_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("broken.bin");
    std::fs::write(&bin, b"this is not a pickle").unwrap();
    let output = elasticface(&["eval", "--raw-pixels", "--bin", bin.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("broken.bin") && message.contains("pickle"),
        "{message}"
    );
}

/// A config training on `source` (a TOML source line) for `steps` steps of `batch_size` images,
/// logging every step.
fn source_config(dir: &Path, name: &str, source: &str, batch_size: usize, steps: usize) -> PathBuf {
    let text = format!(
        r#"
seed = 5
output = "{output}"
backend = "cpu"
[data]
batch_size = {batch_size}
{source}
[backbone]
architecture = "mobilefacenet"
embedding_size = 32
[head]
kind = "elastic-arc"
[train]
epochs = 1
max_steps = {steps}
log_every = 1
"#,
        output = dir.join(name).display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_packed_record_file_trains_exactly_as_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces");
    for subject in ["s01", "s02", "s03", "s04"] {
        copy_orl_subject(subject, &faces.join(subject));
    }
    let record = dir.path().join("train.rec");
    let output = elasticface(&["pack", faces.to_str().unwrap(), record.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("packed 40 images of 4 identities"),
        "{printed}"
    );
    assert!(dir.path().join("train.idx").is_file());

    // Same images, labels and order: with the same seed every loss agrees.
    let folder_source = format!("[[data.sources]]\nroot = \"{}\"", faces.display());
    let record_source = format!("[[data.sources]]\nrecord = \"{}\"", record.display());
    for (name, source) in [
        ("from-folder", &folder_source),
        ("from-record", &record_source),
    ] {
        let config = source_config(dir.path(), name, source, 8, 3);
        let output = elasticface(&["train", "--config", config.to_str().unwrap()]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
    }
    let folder = losses_by_step(&dir.path().join("from-folder"));
    let record_losses = losses_by_step(&dir.path().join("from-record"));
    assert_eq!(folder.len(), 3);
    assert_eq!(record_losses.len(), 3);
    for ((step, a), (_, b)) in folder.iter().zip(&record_losses) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "step {step}: folder {a}, record file {b}"
        );
    }

    // Packing over an existing file is refused.
    let output = elasticface(&["pack", faces.to_str().unwrap(), record.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("already exists"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn truncated_and_corrupt_record_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let faces = dir.path().join("faces");
    copy_orl_subject("s01", &faces.join("a"));
    copy_orl_subject("s02", &faces.join("b"));
    let record = dir.path().join("train.rec");
    assert!(
        elasticface(&["pack", faces.to_str().unwrap(), record.to_str().unwrap()])
            .status
            .success()
    );
    let source = format!("[[data.sources]]\nrecord = \"{}\"", record.display());
    let config = source_config(dir.path(), "run", &source, 8, 1);

    // Cut the file in the middle of the last image record.
    let bytes = std::fs::read(&record).unwrap();
    let index = std::fs::read_to_string(dir.path().join("train.idx")).unwrap();
    let last_image_offset: usize = index
        .lines()
        .nth(20)
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(&record, &bytes[..last_image_offset + 100]).unwrap();
    let output = elasticface(&["train", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("train.rec")
            && message.contains("record 20")
            && message.contains(&format!("byte {last_image_offset}")),
        "{message}"
    );

    // A record whose image bytes are not an image: named, or skipped and counted.
    let mut damaged = bytes.clone();
    let first_image_offset: usize = index
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    for byte in &mut damaged[first_image_offset + 8 + 24..first_image_offset + 8 + 24 + 64] {
        *byte = 0;
    }
    std::fs::write(&record, &damaged).unwrap();
    // One batch of all 20 images, so the damaged record is read in the first step.
    let config = source_config(dir.path(), "run2", &source, 20, 1);
    let output = elasticface(&["train", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("record 1 "), "{}", stderr(&output));
    let output = elasticface(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--skip-bad",
        "--output",
        dir.path().join("run3").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("skipped 1 unreadable training images"),
        "{}",
        stderr(&output)
    );
}
