//! Margin heads on the unit hypersphere: Softmax, ArcFace, CosFace and ElasticFace-Arc/-Cos with
//! their "+" variants. This is the stage between the backbone's embedding and the loss:
//! cos θ = normalise(embedding) · normalise(class_centers)ᵀ, then a margin on the target column,
//! then a scale. The scalar formula (`target_logit`) and the tensor path (`margin_logits`)
//! implement the same equations; the visualiser uses the first, training the second.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Below this value of 1 − cos²θ the derivative treats sin θ as constant, so the gradient stays
/// finite at cos θ = ±1 where d(sin θ)/d(cos θ) is unbounded (the reference's `acos` gives NaN
/// there). Values are not affected: sin θ itself is always exact.
pub const SIN_SQUARED_FLOOR: f32 = 1e-6;

/// Which loss the head computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeadKind {
    /// Normalised softmax: s·cos θ, no margin.
    #[serde(rename = "softmax")]
    Softmax,
    /// ArcFace: target logit s·cos(θ + m).
    #[serde(rename = "arcface")]
    ArcFace,
    /// CosFace: target logit s·(cos θ − m).
    #[serde(rename = "cosface")]
    CosFace,
    /// ElasticFace-Arc: s·cos(θ + mᵢ), mᵢ ~ N(m, σ) per sample and step.
    #[serde(rename = "elastic-arc")]
    ElasticArc,
    /// ElasticFace-Cos: s·(cos θ − mᵢ), mᵢ ~ N(m, σ) per sample and step.
    #[serde(rename = "elastic-cos")]
    ElasticCos,
    /// ElasticFace-Arc+: the drawn margins are assigned by how hard each sample is.
    #[serde(rename = "elastic-arc+")]
    ElasticArcPlus,
    /// ElasticFace-Cos+: the drawn margins are assigned by how hard each sample is.
    #[serde(rename = "elastic-cos+")]
    ElasticCosPlus,
}

impl HeadKind {
    /// Every head, in the order the paper introduces them.
    pub const ALL: [HeadKind; 7] = [
        HeadKind::Softmax,
        HeadKind::ArcFace,
        HeadKind::CosFace,
        HeadKind::ElasticArc,
        HeadKind::ElasticCos,
        HeadKind::ElasticArcPlus,
        HeadKind::ElasticCosPlus,
    ];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Softmax => "softmax",
            HeadKind::ArcFace => "arcface",
            HeadKind::CosFace => "cosface",
            HeadKind::ElasticArc => "elastic-arc",
            HeadKind::ElasticCos => "elastic-cos",
            HeadKind::ElasticArcPlus => "elastic-arc+",
            HeadKind::ElasticCosPlus => "elastic-cos+",
        }
    }

    /// Where the margin acts: on the angle, on the cosine, or nowhere.
    pub fn family(self) -> MarginFamily {
        match self {
            HeadKind::Softmax => MarginFamily::None,
            HeadKind::ArcFace | HeadKind::ElasticArc | HeadKind::ElasticArcPlus => {
                MarginFamily::Angular
            }
            HeadKind::CosFace | HeadKind::ElasticCos | HeadKind::ElasticCosPlus => {
                MarginFamily::Cosine
            }
        }
    }

    /// Whether the margin is drawn from N(m, σ) at every step.
    pub fn is_elastic(self) -> bool {
        matches!(
            self,
            HeadKind::ElasticArc
                | HeadKind::ElasticCos
                | HeadKind::ElasticArcPlus
                | HeadKind::ElasticCosPlus
        )
    }

    /// Whether the drawn margins are sorted and assigned by sample difficulty.
    pub fn is_plus(self) -> bool {
        matches!(self, HeadKind::ElasticArcPlus | HeadKind::ElasticCosPlus)
    }

    /// The official release's (s, m, σ) for this head.
    ///
    /// The paper's text gives σ = 0.025 for ElasticFace-Cos+, while the released configuration
    /// uses 0.02; the release is what produced the published models, so it is the default.
    pub fn reference_defaults(self) -> (f64, f64, f64) {
        match self {
            HeadKind::Softmax => (64.0, 0.0, 0.0),
            HeadKind::ArcFace => (64.0, 0.5, 0.0),
            HeadKind::CosFace => (64.0, 0.35, 0.0),
            HeadKind::ElasticArc => (64.0, 0.5, 0.05),
            HeadKind::ElasticCos => (64.0, 0.35, 0.05),
            HeadKind::ElasticArcPlus => (64.0, 0.5, 0.0175),
            HeadKind::ElasticCosPlus => (64.0, 0.35, 0.02),
        }
    }
}

impl std::str::FromStr for HeadKind {
    type Err = HeadError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        HeadKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| HeadError::UnknownHead(name.to_string()))
    }
}

/// Where a head puts its margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarginFamily {
    /// Additive angular margin: cos(θ + m).
    Angular,
    /// Additive cosine margin: cos θ − m.
    Cosine,
    /// No margin.
    None,
}

/// How the "+" variants hand the B sorted margins to the B samples of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MarginAssignment {
    /// The paper: the sample with the k-th largest cos θ_y gets the k-th smallest margin, so
    /// harder samples (smaller cos θ_y) get larger margins.
    #[default]
    #[serde(rename = "rank-matched")]
    RankMatched,
    /// The official release: the sorted margins are indexed with the sorting permutation rather
    /// than its inverse, so a sample's margin does not follow its cos θ_y.
    #[serde(rename = "reference")]
    Reference,
}

/// What an angular margin does when θ + m passes π, where cos(θ + m) starts to grow again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ThetaOverflow {
    /// cos(θ + m) as it is (the ElasticFace release).
    #[default]
    #[serde(rename = "none")]
    None,
    /// Below cos θ = cos(π − m), use cos θ − m·sin(π − m), which keeps the target logit
    /// decreasing in θ (the InsightFace "easy margin off" fall-back).
    #[serde(rename = "monotonic")]
    Monotonic,
}

/// Everything that defines a margin head, as written in a config file. Values left out of a
/// file take the official release's defaults for the head's kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "HeadConfigFile")]
pub struct HeadConfig {
    /// Which loss.
    pub kind: HeadKind,
    /// Scale s applied to every logit.
    pub scale: f64,
    /// Margin m (mean of the drawn margins for the elastic heads).
    pub margin: f64,
    /// Standard deviation σ of the drawn margins (elastic heads only).
    pub sigma: f64,
    /// How the "+" variants assign margins.
    #[serde(default)]
    pub assignment: MarginAssignment,
    /// What an angular margin does past θ + m = π.
    #[serde(default)]
    pub overflow: ThetaOverflow,
}

/// A head section as written, with every value but the kind optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadConfigFile {
    kind: HeadKind,
    scale: Option<f64>,
    margin: Option<f64>,
    sigma: Option<f64>,
    #[serde(default)]
    assignment: MarginAssignment,
    #[serde(default)]
    overflow: ThetaOverflow,
}

impl From<HeadConfigFile> for HeadConfig {
    fn from(file: HeadConfigFile) -> Self {
        let defaults = HeadConfig::new(file.kind);
        HeadConfig {
            kind: file.kind,
            scale: file.scale.unwrap_or(defaults.scale),
            margin: file.margin.unwrap_or(defaults.margin),
            sigma: file.sigma.unwrap_or(defaults.sigma),
            assignment: file.assignment,
            overflow: file.overflow,
        }
    }
}

impl HeadConfig {
    /// The official release's configuration for `kind`.
    pub fn new(kind: HeadKind) -> Self {
        let (scale, margin, sigma) = kind.reference_defaults();
        Self {
            kind,
            scale,
            margin,
            sigma,
            assignment: MarginAssignment::default(),
            overflow: ThetaOverflow::default(),
        }
    }

    /// Refuses values no head can use, naming the value.
    pub fn validate(&self) -> Result<(), HeadError> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(HeadError::InvalidConfig(format!(
                "scale must be finite and positive, got {}",
                self.scale
            )));
        }
        if !self.margin.is_finite() {
            return Err(HeadError::InvalidConfig(format!(
                "margin must be finite, got {}",
                self.margin
            )));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(HeadError::InvalidConfig(format!(
                "sigma must be finite and non-negative, got {}",
                self.sigma
            )));
        }
        Ok(())
    }
}

/// Errors from the heads.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeadError {
    /// A head name that is not one of [`HeadKind::ALL`].
    #[error(
        "unknown head {0:?}; expected one of softmax, arcface, cosface, elastic-arc, elastic-cos, \
         elastic-arc+, elastic-cos+"
    )]
    UnknownHead(String),
    /// A configuration value out of range.
    #[error("invalid head configuration: {0}")]
    InvalidConfig(String),
    /// A label that is neither −1 nor a class index.
    #[error("label {label} at row {row} is out of range: expected -1 or 0..{num_classes}")]
    LabelOutOfRange {
        /// Row of the batch.
        row: usize,
        /// The label found.
        label: i64,
        /// Number of classes of the head.
        num_classes: usize,
    },
    /// A label stored as a float that is not a whole number.
    #[error("label {label} at row {row} is not an integer")]
    NonIntegerLabel {
        /// Row of the batch.
        row: usize,
        /// The label found.
        label: f64,
    },
    /// Inputs whose sizes disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// The target logit before scaling, for one sample: the margin formula of `family` applied to
/// `cos_theta` with margin `margin`. Off-target logits are cos θ unchanged.
pub fn target_logit(
    cos_theta: f64,
    margin: f64,
    family: MarginFamily,
    overflow: ThetaOverflow,
) -> f64 {
    let cos_theta = cos_theta.clamp(-1.0, 1.0);
    match family {
        MarginFamily::None => cos_theta,
        MarginFamily::Cosine => cos_theta - margin,
        MarginFamily::Angular => {
            let sin_theta = (1.0 - cos_theta * cos_theta).max(0.0).sqrt();
            let shifted = cos_theta * margin.cos() - sin_theta * margin.sin();
            match overflow {
                ThetaOverflow::None => shifted,
                ThetaOverflow::Monotonic => {
                    let (threshold, fallback) = monotonic_fallback(margin);
                    if cos_theta > threshold {
                        shifted
                    } else {
                        cos_theta - fallback
                    }
                }
            }
        }
    }
}

/// For the monotonic policy: the cosine below which the fall-back applies, cos(π − m), and the
/// amount the fall-back subtracts, m·sin(π − m).
pub fn monotonic_fallback(margin: f64) -> (f64, f64) {
    let angle = std::f64::consts::PI - margin;
    (angle.cos(), margin * angle.sin())
}

/// Checks labels against the number of classes: −1 (no target) or `0..num_classes`.
pub fn validate_labels(labels: &[i64], num_classes: usize) -> Result<(), HeadError> {
    for (row, &label) in labels.iter().enumerate() {
        if label < -1 || label >= num_classes as i64 {
            return Err(HeadError::LabelOutOfRange {
                row,
                label,
                num_classes,
            });
        }
    }
    Ok(())
}

/// Converts labels stored as floats (as RecordIO headers hold them) to class indices, refusing
/// any that is not a whole number.
pub fn labels_from_floats(labels: &[f64]) -> Result<Vec<i64>, HeadError> {
    labels
        .iter()
        .enumerate()
        .map(|(row, &label)| {
            if label.is_finite() && label.fract() == 0.0 {
                Ok(label as i64)
            } else {
                Err(HeadError::NonIntegerLabel { row, label })
            }
        })
        .collect()
}

/// Assigns sorted draws to samples for the "+" variants.
///
/// `cos_target[i]` is cos θ_y of sample i and `draws` the margins drawn for the batch, in any
/// order. Returns the margin of each sample.
pub fn assign_margins(cos_target: &[f32], draws: &[f64], mode: MarginAssignment) -> Vec<f64> {
    assert_eq!(cos_target.len(), draws.len(), "one draw per sample");
    let mut by_difficulty: Vec<usize> = (0..cos_target.len()).collect();
    // Easiest first: descending cos θ_y; ties keep batch order so the result is deterministic.
    by_difficulty.sort_by(|&a, &b| cos_target[b].total_cmp(&cos_target[a]).then(a.cmp(&b)));
    let mut sorted = draws.to_vec();
    sorted.sort_by(f64::total_cmp);

    let mut margins = vec![0.0; draws.len()];
    match mode {
        MarginAssignment::RankMatched => {
            for (rank, &sample) in by_difficulty.iter().enumerate() {
                margins[sample] = sorted[rank];
            }
        }
        MarginAssignment::Reference => {
            for (sample, &rank) in by_difficulty.iter().enumerate() {
                margins[sample] = sorted[rank];
            }
        }
    }
    margins
}

/// Where the head's random stream stands, so a resumed run draws the same margins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The seed the stream started from.
    pub seed: u64,
    /// Position in the stream, in 32-bit words, written as decimal text.
    pub word_pos: String,
}

/// Draws the per-sample margins of a head from its own seeded stream.
#[derive(Clone, Debug)]
pub struct MarginSampler {
    seed: u64,
    rng: ChaCha8Rng,
}

impl MarginSampler {
    /// A stream starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Resumes a stream where `state` left it.
    pub fn from_state(state: &SamplerState) -> Result<Self, HeadError> {
        let word_pos: u128 = state.word_pos.parse().map_err(|_| {
            HeadError::InvalidConfig(format!(
                "sampler word_pos {:?} is not a number",
                state.word_pos
            ))
        })?;
        let mut sampler = Self::new(state.seed);
        sampler.rng.set_word_pos(word_pos);
        Ok(sampler)
    }

    /// The stream's position.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos().to_string(),
        }
    }

    /// `count` draws from N(mean, sigma).
    pub fn draw(&mut self, mean: f64, sigma: f64, count: usize) -> Vec<f64> {
        let normal = Normal::new(mean, sigma).expect("sigma is validated as finite and >= 0");
        (0..count).map(|_| normal.sample(&mut self.rng)).collect()
    }

    /// The margin of every row of a batch: 0 for rows without a target, m for the fixed-margin
    /// heads, fresh draws for the elastic heads (assigned by difficulty for the "+" variants,
    /// which need `cos_target`, the cos θ_y of each row).
    pub fn batch_margins(
        &mut self,
        config: &HeadConfig,
        labels: &[i64],
        cos_target: Option<&[f32]>,
    ) -> Vec<f64> {
        let valid_rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
        let mut margins = vec![0.0; labels.len()];
        let kind = config.kind;
        let drawn = if kind.family() == MarginFamily::None {
            vec![0.0; valid_rows.len()]
        } else if kind.is_elastic() {
            let draws = self.draw(config.margin, config.sigma, valid_rows.len());
            if kind.is_plus() {
                let cos_target =
                    cos_target.expect("the \"+\" heads need cos θ_y to assign their margins");
                let cos_valid: Vec<f32> = valid_rows.iter().map(|&i| cos_target[i]).collect();
                assign_margins(&cos_valid, &draws, config.assignment)
            } else {
                draws
            }
        } else {
            vec![config.margin; valid_rows.len()]
        };
        for (&row, margin) in valid_rows.iter().zip(drawn) {
            margins[row] = margin;
        }
        margins
    }
}

/// The class centres W of a head: one row per identity.
#[derive(Module, Debug)]
pub struct ClassCenters {
    /// `[num_classes, embedding_size]`, not normalised; the head normalises each row.
    pub weight: Param<Tensor<2>>,
}

impl ClassCenters {
    /// Centres drawn from N(0, 0.01), as the official release initialises its kernel.
    pub fn new(num_classes: usize, embedding_size: usize, device: &Device) -> Self {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        }
        .init([num_classes, embedding_size], device);
        Self { weight }
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// cos θ between every embedding and every class centre, clamped to [−1, 1].
    ///
    /// # Shapes
    /// - `embeddings`: `[batch_size, embedding_size]`
    /// - output: `[batch_size, num_classes]`
    pub fn cos_theta(&self, embeddings: Tensor<2>) -> Tensor<2> {
        let embeddings = l2_normalize(embeddings);
        let centers = l2_normalize(self.weight.val());
        embeddings.matmul(centers.transpose()).clamp(-1.0, 1.0)
    }
}

/// Divides each row by its L2 norm (norms below 1e-12 are taken as 1e-12, as PyTorch does).
///
/// # Shapes
/// - `rows`: `[n, d]` → `[n, d]`
pub fn l2_normalize(rows: Tensor<2>) -> Tensor<2> {
    let norm = rows.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    rows / norm
}

/// Scaled logits with the margin applied to each row's target column.
///
/// `labels` holds −1 for rows without a target; those rows get no margin. `margins[i]` is the
/// margin of row i (see [`MarginSampler::batch_margins`]). On wgpu this runs the
/// `margin_logits` kernel; elsewhere [`margin_logits_tensor_ops`].
///
/// # Shapes
/// - `cos_theta`: `[batch_size, num_classes]`
/// - `labels`: `[batch_size]`, with −1 or a class index
/// - `margins`: `[batch_size]`
/// - output: `[batch_size, num_classes]`
pub fn margin_logits(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Tensor<2> {
    #[cfg(feature = "wgpu")]
    let (cos_theta, labels, margins) =
        match crate::kernel::margin_logits(cos_theta, labels, margins, config) {
            Ok(logits) => return logits,
            Err(inputs) => inputs,
        };
    margin_logits_tensor_ops(cos_theta, labels, margins, config)
}

/// [`margin_logits`] as burn tensor operations, on any backend.
///
/// # Shapes
/// As [`margin_logits`].
pub fn margin_logits_tensor_ops(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Tensor<2> {
    let [batch_size, num_classes] = cos_theta.dims();
    let has_target: Tensor<2, Bool> = labels
        .clone()
        .greater_equal_elem(0)
        .reshape([batch_size, 1]);
    let target_index = labels.clamp_min(0).reshape([batch_size, 1]);
    let cos_target = cos_theta.clone().gather(1, target_index.clone());
    let margins = margins.reshape([batch_size, 1]);

    let shifted = match config.kind.family() {
        MarginFamily::None => cos_target.clone(),
        MarginFamily::Cosine => cos_target.clone() - margins,
        MarginFamily::Angular => {
            let sin_squared = cos_target.clone().square().neg().add_scalar(1.0);
            let sin_floored = sin_squared.clone().clamp_min(SIN_SQUARED_FLOOR).sqrt();
            // The floor only steadies the derivative: a detached correction restores the exact
            // value √max(1 − cos²θ, 0) where the floor applies.
            let correction = (sin_floored.clone() - sin_squared.clamp_min(0.0).sqrt()).detach();
            let sin_target = sin_floored - correction;
            let shifted =
                cos_target.clone() * margins.clone().cos() - sin_target * margins.clone().sin();
            match config.overflow {
                ThetaOverflow::None => shifted,
                ThetaOverflow::Monotonic => {
                    let angle = margins.clone().neg().add_scalar(std::f64::consts::PI);
                    let threshold = angle.clone().cos();
                    let fallback = cos_target.clone() - margins * angle.sin();
                    let in_range = cos_target.clone().greater(threshold);
                    fallback.mask_where(in_range, shifted)
                }
            }
        }
    };

    let delta = (shifted - cos_target).mask_fill(has_target.bool_not(), 0.0);
    let adjust = Tensor::<2>::zeros([batch_size, num_classes], &delta.device()).scatter(
        1,
        target_index,
        delta,
        burn::tensor::IndexingUpdateOp::Add,
    );
    (cos_theta + adjust).mul_scalar(config.scale)
}

/// Softmax cross-entropy of each row: log Σ exp(logits) − the target logit, 0 for rows without
/// a target (label −1).
///
/// # Shapes
/// - `logits`: `[batch_size, num_classes]`
/// - `labels`: `[batch_size]`, with −1 or a class index
/// - output: `[batch_size]`
pub fn cross_entropy_rows(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [batch_size, _] = logits.dims();
    let has_target = labels.clone().greater_equal_elem(0);
    let target_index = labels.clamp_min(0).reshape([batch_size, 1]);
    let log_probability = burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, target_index)
        .reshape([batch_size]);
    log_probability.neg() * has_target.float()
}

/// Mean of per-row losses over the rows that have a target. With no such row the loss is 0
/// (PyTorch would return NaN).
///
/// # Shapes
/// - `rows`: `[batch_size]`; `labels`: `[batch_size]` → `[1]`
fn mean_over_targets(rows: Tensor<1>, labels: Tensor<1, Int>) -> Tensor<1> {
    let count = labels.greater_equal_elem(0).float().sum().clamp_min(1.0);
    rows.sum() / count
}

/// Softmax cross-entropy averaged over the rows that have a target (label ≥ 0).
///
/// # Shapes
/// - `logits`: `[batch_size, num_classes]`
/// - `labels`: `[batch_size]`, with −1 or a class index
/// - output: `[1]`
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    mean_over_targets(cross_entropy_rows(logits, labels.clone()), labels)
}

/// The margin loss of a batch from its cos θ matrix: margin logits, then softmax cross-entropy
/// averaged over the rows with a target. On wgpu this is the fused `softmax_cross_entropy`
/// kernel pair, which never stores the logits; elsewhere [`margin_cross_entropy_tensor_ops`].
///
/// # Shapes
/// - `cos_theta`: `[batch_size, num_classes]`
/// - `labels`, `margins`: `[batch_size]`
/// - output: `[1]`
pub fn margin_cross_entropy(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Tensor<1> {
    #[cfg(feature = "wgpu")]
    let (cos_theta, labels, margins) =
        match crate::kernel::softmax_cross_entropy_rows(cos_theta, labels.clone(), margins, config)
        {
            Ok(rows) => return mean_over_targets(rows.loss, labels),
            Err(inputs) => inputs,
        };
    margin_cross_entropy_tensor_ops(cos_theta, labels, margins, config)
}

/// [`margin_cross_entropy`] as burn tensor operations, on any backend.
///
/// # Shapes
/// As [`margin_cross_entropy`].
pub fn margin_cross_entropy_tensor_ops(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Tensor<1> {
    let logits = margin_logits_tensor_ops(cos_theta, labels.clone(), margins, config);
    cross_entropy(logits, labels)
}

/// The loss of one batch.
pub struct HeadOutput {
    /// Mean cross-entropy over rows with a target, `[1]`.
    pub loss: Tensor<1>,
    /// The margin each row received.
    pub margins: Vec<f64>,
}

/// A margin head: its configuration and the random stream its elastic margins come from.
/// The class centres are a module of their own so the optimiser can own them.
#[derive(Clone, Debug)]
pub struct MarginHead {
    /// The head's configuration.
    pub config: HeadConfig,
    /// The stream the margins are drawn from.
    pub sampler: MarginSampler,
}

impl MarginHead {
    /// A head whose margins are drawn from a stream seeded with `seed`.
    pub fn new(config: HeadConfig, seed: u64) -> Result<Self, HeadError> {
        config.validate()?;
        Ok(Self {
            config,
            sampler: MarginSampler::new(seed),
        })
    }

    /// Margin loss for a batch of embeddings.
    ///
    /// # Shapes
    /// - `embeddings`: `[batch_size, embedding_size]`
    /// - `labels`: `batch_size` values, −1 or a class index
    pub fn forward(
        &mut self,
        centers: &ClassCenters,
        embeddings: Tensor<2>,
        labels: &[i64],
    ) -> Result<HeadOutput, HeadError> {
        let [batch_size, _] = embeddings.dims();
        if labels.len() != batch_size {
            return Err(HeadError::Shape(format!(
                "{} labels for a batch of {batch_size} embeddings",
                labels.len()
            )));
        }
        validate_labels(labels, centers.num_classes())?;
        let device = embeddings.device();
        let cos_theta = centers.cos_theta(embeddings);
        let labels_tensor =
            Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [batch_size]), &device);

        let cos_target = if self.config.kind.is_plus() {
            Some(read_target_cosines(&cos_theta, &labels_tensor))
        } else {
            None
        };
        let margins = self
            .sampler
            .batch_margins(&self.config, labels, cos_target.as_deref());
        let margins_tensor = Tensor::<1>::from_data(
            TensorData::new(margins.iter().map(|&m| m as f32).collect(), [batch_size]),
            &device,
        );

        let loss = margin_cross_entropy(cos_theta, labels_tensor, margins_tensor, &self.config);
        Ok(HeadOutput { loss, margins })
    }
}

/// cos θ_y of each row, read back to the host (rows without a target read column 0).
fn read_target_cosines(cos_theta: &Tensor<2>, labels: &Tensor<1, Int>) -> Vec<f32> {
    let [batch_size, _] = cos_theta.dims();
    let index = labels.clone().clamp_min(0).reshape([batch_size, 1]);
    cos_theta
        .clone()
        .detach()
        .gather(1, index)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("cos θ is a float tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Device {
        Device::flex()
    }

    fn cos_tensor(rows: &[&[f32]], device: &Device) -> Tensor<2> {
        let columns = rows[0].len();
        let values: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(values, [rows.len(), columns]), device)
    }

    fn labels(values: &[i64], device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    fn margins(values: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    fn values(tensor: Tensor<2>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(actual: &[f32], expected: &[f64], tolerance: f64) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (f64::from(*a) - e).abs() <= tolerance * e.abs().max(1.0),
                "element {i}: got {a}, expected {e}"
            );
        }
    }

    // Hand values: cos θ = 0.5 (θ = 60°), m = 0.5.
    // cos(θ + m) = 0.5·cos 0.5 − sin 60°·sin 0.5 = 0.5·0.8775826 − 0.8660254·0.4794255
    //            = 0.4387913 − 0.4151948 = 0.0235965.
    const ARC_TARGET: f64 = 0.023_596_5;

    #[test]
    fn arcface_moves_only_the_target_logit() {
        let device = device();
        let config = HeadConfig::new(HeadKind::ArcFace);
        let cos = cos_tensor(&[&[0.5, 0.2, -0.1]], &device);
        let logits = margin_logits(
            cos,
            labels(&[0], &device),
            margins(&[0.5], &device),
            &config,
        );
        assert_close(&values(logits), &[64.0 * ARC_TARGET, 12.8, -6.4], 1e-4);
    }

    #[test]
    fn cosface_subtracts_the_margin_from_the_target_cosine() {
        let device = device();
        let config = HeadConfig::new(HeadKind::CosFace);
        let cos = cos_tensor(&[&[0.2, 0.5]], &device);
        let logits = margin_logits(
            cos,
            labels(&[1], &device),
            margins(&[0.35], &device),
            &config,
        );
        // 64·0.2 = 12.8 and 64·(0.5 − 0.35) = 9.6.
        assert_close(&values(logits), &[12.8, 9.6], 1e-5);
    }

    #[test]
    fn softmax_only_scales() {
        let device = device();
        let mut config = HeadConfig::new(HeadKind::Softmax);
        config.scale = 10.0;
        let cos = cos_tensor(&[&[0.5, -0.25]], &device);
        let logits = margin_logits(
            cos,
            labels(&[0], &device),
            margins(&[0.0], &device),
            &config,
        );
        assert_close(&values(logits), &[5.0, -2.5], 1e-6);
    }

    #[test]
    fn elastic_heads_use_each_rows_own_margin() {
        let device = device();
        let mut config = HeadConfig::new(HeadKind::ElasticCos);
        config.scale = 1.0;
        let cos = cos_tensor(&[&[0.9, 0.1], &[0.3, 0.7]], &device);
        let logits = margin_logits(
            cos,
            labels(&[0, 1], &device),
            margins(&[0.3, 0.4], &device),
            &config,
        );
        assert_close(&values(logits), &[0.6, 0.1, 0.3, 0.3], 1e-6);
    }

    #[test]
    fn overflow_policies_past_pi() {
        // cos θ = −0.95: θ ≈ 161.8°, θ + 0.5 rad ≈ 190.4° > 180°.
        // none: −0.95·cos 0.5 − √(1 − 0.9025)·sin 0.5 = −0.8337035 − 0.3122499·0.4794255
        //     = −0.9834045.
        // monotonic: cos θ < cos(π − 0.5) = −0.8775826, so −0.95 − 0.5·sin(π − 0.5)
        //     = −0.95 − 0.2397128 = −1.1897128.
        let device = device();
        let mut config = HeadConfig::new(HeadKind::ArcFace);
        config.scale = 1.0;
        let run = |config: &HeadConfig| {
            let cos = cos_tensor(&[&[-0.95, 0.0]], &device);
            values(margin_logits(
                cos,
                labels(&[0], &device),
                margins(&[0.5], &device),
                config,
            ))
        };
        assert_close(&run(&config), &[-0.983_404_5, 0.0], 1e-5);
        config.overflow = ThetaOverflow::Monotonic;
        assert_close(&run(&config), &[-1.189_712_8, 0.0], 1e-5);
        // Inside the range, both policies agree with cos(θ + m).
        let cos = cos_tensor(&[&[0.5]], &device);
        let logits = margin_logits(
            cos,
            labels(&[0], &device),
            margins(&[0.5], &device),
            &config,
        );
        assert_close(&values(logits), &[ARC_TARGET], 1e-4);
    }

    #[test]
    fn scalar_formula_matches_hand_values() {
        let none = ThetaOverflow::None;
        let arc = target_logit(0.5, 0.5, MarginFamily::Angular, none);
        assert!((arc - ARC_TARGET).abs() < 1e-6);
        assert!((target_logit(0.5, 0.35, MarginFamily::Cosine, none) - 0.15).abs() < 1e-12);
        let monotonic = target_logit(-0.95, 0.5, MarginFamily::Angular, ThetaOverflow::Monotonic);
        assert!((monotonic + 1.189_712_8).abs() < 1e-6);
    }

    #[test]
    fn rows_without_target_get_no_margin_and_no_loss() {
        let device = device();
        let mut config = HeadConfig::new(HeadKind::CosFace);
        config.scale = 1.0;
        let cos = cos_tensor(
            &[&[2.0, 0.0, 0.0], &[0.3, 0.2, 0.1], &[0.0, 1.0, 0.0]],
            &device,
        );
        let rows = labels(&[0, -1, 2], &device);
        // Margin 0 keeps the valid rows' logits as given, to check the loss by hand.
        let logits = margin_logits(
            cos,
            rows.clone(),
            margins(&[0.0, 0.35, 0.0], &device),
            &config,
        );
        let logits_values = values(logits.clone());
        // The row with label −1 is untouched even though a margin was passed for it.
        assert_close(&logits_values[3..6], &[0.3, 0.2, 0.1], 1e-6);
        // Row 0: log(e² + 2) − 2 = 0.2395308; row 2: log(e + 2) − 0 = 1.5514448.
        let loss = cross_entropy(logits, rows).into_scalar::<f32>();
        assert!(
            (f64::from(loss) - (0.239_530_8 + 1.551_444_8) / 2.0).abs() < 1e-5,
            "{loss}"
        );
    }

    #[test]
    fn loss_of_a_batch_without_targets_is_zero() {
        let device = device();
        let cos = cos_tensor(&[&[0.1, 0.2]], &device);
        let loss = cross_entropy(cos, labels(&[-1], &device)).into_scalar::<f32>();
        assert_eq!(loss, 0.0);
    }

    #[test]
    fn gradients_stay_finite_at_cos_theta_plus_minus_one() {
        let device = device().autodiff();
        for overflow in [ThetaOverflow::None, ThetaOverflow::Monotonic] {
            let mut config = HeadConfig::new(HeadKind::ElasticArc);
            config.overflow = overflow;
            let cos = cos_tensor(&[&[1.0, 0.0], &[0.0, -1.0]], &device).require_grad();
            let logits = margin_logits(
                cos.clone(),
                labels(&[0, 1], &device),
                margins(&[0.5, 0.45], &device),
                &config,
            );
            let loss = cross_entropy(logits, labels(&[0, 1], &device));
            let grads = loss.backward();
            let grad = cos.grad(&grads).expect("cos θ takes part in the loss");
            let grad = grad.into_data().try_to_vec::<f32>().unwrap();
            assert!(grad.iter().all(|g| g.is_finite()), "{overflow:?}: {grad:?}");
            assert!(
                grad.iter().any(|g| *g != 0.0),
                "{overflow:?}: gradient vanished"
            );
        }
    }

    #[test]
    fn target_logit_gradient_matches_its_derivative() {
        // d cos(θ + m) / d cos θ = sin(θ + m) / sin θ; at cos θ = 0.5, m = 0.5:
        // sin(1.5471976) / sin(1.0471976) = 0.9997216 / 0.8660254 = 1.1543796.
        let device = device().autodiff();
        let mut config = HeadConfig::new(HeadKind::ArcFace);
        config.scale = 1.0;
        let cos = cos_tensor(&[&[0.5]], &device).require_grad();
        let logits = margin_logits(
            cos.clone(),
            labels(&[0], &device),
            margins(&[0.5], &device),
            &config,
        );
        let grads = logits.sum().backward();
        let grad = cos
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((f64::from(grad[0]) - 1.154_379_6).abs() < 1e-4, "{grad:?}");
    }

    #[test]
    fn plus_assignment_on_the_documented_vector() {
        let cos_target = [0.1, 0.9, 0.5];
        let draws = [0.5, 0.6, 0.4];
        let rank = assign_margins(&cos_target, &draws, MarginAssignment::RankMatched);
        assert_eq!(rank, vec![0.6, 0.4, 0.5]);
        let reference = assign_margins(&cos_target, &draws, MarginAssignment::Reference);
        assert_eq!(reference, vec![0.5, 0.6, 0.4]);
    }

    #[test]
    fn same_seed_draws_the_same_margins_and_resumes_where_it_stopped() {
        let config = HeadConfig::new(HeadKind::ElasticArc);
        let labels = [0, 1, -1, 2];
        let mut a = MarginSampler::new(7);
        let mut b = MarginSampler::new(7);
        let first = a.batch_margins(&config, &labels, None);
        assert_eq!(first, b.batch_margins(&config, &labels, None));
        assert_eq!(first[2], 0.0, "no margin without a target");
        assert_ne!(
            first,
            MarginSampler::new(8).batch_margins(&config, &labels, None)
        );

        let mut resumed = MarginSampler::from_state(&a.state()).unwrap();
        assert_eq!(
            a.batch_margins(&config, &labels, None),
            resumed.batch_margins(&config, &labels, None)
        );
    }

    #[test]
    fn elastic_draws_follow_the_configured_normal() {
        let mut sampler = MarginSampler::new(3);
        let n = 20_000;
        let draws = sampler.draw(0.5, 0.05, n);
        let mean = draws.iter().sum::<f64>() / n as f64;
        let std = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        // Standard errors: 0.05 / √n ≈ 3.5e-4 for the mean, about 2.5e-4 for σ.
        assert!((mean - 0.5).abs() < 2e-3, "mean {mean}");
        assert!((std - 0.05).abs() < 2e-3, "std {std}");
    }

    #[test]
    fn fixed_margin_heads_give_every_target_row_m() {
        let config = HeadConfig::new(HeadKind::CosFace);
        let margins = MarginSampler::new(1).batch_margins(&config, &[3, -1, 0], None);
        assert_eq!(margins, vec![0.35, 0.0, 0.35]);
    }

    #[test]
    fn plus_heads_assign_by_difficulty_in_a_forward_pass() {
        let device = device();
        let mut config = HeadConfig::new(HeadKind::ElasticCosPlus);
        config.sigma = 0.1;
        let mut head = MarginHead::new(config, 11).unwrap();
        // Embeddings equal to centre rows give cos θ_y = 1 for row 0; row 1 is orthogonal to
        // its centre, so it is the harder sample and must get the larger margin.
        let centers = ClassCenters {
            weight: Param::from_tensor(cos_tensor(&[&[1.0, 0.0], &[0.0, 1.0]], &device)),
        };
        let embeddings = cos_tensor(&[&[1.0, 0.0], &[1.0, 0.0]], &device);
        let output = head.forward(&centers, embeddings, &[0, 1]).unwrap();
        assert!(
            output.margins[1] >= output.margins[0],
            "{:?}",
            output.margins
        );
    }

    #[test]
    fn defaults_match_the_official_configuration() {
        assert_eq!(HeadKind::ElasticArc.reference_defaults(), (64.0, 0.5, 0.05));
        assert_eq!(
            HeadKind::ElasticCos.reference_defaults(),
            (64.0, 0.35, 0.05)
        );
        assert_eq!(
            HeadKind::ElasticArcPlus.reference_defaults(),
            (64.0, 0.5, 0.0175)
        );
        assert_eq!(
            HeadKind::ElasticCosPlus.reference_defaults(),
            (64.0, 0.35, 0.02)
        );
    }

    #[test]
    fn bad_labels_are_errors_naming_the_row() {
        assert_eq!(
            validate_labels(&[0, 5], 5),
            Err(HeadError::LabelOutOfRange {
                row: 1,
                label: 5,
                num_classes: 5
            })
        );
        assert!(validate_labels(&[-2], 5).is_err());
        assert!(validate_labels(&[-1, 4], 5).is_ok());
        assert_eq!(
            labels_from_floats(&[1.0, 2.5]),
            Err(HeadError::NonIntegerLabel { row: 1, label: 2.5 })
        );
        assert_eq!(labels_from_floats(&[3.0, 0.0]), Ok(vec![3, 0]));
    }

    #[test]
    fn head_forward_refuses_labels_beyond_the_classes() {
        let device = device();
        let mut head = MarginHead::new(HeadConfig::new(HeadKind::ArcFace), 0).unwrap();
        let centers = ClassCenters::new(3, 4, &device);
        let embeddings = Tensor::<2>::ones([2, 4], &device);
        let error = head.forward(&centers, embeddings, &[0, 3]).err().unwrap();
        assert!(error.to_string().contains("label 3 at row 1"), "{error}");
    }

    #[test]
    fn config_files_fill_in_the_reference_defaults() {
        #[derive(Deserialize)]
        struct File {
            head: HeadConfig,
        }
        let file: File = toml_like("elastic-cos+");
        assert_eq!(file.head, HeadConfig::new(HeadKind::ElasticCosPlus));
        fn toml_like(kind: &str) -> File {
            // JSON stands in for TOML here: core does not depend on a TOML parser.
            let text = format!("{{\"head\": {{\"kind\": \"{kind}\"}}}}");
            serde_json::from_str(&text).unwrap()
        }
    }

    #[test]
    fn cos_theta_is_the_cosine_of_normalised_vectors() {
        let device = device();
        let centers = ClassCenters {
            weight: Param::from_tensor(cos_tensor(&[&[2.0, 0.0], &[1.0, 1.0]], &device)),
        };
        let cos = centers.cos_theta(cos_tensor(&[&[0.0, 3.0]], &device));
        assert_close(&values(cos), &[0.0, std::f64::consts::FRAC_1_SQRT_2], 1e-6);
    }
}
