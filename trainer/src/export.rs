//! `elasticface export`: a model file (safetensors weights with a model card, see core's
//! `export`) from a training run or from a PyTorch iResNet checkpoint with the reference's key
//! names (the official ElasticFace release's `backbone.pth`, InsightFace's arcface_torch), for
//! the browser app and other tools.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, PytorchStore};
use burn::tensor::Device;
use elasticface_core::backbone::{Backbone, BackboneConfig};
use elasticface_core::export::ModelCard;
use serde::Deserialize;

use crate::checkpoint;
use crate::evaluate::EvalReport;

/// Renames from the reference's state-dict keys to this project's parameter paths, applied in
/// order. Batch norms' weight/bias (burn's gamma/beta) and the linear layer's transposed weight
/// are handled by burn's PyTorch adapter; PReLU is named `weight` on both sides.
const PYTORCH_KEY_RENAMES: [(&str, &str); 3] = [
    // Saved from a DistributedDataParallel wrapper or a training wrapper.
    (r"^(module|backbone)\.", ""),
    // The shortcut is an nn.Sequential(conv, bn) in the reference.
    (r"\.downsample\.0\.", ".downsample.conv."),
    (r"\.downsample\.1\.", ".downsample.bn."),
];

/// Loads a PyTorch iResNet state dict into a freshly built backbone of `config`, refusing a
/// checkpoint whose tensors do not match it one to one (listing the missing, unexpected and
/// mis-shaped keys).
pub fn load_pytorch_iresnet(
    path: &Path,
    config: &BackboneConfig,
    device: &Device,
) -> Result<Backbone> {
    let mut backbone = config.init(device);
    let Backbone::IResNet(network) = &mut backbone else {
        bail!(
            "PyTorch import reads iResNet checkpoints; {:?} is not an iResNet",
            config.architecture
        );
    };
    let mut store = PytorchStore::from_file(path)
        .map_indices_contiguous(false)
        .validate(false)
        .allow_partial(true);
    for (from, to) in PYTORCH_KEY_RENAMES {
        store = store.with_key_remapping(from, to);
    }
    let result = network
        .load_from(&mut store)
        .map_err(|e| anyhow::anyhow!("cannot read PyTorch checkpoint {}: {e}", path.display()))?;

    let missing: Vec<&str> = result.missing.iter().map(|(key, _)| key.as_str()).collect();
    // PyTorch counts batches seen by each batch norm; burn has no such buffer.
    let unexpected: Vec<&str> = result
        .unused
        .iter()
        .map(String::as_str)
        .filter(|key| !key.ends_with("num_batches_tracked"))
        .collect();
    let misshaped: Vec<String> = result
        .errors
        .iter()
        .map(|error| match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => {
                format!(
                    "{path} (expected {:?}, found {:?})",
                    expected.as_slice(),
                    found.as_slice()
                )
            }
            other => other.to_string(),
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
        let mut message = format!(
            "{} does not match {:?} with widths {:?} and a {}-D embedding:",
            path.display(),
            config.architecture,
            config.widths,
            config.embedding_size
        );
        for (what, keys) in [
            ("missing", missing.join(", ")),
            ("unexpected", unexpected.join(", ")),
            ("mis-shaped", misshaped.join(", ")),
        ] {
            if !keys.is_empty() {
                message.push_str(&format!("\n  {what}: {keys}"));
            }
        }
        bail!(message);
    }
    Ok(backbone)
}

/// The parts of a run's `summary.json` a model card uses.
#[derive(Deserialize)]
struct RunSummary {
    head: String,
    steps: usize,
    final_eval: Option<EvalReport>,
}

/// A run's backbone and a card for it: the threshold and its false-accept rate come from the
/// run's final evaluation (its split threshold, or the median of the k-fold thresholds) unless
/// `threshold` is given.
pub fn from_run(
    run: &Path,
    threshold: Option<f64>,
    device: &Device,
) -> Result<(Backbone, ModelCard)> {
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
    let model = checkpoint::load_model(&latest, &state, device)?;
    let summary_path = run.join("summary.json");
    let summary: Option<RunSummary> = match std::fs::read_to_string(&summary_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("invalid {}", summary_path.display()))?,
        ),
        Err(_) => None,
    };
    let evaluation = summary.as_ref().and_then(|s| s.final_eval.as_ref());
    let measured_threshold = evaluation.and_then(|report| {
        let mut thresholds = report.thresholds.clone();
        thresholds.sort_by(f64::total_cmp);
        // The lower median, so it is one of the thresholds the protocol chose.
        thresholds
            .get(thresholds.len().saturating_sub(1) / 2)
            .copied()
    });
    let (threshold, threshold_note) = match (threshold, evaluation, measured_threshold) {
        (Some(value), _, _) => (Some(value), "set by hand at export".to_string()),
        (None, Some(report), Some(value)) => (
            Some(value),
            format!(
                "chosen by the verification protocol ({}) on {} pairs; accuracy {:.2} %",
                report.protocol,
                report.pairs,
                100.0 * report.accuracy
            ),
        ),
        _ => (None, String::new()),
    };
    let card = ModelCard {
        backbone: state.backbone.clone(),
        threshold,
        threshold_note,
        trained_with: match &summary {
            Some(s) => format!("{} head, {} steps ({})", s.head, s.steps, run.display()),
            None => format!("step {} of {}", state.step, run.display()),
        },
        accuracy: evaluation.map(|r| r.accuracy),
        // The report's false-accept rate belongs to its threshold only when there is one (the
        // split protocol); k folds average rates at k different thresholds.
        false_accept_rate: match evaluation {
            Some(report) if threshold == measured_threshold && report.thresholds.len() == 1 => {
                report.false_accept_rate
            }
            _ => None,
        },
    };
    Ok((model.backbone.valid(), card))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};
    use elasticface_core::backbone::{Architecture, INPUT_SIZE};

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn narrow_config() -> BackboneConfig {
        let mut config = BackboneConfig::new(Architecture::IResNet18);
        config.widths = [8, 8, 16, 16];
        config.embedding_size = 16;
        config
    }

    /// The fixture's inputs: x[i, c, y, x] = sin(0.05 (i + 1) x + 0.07 (c + 1) y + i).
    fn fixture_inputs(device: &Device) -> Tensor<4> {
        let size = INPUT_SIZE;
        let mut values = Vec::with_capacity(2 * 3 * size * size);
        for i in 0..2 {
            for c in 0..3 {
                for y in 0..size {
                    for x in 0..size {
                        let (i, c, y, x) = (i as f64, c as f64, y as f64, x as f64);
                        values.push((0.05 * (i + 1.0) * x + 0.07 * (c + 1.0) * y + i).sin() as f32);
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(values, [2, 3, size, size]), device)
    }

    #[test]
    fn a_pytorch_iresnet_gives_pytorchs_embeddings() {
        let device = Device::flex();
        let backbone = load_pytorch_iresnet(
            &fixtures().join("iresnet18_narrow.pth"),
            &narrow_config(),
            &device,
        )
        .unwrap();
        let embeddings = backbone.valid().forward(fixture_inputs(&device));
        let ours = embeddings.into_data().try_to_vec::<f32>().unwrap();

        let text = std::fs::read_to_string(fixtures().join("iresnet18_narrow.json")).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected: Vec<f64> = fixture["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(ours.len(), expected.len());
        for (index, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-4 * b.abs().max(1.0),
                "embedding value {index}: ours {a}, PyTorch {b}"
            );
        }
    }

    #[test]
    fn a_checkpoint_of_another_shape_lists_what_does_not_fit() {
        let device = Device::flex();
        let path = fixtures().join("iresnet18_narrow.pth");
        let mut wider = narrow_config();
        wider.widths = [8, 8, 16, 32];
        let error = load_pytorch_iresnet(&path, &wider, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("mis-shaped") && error.contains("layer4.0.conv1.weight"),
            "{error}"
        );

        let mut deeper = narrow_config();
        deeper.architecture = Architecture::IResNet34;
        let error = load_pytorch_iresnet(&path, &deeper, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("missing") && error.contains("layer2.3."),
            "{error}"
        );
    }
}
