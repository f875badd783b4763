//! IJB-B / IJB-C 1:1 verification from the release's meta files: `<set>_face_tid_mid.txt`
//! (image, template, media), `<set>_template_pair_label.txt` (template pairs and their labels)
//! and, when present, `<set>_name_5pts_score.txt` (five landmarks and the detector's faceness
//! score per image). Images are read from `loose_crop/`, aligned to the ArcFace template with
//! their landmarks, embedded in chunks (never all in memory), and scored by core's protocol.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use elasticface_core::align;
use elasticface_core::backbone::Backbone;
use elasticface_core::ijb::{self, IJB_FARS};
use elasticface_core::preprocess;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::evaluate::embed_faces;

/// Images aligned and embedded per chunk.
const CHUNK: usize = 2048;

/// One image of the meta files.
struct MetaImage {
    name: String,
    template: u64,
    media: u64,
    landmarks: Option<[[f64; 2]; 5]>,
    faceness: Option<f32>,
}

fn meta_lines(path: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            (
                index + 1,
                line.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect())
}

fn number<T: std::str::FromStr>(path: &Path, line: usize, field: &str) -> Result<T> {
    field
        .parse()
        .map_err(|_| anyhow::anyhow!("{} line {line}: {field:?} is not a number", path.display()))
}

/// The meta files of set `name` (`ijbb` or `ijbc`) under `root/meta`.
fn read_meta(
    root: &Path,
    name: &str,
    use_landmarks: bool,
) -> Result<(Vec<MetaImage>, Vec<(u64, u64)>, Vec<bool>)> {
    let meta = root.join("meta");
    let faces_path = meta.join(format!("{name}_face_tid_mid.txt"));
    let mut images = Vec::new();
    for (line, fields) in meta_lines(&faces_path)? {
        if fields.len() < 3 {
            bail!(
                "{} line {line}: expected `image template media`",
                faces_path.display()
            );
        }
        images.push(MetaImage {
            name: fields[0].clone(),
            template: number(&faces_path, line, &fields[1])?,
            media: number(&faces_path, line, &fields[2])?,
            landmarks: None,
            faceness: None,
        });
    }

    let landmarks_path = meta.join(format!("{name}_name_5pts_score.txt"));
    if use_landmarks && landmarks_path.is_file() {
        let mut by_name: HashMap<String, ([[f64; 2]; 5], f32)> = HashMap::new();
        for (line, fields) in meta_lines(&landmarks_path)? {
            if fields.len() != 12 {
                bail!(
                    "{} line {line}: expected `image x1 y1 … x5 y5 score` (12 fields), got {}",
                    landmarks_path.display(),
                    fields.len()
                );
            }
            let finite = |field: &String| -> Result<f64> {
                let value: f64 = number(&landmarks_path, line, field)?;
                if !value.is_finite() {
                    bail!(
                        "{} line {line}: {field:?} is not a finite number",
                        landmarks_path.display()
                    );
                }
                Ok(value)
            };
            let mut points = [[0.0; 2]; 5];
            for (k, point) in points.iter_mut().enumerate() {
                *point = [finite(&fields[1 + 2 * k])?, finite(&fields[2 + 2 * k])?];
            }
            let score = finite(&fields[11])? as f32;
            by_name.insert(fields[0].clone(), (points, score));
        }
        for image in &mut images {
            let Some(&(points, score)) = by_name.get(&image.name) else {
                bail!(
                    "{} has no landmarks for image {}",
                    landmarks_path.display(),
                    image.name
                );
            };
            image.landmarks = Some(points);
            image.faceness = Some(score);
        }
    } else if use_landmarks {
        tracing::warn!(
            "{} not found: images are taken as aligned crops and no faceness score is used",
            landmarks_path.display()
        );
    }

    let pairs_path = meta.join(format!("{name}_template_pair_label.txt"));
    let (mut pairs, mut same) = (Vec::new(), Vec::new());
    for (line, fields) in meta_lines(&pairs_path)? {
        if fields.len() != 3 {
            bail!(
                "{} line {line}: expected `template template label`",
                pairs_path.display()
            );
        }
        pairs.push((
            number(&pairs_path, line, &fields[0])?,
            number(&pairs_path, line, &fields[1])?,
        ));
        same.push(match fields[2].as_str() {
            "1" => true,
            "0" => false,
            other => bail!(
                "{} line {line}: label {other:?} is not 0 or 1",
                pairs_path.display()
            ),
        });
    }
    if images.is_empty() || pairs.is_empty() {
        bail!(
            "{}: the meta files list {} images and {} pairs",
            meta.display(),
            images.len(),
            pairs.len()
        );
    }
    Ok((images, pairs, same))
}

/// One FAR row of the report.
#[derive(Debug, Serialize)]
pub struct IjbRow {
    /// The FAR asked for.
    pub far: f64,
    /// TAR at the ROC point nearest it.
    pub tar: f64,
    /// That point's FAR.
    pub achieved_far: f64,
    /// That point's cosine threshold.
    pub threshold: f64,
}

/// What an IJB evaluation found.
#[derive(Debug, Serialize)]
pub struct IjbReport {
    /// Images embedded.
    pub images: usize,
    /// Templates.
    pub templates: usize,
    /// Template pairs scored.
    pub pairs: usize,
    /// TAR at each of the standard FARs.
    pub rows: Vec<IjbRow>,
}

/// Runs the 1:1 protocol of set `name` under `root` with `backbone`.
pub fn evaluate(
    root: &Path,
    name: &str,
    use_landmarks: bool,
    backbone: &Backbone,
    device: &Device,
    batch_size: usize,
) -> Result<IjbReport> {
    let (images, pairs, same) = read_meta(root, name, use_landmarks)?;
    let crops: PathBuf = root.join("loose_crop");
    let progress = ProgressBar::new(images.len() as u64).with_style(
        ProgressStyle::with_template("embedding {bar:30} {pos}/{len} [{elapsed}<{eta}]")
            .expect("valid template"),
    );
    let mut features = Vec::with_capacity(images.len());
    for chunk in images.chunks(CHUNK) {
        let faces: Vec<RgbImage> = chunk
            .par_iter()
            .map(|image| {
                let path = crops.join(&image.name);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let photo =
                    preprocess::decode(&bytes).with_context(|| format!("{}", path.display()))?;
                match image.landmarks {
                    Some(points) => align::align_face(&photo, &points).with_context(|| {
                        format!(
                            "{}: its five landmarks in {name}_name_5pts_score.txt coincide or \
                                 are not finite",
                            image.name
                        )
                    }),
                    None => Ok(preprocess::resize_to_input(&photo)),
                }
            })
            .collect::<Result<_>>()?;
        // embed_faces returns L2-normalised flip sums, which is the reference's first step.
        let embedded = embed_faces(backbone, &faces, batch_size, device);
        for (image, embedding) in chunk.iter().zip(embedded) {
            features.push(ijb::image_feature(&embedding, image.faceness));
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();

    let templates: Vec<u64> = images.iter().map(|i| i.template).collect();
    let media: Vec<u64> = images.iter().map(|i| i.media).collect();
    let template_embeddings = ijb::template_embeddings(&features, &templates, &media)?;
    let pairs_path = root
        .join("meta")
        .join(format!("{name}_template_pair_label.txt"));
    let scores = ijb::pair_scores(&template_embeddings, &pairs)
        .with_context(|| format!("{}", pairs_path.display()))?;
    let curve = ijb::roc_curve(&scores, &same)?;
    let rows = ijb::tar_at_nearest_far(&curve, &IJB_FARS)
        .into_iter()
        .map(|(far, point)| IjbRow {
            far,
            tar: point.tar,
            achieved_far: point.far,
            threshold: point.threshold,
        })
        .collect();
    Ok(IjbReport {
        images: images.len(),
        templates: template_embeddings.len(),
        pairs: pairs.len(),
        rows,
    })
}

/// Prints a report as a table.
pub fn print_report(name: &str, report: &IjbReport) {
    println!(
        "{name}: {} images, {} templates, {} pairs",
        report.images, report.templates, report.pairs
    );
    println!("  {:>8}  {:>8}  {:>12}", "FAR", "TAR", "nearest FAR");
    for row in &report.rows {
        println!(
            "  {:>8.0e}  {:>7.2}%  {:>12.2e}",
            row.far,
            100.0 * row.tar,
            row.achieved_far
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join("meta")).unwrap();
        std::fs::write(dir.join("meta").join(name), text).unwrap();
    }

    #[test]
    fn meta_files_are_read_with_landmarks_and_scores() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ijbc_face_tid_mid.txt",
            "1.jpg 1 69544\n2.jpg 1 69544\n3.jpg 7 12\n",
        );
        write(dir.path(), "ijbc_template_pair_label.txt", "1 7 0\n1 1 1\n");
        write(
            dir.path(),
            "ijbc_name_5pts_score.txt",
            "1.jpg 1 2 3 4 5 6 7 8 9 10 0.9\n2.jpg 1 2 3 4 5 6 7 8 9 10 0.5\n3.jpg 1 2 3 4 5 6 7 \
            8 9 10 1\n",
        );
        let (images, pairs, same) = read_meta(dir.path(), "ijbc", true).unwrap();
        assert_eq!(images.len(), 3);
        assert_eq!((images[2].template, images[2].media), (7, 12));
        assert_eq!(images[1].landmarks.unwrap()[4], [9.0, 10.0]);
        assert_eq!(images[1].faceness, Some(0.5));
        assert_eq!(pairs, vec![(1, 7), (1, 1)]);
        assert_eq!(same, vec![false, true]);
    }

    #[test]
    fn bad_meta_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ijbb_face_tid_mid.txt",
            "1.jpg 1 5\n2.jpg x 5\n",
        );
        write(dir.path(), "ijbb_template_pair_label.txt", "1 1 1\n");
        let error = read_meta(dir.path(), "ijbb", false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("ijbb_face_tid_mid.txt line 2") && error.contains("\"x\""),
            "{error}"
        );

        write(dir.path(), "ijbb_face_tid_mid.txt", "1.jpg 1 5\n");
        write(dir.path(), "ijbb_template_pair_label.txt", "1 1 2\n");
        let error = read_meta(dir.path(), "ijbb", false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("line 1") && error.contains("\"2\""),
            "{error}"
        );
    }
}
