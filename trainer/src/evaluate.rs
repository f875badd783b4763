//! Verification on a pair list: read the list, decode each image once, embed it with and
//! without a horizontal flip, and run the protocol from core on the squared distances.
//! Used periodically during training and by `elasticface eval`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use elasticface_core::backbone::{Backbone, INPUT_SIZE};
use elasticface_core::preprocess::{self, FACE_LEN};
use elasticface_core::verify::{self, Pair, TarAtFar};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::{EvalConfig, Protocol};
use crate::data::load_face;
use crate::verification_bin;

/// Reads a pair list: CSV when the file ends in `.csv`, the LFW `pairs.txt` format otherwise.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read pair list {}", path.display()))?;
    let pairs = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        verify::parse_pairs_csv(&text)
    } else {
        verify::parse_lfw_pairs(&text)
    };
    pairs.with_context(|| format!("{}", path.display()))
}

/// The faces of a pair list, decoded once.
pub struct PairFaces {
    /// The pairs.
    pub pairs: Vec<Pair>,
    /// Unique images, resized to 112×112.
    pub faces: Vec<RgbImage>,
    /// For each pair, the indices of its two images in `faces`.
    pub pair_index: Vec<(usize, usize)>,
}

impl PairFaces {
    /// Reads `pairs` and decodes every image they name under `root`. A missing or unreadable
    /// image is an error naming the pair-list entry, unless `skip_bad` drops that pair.
    /// With `folds`, only the pairs of those folds are kept (and only their images read).
    pub fn load(
        root: &Path,
        pairs_path: &Path,
        folds: Option<&[usize]>,
        skip_bad: bool,
    ) -> Result<Self> {
        let mut pairs = read_pairs(pairs_path)?;
        if let Some(folds) = folds {
            pairs.retain(|pair| folds.contains(&pair.fold));
        }
        if pairs.is_empty() {
            bail!(
                "pair list {} has no pairs (in the folds asked for)",
                pairs_path.display()
            );
        }
        let mut unique: Vec<String> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for pair in &pairs {
            for name in [&pair.first, &pair.second] {
                if !position.contains_key(name) {
                    position.insert(name.clone(), unique.len());
                    unique.push(name.clone());
                }
            }
        }
        let progress = ProgressBar::new(unique.len() as u64).with_style(
            ProgressStyle::with_template("reading pair images {bar:30} {pos}/{len}")
                .expect("valid template"),
        );
        let decoded: Vec<Result<RgbImage>> = unique
            .par_iter()
            .map(|name| {
                let face = load_face(&root.join(name));
                progress.inc(1);
                face
            })
            .collect();
        progress.finish_and_clear();

        let mut bad: HashMap<usize, anyhow::Error> = HashMap::new();
        let mut faces = Vec::with_capacity(unique.len());
        for (index, face) in decoded.into_iter().enumerate() {
            match face {
                Ok(face) => faces.push(face),
                Err(error) => {
                    faces.push(RgbImage::new(1, 1));
                    bad.insert(index, error);
                }
            }
        }
        let mut kept = Vec::new();
        let mut pair_index = Vec::new();
        let mut skipped = 0;
        for (line, pair) in pairs.into_iter().enumerate() {
            let (a, b) = (position[&pair.first], position[&pair.second]);
            if let Some(error) = bad.get(&a).or(bad.get(&b)) {
                if skip_bad {
                    skipped += 1;
                    continue;
                }
                bail!(
                    "pair {} of {} ({} / {}): {error:#}",
                    line + 1,
                    pairs_path.display(),
                    pair.first,
                    pair.second
                );
            }
            kept.push(pair);
            pair_index.push((a, b));
        }
        if skipped > 0 {
            tracing::warn!("skipped {skipped} pairs with unreadable images");
        }
        Ok(Self {
            pairs: kept,
            faces,
            pair_index,
        })
    }
}

impl PairFaces {
    /// The pairs of a `.bin` verification set: image 2k and 2k + 1 form pair k. Pairs are put in
    /// ten contiguous folds, as the InsightFace protocol splits them. An image that does not
    /// decode is an error naming its index, unless `skip_bad` drops its pair.
    pub fn from_bin(path: &Path, skip_bad: bool) -> Result<Self> {
        let set = verification_bin::read(path)?;
        let pair_count = set.same.len();
        let decoded: Vec<Result<RgbImage>> = set
            .images
            .par_iter()
            .enumerate()
            .map(|(index, bytes)| {
                let image = preprocess::decode(bytes)
                    .with_context(|| format!("{} image {index}", path.display()))?;
                Ok(preprocess::resize_to_input(&image))
            })
            .collect();
        let mut faces = Vec::with_capacity(decoded.len());
        let mut bad = Vec::new();
        for (index, face) in decoded.into_iter().enumerate() {
            match face {
                Ok(face) => faces.push(face),
                Err(error) => {
                    faces.push(RgbImage::new(1, 1));
                    bad.push((index, error));
                }
            }
        }
        let mut drop_pair = vec![false; pair_count];
        for (index, error) in bad {
            if !skip_bad {
                return Err(error.context(format!(
                    "pair {} (pass --skip-bad to drop such pairs)",
                    index / 2 + 1
                )));
            }
            drop_pair[index / 2] = true;
        }
        let mut pairs = Vec::new();
        let mut pair_index = Vec::new();
        let folds = verify::contiguous_folds(pair_count, BIN_FOLDS.min(pair_count));
        for (fold, range) in folds.into_iter().enumerate() {
            for pair in range {
                if drop_pair[pair] {
                    continue;
                }
                pairs.push(Pair {
                    fold: fold + 1,
                    first: format!("image {}", 2 * pair),
                    second: format!("image {}", 2 * pair + 1),
                    same: set.same[pair],
                });
                pair_index.push((2 * pair, 2 * pair + 1));
            }
        }
        let skipped = drop_pair.iter().filter(|&&d| d).count();
        if skipped > 0 {
            tracing::warn!(
                "skipped {skipped} pairs of {} with unreadable images",
                path.display()
            );
        }
        Ok(Self {
            pairs,
            faces,
            pair_index,
        })
    }

    /// A pair list and its images, or a `.bin` verification set when `pairs` ends in `.bin`
    /// (then `root` is not used).
    pub fn open(
        root: &Path,
        pairs: &Path,
        folds: Option<&[usize]>,
        skip_bad: bool,
    ) -> Result<Self> {
        if pairs
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("bin"))
        {
            let mut faces = Self::from_bin(pairs, skip_bad)?;
            if let Some(folds) = folds {
                let kept: Vec<usize> = (0..faces.pairs.len())
                    .filter(|&i| folds.contains(&faces.pairs[i].fold))
                    .collect();
                faces.pairs = kept.iter().map(|&i| faces.pairs[i].clone()).collect();
                faces.pair_index = kept.iter().map(|&i| faces.pair_index[i]).collect();
            }
            Ok(faces)
        } else {
            Self::load(root, pairs, folds, skip_bad)
        }
    }
}

/// The InsightFace protocol's number of folds, into which `.bin` pairs are split.
const BIN_FOLDS: usize = 10;

/// Flip-summed unit embeddings of `faces`, `batch_size` faces (and their mirrors) per pass.
/// `backbone` must be in inference mode on a device without autodiff.
pub fn embed_faces(
    backbone: &Backbone,
    faces: &[RgbImage],
    batch_size: usize,
    device: &Device,
) -> Vec<Vec<f32>> {
    let mut embeddings = Vec::with_capacity(faces.len());
    for chunk in faces.chunks(batch_size) {
        let count = chunk.len();
        let mut input = Vec::with_capacity(2 * count * FACE_LEN);
        let normalized: Vec<Vec<f32>> = chunk.par_iter().map(preprocess::normalize).collect();
        for face in &normalized {
            input.extend_from_slice(face);
        }
        for face in &normalized {
            let mut flipped = face.clone();
            preprocess::flip_horizontal(&mut flipped, 3, INPUT_SIZE, INPUT_SIZE);
            input.extend_from_slice(&flipped);
        }
        let tensor = Tensor::<4>::from_data(
            TensorData::new(input, [2 * count, 3, INPUT_SIZE, INPUT_SIZE]),
            device,
        );
        let output = backbone.forward(tensor);
        let [_, size] = output.dims();
        let values = output
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("float embeddings");
        for i in 0..count {
            let plain = &values[i * size..(i + 1) * size];
            let mirrored = &values[(count + i) * size..(count + i + 1) * size];
            embeddings.push(verify::flip_sum_embedding(plain, mirrored));
        }
    }
    embeddings
}

/// What one evaluation found.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct EvalReport {
    /// Protocol, in words.
    pub protocol: String,
    /// Pairs evaluated (those of the test folds for the split protocol).
    pub pairs: usize,
    /// Accuracy (mean over folds for k-fold).
    pub accuracy: f64,
    /// Standard deviation over folds (0 for the split protocol).
    pub std: f64,
    /// Threshold(s) chosen.
    pub thresholds: Vec<f64>,
    /// Per-fold accuracies (k-fold only).
    pub fold_accuracies: Vec<f64>,
    /// TAR at the configured FARs, on the evaluated pairs.
    pub tar_at_far: Vec<TarAtFar>,
    /// Fraction of different-identity test pairs accepted at the chosen threshold(s) (the mean
    /// over folds for k-fold); none without such pairs.
    #[serde(default)]
    pub false_accept_rate: Option<f64>,
}

/// TAR at each FAR, or nothing when the pairs are all of one kind (some published sets, such as
/// InsightFace's small test `.bin`, hold only same pairs), where a ROC is not defined.
fn tar_at_far_if_defined(distances: &[f32], same: &[bool], fars: &[f64]) -> Vec<TarAtFar> {
    let genuine = same.iter().filter(|&&s| s).count();
    if genuine == 0 || genuine == same.len() {
        tracing::warn!("the pairs are all of one kind; TAR at FAR is left out");
        return Vec::new();
    }
    verify::tar_at_far(distances, same, fars).expect("both kinds of pair are present")
}

/// Runs `protocol` on the pair distances.
pub fn run_protocol(
    pairs: &[Pair],
    distances: &[f32],
    protocol: &Protocol,
    fars: &[f64],
) -> Result<EvalReport> {
    let same: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    match protocol {
        Protocol::Kfold { folds } => {
            if *folds < 2 || distances.len() < *folds {
                bail!(
                    "{folds} folds need at least {folds} pairs and at least 2 folds; got {} pairs",
                    distances.len()
                );
            }
            // A pair list that numbers its folds in order keeps them, so pairs dropped with
            // --skip-bad do not shift the other pairs into neighbouring folds; otherwise (and
            // identically when nothing was dropped from equal folds) contiguous folds are cut.
            let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
            for (index, pair) in pairs.iter().enumerate() {
                match ranges.last_mut() {
                    Some(range) if pairs[range.start].fold == pair.fold => range.end = index + 1,
                    _ => ranges.push(index..index + 1),
                }
            }
            if ranges.len() != *folds {
                if ranges.len() > 1 {
                    tracing::warn!(
                        "the pair list has {} folds; using {folds} contiguous folds as the \
                        protocol asks",
                        ranges.len()
                    );
                }
                ranges = verify::contiguous_folds(distances.len(), *folds);
            }
            let report = verify::kfold_accuracy_over(distances, &same, &ranges)?;
            let fold_rates: Option<Vec<f64>> = ranges
                .into_iter()
                .zip(&report.fold_thresholds)
                .map(|(range, &threshold)| {
                    verify::false_accept_rate(threshold, &distances[range.clone()], &same[range])
                })
                .collect();
            let false_accept_rate =
                fold_rates.map(|rates| rates.iter().sum::<f64>() / rates.len() as f64);
            Ok(EvalReport {
                false_accept_rate,
                protocol: format!("{folds}-fold, threshold on the other folds"),
                pairs: pairs.len(),
                accuracy: report.mean,
                std: report.std,
                thresholds: report.fold_thresholds,
                fold_accuracies: report.fold_accuracies,
                tar_at_far: tar_at_far_if_defined(distances, &same, fars),
            })
        }
        Protocol::Split {
            tune_folds,
            test_folds,
        } => {
            let select = |folds: &[usize]| -> (Vec<f32>, Vec<bool>) {
                pairs
                    .iter()
                    .zip(distances)
                    .filter(|(p, _)| folds.contains(&p.fold))
                    .map(|(p, d)| (*d, p.same))
                    .unzip()
            };
            let (tune_distances, tune_same) = select(tune_folds);
            let (test_distances, test_same) = select(test_folds);
            if tune_distances.is_empty() || test_distances.is_empty() {
                bail!(
                    "the split protocol found {} pairs in tuning folds {tune_folds:?} and {} in \
                     test folds {test_folds:?}",
                    tune_distances.len(),
                    test_distances.len()
                );
            }
            let report =
                verify::split_accuracy(&tune_distances, &tune_same, &test_distances, &test_same)?;
            Ok(EvalReport {
                false_accept_rate: verify::false_accept_rate(
                    report.threshold,
                    &test_distances,
                    &test_same,
                ),
                protocol: format!(
                    "threshold on folds {tune_folds:?}, accuracy on folds {test_folds:?}"
                ),
                pairs: test_distances.len(),
                accuracy: report.test_accuracy,
                std: 0.0,
                thresholds: vec![report.threshold],
                fold_accuracies: Vec::new(),
                tar_at_far: tar_at_far_if_defined(&test_distances, &test_same, fars),
            })
        }
    }
}

/// Distances of every pair from per-image embeddings.
pub fn pair_distances(faces: &PairFaces, embeddings: &[Vec<f32>]) -> Vec<f32> {
    faces
        .pair_index
        .iter()
        .map(|&(a, b)| verify::squared_distance(&embeddings[a], &embeddings[b]))
        .collect()
}

/// A pair set ready for repeated evaluation.
pub struct Evaluator {
    /// The configuration.
    pub config: EvalConfig,
    /// The decoded faces.
    pub faces: PairFaces,
}

impl Evaluator {
    /// Loads the pair list and its images.
    pub fn new(config: &EvalConfig, skip_bad: bool) -> Result<Self> {
        let folds: Option<Vec<usize>> = match &config.protocol {
            Protocol::Kfold { .. } => None,
            Protocol::Split {
                tune_folds,
                test_folds,
            } => Some(tune_folds.iter().chain(test_folds).copied().collect()),
        };
        let faces = PairFaces::open(&config.root, &config.pairs, folds.as_deref(), skip_bad)?;
        Ok(Self {
            config: config.clone(),
            faces,
        })
    }

    /// Evaluates `backbone` (in inference mode on `device`).
    pub fn evaluate(&self, backbone: &Backbone, device: &Device) -> Result<EvalReport> {
        let embeddings = embed_faces(backbone, &self.faces.faces, self.config.batch_size, device);
        let distances = pair_distances(&self.faces, &embeddings);
        run_protocol(
            &self.faces.pairs,
            &distances,
            &self.config.protocol,
            &self.config.fars,
        )
    }

    /// Evaluates a fixed embedding function instead of a network (for baselines).
    pub fn evaluate_embeddings(&self, embeddings: &[Vec<f32>]) -> Result<EvalReport> {
        let distances = pair_distances(&self.faces, embeddings);
        run_protocol(
            &self.faces.pairs,
            &distances,
            &self.config.protocol,
            &self.config.fars,
        )
    }
}

/// The raw-pixel baseline: each 112×112 face flattened, flip-summed and normalised like a
/// network embedding.
pub fn raw_pixel_embeddings(faces: &[RgbImage]) -> Vec<Vec<f32>> {
    faces
        .par_iter()
        .map(|face| {
            let plain = preprocess::normalize(face);
            let mut mirrored = plain.clone();
            preprocess::flip_horizontal(&mut mirrored, 3, INPUT_SIZE, INPUT_SIZE);
            verify::flip_sum_embedding(&plain, &mirrored)
        })
        .collect()
}

/// Prints a report as a table.
pub fn print_report(name: &str, report: &EvalReport) {
    println!("{name}");
    println!("  protocol   {}", report.protocol);
    println!("  pairs      {}", report.pairs);
    println!(
        "  accuracy   {:.2} % ± {:.2}",
        100.0 * report.accuracy,
        100.0 * report.std
    );
    let thresholds: Vec<String> = report
        .thresholds
        .iter()
        .map(|t| format!("{t:.2}"))
        .collect();
    println!("  threshold  {}", thresholds.join(" "));
    if let Some(rate) = report.false_accept_rate {
        println!(
            "  FAR        {:.2} % of different-identity pairs accepted at the threshold",
            100.0 * rate
        );
    }
    if !report.fold_accuracies.is_empty() {
        let folds: Vec<String> = report
            .fold_accuracies
            .iter()
            .map(|a| format!("{:.1}", 100.0 * a))
            .collect();
        println!("  folds      {}", folds.join(" "));
    }
    for row in &report.tar_at_far {
        println!(
            "  TAR@FAR={:<6} {:.2} %  (threshold {:.3}, achieved FAR {:.4})",
            row.far,
            100.0 * row.tar,
            row.threshold,
            row.achieved_far
        );
    }
}
