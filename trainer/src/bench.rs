//! Benchmarks (not tests): the training step of a backbone with its margin head, split into
//! forward, backward and optimiser time; and the margin loss alone, fused WGSL kernels against
//! the same math as separate burn tensor operations. Warm-up iterations are excluded and the
//! median of the timed iterations is reported.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use elasticface_core::backbone::{Architecture, BackboneConfig, INPUT_SIZE};
use elasticface_core::head::{HeadConfig, HeadKind, MarginHead};
use elasticface_core::model::FaceModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backend::ChosenDevice;
use crate::config::OptimizerConfig;
use crate::train::{clip_global_norm, optimizer};

/// Median of a set of durations, in seconds.
fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    let middle = seconds.len() / 2;
    if seconds.len() % 2 == 1 {
        seconds[middle]
    } else {
        (seconds[middle - 1] + seconds[middle]) / 2.0
    }
}

/// Waits until the device has finished the work queued so far, so clocks measure it.
fn sync(device: &Device) -> Result<()> {
    device
        .sync()
        .map_err(|error| anyhow::anyhow!("device failed: {error:?}"))
}

/// One measured training configuration.
#[derive(Debug, Serialize)]
pub struct TrainStepRow {
    /// Backbone name.
    pub backbone: String,
    /// Images per step.
    pub batch_size: usize,
    /// Classes of the head.
    pub classes: usize,
    /// Median forward time (backbone and margin loss), seconds.
    pub forward: f64,
    /// Median backward time, seconds.
    pub backward: f64,
    /// Median optimiser time (gradient clipping and SGD step), seconds.
    pub optimizer: f64,
    /// Median whole-step time, seconds.
    pub step: f64,
    /// Images per second at the median step time.
    pub images_per_second: f64,
}

/// Times `steps` training steps (after `warmup` untimed ones) of `architecture` with an
/// ElasticFace-Arc head over `classes` identities, on random faces already in memory.
pub fn train_step(
    chosen: &ChosenDevice,
    architecture: Architecture,
    batch_size: usize,
    classes: usize,
    warmup: usize,
    steps: usize,
) -> Result<TrainStepRow> {
    if batch_size == 0 || classes == 0 || steps == 0 {
        bail!("batch size, classes and steps must be at least 1");
    }
    let device = chosen.device.clone().autodiff();
    device.seed(1);
    let mut model = FaceModel::new(&BackboneConfig::new(architecture), classes, &device);
    let mut head = MarginHead::new(HeadConfig::new(HeadKind::ElasticArc), 1)?;
    let optimizer_config = OptimizerConfig::default();
    let mut optim = optimizer(&optimizer_config);

    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let values = batch_size * 3 * INPUT_SIZE * INPUT_SIZE;
    let faces: Vec<f32> = (0..values).map(|_| rng.random_range(-1.0..1.0)).collect();
    let labels: Vec<i64> = (0..batch_size)
        .map(|_| rng.random_range(0..classes as i64))
        .collect();

    let (mut forward, mut backward, mut update) = (Vec::new(), Vec::new(), Vec::new());
    for iteration in 0..warmup + steps {
        let faces = Tensor::<4>::from_data(
            TensorData::new(faces.clone(), [batch_size, 3, INPUT_SIZE, INPUT_SIZE]),
            &device,
        );
        sync(&device)?;
        let start = Instant::now();
        let loss = head
            .forward(&model.centers, model.embed(faces), &labels)?
            .loss;
        sync(&device)?;
        let forward_done = Instant::now();
        let gradients = loss.backward();
        sync(&device)?;
        let backward_done = Instant::now();
        let mut grads = GradientsParams::from_grads(gradients, &model);
        clip_global_norm(&model.backbone, &mut grads, optimizer_config.grad_clip_norm);
        model = optim.step(optimizer_config.lr, model, grads);
        sync(&device)?;
        let done = Instant::now();
        if iteration >= warmup {
            forward.push((forward_done - start).as_secs_f64());
            backward.push((backward_done - forward_done).as_secs_f64());
            update.push((done - backward_done).as_secs_f64());
        }
    }
    let step: Vec<f64> = (0..steps)
        .map(|i| forward[i] + backward[i] + update[i])
        .collect();
    let step = median(step);
    let name = serde_json::to_string(&architecture)?
        .trim_matches('"')
        .to_string();
    Ok(TrainStepRow {
        backbone: name,
        batch_size,
        classes,
        forward: median(forward),
        backward: median(backward),
        optimizer: median(update),
        step,
        images_per_second: batch_size as f64 / step,
    })
}

/// One measured margin-loss configuration.
#[derive(Debug, Serialize)]
pub struct HeadRow {
    /// Rows (batch size).
    pub batch_size: usize,
    /// Classes.
    pub classes: usize,
    /// Median forward + backward time of the fused kernels, seconds.
    pub fused: f64,
    /// Median forward + backward time of the tensor-op path, seconds.
    pub tensor_ops: f64,
    /// The least traffic the loss and its gradient need (read cos θ twice, write its gradient),
    /// in bytes.
    pub bytes: f64,
}

impl HeadRow {
    /// How many times faster the fused kernels are.
    pub fn speedup(&self) -> f64 {
        self.tensor_ops / self.fused
    }

    /// Bandwidth of the fused kernels in GB/s, counting the least traffic.
    pub fn fused_bandwidth(&self) -> f64 {
        self.bytes / self.fused / 1e9
    }

    /// Bandwidth of the tensor-op path in GB/s, counting the same least traffic.
    pub fn tensor_ops_bandwidth(&self) -> f64 {
        self.bytes / self.tensor_ops / 1e9
    }
}

/// Times the ElasticFace-Arc loss and its gradient with respect to cos θ through the fused
/// kernels and through burn tensor operations, on the same device and inputs.
pub fn head(
    chosen: &ChosenDevice,
    batch_size: usize,
    classes: usize,
    warmup: usize,
    iterations: usize,
) -> Result<HeadRow> {
    let device = chosen.device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let cos: Vec<f32> = (0..batch_size * classes)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels: Vec<i64> = (0..batch_size)
        .map(|_| rng.random_range(0..classes as i64))
        .collect();
    let margins: Vec<f32> = (0..batch_size)
        .map(|_| rng.random_range(0.4..0.6))
        .collect();
    let cos_theta =
        Tensor::<2>::from_data(TensorData::new(cos, [batch_size, classes]), &device).require_grad();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch_size]), &device);
    let margins = Tensor::<1>::from_data(TensorData::new(margins, [batch_size]), &device);
    let config = HeadConfig::new(HeadKind::ElasticArc);

    type Loss = fn(Tensor<2>, Tensor<1, Int>, Tensor<1>, &HeadConfig) -> Tensor<1>;
    let time = |loss: Loss| -> Result<f64> {
        // A first pass read back, so that a matrix the adapter cannot hold is an error here
        // rather than a silently empty timing.
        let value = loss(cos_theta.clone(), labels.clone(), margins.clone(), &config);
        if let Err(error) = value.try_into_data() {
            bail!(
                "{batch_size}×{classes} cos θ ({:.0} MiB) does not run on this device: {error:?}",
                (batch_size * classes * 4) as f64 / (1024.0 * 1024.0)
            );
        }
        let mut seconds = Vec::new();
        for iteration in 0..warmup + iterations {
            sync(&device)?;
            let start = Instant::now();
            let value = loss(cos_theta.clone(), labels.clone(), margins.clone(), &config);
            let grads = value.backward();
            let gradient = cos_theta.grad(&grads);
            sync(&device)?;
            drop(gradient);
            if iteration >= warmup {
                seconds.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(median(seconds))
    };
    let fused = time(elasticface_core::head::margin_cross_entropy)?;
    let tensor_ops = time(elasticface_core::head::margin_cross_entropy_tensor_ops)?;
    Ok(HeadRow {
        batch_size,
        classes,
        fused,
        tensor_ops,
        bytes: 12.0 * batch_size as f64 * classes as f64,
    })
}
