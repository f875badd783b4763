//! IJB-B / IJB-C 1:1 verification on embeddings, as InsightFace evaluates it: each image's
//! flip-summed embedding is L2-normalised and, optionally, scaled by its detector (faceness)
//! score; the images of one media (a video's frames, or one still) are averaged, a template's
//! media averages are summed and the sum L2-normalised; a template pair's score is the cosine of
//! its two template embeddings; TAR at each FAR is read off scikit-learn's ROC at the point
//! whose FAR is nearest the target. The evaluation stage, after the backbone.

use std::collections::BTreeMap;

use crate::verify::{VerifyError, normalize};

/// The FARs IJB results are reported at.
pub const IJB_FARS: [f64; 6] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1];

/// An image's feature before aggregation: its flip-summed embedding L2-normalised, then
/// multiplied by the detector's faceness score when one is given.
pub fn image_feature(flip_summed: &[f32], faceness: Option<f32>) -> Vec<f32> {
    let unit = normalize(flip_summed);
    match faceness {
        Some(score) => unit.iter().map(|v| v * score).collect(),
        None => unit,
    }
}

/// Template embeddings from image features: within a template, the features of each media are
/// averaged, the averages summed over the media, and the sum L2-normalised.
///
/// `templates[i]` and `media[i]` are image i's template and media ids.
pub fn template_embeddings(
    features: &[Vec<f32>],
    templates: &[u64],
    media: &[u64],
) -> Result<BTreeMap<u64, Vec<f32>>, VerifyError> {
    if features.len() != templates.len() || features.len() != media.len() {
        return Err(VerifyError::Protocol(format!(
            "{} features for {} template ids and {} media ids",
            features.len(),
            templates.len(),
            media.len()
        )));
    }
    let Some(size) = features.first().map(Vec::len) else {
        return Ok(BTreeMap::new());
    };
    // template → media → (sum, count)
    let mut groups: BTreeMap<u64, BTreeMap<u64, (Vec<f64>, usize)>> = BTreeMap::new();
    for (image, feature) in features.iter().enumerate() {
        if feature.len() != size {
            return Err(VerifyError::Protocol(format!(
                "image {image} has a {}-value feature, the first has {size}",
                feature.len()
            )));
        }
        let (sum, count) = groups
            .entry(templates[image])
            .or_default()
            .entry(media[image])
            .or_insert_with(|| (vec![0.0; size], 0));
        for (total, value) in sum.iter_mut().zip(feature) {
            *total += f64::from(*value);
        }
        *count += 1;
    }
    Ok(groups
        .into_iter()
        .map(|(template, media)| {
            let mut sum = vec![0.0f64; size];
            for (media_sum, count) in media.values() {
                for (total, value) in sum.iter_mut().zip(media_sum) {
                    *total += value / *count as f64;
                }
            }
            let sum: Vec<f32> = sum.into_iter().map(|v| v as f32).collect();
            (template, normalize(&sum))
        })
        .collect())
}

/// Cosine score of each template pair.
pub fn pair_scores(
    templates: &BTreeMap<u64, Vec<f32>>,
    pairs: &[(u64, u64)],
) -> Result<Vec<f32>, VerifyError> {
    pairs
        .iter()
        .enumerate()
        .map(|(index, (a, b))| {
            let lookup = |template: &u64| {
                templates.get(template).ok_or_else(|| {
                    VerifyError::Protocol(format!(
                        "pair {}: template {template} has no images",
                        index + 1
                    ))
                })
            };
            let (a, b) = (lookup(a)?, lookup(b)?);
            Ok(a.iter().zip(b).map(|(x, y)| x * y).sum())
        })
        .collect()
}

/// One point of a ROC curve: accept when score ≥ threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct RocPoint {
    /// False accept rate.
    pub far: f64,
    /// True accept rate.
    pub tar: f64,
    /// Score threshold (infinite for the first point, which accepts nothing).
    pub threshold: f64,
}

/// The ROC of `scores` (higher means more alike), as scikit-learn's `roc_curve` computes it with
/// its defaults: one point per distinct score, collinear intermediate points dropped, and a
/// first point at (0, 0) with an infinite threshold.
pub fn roc_curve(scores: &[f32], same: &[bool]) -> Result<Vec<RocPoint>, VerifyError> {
    if scores.len() != same.len() {
        return Err(VerifyError::Protocol(format!(
            "{} scores for {} labels",
            scores.len(),
            same.len()
        )));
    }
    let positives = same.iter().filter(|&&s| s).count();
    let negatives = same.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(VerifyError::Protocol(format!(
            "a ROC needs genuine and impostor pairs; got {positives} and {negatives}"
        )));
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));

    // Cumulative counts at the last position of each distinct score.
    let (mut true_accepts, mut false_accepts, mut thresholds) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0usize, 0usize);
    for (rank, &index) in order.iter().enumerate() {
        if same[index] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_value = order
            .get(rank + 1)
            .is_none_or(|&next| scores[next] != scores[index]);
        if last_of_value {
            true_accepts.push(tp);
            false_accepts.push(fp);
            thresholds.push(f64::from(scores[index]));
        }
    }

    // Keep the end points and every point where the curve bends (a non-zero second difference).
    let count = thresholds.len();
    let bends = |values: &[usize], i: usize| values[i - 1] + values[i + 1] != 2 * values[i];
    let kept: Vec<usize> = (0..count)
        .filter(|&i| {
            i == 0 || i + 1 == count || bends(&true_accepts, i) || bends(&false_accepts, i)
        })
        .collect();

    let mut curve = vec![RocPoint {
        far: 0.0,
        tar: 0.0,
        threshold: f64::INFINITY,
    }];
    curve.extend(kept.into_iter().map(|i| RocPoint {
        far: false_accepts[i] as f64 / negatives as f64,
        tar: true_accepts[i] as f64 / positives as f64,
        threshold: thresholds[i],
    }));
    Ok(curve)
}

/// TAR at each FAR, taken (as the reference does) at the ROC point whose FAR is nearest the
/// target. On ties the last such point wins: the reference reverses the curve before taking the
/// first minimum, so of the two corners a vertical step leaves at one FAR it reports the higher
/// TAR.
pub fn tar_at_nearest_far(curve: &[RocPoint], fars: &[f64]) -> Vec<(f64, RocPoint)> {
    fars.iter()
        .map(|&far| {
            let mut best = &curve[0];
            for point in curve {
                if (point.far - far).abs() <= (best.far - far).abs() {
                    best = point;
                }
            }
            (far, best.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn templates_average_within_media_and_sum_across_them() {
        // Template 1: media 10 holds (1, 0) and (0, 1), mean (0.5, 0.5); media 11 holds (1, 0).
        // Sum (1.5, 0.5), norm √2.5 = 1.5811388 → (0.9486833, 0.3162278). Averaging all three
        // images instead would give (2/3, 1/3) → (0.8944272, 0.4472136).
        // Template 2: one image (0, 2) → (0, 1). Template 3: media 30 twice (1, 0) → (1, 0).
        let features = vec![
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![1.0, 0.0],
            vec![0.0, 2.0],
            vec![1.0, 0.0],
            vec![1.0, 0.0],
        ];
        let templates = [1, 1, 1, 2, 3, 3];
        let media = [10, 10, 11, 20, 30, 30];
        let embeddings = template_embeddings(&features, &templates, &media).unwrap();
        assert!(close(embeddings[&1][0], 0.948_683_3) && close(embeddings[&1][1], 0.316_227_8));
        assert!(close(embeddings[&2][0], 0.0) && close(embeddings[&2][1], 1.0));
        assert!(close(embeddings[&3][0], 1.0));

        let scores = pair_scores(&embeddings, &[(1, 3), (1, 2), (2, 3)]).unwrap();
        assert!(
            close(scores[0], 0.948_683_3) && close(scores[1], 0.316_227_8) && close(scores[2], 0.0)
        );
        let error = pair_scores(&embeddings, &[(1, 9)]).unwrap_err();
        assert!(error.to_string().contains("template 9"), "{error}");
    }

    #[test]
    fn image_features_are_unit_then_scaled_by_faceness() {
        let feature = image_feature(&[3.0, 4.0], Some(0.5));
        assert!(close(feature[0], 0.3) && close(feature[1], 0.4));
        assert!(close(image_feature(&[0.0, 2.0], None)[1], 1.0));
    }

    #[test]
    fn roc_matches_scikit_learn_by_hand() {
        // Scores 0.9 (genuine), 0.8 (impostor), 0.7 (genuine), 0.6 (impostor), 0.5 (impostor).
        // Cumulative (tp, fp) at each score: (1,0) (1,1) (2,1) (2,2) (2,3). Second differences:
        // at 0.8 tp 1−2+2 ≠ 0 → kept; at 0.7 kept; at 0.6 tp 2·2 = 2+2 and fp 1+3 = 2·2 →
        // dropped as collinear. With (0, 0) first: FAR 0, 0, 1/3, 1/3, 1; TAR 0, ½, ½, 1, 1.
        let scores = [0.7, 0.5, 0.9, 0.6, 0.8];
        let same = [true, false, true, false, false];
        let curve = roc_curve(&scores, &same).unwrap();
        let points: Vec<(f64, f64)> = curve.iter().map(|p| (p.far, p.tar)).collect();
        assert_eq!(
            points,
            vec![
                (0.0, 0.0),
                (0.0, 0.5),
                (1.0 / 3.0, 0.5),
                (1.0 / 3.0, 1.0),
                (1.0, 1.0)
            ]
        );
        assert_eq!(curve[0].threshold, f64::INFINITY);
        assert!((curve[3].threshold - 0.7).abs() < 1e-7);

        // FAR 0.1: distances to the point FARs are 0.1, 0.1, 0.233…, 0.233…, 0.9; the tie is
        // between the two FAR-0 points and the later one (TAR ½) wins, as in the reference,
        // which reverses the curve before its argmin. FAR 0.3: nearest are the two FAR-⅓
        // points, the later at TAR 1. FAR 0.9: the last point, TAR 1.
        let rows = tar_at_nearest_far(&curve, &[0.1, 0.3, 0.9]);
        assert_eq!(rows[0].1.tar, 0.5);
        assert_eq!(rows[1].1.tar, 1.0);
        assert_eq!(rows[2].1.tar, 1.0);
    }

    #[test]
    fn tied_scores_are_one_roc_point() {
        // Two pairs at 0.5, one genuine and one impostor: one point (FAR 1, TAR 1) after (0, 0)
        // and the 0.9 genuine.
        let curve = roc_curve(&[0.9, 0.5, 0.5], &[true, true, false]).unwrap();
        let points: Vec<(f64, f64)> = curve.iter().map(|p| (p.far, p.tar)).collect();
        assert_eq!(points, vec![(0.0, 0.0), (0.0, 0.5), (1.0, 1.0)]);
        assert!(roc_curve(&[0.1], &[true]).is_err());
    }
}
