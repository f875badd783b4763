//! MXNet RecordIO, the format InsightFace packs its training sets in (MS1MV2, Glint360K,
//! WebFace as `train.rec` + `train.idx`): the index, framed records (re-joining records split
//! around the magic word), the image header, and a writer of the same layout for
//! `elasticface pack`. The first stage of training from a record file, before the loader.
//!
//! A record on disk is a sequence of parts: the magic word 0xCED7230A, a length word whose top
//! three bits say whether the part is whole (0) or the first, a middle or the last piece (1, 2,
//! 3) of a record, then the bytes padded to a multiple of four. A writer splits a record
//! wherever the magic word appears at an aligned position; a reader puts it back between parts.
//! The payload is a 24-byte header (flag u32, label f32, id u64, id2 u64), `flag` more f32
//! labels when the flag is positive, then the encoded image.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The word that starts every part of a record.
pub const MAGIC: u32 = 0xCED7_230A;

/// Bits of the length word that hold the length; the three above hold the part kind.
const LENGTH_BITS: u32 = 29;
const LENGTH_MASK: u32 = (1 << LENGTH_BITS) - 1;

/// Size of the fixed image header.
const HEADER_SIZE: usize = 24;

/// Where a part sits in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartKind {
    Whole,
    First,
    Middle,
    Last,
}

impl PartKind {
    fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            0 => Some(PartKind::Whole),
            1 => Some(PartKind::First),
            2 => Some(PartKind::Middle),
            3 => Some(PartKind::Last),
            _ => None,
        }
    }

    fn bits(self) -> u32 {
        match self {
            PartKind::Whole => 0,
            PartKind::First => 1,
            PartKind::Middle => 2,
            PartKind::Last => 3,
        }
    }
}

/// The header before the image of a record (MXNet's `IRHeader`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageHeader {
    /// 0 for a single label in `label`; otherwise the number of labels in `labels`.
    pub flag: u32,
    /// The label when `flag` is 0.
    pub label: f32,
    /// Record id.
    pub id: u64,
    /// Second id (unused by InsightFace).
    pub id2: u64,
    /// The labels when `flag` is positive.
    pub labels: Vec<f32>,
}

impl ImageHeader {
    /// A header with one label.
    pub fn single(label: f32, id: u64) -> Self {
        Self {
            flag: 0,
            label,
            id,
            id2: 0,
            labels: Vec::new(),
        }
    }

    /// A header with several labels (InsightFace's index and identity records use two).
    pub fn multiple(labels: Vec<f32>, id: u64) -> Self {
        Self {
            flag: labels.len() as u32,
            label: 0.0,
            id,
            id2: 0,
            labels,
        }
    }

    /// The label that names the class: `label`, or the first of `labels`.
    pub fn class_label(&self) -> f32 {
        if self.flag > 0 {
            self.labels[0]
        } else {
            self.label
        }
    }

    /// Header and image as a record payload.
    pub fn encode(&self, image: &[u8]) -> Vec<u8> {
        let mut payload = Vec::with_capacity(HEADER_SIZE + 4 * self.labels.len() + image.len());
        payload.extend_from_slice(&self.flag.to_le_bytes());
        payload.extend_from_slice(&self.label.to_le_bytes());
        payload.extend_from_slice(&self.id.to_le_bytes());
        payload.extend_from_slice(&self.id2.to_le_bytes());
        for label in &self.labels {
            payload.extend_from_slice(&label.to_le_bytes());
        }
        payload.extend_from_slice(image);
        payload
    }

    /// Splits a record payload into its header and the image bytes after it.
    pub fn decode(payload: &[u8]) -> std::result::Result<(ImageHeader, &[u8]), String> {
        if payload.len() < HEADER_SIZE {
            return Err(format!(
                "payload of {} bytes is shorter than the {HEADER_SIZE}-byte image header",
                payload.len()
            ));
        }
        let word = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
        let long = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
        let flag = word(0);
        let label = f32::from_bits(word(4));
        let (id, id2) = (long(8), long(16));
        let labels_end = HEADER_SIZE as u64 + 4 * u64::from(flag);
        if labels_end > payload.len() as u64 {
            return Err(format!(
                "header announces {flag} labels, more than the {}-byte payload holds",
                payload.len()
            ));
        }
        let labels_end = labels_end as usize;
        let labels = (HEADER_SIZE..labels_end)
            .step_by(4)
            .map(|at| f32::from_bits(word(at)))
            .collect();
        Ok((
            ImageHeader {
                flag,
                label,
                id,
                id2,
                labels,
            },
            &payload[labels_end..],
        ))
    }
}

/// Turns a stored label into a class index, refusing what is not a whole non-negative number.
pub fn class_index(label: f32) -> std::result::Result<i64, String> {
    if label.is_finite() && label >= 0.0 && label.fract() == 0.0 && label < 2f32.powi(24) {
        Ok(label as i64)
    } else {
        Err(format!(
            "label {label} is not a class index (a whole number ≥ 0)"
        ))
    }
}

/// The index file next to a record file: `train.rec` → `train.idx`.
pub fn index_path(record: &Path) -> PathBuf {
    record.with_extension("idx")
}

/// Reads an index: one `key<TAB>offset` line per record. Returned in the file's order.
pub fn read_index(path: &Path) -> Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read record index {}", path.display()))?;
    let mut entries = Vec::new();
    let mut first_line = std::collections::HashMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parsed = match (fields.next(), fields.next(), fields.next()) {
            (Some(key), Some(offset), None) => {
                key.parse::<u64>().ok().zip(offset.parse::<u64>().ok())
            }
            _ => None,
        };
        let Some(entry) = parsed else {
            bail!(
                "{} line {}: expected `key<TAB>offset`, got {line:?}",
                path.display(),
                number + 1
            );
        };
        if let Some(previous) = first_line.insert(entry.0, number + 1) {
            bail!(
                "{} line {}: key {} is listed again (first on line {previous}); an index names \
                each record once",
                path.display(),
                number + 1,
                entry.0
            );
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        bail!("record index {} lists no records", path.display());
    }
    Ok(entries)
}

/// Positioned reads, so that many threads can read one file without sharing a cursor.
fn read_exact_at(file: &File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buffer, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buffer.len() {
            let read = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buffer[done..],
                offset + done as u64,
            )?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += read;
        }
        Ok(())
    }
}

/// A record file opened for reading records at known offsets, from any number of threads.
pub struct RecordReader {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RecordReader {
    /// Opens a record file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open record file {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the part header at `offset`: its kind and length.
    fn part_at(&self, offset: u64) -> std::result::Result<(PartKind, u32), String> {
        if offset.checked_add(8).is_none_or(|end| end > self.size) {
            return Err(format!(
                "the file ends ({} bytes) before a record header at byte {offset} (truncated?)",
                self.size
            ));
        }
        let mut head = [0u8; 8];
        read_exact_at(&self.file, &mut head, offset)
            .map_err(|e| format!("read error at byte {offset}: {e}"))?;
        let magic = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(format!(
                "no record starts at byte {offset} (found {magic:#010x}, not the magic word)"
            ));
        }
        let word = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let kind = PartKind::from_bits(word >> LENGTH_BITS).ok_or_else(|| {
            format!(
                "record part at byte {offset} has an unknown kind {}",
                word >> LENGTH_BITS
            )
        })?;
        let length = word & LENGTH_MASK;
        if offset + 8 + u64::from(length) > self.size {
            return Err(format!(
                "record part at byte {offset} announces {length} bytes but the file ends at {} \
                 (truncated?)",
                self.size
            ));
        }
        Ok((kind, length))
    }

    /// The payload of the record whose first part starts at `offset`, parts re-joined.
    pub fn read(&self, offset: u64) -> std::result::Result<Vec<u8>, String> {
        let mut payload = Vec::new();
        let mut position = offset;
        let mut first = true;
        loop {
            let (kind, length) = self.part_at(position)?;
            match (first, kind) {
                (true, PartKind::Whole | PartKind::First)
                | (false, PartKind::Middle | PartKind::Last) => {}
                _ => {
                    return Err(format!(
                        "record at byte {offset}: part at byte {position} is a {kind:?} part where \
                         a {} part belongs",
                        if first {
                            "whole or first"
                        } else {
                            "middle or last"
                        }
                    ));
                }
            }
            if !first {
                payload.extend_from_slice(&MAGIC.to_le_bytes());
            }
            let start = payload.len();
            payload.resize(start + length as usize, 0);
            read_exact_at(&self.file, &mut payload[start..], position + 8)
                .map_err(|e| format!("read error at byte {}: {e}", position + 8))?;
            position += 8 + u64::from(length.div_ceil(4) * 4);
            if matches!(kind, PartKind::Whole | PartKind::Last) {
                return Ok(payload);
            }
            first = false;
        }
    }

    /// Only the image header of the record at `offset`, reading no more than it needs.
    pub fn read_header(&self, offset: u64) -> std::result::Result<ImageHeader, String> {
        let (kind, length) = self.part_at(offset)?;
        if !matches!(kind, PartKind::Whole | PartKind::First) {
            return Err(format!(
                "record at byte {offset} starts with a {kind:?} part"
            ));
        }
        if (length as usize) < HEADER_SIZE {
            // A whole record this short is corrupt; a first part this short (the magic word
            // occurred inside the header) continues in the next part.
            if kind == PartKind::Whole {
                return Err(format!(
                    "record at byte {offset} is {length} bytes, shorter than its header"
                ));
            }
            let payload = self.read(offset)?;
            return ImageHeader::decode(&payload).map(|(header, _)| header);
        }
        let mut head = vec![0u8; HEADER_SIZE];
        read_exact_at(&self.file, &mut head, offset + 8)
            .map_err(|e| format!("read error at byte {}: {e}", offset + 8))?;
        let flag = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if flag == 0 {
            return ImageHeader::decode(&head).map(|(header, _)| header);
        }
        // Labels follow the fixed header; they may run past the first part of a split record,
        // so read the whole record in that rare case.
        let wanted = HEADER_SIZE as u64 + 4 * u64::from(flag);
        if wanted <= u64::from(length) {
            let mut head = vec![0u8; wanted as usize];
            read_exact_at(&self.file, &mut head, offset + 8)
                .map_err(|e| format!("read error at byte {}: {e}", offset + 8))?;
            return ImageHeader::decode(&head).map(|(header, _)| header);
        }
        let payload = self.read(offset)?;
        ImageHeader::decode(&payload).map(|(header, _)| header)
    }
}

/// Writes a record file and its index.
pub struct RecordWriter {
    file: BufWriter<File>,
    path: PathBuf,
    position: u64,
    index: Vec<(u64, u64)>,
}

impl RecordWriter {
    /// Creates `path` (and, on [`finish`](Self::finish), its `.idx`), refusing to overwrite.
    pub fn create(path: &Path) -> Result<Self> {
        for existing in [path.to_path_buf(), index_path(path)] {
            if existing.exists() {
                bail!(
                    "{} already exists; remove it or choose another output",
                    existing.display()
                );
            }
        }
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            file: BufWriter::new(file),
            path: path.to_path_buf(),
            position: 0,
            index: Vec::new(),
        })
    }

    fn part(&mut self, kind: PartKind, bytes: &[u8]) -> Result<()> {
        let length = u32::try_from(bytes.len())
            .ok()
            .filter(|&length| length <= LENGTH_MASK)
            .with_context(|| {
                format!(
                    "a record part of {} bytes is too long for RecordIO",
                    bytes.len()
                )
            })?;
        let padding = (4 - bytes.len() % 4) % 4;
        self.file.write_all(&MAGIC.to_le_bytes())?;
        self.file
            .write_all(&((kind.bits() << LENGTH_BITS) | length).to_le_bytes())?;
        self.file.write_all(bytes)?;
        self.file.write_all(&[0u8; 3][..padding])?;
        self.position += 8 + bytes.len() as u64 + padding as u64;
        Ok(())
    }

    /// Appends a record under `key`, split wherever the magic word sits at an aligned position.
    pub fn write(&mut self, key: u64, payload: &[u8]) -> Result<()> {
        self.index.push((key, self.position));
        let magic = MAGIC.to_le_bytes();
        let cuts: Vec<usize> = (0..payload.len().saturating_sub(3))
            .step_by(4)
            .filter(|&at| payload[at..at + 4] == magic)
            .collect();
        if cuts.is_empty() {
            return self.part(PartKind::Whole, payload);
        }
        let mut start = 0;
        for (number, &cut) in cuts.iter().enumerate() {
            let kind = if number == 0 {
                PartKind::First
            } else {
                PartKind::Middle
            };
            self.part(kind, &payload[start..cut])?;
            start = cut + 4;
        }
        self.part(PartKind::Last, &payload[start..])
    }

    /// Flushes the records and writes the index.
    pub fn finish(mut self) -> Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        let index: String = self
            .index
            .iter()
            .map(|(key, offset)| format!("{key}\t{offset}\n"))
            .collect();
        let path = index_path(&self.path);
        std::fs::write(&path, index).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What `pack_folder` wrote.
#[derive(Debug)]
pub struct PackSummary {
    /// Images written.
    pub images: usize,
    /// Identities written.
    pub identities: usize,
    /// Images left out because they could not be decoded.
    pub skipped: usize,
}

/// Packs an image folder (one sub-folder per identity, in name order) into a record file in
/// InsightFace's layout: record 0 is the index header whose two labels are the first identity
/// key and the end of the identity keys, records 1..=N the images with their class as label
/// (file bytes stored as they are), then one record per identity whose labels are the range of
/// its image keys. Every image is decoded once first; an unreadable one stops the packing with
/// its path unless `skip_bad`.
pub fn pack_folder(root: &Path, output: &Path, skip_bad: bool) -> Result<PackSummary> {
    if output.extension().is_some_and(|e| e == "idx") {
        bail!(
            "{}: the record file's index is written beside it with the extension .idx, so the \
             record file itself needs another name (such as train.rec)",
            output.display()
        );
    }
    let source = crate::config::SourceConfig::folder(root.to_path_buf());
    let (identities, _) = crate::data::scan_folder(root, &source, skip_bad)?;
    let files: Vec<(usize, &PathBuf)> = identities
        .iter()
        .enumerate()
        .flat_map(|(class, (_, images))| images.iter().map(move |path| (class, path)))
        .collect();

    let progress = indicatif::ProgressBar::new(files.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "checking images {bar:30} {pos}/{len} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    use rayon::prelude::*;
    let readable: Vec<Result<(), anyhow::Error>> = files
        .par_iter()
        .map(|(_, path)| {
            let result = std::fs::read(path)
                .with_context(|| format!("cannot read {}", path.display()))
                .and_then(|bytes| {
                    elasticface_core::preprocess::decode(&bytes)
                        .map(|_| ())
                        .with_context(|| format!("{}", path.display()))
                });
            progress.inc(1);
            result
        })
        .collect();
    progress.finish_and_clear();
    let mut kept = Vec::with_capacity(files.len());
    let mut skipped = 0;
    for (file, result) in files.into_iter().zip(readable) {
        match result {
            Ok(()) => kept.push(file),
            Err(error) if skip_bad => {
                tracing::warn!("skipping unreadable image: {error:#}");
                skipped += 1;
            }
            Err(error) => {
                return Err(
                    error.context("unreadable image (pass --skip-bad to leave such images out)")
                );
            }
        }
    }
    // Identities whose every image was skipped get no class.
    let mut class_of = vec![None; identities.len()];
    let mut classes = 0usize;
    for &(class, _) in &kept {
        if class_of[class].is_none() {
            class_of[class] = Some(classes);
            classes += 1;
        }
    }
    if kept.is_empty() {
        bail!("{} holds no readable images to pack", root.display());
    }

    let images = kept.len() as u64;
    let first_identity = images + 1;
    let mut writer = RecordWriter::create(output)?;
    let index_header = ImageHeader::multiple(
        vec![
            first_identity as f32,
            (first_identity + classes as u64) as f32,
        ],
        0,
    );
    writer.write(0, &index_header.encode(&[]))?;
    let mut ranges = vec![(u64::MAX, 0u64); classes];
    let progress = indicatif::ProgressBar::new(images).with_style(
        indicatif::ProgressStyle::with_template(
            "writing records {bar:30} {pos}/{len} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    for (position, (class, path)) in kept.iter().enumerate() {
        let key = position as u64 + 1;
        let class = class_of[*class].expect("kept images have a class");
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        writer.write(key, &ImageHeader::single(class as f32, key).encode(&bytes))?;
        let range = &mut ranges[class];
        range.0 = range.0.min(key);
        range.1 = range.1.max(key + 1);
        progress.inc(1);
    }
    progress.finish_and_clear();
    for (class, (start, end)) in ranges.into_iter().enumerate() {
        let key = first_identity + class as u64;
        writer.write(
            key,
            &ImageHeader::multiple(vec![start as f32, end as f32], key).encode(&[]),
        )?;
    }
    writer.finish()?;
    Ok(PackSummary {
        images: kept.len(),
        identities: classes,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_one_and_several_labels() {
        let single = ImageHeader::single(7.0, 3);
        let payload = single.encode(b"jpeg");
        assert_eq!(payload.len(), 24 + 4);
        let (header, image) = ImageHeader::decode(&payload).unwrap();
        assert_eq!((header, image), (single, &b"jpeg"[..]));

        let several = ImageHeader::multiple(vec![12.0, 30.0], 0);
        let encoded = several.encode(b"");
        let (header, image) = ImageHeader::decode(&encoded).unwrap();
        assert_eq!(header.class_label(), 12.0);
        assert_eq!(header.labels, vec![12.0, 30.0]);
        assert!(image.is_empty());
    }

    #[test]
    fn header_layout_is_mxnets_irheader() {
        // struct.pack('<IfQQ', 0, 5.0, 9, 0): flag, label (5.0 = 0x40a00000), id, id2.
        let payload = ImageHeader::single(5.0, 9).encode(&[]);
        let expected: Vec<u8> = [
            &[0u8, 0, 0, 0][..],
            &[0, 0, 0xa0, 0x40],
            &[9, 0, 0, 0, 0, 0, 0, 0],
            &[0; 8],
        ]
        .concat();
        assert_eq!(payload, expected);
    }

    #[test]
    fn labels_must_be_whole_non_negative_numbers() {
        assert_eq!(class_index(3.0), Ok(3));
        assert!(class_index(2.5).unwrap_err().contains("2.5"));
        assert!(class_index(-1.0).is_err());
        assert!(class_index(f32::NAN).is_err());
    }

    #[test]
    fn a_record_holding_the_magic_word_is_split_and_rejoined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.rec");
        let magic = MAGIC.to_le_bytes();
        // The magic word at aligned positions 4 and 12, and once unaligned at 17.
        let mut payload = vec![1u8, 2, 3, 4];
        payload.extend_from_slice(&magic);
        payload.extend_from_slice(&[5, 6, 7, 8]);
        payload.extend_from_slice(&magic);
        payload.extend_from_slice(&[9]);
        payload.extend_from_slice(&magic);
        payload.extend_from_slice(&[10, 11]);
        let mut writer = RecordWriter::create(&path).unwrap();
        writer.write(0, b"plain").unwrap();
        writer.write(1, &payload).unwrap();
        writer.write(2, &[]).unwrap();
        writer.finish().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        // First record: one whole part of 5 bytes padded to 8.
        assert_eq!(
            &bytes[..8],
            [&magic[..], &5u32.to_le_bytes()].concat().as_slice()
        );
        // Second record starts at 16 with a first part of 4 bytes (kind 1 in the top bits).
        assert_eq!(&bytes[16..20], &magic);
        assert_eq!(
            u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
            (1 << 29) | 4
        );

        let index = read_index(&index_path(&path)).unwrap();
        assert_eq!(index.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        let reader = RecordReader::open(&path).unwrap();
        assert_eq!(reader.read(index[0].1).unwrap(), b"plain");
        assert_eq!(reader.read(index[1].1).unwrap(), payload);
        assert_eq!(reader.read(index[2].1).unwrap(), b"");
    }

    #[test]
    fn an_index_listing_a_key_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.idx");
        std::fs::write(&path, "0\t0\n1\t40\n2\t96\n1\t40\n").unwrap();
        let error = read_index(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 4") && error.contains("key 1") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn pack_refuses_a_record_name_its_index_would_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let error = pack_folder(dir.path(), &dir.path().join("faces.idx"), false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("faces.idx") && error.contains(".rec"),
            "{error}"
        );
    }

    #[test]
    fn truncated_and_misplaced_reads_name_the_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.rec");
        let mut writer = RecordWriter::create(&path).unwrap();
        writer
            .write(0, &ImageHeader::single(1.0, 0).encode(&[7u8; 40]))
            .unwrap();
        writer.finish().unwrap();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..30]).unwrap();

        let reader = RecordReader::open(&path).unwrap();
        let error = reader.read(0).unwrap_err();
        assert!(
            error.contains("byte 0") && error.contains("truncated"),
            "{error}"
        );
        let error = reader.read(4).unwrap_err();
        assert!(
            error.contains("byte 4") && error.contains("magic"),
            "{error}"
        );
        assert!(
            RecordWriter::create(&path).is_err(),
            "an existing file is not overwritten"
        );
    }
}
