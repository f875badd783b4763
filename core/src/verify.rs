//! Face verification protocols on embeddings, the last stage of the pipeline: flip-summed unit
//! embeddings, squared-L2 distances, the InsightFace k-fold accuracy (thresholds 0 to 4 in steps
//! of 0.01, contiguous folds, threshold chosen on the other folds), a fixed split (threshold on
//! one set of pairs, accuracy on another), TAR at a given FAR, and the pair-list formats.

use serde::{Deserialize, Serialize};

/// Errors of the protocols and pair lists.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    /// A line of a pair list that cannot be read.
    #[error("pair list line {line}: {reason}")]
    PairLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Inputs that do not fit the protocol.
    #[error("{0}")]
    Protocol(String),
}

/// One verification pair: two image paths relative to the data set's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// 1-based fold the pair belongs to.
    pub fold: usize,
    /// First image.
    pub first: String,
    /// Second image.
    pub second: String,
    /// Whether both images show the same identity.
    pub same: bool,
}

/// Parses the LFW `pairs.txt` format: a header `folds<TAB>n`, then per fold n same pairs
/// (`name i j`) and n different pairs (`name i other j`). Image `i` of `name` is the file
/// `name/{i:04}.jpg` (the LFW layout with the name as folder).
pub fn parse_lfw_pairs(text: &str) -> Result<Vec<Pair>, VerifyError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| VerifyError::PairLine {
        line: 1,
        reason: "empty pair list".into(),
    })?;
    let numbers: Vec<usize> = header
        .split_whitespace()
        .map(|field| field.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| VerifyError::PairLine {
            line: 1,
            reason: format!("header {header:?} is not `folds<TAB>pairs_per_half`"),
        })?;
    let (folds, per_half) = match numbers[..] {
        [folds, per_half] if folds > 0 && per_half > 0 => (folds, per_half),
        _ => {
            return Err(VerifyError::PairLine {
                line: 1,
                reason: format!("header {header:?} is not `folds<TAB>pairs_per_half`"),
            });
        }
    };

    let image = |name: &str, number: &str, line: usize| -> Result<String, VerifyError> {
        let number: usize = number.parse().map_err(|_| VerifyError::PairLine {
            line,
            reason: format!("image number {number:?} is not a number"),
        })?;
        Ok(format!("{name}/{number:04}.jpg"))
    };

    let mut pairs = Vec::with_capacity(folds * per_half * 2);
    for (index, line) in lines {
        let line_number = index + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let position = pairs.len();
        let fold = position / (2 * per_half) + 1;
        let pair = match fields[..] {
            [name, i, j] => Pair {
                fold,
                first: image(name, i, line_number)?,
                second: image(name, j, line_number)?,
                same: true,
            },
            [name, i, other, j] => Pair {
                fold,
                first: image(name, i, line_number)?,
                second: image(other, j, line_number)?,
                same: false,
            },
            _ => {
                return Err(VerifyError::PairLine {
                    line: line_number,
                    reason: format!("expected 3 or 4 fields, got {}", fields.len()),
                });
            }
        };
        let expected_same = position % (2 * per_half) < per_half;
        if pair.same != expected_same {
            return Err(VerifyError::PairLine {
                line: line_number,
                reason: format!(
                    "fold {fold} should list {per_half} same pairs, then {per_half} different \
                     pairs; this line breaks that order"
                ),
            });
        }
        pairs.push(pair);
    }
    if pairs.len() != folds * per_half * 2 {
        return Err(VerifyError::PairLine {
            line: 1,
            reason: format!(
                "header promises {folds} folds of {} pairs ({} in all) but the list has {}",
                2 * per_half,
                folds * per_half * 2,
                pairs.len()
            ),
        });
    }
    Ok(pairs)
}

/// Parses a CSV pair list with a header naming the columns `img1`, `img2`, `same` and
/// optionally `fold` (every pair is in fold 1 without it). `same` is 0/1 or false/true. Fields
/// may be quoted as CSV allows (paths holding commas, for example).
pub fn parse_pairs_csv(text: &str) -> Result<Vec<Pair>, VerifyError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let csv_error = |error: csv::Error| VerifyError::PairLine {
        line: error.position().map_or(1, |p| p.line() as usize),
        reason: error.to_string(),
    };
    let columns = reader.headers().map_err(csv_error)?.clone();
    let find = |name: &str| columns.iter().position(|c| c == name);
    let (Some(first), Some(second), Some(same)) = (find("img1"), find("img2"), find("same")) else {
        let reason = if columns.is_empty() {
            "empty pair list".to_string()
        } else {
            format!(
                "header {:?} must name the columns img1, img2 and same",
                columns.iter().collect::<Vec<_>>().join(",")
            )
        };
        return Err(VerifyError::PairLine { line: 1, reason });
    };
    let fold = find("fold");

    let mut pairs = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line_number = record.position().map_or(0, |p| p.line() as usize);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let same = match &record[same] {
            "1" | "true" | "True" => true,
            "0" | "false" | "False" => false,
            other => {
                return Err(VerifyError::PairLine {
                    line: line_number,
                    reason: format!("same must be 0 or 1, got {other:?}"),
                });
            }
        };
        let fold = match fold {
            Some(column) => match record[column].parse::<usize>() {
                Ok(fold) if fold > 0 => fold,
                _ => {
                    return Err(VerifyError::PairLine {
                        line: line_number,
                        reason: format!(
                            "fold must be a positive number, got {:?}",
                            &record[column]
                        ),
                    });
                }
            },
            None => 1,
        };
        pairs.push(Pair {
            fold,
            first: record[first].to_string(),
            second: record[second].to_string(),
            same,
        });
    }
    Ok(pairs)
}

/// The evaluation embedding of one face: L2-normalise(emb(face) + emb(flipped face)).
pub fn flip_sum_embedding(embedding: &[f32], flipped: &[f32]) -> Vec<f32> {
    let sum: Vec<f32> = embedding.iter().zip(flipped).map(|(a, b)| a + b).collect();
    normalize(&sum)
}

/// Divides by the L2 norm (norms below 1e-12 taken as 1e-12).
pub fn normalize(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    vector.iter().map(|v| v / norm).collect()
}

/// Squared Euclidean distance; between unit vectors it is 2 − 2·cos, in [0, 4].
pub fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Cosine similarity.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm_a = a.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let norm_b = b.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    dot / (norm_a * norm_b)
}

/// The InsightFace thresholds: 0, 0.01, …, 3.99.
pub fn reference_thresholds() -> Vec<f64> {
    (0..400).map(|i| i as f64 * 0.01).collect()
}

/// Accuracy of predicting "same" when distance < threshold.
pub fn accuracy_at(threshold: f64, distances: &[f32], same: &[bool]) -> f64 {
    if distances.is_empty() {
        return 0.0;
    }
    let correct = distances
        .iter()
        .zip(same)
        .filter(|&(&d, &s)| ((d as f64) < threshold) == s)
        .count();
    correct as f64 / distances.len() as f64
}

/// Fraction of different-identity pairs accepted (distance < threshold), or `None` without
/// any such pair.
pub fn false_accept_rate(threshold: f64, distances: &[f32], same: &[bool]) -> Option<f64> {
    let impostors: Vec<f32> = distances
        .iter()
        .zip(same)
        .filter(|(_, s)| !**s)
        .map(|(d, _)| *d)
        .collect();
    if impostors.is_empty() {
        return None;
    }
    let accepted = impostors
        .iter()
        .filter(|&&d| (d as f64) < threshold)
        .count();
    Some(accepted as f64 / impostors.len() as f64)
}

/// The threshold with the best accuracy (the first of equal ones) and that accuracy.
pub fn best_threshold(thresholds: &[f64], distances: &[f32], same: &[bool]) -> (f64, f64) {
    let mut best = (thresholds[0], f64::NEG_INFINITY);
    for &threshold in thresholds {
        let accuracy = accuracy_at(threshold, distances, same);
        if accuracy > best.1 {
            best = (threshold, accuracy);
        }
    }
    best
}

/// Result of the k-fold protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KFoldReport {
    /// Accuracy on each held-out fold.
    pub fold_accuracies: Vec<f64>,
    /// Threshold chosen for each fold (on the other folds).
    pub fold_thresholds: Vec<f64>,
    /// Mean of the fold accuracies.
    pub mean: f64,
    /// Population standard deviation of the fold accuracies (as numpy's default).
    pub std: f64,
}

/// Index ranges of `folds` contiguous folds over `n` items, as scikit-learn's unshuffled KFold
/// makes them: the first `n % folds` folds hold one item more.
pub fn contiguous_folds(n: usize, folds: usize) -> Vec<std::ops::Range<usize>> {
    let base = n / folds;
    let extra = n % folds;
    let mut start = 0;
    (0..folds)
        .map(|fold| {
            let size = base + usize::from(fold < extra);
            let range = start..start + size;
            start += size;
            range
        })
        .collect()
}

/// The InsightFace k-fold protocol on pair distances: for each contiguous fold, pick the
/// threshold on the other folds and measure accuracy on it.
pub fn kfold_accuracy(
    distances: &[f32],
    same: &[bool],
    folds: usize,
) -> Result<KFoldReport, VerifyError> {
    if folds < 2 || distances.len() < folds {
        return Err(VerifyError::Protocol(format!(
            "{folds} folds need at least {folds} pairs and at least 2 folds; got {} pairs",
            distances.len()
        )));
    }
    kfold_accuracy_over(distances, same, &contiguous_folds(distances.len(), folds))
}

/// The k-fold protocol over given folds (consecutive index ranges covering all the pairs),
/// for pair sets whose folds were fixed before some pairs were left out.
pub fn kfold_accuracy_over(
    distances: &[f32],
    same: &[bool],
    fold_ranges: &[std::ops::Range<usize>],
) -> Result<KFoldReport, VerifyError> {
    let folds = fold_ranges.len();
    if distances.len() != same.len() {
        return Err(VerifyError::Protocol(format!(
            "{} distances for {} labels",
            distances.len(),
            same.len()
        )));
    }
    if folds < 2 || distances.len() < folds {
        return Err(VerifyError::Protocol(format!(
            "{folds} folds need at least {folds} pairs and at least 2 folds; got {} pairs",
            distances.len()
        )));
    }
    let thresholds = reference_thresholds();
    let mut fold_accuracies = Vec::with_capacity(folds);
    let mut fold_thresholds = Vec::with_capacity(folds);
    let consecutive = fold_ranges.iter().try_fold(0, |end, r| {
        (r.start == end && r.end > r.start).then_some(r.end)
    });
    if consecutive != Some(distances.len()) {
        return Err(VerifyError::Protocol(format!(
            "the folds must be consecutive, non-empty and cover the {} pairs",
            distances.len()
        )));
    }
    for test in fold_ranges.iter().cloned() {
        let (train_distances, train_same): (Vec<f32>, Vec<bool>) = (0..distances.len())
            .filter(|i| !test.contains(i))
            .map(|i| (distances[i], same[i]))
            .unzip();
        let (threshold, _) = best_threshold(&thresholds, &train_distances, &train_same);
        fold_accuracies.push(accuracy_at(
            threshold,
            &distances[test.clone()],
            &same[test],
        ));
        fold_thresholds.push(threshold);
    }
    let mean = fold_accuracies.iter().sum::<f64>() / folds as f64;
    let variance = fold_accuracies
        .iter()
        .map(|a| (a - mean).powi(2))
        .sum::<f64>()
        / folds as f64;
    Ok(KFoldReport {
        fold_accuracies,
        fold_thresholds,
        mean,
        std: variance.sqrt(),
    })
}

/// Result of the fixed-split protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    /// Threshold chosen on the tuning pairs.
    pub threshold: f64,
    /// Accuracy on the tuning pairs at that threshold.
    pub tuning_accuracy: f64,
    /// Accuracy on the test pairs at that threshold.
    pub test_accuracy: f64,
}

/// Chooses the threshold on one set of pairs and reports accuracy on another.
pub fn split_accuracy(
    tuning_distances: &[f32],
    tuning_same: &[bool],
    test_distances: &[f32],
    test_same: &[bool],
) -> Result<SplitReport, VerifyError> {
    if tuning_distances.is_empty() || test_distances.is_empty() {
        return Err(VerifyError::Protocol(format!(
            "the split protocol needs tuning and test pairs; got {} and {}",
            tuning_distances.len(),
            test_distances.len()
        )));
    }
    let (threshold, tuning_accuracy) =
        best_threshold(&reference_thresholds(), tuning_distances, tuning_same);
    Ok(SplitReport {
        threshold,
        tuning_accuracy,
        test_accuracy: accuracy_at(threshold, test_distances, test_same),
    })
}

/// True accept rate at a false accept rate, read off the ROC of all pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TarAtFar {
    /// The FAR asked for.
    pub far: f64,
    /// Fraction of same pairs accepted.
    pub tar: f64,
    /// Distance threshold (accept when distance < threshold).
    pub threshold: f64,
    /// The FAR actually reached at that threshold (≤ `far`).
    pub achieved_far: f64,
}

/// TAR at each FAR in `fars`: the largest threshold whose FAR does not exceed the target.
/// A FAR below 1 / (number of different pairs) can only be met by accepting nothing.
pub fn tar_at_far(
    distances: &[f32],
    same: &[bool],
    fars: &[f64],
) -> Result<Vec<TarAtFar>, VerifyError> {
    let mut impostors: Vec<f32> = distances
        .iter()
        .zip(same)
        .filter(|(_, s)| !**s)
        .map(|(d, _)| *d)
        .collect();
    let genuine: Vec<f32> = distances
        .iter()
        .zip(same)
        .filter(|(_, s)| **s)
        .map(|(d, _)| *d)
        .collect();
    if impostors.is_empty() || genuine.is_empty() {
        return Err(VerifyError::Protocol(format!(
            "TAR at FAR needs same and different pairs; got {} and {}",
            genuine.len(),
            impostors.len()
        )));
    }
    impostors.sort_by(f32::total_cmp);
    let total = impostors.len();
    Ok(fars
        .iter()
        .map(|&far| {
            // Accepting distances strictly below impostors[k] accepts k impostors (ties aside).
            let allowed = ((far * total as f64).floor() as usize).min(total);
            let threshold = if allowed == total {
                f64::INFINITY
            } else {
                impostors[allowed] as f64
            };
            let accepted_impostors = impostors
                .iter()
                .filter(|&&d| (d as f64) < threshold)
                .count();
            let accepted = genuine.iter().filter(|&&d| (d as f64) < threshold).count();
            TarAtFar {
                far,
                tar: accepted as f64 / genuine.len() as f64,
                threshold,
                achieved_far: accepted_impostors as f64 / total as f64,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_accept_rate_counts_accepted_impostors() {
        // Impostors at 0.5, 1.0, 2.0: below 1.5 two of three are accepted.
        let rate = false_accept_rate(1.5, &[0.2, 0.5, 1.0, 2.0], &[true, false, false, false]);
        assert_eq!(rate, Some(2.0 / 3.0));
        assert_eq!(false_accept_rate(1.0, &[0.2], &[true]), None);
    }

    #[test]
    fn folds_are_contiguous_and_the_first_ones_take_the_remainder() {
        assert_eq!(contiguous_folds(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(contiguous_folds(6, 2), vec![0..3, 3..6]);
    }

    #[test]
    fn kfold_on_a_hand_made_case() {
        // Four pairs in two folds. Fold 1 = pairs 0, 1; fold 2 = pairs 2, 3.
        // distances: same pairs 0.5 and 1.2, different pairs 1.0 and 2.0.
        let distances = [0.5, 1.0, 1.2, 2.0];
        let same = [true, false, true, false];
        // Fold 1 held out: tune on {1.2 same, 2.0 diff}: thresholds in (1.2, 2.0] give 100 %;
        // the first is 1.21. On fold 1: 0.5 < 1.21 same ✓, 1.0 < 1.21 predicted same ✗ → 50 %.
        // Fold 2 held out: tune on {0.5 same, 1.0 diff}: first perfect threshold 0.51.
        // On fold 2: 1.2 ≥ 0.51 predicted different ✗, 2.0 different ✓ → 50 %.
        let report = kfold_accuracy(&distances, &same, 2).unwrap();
        assert!((report.fold_thresholds[0] - 1.21).abs() < 1e-9);
        assert!((report.fold_thresholds[1] - 0.51).abs() < 1e-9);
        assert_eq!(report.fold_accuracies, vec![0.5, 0.5]);
        assert_eq!(report.mean, 0.5);
        assert_eq!(report.std, 0.0);
    }

    #[test]
    fn kfold_std_is_the_population_deviation() {
        // Fold 1 perfectly separable with the threshold from fold 2; fold 2 not.
        // Fold 1: same 0.1, diff 3.0; fold 2: same 0.2, diff 3.5.
        // Tuning on fold 2 → first perfect threshold 0.21; fold 1: 0.1 ✓, 3.0 ✓ → 1.0.
        // Tuning on fold 1 → 0.11; fold 2: 0.2 ≥ 0.11 ✗, 3.5 ✓ → 0.5.
        let report = kfold_accuracy(&[0.1, 3.0, 0.2, 3.5], &[true, false, true, false], 2).unwrap();
        assert_eq!(report.fold_accuracies, vec![1.0, 0.5]);
        assert!((report.mean - 0.75).abs() < 1e-12);
        assert!((report.std - 0.25).abs() < 1e-12);
    }

    #[test]
    fn given_folds_of_unequal_size_are_used_as_given() {
        // Folds {0}, {1, 2, 3}. Fold 1 tests pair 0 (genuine at 0.5) with the threshold from
        // pairs 1–3 (0.2 genuine, 1.0 and 2.0 impostors): accuracy 1 from threshold 0.21 up to
        // 1.0, first maximum 0.21 → pair 0 at 0.5 is rejected, accuracy 0. Fold 2 tests pairs
        // 1–3 with the threshold from pair 0 alone: first maximum 0.51 → 0.2 accepted, 1.0 and
        // 2.0 rejected, accuracy 1. Contiguous halves would give different folds.
        let distances = [0.5, 0.2, 1.0, 2.0];
        let same = [true, true, false, false];
        let report = kfold_accuracy_over(&distances, &same, &[0..1, 1..4]).unwrap();
        assert_eq!(report.fold_accuracies, vec![0.0, 1.0]);
        assert!((report.fold_thresholds[0] - 0.21).abs() < 1e-9);
        assert!((report.fold_thresholds[1] - 0.51).abs() < 1e-9);
        assert!(kfold_accuracy_over(&distances, &same, &[0..1, 2..4]).is_err());
        assert!(kfold_accuracy_over(&distances, &same, &[0..2, 2..3]).is_err());
    }

    #[test]
    fn best_threshold_takes_the_first_of_equal_maxima() {
        let (threshold, accuracy) =
            best_threshold(&reference_thresholds(), &[0.3, 0.9], &[true, false]);
        assert!((threshold - 0.31).abs() < 1e-9);
        assert_eq!(accuracy, 1.0);
    }

    #[test]
    fn split_protocol_tunes_on_one_set_and_tests_on_the_other() {
        let report = split_accuracy(
            &[0.3, 0.9],
            &[true, false],
            &[0.2, 0.4, 1.0],
            &[true, true, false],
        )
        .unwrap();
        assert!((report.threshold - 0.31).abs() < 1e-9);
        assert!((report.test_accuracy - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn tar_at_far_counts_by_hand() {
        // Impostors at 1.0, 2.0, 3.0, 4.0; genuine at 0.5, 1.5, 2.5.
        let distances = [0.5, 1.5, 2.5, 1.0, 2.0, 3.0, 4.0];
        let same = [true, true, true, false, false, false, false];
        let rows = tar_at_far(&distances, &same, &[0.0, 0.25, 0.5]).unwrap();
        // FAR 0: accept below 1.0 → genuine 0.5 only.
        assert_eq!(rows[0].threshold, 1.0);
        assert!((rows[0].tar - 1.0 / 3.0).abs() < 1e-12);
        // FAR 0.25: one impostor may pass → accept below 2.0 → 0.5, 1.5.
        assert_eq!(rows[1].threshold, 2.0);
        assert!((rows[1].tar - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rows[1].achieved_far, 0.25);
        // FAR 0.5: accept below 3.0 → all three genuine.
        assert_eq!(rows[2].tar, 1.0);
    }

    #[test]
    fn lfw_pairs_are_read_with_folds() {
        let text = "2\t1\nA\t1\t2\nA\t1\tB\t3\nC\t10\t12\nC\t2\tD\t1\n";
        let pairs = parse_lfw_pairs(text).unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(
            pairs[0],
            Pair {
                fold: 1,
                first: "A/0001.jpg".into(),
                second: "A/0002.jpg".into(),
                same: true
            }
        );
        assert_eq!(
            pairs[1],
            Pair {
                fold: 1,
                first: "A/0001.jpg".into(),
                second: "B/0003.jpg".into(),
                same: false
            }
        );
        assert_eq!(pairs[2].fold, 2);
        assert_eq!(pairs[2].second, "C/0012.jpg");
        assert!(!pairs[3].same);
    }

    #[test]
    fn lfw_pairs_with_missing_entries_name_the_problem() {
        let short = "2\t1\nA\t1\t2\nA\t1\tB\t3\n";
        let error = parse_lfw_pairs(short).unwrap_err();
        assert!(error.to_string().contains("2 folds"), "{error}");
        let bad = "1\t1\nA\t1\nA\t1\tB\t3\n";
        let error = parse_lfw_pairs(bad).unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn csv_pairs_may_be_quoted_and_ragged_rows_are_named() {
        let pairs = parse_pairs_csv("img1,img2,same\n\"a, b/1.jpg\",c.jpg,\"1\"\n").unwrap();
        assert_eq!(pairs[0].first, "a, b/1.jpg");
        assert!(pairs[0].same);
        let error = parse_pairs_csv("img1,img2,same\nx.jpg,y.jpg,1\nx.jpg,y.jpg\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn csv_pairs_are_read_with_and_without_folds() {
        let pairs = parse_pairs_csv("fold,img1,img2,same\n3,a/1.jpg,b/2.jpg,0\n").unwrap();
        assert_eq!(
            pairs,
            vec![Pair {
                fold: 3,
                first: "a/1.jpg".into(),
                second: "b/2.jpg".into(),
                same: false
            }]
        );
        let pairs = parse_pairs_csv("img1,img2,same\nx.jpg,y.jpg,1\n").unwrap();
        assert_eq!(pairs[0].fold, 1);
        assert!(pairs[0].same);
        let error = parse_pairs_csv("img1,img2,same\nx.jpg,y.jpg,maybe\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn flip_sum_embedding_is_the_normalised_sum() {
        let e = flip_sum_embedding(&[3.0, 0.0], &[0.0, 4.0]);
        assert!((e[0] - 0.6).abs() < 1e-7 && (e[1] - 0.8).abs() < 1e-7);
    }
}
