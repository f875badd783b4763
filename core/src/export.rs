//! Exported models: a backbone's weights as a safetensors file whose metadata carries a model
//! card (the backbone's configuration, the verification threshold chosen for it and how it was
//! measured), so that the browser app and other tools can load and use it on its own. Weights
//! can be stored in f16 to halve the file; they are widened back to f32 on load. The last stage
//! of the pipeline, after evaluation.

use burn::store::{FloatCastAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, BackboneConfig};

/// Metadata key of the format name.
const FORMAT_KEY: &str = "elasticface.format";
/// Metadata key of the model card (JSON).
const CARD_KEY: &str = "elasticface.card";
/// The format this module writes and reads.
pub const FORMAT: &str = "elasticface-model/1";

/// What a model file says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The network, enough to rebuild it before loading the weights.
    pub backbone: BackboneConfig,
    /// Squared-L2 distance between flip-summed unit embeddings below which two faces are
    /// called the same person (cosine similarity = 1 − threshold / 2).
    pub threshold: Option<f64>,
    /// How the threshold was chosen and what it achieved, in words (shown to users).
    #[serde(default)]
    pub threshold_note: String,
    /// The margin head the model was trained with, and other provenance, in words.
    #[serde(default)]
    pub trained_with: String,
    /// Verification accuracy measured for the model, when known.
    #[serde(default)]
    pub accuracy: Option<f64>,
    /// False-accept rate at `threshold` on the evaluation pairs, when known.
    #[serde(default)]
    pub false_accept_rate: Option<f64>,
}

/// Errors of export and import.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The bytes are not a safetensors file.
    #[error("not a safetensors model file: {0}")]
    NotSafetensors(String),
    /// A safetensors file without this project's model card.
    #[error(
        "the file has no elasticface model card (metadata key {CARD_KEY}); it was not written by \
        `elasticface export`"
    )]
    NoCard,
    /// A model card that cannot be read.
    #[error("unreadable model card: {0}")]
    BadCard(String),
    /// Weights that do not fit the network the card describes.
    #[error("the weights do not fit the {architecture} described by the card: {details}")]
    Mismatch {
        /// The architecture named by the card.
        architecture: String,
        /// Which tensors are missing, unexpected or mis-shaped.
        details: String,
    },
    /// The store failed.
    #[error("cannot write or read the weights: {0}")]
    Store(String),
}

/// The backbone's weights and its card as the bytes of a safetensors file; `half` stores the
/// weights as f16.
pub fn export_backbone(
    backbone: &Backbone,
    card: &ModelCard,
    half: bool,
) -> Result<Vec<u8>, ExportError> {
    let card_json = serde_json::to_string(card).map_err(|e| ExportError::BadCard(e.to_string()))?;
    let mut store = SafetensorsStore::from_bytes(None)
        .metadata(FORMAT_KEY, FORMAT)
        .metadata(CARD_KEY, card_json);
    if half {
        store = store.with_to_adapter(FloatCastAdapter::to(DType::F16));
    }
    backbone
        .save_into(&mut store)
        .map_err(|e| ExportError::Store(e.to_string()))?;
    store
        .get_bytes()
        .map_err(|e| ExportError::Store(e.to_string()))
}

/// Reads the model card of a model file without touching its weights.
pub fn read_card(bytes: &[u8]) -> Result<ModelCard, ExportError> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ExportError::NotSafetensors(e.to_string()))?;
    let entries = metadata.metadata().as_ref();
    let card = entries
        .and_then(|entries| entries.get(CARD_KEY))
        .ok_or(ExportError::NoCard)?;
    match entries.and_then(|entries| entries.get(FORMAT_KEY)) {
        Some(format) if format == FORMAT => {}
        Some(format) => {
            return Err(ExportError::BadCard(format!(
                "the file is in format {format}; this version reads {FORMAT} (a newer \
                elasticface may read it)"
            )));
        }
        None => {
            return Err(ExportError::BadCard(format!(
                "metadata key {FORMAT_KEY} is missing"
            )));
        }
    }
    serde_json::from_str(card).map_err(|e| ExportError::BadCard(e.to_string()))
}

/// Rebuilds the backbone a model file describes on `device` and loads its weights (as f32).
pub fn import_backbone(
    bytes: &[u8],
    device: &Device,
) -> Result<(Backbone, ModelCard), ExportError> {
    let card = read_card(bytes)?;
    card.backbone.check().map_err(ExportError::BadCard)?;
    let mut backbone = card.backbone.init(device);
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .with_from_adapter(FloatCastAdapter::to(DType::F32))
        .validate(false)
        .allow_partial(true);
    let result = backbone
        .load_from(&mut store)
        .map_err(|e| ExportError::Store(e.to_string()))?;
    let mut problems = Vec::new();
    if !result.missing.is_empty() {
        let names: Vec<&str> = result
            .missing
            .iter()
            .map(|(path, _)| path.as_str())
            .collect();
        problems.push(format!("missing {}", names.join(", ")));
    }
    if !result.unused.is_empty() {
        problems.push(format!("unexpected {}", result.unused.join(", ")));
    }
    if !result.errors.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(ToString::to_string).collect();
        problems.push(errors.join("; "));
    }
    if !problems.is_empty() {
        let architecture = serde_json::to_string(&card.backbone.architecture).unwrap_or_default();
        return Err(ExportError::Mismatch {
            architecture: architecture.trim_matches('"').to_string(),
            details: problems.join("; "),
        });
    }
    Ok((backbone, card))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{Architecture, INPUT_SIZE};
    use burn::module::Module;
    use burn::tensor::{Tensor, TensorData};

    fn small_card() -> ModelCard {
        let mut backbone = BackboneConfig::new(Architecture::IResNet18);
        backbone.widths = [8, 8, 16, 16];
        backbone.embedding_size = 16;
        ModelCard {
            backbone,
            threshold: Some(1.2),
            threshold_note: "chosen on test pairs".into(),
            trained_with: "elastic-arc".into(),
            accuracy: Some(0.9),
            false_accept_rate: Some(0.01),
        }
    }

    fn embed(backbone: &Backbone, device: &Device) -> Vec<f32> {
        let values: Vec<f32> = (0..3 * INPUT_SIZE * INPUT_SIZE)
            .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
            .collect();
        let faces = Tensor::<4>::from_data(
            TensorData::new(values, [1, 3, INPUT_SIZE, INPUT_SIZE]),
            device,
        );
        backbone
            .forward(faces)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn an_exported_backbone_loads_back_with_its_card_and_outputs() {
        let device = Device::flex();
        let card = small_card();
        let backbone = card.backbone.init(&device).valid();
        let bytes = export_backbone(&backbone, &card, false).unwrap();
        let (loaded, loaded_card) = import_backbone(&bytes, &device).unwrap();
        assert_eq!(loaded_card, card);
        assert_eq!(embed(&backbone, &device), embed(&loaded.valid(), &device));
    }

    #[test]
    fn half_precision_files_are_smaller_and_close() {
        let device = Device::flex();
        let card = small_card();
        let backbone = card.backbone.init(&device).valid();
        let full = export_backbone(&backbone, &card, false).unwrap();
        let half = export_backbone(&backbone, &card, true).unwrap();
        assert!(
            half.len() * 10 < full.len() * 6,
            "{} vs {} bytes",
            half.len(),
            full.len()
        );
        let (loaded, _) = import_backbone(&half, &device).unwrap();
        let (a, b) = (embed(&backbone, &device), embed(&loaded.valid(), &device));
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(&b) {
            // f16 keeps 11 significant bits: about 5e-4 relative per weight.
            assert!((x - y).abs() <= 2e-2 * scale, "{x} vs {y}");
        }
    }

    #[test]
    fn files_without_a_card_or_with_other_weights_are_refused() {
        let device = Device::flex();
        assert!(matches!(
            import_backbone(b"not safetensors", &device),
            Err(ExportError::NotSafetensors(_))
        ));

        let card = small_card();
        let backbone = card.backbone.init(&device).valid();
        let mut wider = card.clone();
        wider.backbone.widths = [8, 8, 16, 32];
        let bytes = export_backbone(&backbone, &wider, false).unwrap();
        let error = import_backbone(&bytes, &device).err().unwrap().to_string();
        assert!(
            error.contains("iresnet18") && error.contains("layer4"),
            "{error}"
        );

        // A damaged card asking for a billion-value embedding is refused before any allocation.
        let mut absurd = card.clone();
        absurd.backbone.embedding_size = 1 << 30;
        let bytes = export_backbone(&backbone, &absurd, false).unwrap();
        let error = import_backbone(&bytes, &device).err().unwrap().to_string();
        assert!(error.contains("embedding size 1073741824"), "{error}");
    }
}
