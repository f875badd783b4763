//! Training data from image folders (one sub-folder per identity): scanning, checking every
//! image once up front, and a loader that decodes, flips and batches on worker threads ahead
//! of the model. The first stage of training, feeding the backbone.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use elasticface_core::preprocess::{self, FACE_LEN};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::{DataConfig, SourceConfig};

/// File extensions read as images.
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "pgm", "ppm", "gif", "webp"];

/// One training image.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Path of the file.
    pub path: PathBuf,
    /// Class index.
    pub label: i64,
}

/// A scanned and checked training set.
pub struct FolderDataset {
    /// Every usable image.
    pub samples: Vec<Sample>,
    /// Class names (`source/identity`), indexed by label.
    pub classes: Vec<String>,
    /// Decoded 112×112 faces, when kept in memory (same order as `samples`).
    pub cache: Option<Vec<RgbImage>>,
    /// Images skipped because they could not be decoded.
    pub skipped_images: usize,
    /// Identity folders left without any usable image.
    pub skipped_identities: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Identities of `folds` from a table `id<TAB>num_images<TAB>fold` with a header line.
fn identities_in_folds(table: &Path, folds: &[usize]) -> Result<HashSet<String>> {
    let text = std::fs::read_to_string(table)
        .with_context(|| format!("cannot read identity table {}", table.display()))?;
    let mut keep = HashSet::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let fold: usize = fields
            .get(2)
            .and_then(|f| f.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{} line {}: expected `id<TAB>num_images<TAB>fold`, got {line:?}",
                    table.display(),
                    index + 1
                )
            })?;
        if folds.contains(&fold) {
            keep.insert(fields[0].trim().to_string());
        }
    }
    Ok(keep)
}

/// Sorted entries of a folder.
fn sorted_entries(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read folder {}", folder.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list folder {}", folder.display()))?;
    entries.sort();
    Ok(entries)
}

/// The identity folders of one source, each with its image files.
fn scan_source(source: &SourceConfig, skip_bad: bool) -> Result<(Vec<(String, Vec<PathBuf>)>, usize)> {
    let keep = match &source.identities {
        Some(table) => {
            if source.folds.is_empty() {
                bail!(
                    "source {} names an identity table but no folds to keep",
                    source.root.display()
                );
            }
            Some(identities_in_folds(table, &source.folds)?)
        }
        None => None,
    };
    let mut identities = Vec::new();
    let mut empty = 0;
    for folder in sorted_entries(&source.root)? {
        if !folder.is_dir() {
            continue;
        }
        let name = folder.file_name().unwrap_or_default().to_string_lossy().to_string();
        if let Some(keep) = &keep
            && !keep.contains(&name)
        {
            continue;
        }
        let images: Vec<PathBuf> =
            sorted_entries(&folder)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
        if images.is_empty() {
            if skip_bad {
                empty += 1;
                continue;
            }
            bail!(
                "identity folder {} holds no images (expected .jpg, .png, .pgm, .gif or .webp \
                 files); remove it or pass --skip-bad",
                folder.display()
            );
        }
        if images.len() < source.min_images {
            continue;
        }
        identities.push((name, images));
    }
    if identities.is_empty() {
        bail!(
            "{} has no identity folders with at least {} image(s)",
            source.root.display(),
            source.min_images.max(1)
        );
    }
    Ok((identities, empty))
}

/// Reads one image and resizes it to 112×112.
pub fn load_face(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let image = preprocess::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok(preprocess::resize_to_input(&image))
}

impl FolderDataset {
    /// Scans the sources, decodes every image once to check it, and keeps the decoded faces
    /// in memory when `keep_in_memory` is set.
    pub fn open(config: &DataConfig, keep_in_memory: bool) -> Result<Self> {
        let mut classes = Vec::new();
        let mut files: Vec<(PathBuf, usize)> = Vec::new();
        let mut skipped_identities = 0;
        for source in &config.sources {
            let (identities, empty) = scan_source(source, config.skip_bad)?;
            skipped_identities += empty;
            let prefix = source.root.file_name().unwrap_or_default().to_string_lossy().to_string();
            for (name, images) in identities {
                let class = classes.len();
                classes.push(format!("{prefix}/{name}"));
                files.extend(images.into_iter().map(|p| (p, class)));
            }
        }

        let progress = ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("checking images {bar:30} {pos}/{len} [{elapsed}<{eta}]")
                .expect("valid template"),
        );
        let decoded: Vec<Result<RgbImage>> = files
            .par_iter()
            .map(|(path, _)| {
                let face = load_face(path);
                progress.inc(1);
                face
            })
            .collect();
        progress.finish_and_clear();

        let mut samples = Vec::with_capacity(files.len());
        let mut cache = keep_in_memory.then(|| Vec::with_capacity(files.len()));
        let mut skipped_images = 0;
        let mut images_per_class = vec![0usize; classes.len()];
        for ((path, class), face) in files.into_iter().zip(decoded) {
            match face {
                Ok(face) => {
                    images_per_class[class] += 1;
                    samples.push(Sample {
                        path,
                        label: class as i64,
                    });
                    if let Some(cache) = cache.as_mut() {
                        cache.push(face);
                    }
                }
                Err(error) if config.skip_bad => {
                    tracing::warn!("skipping unreadable image: {error:#}");
                    skipped_images += 1;
                }
                Err(error) => {
                    return Err(error.context("unreadable training image (pass --skip-bad to skip such images)"));
                }
            }
        }

        // Identities whose every image was skipped get no class, so labels stay contiguous.
        let mut remap = vec![-1i64; classes.len()];
        let mut kept_classes = Vec::new();
        for (class, name) in classes.into_iter().enumerate() {
            if images_per_class[class] > 0 {
                remap[class] = kept_classes.len() as i64;
                kept_classes.push(name);
            } else {
                skipped_identities += 1;
            }
        }
        for sample in &mut samples {
            sample.label = remap[sample.label as usize];
        }
        if kept_classes.len() < 2 {
            bail!(
                "training needs at least two identities; the sources give {}",
                kept_classes.len()
            );
        }
        Ok(Self {
            samples,
            classes: kept_classes,
            cache,
            skipped_images,
            skipped_identities,
        })
    }

    /// Images per identity: smallest, median, largest.
    pub fn identity_sizes(&self) -> (usize, usize, usize) {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for sample in &self.samples {
            *counts.entry(sample.label).or_default() += 1;
        }
        let mut sizes: Vec<usize> = counts.into_values().collect();
        sizes.sort_unstable();
        (sizes[0], sizes[sizes.len() / 2], sizes[sizes.len() - 1])
    }
}

/// One batch ready for the backbone.
pub struct Batch {
    /// `batch_size × 3 × 112 × 112` normalised values.
    pub faces: Vec<f32>,
    /// Class of each face.
    pub labels: Vec<i64>,
    /// Epoch (0-based) the batch belongs to.
    pub epoch: usize,
    /// Index of the batch within its epoch.
    pub index: usize,
}

/// Order of the samples in `epoch`: a permutation seeded by the run's seed and the epoch, so a
/// resumed run sees the same order.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0f_da7a);
    rng.set_stream(epoch as u64);
    order.shuffle(&mut rng);
    order
}

/// Whether each position of `epoch` is mirrored, from its own seeded stream.
fn epoch_flips(len: usize, seed: u64, epoch: usize) -> Vec<bool> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xf11b_f11b);
    rng.set_stream(epoch as u64);
    (0..len).map(|_| rng.random_bool(0.5)).collect()
}

/// Batches decoded on worker threads, a few steps ahead of the model.
pub struct Loader {
    receiver: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing batches from `start_epoch`, batch `start_index`, up to `epochs`.
    /// The last incomplete batch of each epoch is dropped, as the reference does.
    pub fn start(
        dataset: Arc<FolderDataset>,
        config: &DataConfig,
        seed: u64,
        epochs: usize,
        start: (usize, usize),
    ) -> Self {
        let (sender, receiver) = sync_channel(3);
        let batch_size = config.batch_size;
        let random_flip = config.random_flip;
        let threads = if config.workers == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            config.workers
        };
        let worker = std::thread::Builder::new()
            .name("loader".into())
            .spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
                let Ok(pool) = pool else {
                    let _ = sender.send(Err(anyhow::anyhow!("cannot start decoding threads")));
                    return;
                };
                produce(&dataset, &pool, &sender, seed, epochs, start, batch_size, random_flip);
            })
            .expect("can spawn the loader thread");
        Self {
            receiver,
            worker: Some(worker),
        }
    }

    /// The next batch, or `None` when the last epoch is done.
    pub fn next(&mut self) -> Option<Result<Batch>> {
        self.receiver.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer, then wait for it.
        let (_, dummy) = sync_channel(1);
        drop(std::mem::replace(&mut self.receiver, dummy));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn produce(
    dataset: &FolderDataset,
    pool: &rayon::ThreadPool,
    sender: &SyncSender<Result<Batch>>,
    seed: u64,
    epochs: usize,
    start: (usize, usize),
    batch_size: usize,
    random_flip: bool,
) {
    let batches_per_epoch = dataset.samples.len() / batch_size;
    for epoch in start.0..epochs {
        let order = epoch_order(dataset.samples.len(), seed, epoch);
        let flips = epoch_flips(dataset.samples.len(), seed, epoch);
        let first = if epoch == start.0 { start.1 } else { 0 };
        for index in first..batches_per_epoch {
            let positions = index * batch_size..(index + 1) * batch_size;
            let batch = pool.install(|| {
                let faces: Result<Vec<Vec<f32>>> = positions
                    .clone()
                    .into_par_iter()
                    .map(|position| {
                        let sample = order[position];
                        let mut face = match &dataset.cache {
                            Some(cache) => preprocess::normalize(&cache[sample]),
                            None => preprocess::normalize(&load_face(&dataset.samples[sample].path)?),
                        };
                        if random_flip && flips[position] {
                            preprocess::flip_horizontal(&mut face, 3, 112, 112);
                        }
                        Ok(face)
                    })
                    .collect();
                faces.map(|faces| {
                    let mut flat = Vec::with_capacity(batch_size * FACE_LEN);
                    faces.iter().for_each(|f| flat.extend_from_slice(f));
                    flat
                })
            });
            let labels = positions.map(|p| dataset.samples[order[p]].label).collect();
            let message = batch.map(|faces| Batch {
                faces,
                labels,
                epoch,
                index,
            });
            if sender.send(message).is_err() {
                return;
            }
        }
    }
}
