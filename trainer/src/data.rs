//! Training data from image folders (one sub-folder per identity) and from MXNet RecordIO
//! files: scanning and checking the sources up front, and a loader that decodes, flips and
//! batches on worker threads ahead of the model. The first stage of training, feeding the
//! backbone.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use elasticface_core::preprocess::{self, FACE_LEN};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::{DataConfig, SourceConfig};
use crate::recordio::{self, ImageHeader, RecordReader};

/// File extensions read as images.
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "pgm", "ppm", "gif", "webp"];

/// Decoded 112×112 faces of image folders are kept in memory up to this many bytes; larger
/// folder sets are decoded again every epoch. Record files are always streamed.
const CACHE_BUDGET_BYTES: usize = 2 << 30;

/// Where a training image's bytes are.
#[derive(Clone, Copy, Debug)]
pub enum Location {
    /// An image file: index into [`TrainingSet::files`].
    File(u32),
    /// A record of a record file: index into the record readers, byte offset and key.
    Record {
        /// Which record file.
        file: u16,
        /// Byte offset of the record.
        offset: u64,
        /// The record's key in the index.
        key: u64,
    },
}

/// One training image.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Where its bytes are.
    pub location: Location,
    /// Class index.
    pub label: i64,
}

/// The scanned and checked training sources.
pub struct TrainingSet {
    /// Every usable image.
    pub samples: Vec<Sample>,
    /// Class names (`source/identity`), indexed by label.
    pub classes: Vec<String>,
    /// Paths of the image files.
    pub files: Vec<PathBuf>,
    /// The record files.
    pub records: Vec<RecordReader>,
    /// Decoded faces of the image files, when they fit the memory budget (indexed like `files`).
    pub cache: Option<Vec<RgbImage>>,
    /// Images skipped while scanning because they could not be read.
    pub skipped_images: usize,
    /// Identity folders left without any usable image.
    pub skipped_identities: usize,
    /// Whether unreadable records met during training are skipped rather than fatal.
    pub skip_bad: bool,
    /// Records skipped during training because they could not be decoded.
    pub skipped_while_training: AtomicUsize,
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

/// The identity folders under `root`, each with its image files (sorted by name), and the number
/// of empty identity folders skipped.
pub fn scan_folder(
    root: &Path,
    source: &SourceConfig,
    skip_bad: bool,
) -> Result<(Vec<(String, Vec<PathBuf>)>, usize)> {
    let keep = match &source.identities {
        Some(table) => {
            if source.folds.is_empty() {
                bail!(
                    "source {} names an identity table but no folds to keep",
                    root.display()
                );
            }
            Some(identities_in_folds(table, &source.folds)?)
        }
        None => None,
    };
    let mut identities = Vec::new();
    let mut empty = 0;
    for folder in sorted_entries(root)? {
        if !folder.is_dir() {
            continue;
        }
        let name = folder
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if let Some(keep) = &keep
            && !keep.contains(&name)
        {
            continue;
        }
        let images: Vec<PathBuf> = sorted_entries(&folder)?
            .into_iter()
            .filter(|p| p.is_file() && is_image(p))
            .collect();
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
            root.display(),
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

/// The image records of a record file: for each, its key, byte offset and class label.
///
/// With an index header (record 0 with two labels, as InsightFace writes it), the images are the
/// keys from 1 up to the header's first label; otherwise every record is an image.
pub fn scan_record_file(
    reader: &RecordReader,
    index: &[(u64, u64)],
) -> Result<Vec<(u64, u64, i64)>> {
    let path = reader.path().display().to_string();
    let first = index.iter().find(|(key, _)| *key == 0);
    let image_keys = match first {
        Some(&(_, offset)) => {
            let header = reader
                .read_header(offset)
                .map_err(|e| anyhow::anyhow!("{path}, record 0 (byte {offset}): {e}"))?;
            if header.flag > 0 {
                let end = header.labels[0];
                if !(end.is_finite() && end >= 1.0 && end.fract() == 0.0) {
                    bail!(
                        "{path}, record 0: index header gives {end} as the end of the images \
                        (expected a whole number ≥ 1)"
                    );
                }
                Some(1..end as u64)
            } else {
                None
            }
        }
        None => None,
    };
    let entries: Vec<(u64, u64)> = index
        .iter()
        .copied()
        .filter(|(key, _)| image_keys.as_ref().is_none_or(|keys| keys.contains(key)))
        .collect();
    if let Some(keys) = &image_keys
        && (entries.len() as u64) < keys.end - keys.start
    {
        bail!(
            "{path}: the index header promises images {}..{} but the index lists {} of them",
            keys.start,
            keys.end,
            entries.len()
        );
    }
    let progress = ProgressBar::new(entries.len() as u64).with_style(
        ProgressStyle::with_template(
            "reading record headers {bar:30} {pos}/{len} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    let labelled = entries
        .par_iter()
        .map(|&(key, offset)| {
            let header: ImageHeader = reader
                .read_header(offset)
                .map_err(|e| anyhow::anyhow!("{path}, record {key} (byte {offset}): {e}"))?;
            let label = recordio::class_index(header.class_label())
                .map_err(|e| anyhow::anyhow!("{path}, record {key} (byte {offset}): {e}"))?;
            progress.inc(1);
            Ok((key, offset, label))
        })
        .collect::<Result<Vec<_>>>();
    progress.finish_and_clear();
    labelled
}

impl TrainingSet {
    /// Scans every source. Image files are decoded once to check them (and kept decoded when they
    /// fit the memory budget); record files have every record's header read, which checks their
    /// framing and labels without decoding the images.
    pub fn open(config: &DataConfig) -> Result<Self> {
        let mut classes = Vec::new();
        let mut labelled: Vec<(Location, usize)> = Vec::new();
        let mut files = Vec::new();
        let mut records = Vec::new();
        let mut skipped_identities = 0;
        for source in &config.sources {
            source.validate()?;
            if let Some(root) = &source.root {
                let (identities, empty) = scan_folder(root, source, config.skip_bad)?;
                skipped_identities += empty;
                let prefix = root
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                for (name, images) in identities {
                    let class = classes.len();
                    classes.push(format!("{prefix}/{name}"));
                    for path in images {
                        labelled.push((Location::File(files.len() as u32), class));
                        files.push(path);
                    }
                }
            }
            if let Some(record) = &source.record {
                let reader = RecordReader::open(record)?;
                let index = recordio::read_index(&recordio::index_path(record))?;
                let entries = scan_record_file(&reader, &index)?;
                let mut per_label: BTreeMap<i64, usize> = BTreeMap::new();
                for &(_, _, label) in &entries {
                    *per_label.entry(label).or_default() += 1;
                }
                // Labels as stored may have gaps or be left out by `min_images`: number the
                // kept ones consecutively after the classes of earlier sources.
                let stem = record
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                let mut class_of: BTreeMap<i64, usize> = BTreeMap::new();
                for (&label, &count) in &per_label {
                    if count >= source.min_images {
                        class_of.insert(label, classes.len());
                        classes.push(format!("{stem}/{label}"));
                    }
                }
                let file = u16::try_from(records.len()).context("more than 65 535 record files")?;
                for (key, offset, label) in entries {
                    if let Some(&class) = class_of.get(&label) {
                        labelled.push((Location::Record { file, offset, key }, class));
                    }
                }
                records.push(reader);
            }
        }

        let progress = ProgressBar::new(files.len() as u64).with_style(
            ProgressStyle::with_template("checking images {bar:30} {pos}/{len} [{elapsed}<{eta}]")
                .expect("valid template"),
        );
        // Small sets keep the decoded faces; larger ones are only checked here and decoded
        // again as batches need them, so memory stays bounded whatever the set's size.
        let keep_decoded = files.len() * 3 * 112 * 112 <= CACHE_BUDGET_BYTES;
        let decoded: Vec<Result<RgbImage>> = files
            .par_iter()
            .map(|path| {
                let face = load_face(path).map(|face| {
                    if keep_decoded {
                        face
                    } else {
                        RgbImage::new(0, 0)
                    }
                });
                progress.inc(1);
                face
            })
            .collect();
        progress.finish_and_clear();

        let mut unreadable = vec![false; files.len()];
        let mut skipped_images = 0;
        let mut cache = keep_decoded.then(|| Vec::with_capacity(files.len()));
        for (file, face) in decoded.into_iter().enumerate() {
            match face {
                Ok(face) => {
                    if let Some(cache) = cache.as_mut() {
                        cache.push(face);
                    }
                }
                Err(error) if config.skip_bad => {
                    tracing::warn!("skipping unreadable image: {error:#}");
                    skipped_images += 1;
                    unreadable[file] = true;
                    if let Some(cache) = cache.as_mut() {
                        cache.push(RgbImage::new(1, 1));
                    }
                }
                Err(error) => {
                    return Err(error.context(
                        "unreadable training image (pass --skip-bad to skip such images)",
                    ));
                }
            }
        }

        // Identities left without images get no class, so labels stay contiguous.
        let mut images_per_class = vec![0usize; classes.len()];
        let usable: Vec<(Location, usize)> = labelled
            .into_iter()
            .filter(|(location, _)| {
                !matches!(location, Location::File(file) if unreadable[*file as usize])
            })
            .collect();
        for &(_, class) in &usable {
            images_per_class[class] += 1;
        }
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
        let samples: Vec<Sample> = usable
            .into_iter()
            .map(|(location, class)| Sample {
                location,
                label: remap[class],
            })
            .collect();
        if kept_classes.len() < 2 {
            bail!(
                "training needs at least two identities; the sources give {}",
                kept_classes.len()
            );
        }
        Ok(Self {
            samples,
            classes: kept_classes,
            files,
            records,
            cache,
            skipped_images,
            skipped_identities,
            skip_bad: config.skip_bad,
            skipped_while_training: AtomicUsize::new(0),
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

    /// The 112×112 face of sample `index`.
    pub fn load(&self, index: usize) -> Result<RgbImage> {
        match self.samples[index].location {
            Location::File(file) => match &self.cache {
                Some(cache) => Ok(cache[file as usize].clone()),
                None => load_face(&self.files[file as usize]),
            },
            Location::Record { file, offset, key } => {
                let reader = &self.records[file as usize];
                let context =
                    || format!("{}, record {key} (byte {offset})", reader.path().display());
                let payload = reader
                    .read(offset)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", context()))?;
                let (_, image) = ImageHeader::decode(&payload)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", context()))?;
                let image = preprocess::decode(image).with_context(context)?;
                Ok(preprocess::resize_to_input(&image))
            }
        }
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
        dataset: Arc<TrainingSet>,
        config: &DataConfig,
        seed: u64,
        epochs: usize,
        start: (usize, usize),
    ) -> Self {
        let (sender, receiver) = sync_channel(3);
        let batch_size = config.batch_size;
        let random_flip = config.random_flip;
        let threads = if config.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
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
                produce(
                    &dataset,
                    &pool,
                    &sender,
                    seed,
                    epochs,
                    start,
                    batch_size,
                    random_flip,
                );
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
    dataset: &TrainingSet,
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
            let faces: Vec<Result<Option<Vec<f32>>>> = pool.install(|| {
                positions
                    .clone()
                    .into_par_iter()
                    .map(|position| {
                        let face = match dataset.load(order[position]) {
                            Ok(face) => face,
                            Err(error) if dataset.skip_bad => {
                                tracing::warn!("skipping unreadable training image: {error:#}");
                                dataset
                                    .skipped_while_training
                                    .fetch_add(1, Ordering::Relaxed);
                                return Ok(None);
                            }
                            Err(error) => {
                                return Err(error.context(
                                    "unreadable training image (pass --skip-bad to skip such \
                                    images)",
                                ));
                            }
                        };
                        let mut face = preprocess::normalize(&face);
                        if random_flip && flips[position] {
                            preprocess::flip_horizontal(&mut face, 3, 112, 112);
                        }
                        Ok(Some(face))
                    })
                    .collect()
            });
            let mut flat = Vec::with_capacity(batch_size * FACE_LEN);
            let mut labels = Vec::with_capacity(batch_size);
            let mut failure = None;
            for (position, face) in positions.zip(faces) {
                match face {
                    Ok(Some(face)) => {
                        flat.extend_from_slice(&face);
                        labels.push(dataset.samples[order[position]].label);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            let message = match failure {
                Some(error) => Err(error),
                None => Ok(Batch {
                    faces: flat,
                    labels,
                    epoch,
                    index,
                }),
            };
            if sender.send(message).is_err() {
                return;
            }
        }
    }
}
