//! Checkpoints: everything needed to continue a run (model with its class centres, optimiser
//! state, the head's random stream, the position in the data), written atomically so that a
//! run killed at any moment leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use elasticface_core::backbone::BackboneConfig;
use elasticface_core::head::SamplerState;
use elasticface_core::model::FaceModel;
use serde::{Deserialize, Serialize};

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";
const LATEST_FILE: &str = "latest";
/// Checkpoints kept besides the newest one.
const KEEP_PREVIOUS: usize = 1;

/// Where training stood when a checkpoint was written.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimiser steps done.
    pub step: usize,
    /// Epoch of the next batch (0-based).
    pub epoch: usize,
    /// Index within that epoch of the next batch.
    pub batch_in_epoch: usize,
    /// The head's random stream.
    pub sampler: SamplerState,
    /// Number of classes of the head.
    pub num_classes: usize,
    /// The backbone, so the model can be rebuilt before loading.
    pub backbone: BackboneConfig,
    /// Wall time spent training so far, in seconds.
    pub elapsed_seconds: f64,
}

/// The checkpoints folder of a run.
pub fn folder(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Writes a checkpoint for `state.step` and points `latest` at it.
pub fn save(
    run: &Path,
    model: &FaceModel,
    optimizer: &ModuleOptimizer,
    state: &TrainingState,
) -> Result<PathBuf> {
    let folder = folder(run);
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let name = format!("step-{:08}", state.step);
    let staging = folder.join(format!("{name}.partial"));
    let target = folder.join(&name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;

    // `valid` folds the batch norms' latest running-statistics update into their stored value;
    // a plain record would hold the value from one step earlier.
    model
        .valid()
        .save_file(staging.join(MODEL_FILE))
        .map_err(|e| anyhow::anyhow!("cannot write model checkpoint: {e}"))?;
    optimizer
        .save(staging.join(OPTIMIZER_FILE))
        .map_err(|e| anyhow::anyhow!("cannot write optimizer checkpoint: {e}"))?;
    std::fs::write(
        staging.join(STATE_FILE),
        serde_json::to_string_pretty(state)?,
    )?;

    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&staging, &target)
        .with_context(|| format!("cannot move checkpoint into {}", target.display()))?;
    let latest_staging = folder.join(format!("{LATEST_FILE}.partial"));
    std::fs::write(&latest_staging, &name)?;
    std::fs::rename(&latest_staging, folder.join(LATEST_FILE))?;

    prune(&folder, &name)?;
    Ok(target)
}

/// Removes all but the newest checkpoints.
fn prune(folder: &Path, newest: &str) -> Result<()> {
    let mut steps: Vec<String> = std::fs::read_dir(folder)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-") && !n.ends_with(".partial") && n.as_str() != newest)
        .collect();
    steps.sort();
    while steps.len() > KEEP_PREVIOUS {
        let old = steps.remove(0);
        std::fs::remove_dir_all(folder.join(old))?;
    }
    Ok(())
}

/// The newest checkpoint of a run, if any.
pub fn latest(run: &Path) -> Result<Option<PathBuf>> {
    let pointer = folder(run).join(LATEST_FILE);
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer)
        .with_context(|| format!("cannot read {}", pointer.display()))?;
    let path = folder(run).join(name.trim());
    if !path.join(STATE_FILE).exists() {
        bail!(
            "{} points at {}, which holds no {STATE_FILE}",
            pointer.display(),
            path.display()
        );
    }
    Ok(Some(path))
}

/// Reads a checkpoint's state.
pub fn read_state(checkpoint: &Path) -> Result<TrainingState> {
    let path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
}

/// Rebuilds the model of a checkpoint on `device`.
pub fn load_model(checkpoint: &Path, state: &TrainingState, device: &Device) -> Result<FaceModel> {
    let path = checkpoint.join(MODEL_FILE);
    let record = ModuleRecord::load(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    FaceModel::new(&state.backbone, state.num_classes, device)
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{} does not fit the configured model: {e}", path.display()))
}

/// Restores an optimiser's state from a checkpoint.
pub fn load_optimizer(checkpoint: &Path, optimizer: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let path = checkpoint.join(OPTIMIZER_FILE);
    optimizer
        .load(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}
