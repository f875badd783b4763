//! Training configuration: one TOML file per experiment, so runs can be read and diffed.
//! Command-line flags override single values; the resolved configuration is written next to
//! the run's outputs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use elasticface_core::backbone::BackboneConfig;
use elasticface_core::head::HeadConfig;
use serde::{Deserialize, Serialize};

/// A whole experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of every random stream of the run (weights, shuffling, flips, margins).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Folder the run writes to (checkpoints, metrics, plots).
    pub output: PathBuf,
    /// Where the training runs.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Training data.
    pub data: DataConfig,
    /// The network.
    pub backbone: BackboneConfig,
    /// The margin head.
    pub head: HeadConfig,
    /// SGD.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Length of training.
    pub train: LengthConfig,
    /// Periodic and final evaluation on a pair list.
    #[serde(default)]
    pub eval: Option<EvalConfig>,
}

fn default_seed() -> u64 {
    1
}

/// Which burn backend runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// A hardware GPU through wgpu when one exists, else the CPU.
    #[default]
    Auto,
    /// burn's CPU backend (flex).
    Cpu,
    /// wgpu on the best adapter it finds.
    Wgpu,
    /// wgpu on a software adapter (lavapipe): slower than the CPU backend, for testing kernels.
    WgpuSoftware,
    /// burn's CUDA backend (needs the `cuda` feature).
    Cuda,
}

/// Training data: image folders with one sub-folder per identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The folders; their identities become consecutive classes in this order.
    pub sources: Vec<SourceConfig>,
    /// Images per step.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Decoding threads (0: one per core).
    #[serde(default)]
    pub workers: usize,
    /// Skip unreadable images instead of stopping (their count is reported).
    #[serde(default)]
    pub skip_bad: bool,
    /// Mirror each training image left to right with probability 0.5.
    #[serde(default = "default_true")]
    pub random_flip: bool,
}

fn default_batch_size() -> usize {
    128
}

fn default_true() -> bool {
    true
}

/// One source of training images: an image folder or a RecordIO file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Folder with one sub-folder per identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// MXNet RecordIO file (`train.rec`, with `train.idx` beside it), as InsightFace packs
    /// MS1MV2, Glint360K and WebFace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
    /// Optional table `id<TAB>num_images<TAB>fold` (LFW's `identities.tsv`) restricting the
    /// identities to those of `folds`.
    #[serde(default)]
    pub identities: Option<PathBuf>,
    /// Folds of `identities` to keep.
    #[serde(default)]
    pub folds: Vec<usize>,
    /// Leave out identities with fewer image files than this (1 keeps every identity).
    #[serde(default = "default_min_images")]
    pub min_images: usize,
}

fn default_min_images() -> usize {
    1
}

impl SourceConfig {
    /// An image folder with every identity kept.
    pub fn folder(root: PathBuf) -> Self {
        Self {
            root: Some(root),
            record: None,
            identities: None,
            folds: Vec::new(),
            min_images: 1,
        }
    }

    /// Refuses a source that names neither or both kinds, or options its kind cannot use.
    pub fn validate(&self) -> Result<()> {
        match (&self.root, &self.record) {
            (Some(_), Some(_)) => bail!(
                "a data source names both a root folder and a record file; use one per source"
            ),
            (None, None) => {
                bail!("a data source needs `root` (an image folder) or `record` (a .rec file)")
            }
            (None, Some(record)) if self.identities.is_some() || !self.folds.is_empty() => bail!(
                "source {}: `identities` and `folds` select identity folders by name and do not \
                apply to record files",
                record.display()
            ),
            _ => Ok(()),
        }
    }
}

/// SGD with momentum and weight decay, as the reference trains. Values left out of a file take
/// the reference's: lr 0.1, momentum 0.9, weight decay 5e-4, global gradient norm clipped at 5.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Base learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm of the backbone to this value (5 in the reference);
    /// 0 trains without clipping.
    pub grad_clip_norm: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            grad_clip_norm: 5.0,
        }
    }
}

/// Learning-rate schedule, in steps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Piecewise constant or polynomial decay.
    pub kind: ScheduleKind,
    /// Linear warm-up from 0 over this many steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Piecewise: the epochs at which the rate is multiplied by `gamma`.
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// Piecewise: the factor at each milestone.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// Polynomial: the exponent of (1 − progress).
    #[serde(default = "default_power")]
    pub power: f64,
}

fn default_gamma() -> f64 {
    0.1
}

fn default_power() -> f64 {
    2.0
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Piecewise,
            warmup_steps: 0,
            milestones: Vec::new(),
            gamma: default_gamma(),
            power: default_power(),
        }
    }
}

/// Shape of the learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Constant between milestones.
    Piecewise,
    /// lr · (1 − step / total)^power.
    Polynomial,
}

impl ScheduleConfig {
    /// The learning rate at `step` (0-based) of `total` steps with `steps_per_epoch` each epoch.
    pub fn lr_at(&self, base: f64, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
        if step < self.warmup_steps {
            return base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Piecewise => {
                let epoch = step / steps_per_epoch.max(1);
                let passed = self.milestones.iter().filter(|&&m| epoch >= m).count();
                base * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Polynomial => {
                let span = total.saturating_sub(self.warmup_steps).max(1);
                let progress = (step - self.warmup_steps) as f64 / span as f64;
                base * (1.0 - progress).max(0.0).powf(self.power)
            }
        }
    }
}

/// How long to train.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many steps even if epochs remain.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Stop once this much wall time has passed (the final evaluation still runs).
    #[serde(default)]
    pub max_minutes: Option<f64>,
    /// Write a checkpoint every this many steps (and at the end).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Log the loss every this many steps (reading it back costs a device sync).
    #[serde(default = "default_log_every")]
    pub log_every: usize,
}

fn default_checkpoint_every() -> usize {
    500
}

fn default_log_every() -> usize {
    10
}

/// Evaluation on a verification pair list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Folder the pair list's paths are relative to (not used by `.bin` sets).
    #[serde(default)]
    pub root: PathBuf,
    /// LFW `pairs.txt`, a CSV with `img1,img2,same[,fold]`, or an InsightFace `.bin`
    /// verification set.
    pub pairs: PathBuf,
    /// Evaluate every this many steps (0: only at the end).
    #[serde(default)]
    pub every_steps: usize,
    /// The protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Faces per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// FARs at which TAR is reported.
    #[serde(default = "default_fars")]
    pub fars: Vec<f64>,
}

fn default_eval_batch() -> usize {
    64
}

fn default_fars() -> Vec<f64> {
    vec![1e-3, 1e-2, 1e-1]
}

/// Which verification protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Protocol {
    /// InsightFace: k contiguous folds, threshold on the others.
    Kfold {
        /// Number of folds.
        folds: usize,
    },
    /// Threshold chosen on the pairs of `tune_folds`, accuracy on those of `test_folds`.
    Split {
        /// Folds of the pair list used to choose the threshold.
        tune_folds: Vec<usize>,
        /// Folds of the pair list the accuracy is reported on.
        test_folds: Vec<usize>,
    },
}

impl Protocol {
    /// Refuses a protocol that cannot be run or would report a biased number: fewer than two
    /// folds, an empty fold list, or a fold used both to choose the threshold and to test it.
    pub fn check(&self) -> Result<()> {
        match self {
            Protocol::Kfold { folds } if *folds < 2 => {
                bail!("the k-fold protocol needs at least 2 folds, got {folds}")
            }
            Protocol::Kfold { .. } => Ok(()),
            Protocol::Split {
                tune_folds,
                test_folds,
            } => {
                if tune_folds.is_empty() || test_folds.is_empty() {
                    bail!("the split protocol needs tuning folds and test folds");
                }
                if let Some(fold) = tune_folds.iter().find(|f| test_folds.contains(f)) {
                    bail!(
                        "fold {fold} is both a tuning and a test fold; the test folds must be \
                         unseen when the threshold is chosen"
                    );
                }
                Ok(())
            }
        }
    }
}

/// Refuses false-accept rates outside [0, 1] (or not numbers) for TAR@FAR.
pub fn check_fars(fars: &[f64]) -> Result<()> {
    if let Some(far) = fars.iter().find(|f| !(0.0..=1.0).contains(*f)) {
        bail!("false-accept rate {far} for TAR@FAR is not between 0 and 1");
    }
    Ok(())
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol::Kfold { folds: 10 }
    }
}

impl TrainConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: TrainConfig =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    /// Refuses values that cannot train, naming them.
    pub fn validate(&self) -> Result<()> {
        self.head.validate()?;
        if self.data.sources.is_empty() {
            bail!("data.sources is empty: name at least one image folder or record file");
        }
        for source in &self.data.sources {
            source.validate()?;
        }
        if self.data.batch_size < 2 {
            bail!(
                "data.batch_size is {}; it must be at least 2, since batch normalisation cannot \
                 train on a single face",
                self.data.batch_size
            );
        }
        if self.train.epochs == 0 {
            bail!("train.epochs must be at least 1");
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            bail!("optimizer.lr must be positive, got {}", self.optimizer.lr);
        }
        let clip = self.optimizer.grad_clip_norm;
        if !(clip.is_finite() && clip >= 0.0) {
            bail!("optimizer.grad_clip_norm must be 0 (off) or positive, got {clip}");
        }
        if let Some(eval) = &self.eval {
            if eval.batch_size == 0 {
                bail!("eval.batch_size must be at least 1");
            }
            eval.protocol.check().context("eval.protocol")?;
            check_fars(&eval.fars).context("eval.fars")?;
        }
        Ok(())
    }

    /// The configuration as TOML, as written next to a run.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_config_parses_and_validates() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = TrainConfig::load(&path).unwrap();
                config
                    .validate()
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(
            seen >= 5,
            "expected the five main-job configs, found {seen}"
        );
    }

    #[test]
    fn piecewise_schedule_divides_at_each_milestone() {
        let schedule = ScheduleConfig {
            kind: ScheduleKind::Piecewise,
            warmup_steps: 0,
            milestones: vec![2, 4],
            gamma: 0.1,
            power: 2.0,
        };
        // 10 steps per epoch: epochs 0–1 at 0.1, 2–3 at 0.01, 4+ at 0.001.
        assert_eq!(schedule.lr_at(0.1, 19, 100, 10), 0.1);
        assert!((schedule.lr_at(0.1, 20, 100, 10) - 0.01).abs() < 1e-12);
        assert!((schedule.lr_at(0.1, 45, 100, 10) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn polynomial_schedule_warms_up_then_decays_to_zero() {
        let schedule = ScheduleConfig {
            kind: ScheduleKind::Polynomial,
            warmup_steps: 10,
            milestones: Vec::new(),
            gamma: 0.1,
            power: 2.0,
        };
        assert!((schedule.lr_at(1.0, 0, 110, 10) - 0.1).abs() < 1e-12);
        assert_eq!(schedule.lr_at(1.0, 9, 110, 10), 1.0);
        assert_eq!(schedule.lr_at(1.0, 10, 110, 10), 1.0);
        // Halfway through the 100 decay steps: (1 − 0.5)² = 0.25.
        assert!((schedule.lr_at(1.0, 60, 110, 10) - 0.25).abs() < 1e-12);
        assert_eq!(schedule.lr_at(1.0, 110, 110, 10), 0.0);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let text = r#"
output = "x"
[data]
sources = [{ root = "a" }]
batch_sise = 3
[backbone]
architecture = "mobilefacenet"
[head]
kind = "arcface"
[train]
epochs = 1
"#;
        let error = toml::from_str::<TrainConfig>(text).unwrap_err().to_string();
        assert!(error.contains("batch_sise"), "{error}");
    }

    #[test]
    fn settings_that_cannot_train_or_would_bias_the_evaluation_are_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/elastic-arc.toml");
        let valid = TrainConfig::load(&path).unwrap();
        let refused = |edit: &dyn Fn(&mut TrainConfig)| {
            let mut config = valid.clone();
            edit(&mut config);
            format!("{:#}", config.validate().unwrap_err())
        };
        assert!(refused(&|c| c.data.batch_size = 1).contains("at least 2"));
        let overlap = refused(&|c| {
            c.eval.as_mut().unwrap().protocol = Protocol::Split {
                tune_folds: vec![9, 10],
                test_folds: vec![10],
            }
        });
        assert!(overlap.contains("fold 10 is both"), "{overlap}");
        assert!(
            refused(&|c| c.eval.as_mut().unwrap().protocol = Protocol::Kfold { folds: 1 })
                .contains("2 folds")
        );
        for far in [-0.1, 1.5, f64::NAN] {
            let message = refused(&|c| c.eval.as_mut().unwrap().fars = vec![0.01, far]);
            assert!(
                message.contains("eval.fars") && message.contains(&far.to_string()),
                "{message}"
            );
        }
    }
}
