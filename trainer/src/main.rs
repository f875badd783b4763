//! `elasticface`: train face-recognition networks with ElasticFace and related margin losses,
//! and evaluate them with the standard verification protocols.

mod backend;
mod bench;
mod checkpoint;
mod config;
mod data;
mod evaluate;
mod export;
mod ijb;
mod plot;
mod recordio;
mod train;
mod verification_bin;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use elasticface_core::backbone::Architecture;
use elasticface_core::head::HeadKind;
use tracing_subscriber::EnvFilter;

use crate::config::{BackendChoice, EvalConfig, Protocol, TrainConfig};

#[derive(Parser)]
#[command(
    name = "elasticface",
    version,
    about = "Train and evaluate ElasticFace face-recognition models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config (flags override the file).
    Train(TrainArgs),
    /// Evaluate a trained model (or raw pixels) on a verification pair list.
    Eval(EvalArgs),
    /// IJB-B / IJB-C 1:1 verification (TAR at FAR 1e-6 … 1e-1) from the release's meta files.
    Ijb(IjbArgs),
    /// Write a model file (safetensors weights with a model card) from a run or a PyTorch
    /// iResNet checkpoint, for the browser app and other tools.
    Export(ExportArgs),
    /// Pack an image folder (one sub-folder per identity) into an MXNet RecordIO file.
    Pack(PackArgs),
    /// Benchmarks: training step time, or the margin loss's kernels against tensor operations.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct IjbArgs {
    /// A run folder written by `elasticface train`.
    #[arg(long)]
    model: PathBuf,
    /// The IJB release folder, holding `meta/` and `loose_crop/`.
    #[arg(long)]
    root: PathBuf,
    /// Which set: the prefix of its meta files.
    #[arg(long, value_parser = ["ijbb", "ijbc"])]
    set: String,
    /// Take the images as aligned crops and ignore the landmarks and faceness scores.
    #[arg(long)]
    no_landmarks: bool,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Faces per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ExportArgs {
    /// A run folder written by `elasticface train`.
    #[arg(long, required_unless_present = "pytorch", conflicts_with = "pytorch")]
    model: Option<PathBuf>,
    /// A PyTorch iResNet state dict with the reference's key names (`backbone.pth`).
    #[arg(long)]
    pytorch: Option<PathBuf>,
    /// The PyTorch checkpoint's network.
    #[arg(long, default_value = "iresnet100")]
    backbone: Architecture,
    /// The PyTorch checkpoint's stage widths (the reference's 64,128,256,512 by default).
    #[arg(long, value_delimiter = ',', num_args = 4)]
    widths: Option<Vec<usize>>,
    /// The PyTorch checkpoint's embedding size.
    #[arg(long, default_value_t = 512)]
    embedding_size: usize,
    /// Verification threshold (squared L2 distance) to record instead of the run's own.
    #[arg(long)]
    threshold: Option<f64>,
    /// Store the weights as f16 (half the size).
    #[arg(long)]
    half: bool,
    /// The model file to write.
    #[arg(long)]
    output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct PackArgs {
    /// Folder with one sub-folder per identity.
    folder: PathBuf,
    /// The record file to write (its index goes beside it, as .idx).
    output: PathBuf,
    /// Leave out unreadable images, reporting their count.
    #[arg(long)]
    skip_bad: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training step time (forward, backward, optimiser) on random faces already in memory.
    Train(BenchTrainArgs),
    /// The margin loss with its gradient: fused WGSL kernels against burn tensor operations.
    Head(BenchHeadArgs),
}

#[derive(Args)]
struct BenchTrainArgs {
    /// Backbones to time.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mobilefacenet,iresnet18,iresnet50"
    )]
    backbones: Vec<Architecture>,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    batch_sizes: Vec<usize>,
    /// Class counts of the ElasticFace-Arc head.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    classes: Vec<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchHeadArgs {
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    batch_sizes: Vec<usize>,
    /// Class counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,85742")]
    classes: Vec<usize>,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Backend: a wgpu adapter (hardware when present, else software).
    #[arg(long, value_enum, default_value = "wgpu")]
    backend: BackendChoice,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    /// The experiment's config file.
    #[arg(long)]
    config: PathBuf,
    /// Continue the run in the output folder from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Output folder.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Backend.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Margin head (softmax, arcface, cosface, elastic-arc, elastic-cos, elastic-arc+,
    /// elastic-cos+); its s, m, σ reset to the head's defaults unless also given.
    #[arg(long)]
    head: Option<HeadKind>,
    /// Scale s.
    #[arg(long)]
    scale: Option<f64>,
    /// Margin m.
    #[arg(long)]
    margin: Option<f64>,
    /// Margin standard deviation σ.
    #[arg(long)]
    sigma: Option<f64>,
    /// Backbone (iresnet18/34/50/100/200, mobilefacenet).
    #[arg(long)]
    backbone: Option<Architecture>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this many minutes of wall time.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Images per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Log the loss every this many steps.
    #[arg(long)]
    log_every: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Skip unreadable images and empty identity folders, reporting their count.
    #[arg(long)]
    skip_bad: bool,
    /// Evaluate the untrained network first (a baseline row for result tables).
    #[arg(long)]
    eval_untrained: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder written by `elasticface train`, or a model file of `elasticface export`.
    #[arg(long, required_unless_present = "raw_pixels")]
    model: Option<PathBuf>,
    /// Evaluate flattened, normalised pixels instead of a model (a baseline).
    #[arg(long, conflicts_with = "model")]
    raw_pixels: bool,
    /// Pair list: LFW pairs.txt format, or CSV with img1,img2,same[,fold].
    #[arg(long, required_unless_present = "bin")]
    pairs: Option<PathBuf>,
    /// InsightFace `.bin` verification sets (lfw.bin, agedb_30.bin, cfp_fp.bin, ...), each
    /// evaluated on its own.
    #[arg(long, num_args = 1.., conflicts_with = "pairs")]
    bin: Vec<PathBuf>,
    /// Folder the pair list's paths are relative to (default: the pair list's folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// k for the k-fold protocol.
    #[arg(long, default_value_t = 10)]
    folds: usize,
    /// Use the split protocol: choose the threshold on these folds of the pair list.
    #[arg(long, value_delimiter = ',', requires = "test_folds")]
    tune_folds: Vec<usize>,
    /// Use the split protocol: report accuracy on these folds of the pair list.
    #[arg(long, value_delimiter = ',', requires = "tune_folds")]
    test_folds: Vec<usize>,
    /// FARs at which TAR is reported.
    #[arg(long, value_delimiter = ',', default_value = "0.001,0.01,0.1")]
    fars: Vec<f64>,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Faces per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Drop pairs whose images cannot be read, reporting their count.
    #[arg(long)]
    skip_bad: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn train(args: TrainArgs) -> Result<()> {
    let mut config = TrainConfig::load(&args.config)?;
    if let Some(output) = args.output {
        config.output = output;
    }
    if let Some(backend) = args.backend {
        config.backend = backend;
    }
    if let Some(kind) = args.head {
        config.head = elasticface_core::head::HeadConfig::new(kind);
    }
    if let Some(scale) = args.scale {
        config.head.scale = scale;
    }
    if let Some(margin) = args.margin {
        config.head.margin = margin;
    }
    if let Some(sigma) = args.sigma {
        config.head.sigma = sigma;
    }
    if let Some(architecture) = args.backbone {
        config.backbone.architecture = architecture;
    }
    if let Some(epochs) = args.epochs {
        config.train.epochs = epochs;
    }
    if let Some(max_steps) = args.max_steps {
        config.train.max_steps = Some(max_steps);
    }
    if let Some(max_minutes) = args.max_minutes {
        config.train.max_minutes = Some(max_minutes);
    }
    if let Some(batch_size) = args.batch_size {
        config.data.batch_size = batch_size;
    }
    if let Some(log_every) = args.log_every {
        config.train.log_every = log_every;
    }
    if let Some(lr) = args.lr {
        config.optimizer.lr = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if args.skip_bad {
        config.data.skip_bad = true;
    }

    let summary = train::run(&config, args.resume, args.eval_untrained)?;
    println!();
    println!(
        "trained {} steps in {:.1} min ({:.1} images/s) on {}",
        summary.steps,
        summary.wall_seconds / 60.0,
        summary.images_per_second,
        summary.device
    );
    if let Some(report) = &summary.untrained_eval {
        evaluate::print_report("untrained network", report);
    }
    if let Some(report) = &summary.final_eval {
        evaluate::print_report(&format!("{} after training", summary.head), report);
    }
    println!("outputs in {}", config.output.display());
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let protocol = if args.tune_folds.is_empty() {
        Protocol::Kfold { folds: args.folds }
    } else {
        Protocol::Split {
            tune_folds: args.tune_folds.clone(),
            test_folds: args.test_folds.clone(),
        }
    };
    protocol.check()?;
    config::check_fars(&args.fars).context("--fars")?;
    if let Some(path) = &args.json
        && let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !folder.is_dir()
    {
        bail!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            folder.display()
        );
    }
    let sets: Vec<PathBuf> = match &args.pairs {
        Some(pairs) => vec![pairs.clone()],
        None => args.bin.clone(),
    };

    // The network, loaded once for every set.
    let network = match (&args.model, args.raw_pixels) {
        (_, true) => None,
        (Some(run), false) => Some(load_backbone(run, args.backend)?),
        (None, false) => unreachable!("clap requires --model without --raw-pixels"),
    };

    let mut reports = Vec::new();
    for set in &sets {
        let root = match &args.root {
            Some(root) => root.clone(),
            None => set
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let eval_config = EvalConfig {
            root,
            pairs: set.clone(),
            every_steps: 0,
            protocol: protocol.clone(),
            batch_size: args.batch_size.max(1),
            fars: args.fars.clone(),
        };
        let evaluator = evaluate::Evaluator::new(&eval_config, args.skip_bad)?;
        let (name, report) = match &network {
            None => {
                let embeddings = evaluate::raw_pixel_embeddings(&evaluator.faces.faces);
                (
                    "raw pixels".to_string(),
                    evaluator.evaluate_embeddings(&embeddings)?,
                )
            }
            Some((name, backbone, device)) => (name.clone(), evaluator.evaluate(backbone, device)?),
        };
        evaluate::print_report(&format!("{name} on {}", set.display()), &report);
        reports.push((set.display().to_string(), report));
    }
    if let Some(path) = args.json {
        let json = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0].1)?
        } else {
            let by_set: std::collections::BTreeMap<_, _> = reports.into_iter().collect();
            serde_json::to_string_pretty(&by_set)?
        };
        std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn write_json<T: serde::Serialize>(path: Option<&PathBuf>, rows: &T) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn bench_train(args: BenchTrainArgs) -> Result<()> {
    let chosen = backend::choose(args.backend)?;
    println!(
        "training step on {} (median of {} steps after {} warm-up)",
        chosen.description, args.steps, args.warmup
    );
    println!(
        "{:<14} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "backbone", "batch", "classes", "forward", "backward", "optimizer", "step", "images/s"
    );
    let mut rows = Vec::new();
    for &architecture in &args.backbones {
        for &batch_size in &args.batch_sizes {
            for &classes in &args.classes {
                let row = bench::train_step(
                    &chosen,
                    architecture,
                    batch_size,
                    classes,
                    args.warmup,
                    args.steps,
                )?;
                println!(
                    "{:<14} {:>6} {:>7} {:>9.3}s {:>9.3}s {:>9.3}s {:>9.3}s {:>9.1}",
                    row.backbone,
                    row.batch_size,
                    row.classes,
                    row.forward,
                    row.backward,
                    row.optimizer,
                    row.step,
                    row.images_per_second
                );
                rows.push(row);
            }
        }
    }
    write_json(args.json.as_ref(), &rows)
}

fn bench_head(args: BenchHeadArgs) -> Result<()> {
    let chosen = backend::choose(args.backend)?;
    println!(
        "ElasticFace-Arc loss and d loss / d cos θ on {} (median of {} after {} warm-up)",
        chosen.description, args.iterations, args.warmup
    );
    println!(
        "{:>6} {:>7} {:>11} {:>11} {:>8} {:>12} {:>12}",
        "batch", "classes", "fused", "tensor ops", "speed-up", "fused GB/s", "tensor GB/s"
    );
    let mut rows = Vec::new();
    for &batch_size in &args.batch_sizes {
        for &classes in &args.classes {
            let row = match bench::head(&chosen, batch_size, classes, args.warmup, args.iterations)
            {
                Ok(row) => row,
                Err(error) => {
                    let reason = format!("{error:#}");
                    println!(
                        "{batch_size:>6} {classes:>7}  skipped: {}",
                        reason.lines().next().unwrap_or("")
                    );
                    continue;
                }
            };
            println!(
                "{:>6} {:>7} {:>9.2}ms {:>9.2}ms {:>7.2}× {:>12.2} {:>12.2}",
                row.batch_size,
                row.classes,
                1e3 * row.fused,
                1e3 * row.tensor_ops,
                row.speedup(),
                row.fused_bandwidth(),
                row.tensor_ops_bandwidth()
            );
            rows.push(row);
        }
    }
    println!(
        "GB/s counts the least traffic: cos θ read twice and its gradient written once (12·B·C \
        bytes)."
    );
    write_json(args.json.as_ref(), &rows)
}

/// The backbone of a run's latest checkpoint, in inference mode on the chosen device.
fn load_backbone(
    run: &std::path::Path,
    choice: BackendChoice,
) -> Result<(
    String,
    elasticface_core::backbone::Backbone,
    burn::tensor::Device,
)> {
    let chosen = backend::choose(choice)?;
    tracing::info!("device: {}", chosen.description);
    if run.is_file() {
        // A model file written by `elasticface export`.
        let bytes = std::fs::read(run).with_context(|| format!("cannot read {}", run.display()))?;
        let (backbone, _) = elasticface_core::export::import_backbone(&bytes, &chosen.device)
            .with_context(|| format!("{}", run.display()))?;
        return Ok((
            run.display().to_string(),
            burn::module::Module::valid(&backbone),
            chosen.device,
        ));
    }
    if !run.exists() {
        bail!(
            "{} does not exist (expected a run folder of `elasticface train` or a model file)",
            run.display()
        );
    }
    let Some(latest) = checkpoint::latest(run)? else {
        bail!(
            "{} holds no checkpoint (expected a run folder of `elasticface train`)",
            run.display()
        );
    };
    let state = checkpoint::read_state(&latest)?;
    let model = checkpoint::load_model(&latest, &state, &chosen.device)?;
    let backbone = burn::module::Module::valid(&model.backbone);
    Ok((
        format!("{} (step {})", run.display(), state.step),
        backbone,
        chosen.device,
    ))
}

fn export(args: ExportArgs) -> Result<()> {
    if args.output.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it",
            args.output.display()
        );
    }
    let device = burn::tensor::Device::flex();
    let (backbone, card) = match (&args.model, &args.pytorch) {
        (Some(run), _) => export::from_run(run, args.threshold, &device)?,
        (None, Some(pth)) => {
            let mut config = elasticface_core::backbone::BackboneConfig::new(args.backbone);
            config.embedding_size = args.embedding_size;
            if let Some(widths) = &args.widths {
                config.widths = widths
                    .as_slice()
                    .try_into()
                    .expect("clap takes four widths");
            }
            let backbone = export::load_pytorch_iresnet(pth, &config, &device)?;
            let card = elasticface_core::export::ModelCard {
                backbone: config,
                threshold: args.threshold,
                threshold_note: if args.threshold.is_some() {
                    "set by hand at export".into()
                } else {
                    String::new()
                },
                trained_with: format!("imported from PyTorch checkpoint {}", pth.display()),
                accuracy: None,
                false_accept_rate: None,
            };
            (backbone, card)
        }
        (None, None) => unreachable!("clap requires --model or --pytorch"),
    };
    let bytes = elasticface_core::export::export_backbone(&backbone, &card, args.half)?;
    let staging = args.output.with_extension("partial");
    std::fs::write(&staging, &bytes)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    println!(
        "wrote {} ({:.1} MB, {} weights{})",
        args.output.display(),
        bytes.len() as f64 / 1e6,
        if args.half { "f16" } else { "f32" },
        match card.threshold {
            Some(t) => format!(", threshold {t:.2}"),
            None => String::new(),
        }
    );
    Ok(())
}

fn ijb(args: IjbArgs) -> Result<()> {
    let (name, backbone, device) = load_backbone(&args.model, args.backend)?;
    let report = ijb::evaluate(
        &args.root,
        &args.set,
        !args.no_landmarks,
        &backbone,
        &device,
        args.batch_size.max(1),
    )?;
    ijb::print_report(&format!("{name} on {}", args.set.to_uppercase()), &report);
    write_json(args.json.as_ref(), &report)
}

fn pack(args: PackArgs) -> Result<()> {
    let summary = recordio::pack_folder(&args.folder, &args.output, args.skip_bad)?;
    println!(
        "packed {} images of {} identities into {} (index {})",
        summary.images,
        summary.identities,
        args.output.display(),
        recordio::index_path(&args.output).display()
    );
    if summary.skipped > 0 {
        println!("skipped {} unreadable images", summary.skipped);
    }
    Ok(())
}

fn main() -> ExitCode {
    // Logs go to stderr, so stdout carries only results (tables, summaries) for scripts.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Ijb(args) => ijb(args),
        Command::Export(args) => export(args),
        Command::Pack(args) => pack(args),
        Command::Bench(BenchCommand::Train(args)) => bench_train(args),
        Command::Bench(BenchCommand::Head(args)) => bench_head(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
