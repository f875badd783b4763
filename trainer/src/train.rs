//! The training loop: batches from the loader → backbone → margin head and loss → backward →
//! gradient clipping → SGD step, with periodic evaluation, metrics, plots and checkpoints.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use elasticface_core::backbone::INPUT_SIZE;
use elasticface_core::head::{MarginHead, MarginSampler};
use elasticface_core::model::FaceModel;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backend;
use crate::checkpoint::{self, TrainingState};
use crate::config::{OptimizerConfig, TrainConfig};
use crate::data::{Loader, TrainingSet};
use crate::evaluate::{EvalReport, Evaluator};
use crate::plot::{self, MetricRow};

/// What a finished run reports (also written as `summary.json`).
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// Head name.
    pub head: String,
    /// Backbone name.
    pub backbone: String,
    /// Device description.
    pub device: String,
    /// Training images and identities.
    pub images: usize,
    /// Training identities.
    pub identities: usize,
    /// Images skipped as unreadable, while scanning and during training.
    pub skipped_images: usize,
    /// Steps done.
    pub steps: usize,
    /// Wall time of training, evaluations included, in seconds.
    pub wall_seconds: f64,
    /// Mean training throughput.
    pub images_per_second: f64,
    /// The last evaluation.
    pub final_eval: Option<EvalReport>,
    /// The untrained network's evaluation (when asked for).
    pub untrained_eval: Option<EvalReport>,
}

/// Sums of squares and rescaling of the backbone's gradients, for clipping their global norm
/// as `torch.nn.utils.clip_grad_norm_` does (one norm over all tensors, not one per tensor).
struct GlobalNorm<'a> {
    grads: &'a mut GradientsParams,
    squares: Option<Tensor<1>>,
    scale: Option<f64>,
}

impl ModuleVisitor for GlobalNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        match self.scale {
            None => {
                let squares = grad.clone().square().sum();
                self.squares = Some(match self.squares.take() {
                    Some(total) => total + squares,
                    None => squares,
                });
                self.grads.register(param.id, grad);
            }
            Some(scale) => self.grads.register(param.id, grad.mul_scalar(scale)),
        }
    }
}

/// Scales the gradients of `module` so their global L2 norm is at most `max_norm`.
/// Returns the norm before clipping.
pub(crate) fn clip_global_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let mut pass = GlobalNorm {
        grads,
        squares: None,
        scale: None,
    };
    module.visit(&mut pass);
    let Some(squares) = pass.squares else {
        return 0.0;
    };
    let norm = f64::from(squares.into_scalar::<f32>()).sqrt();
    if norm > max_norm {
        let mut pass = GlobalNorm {
            grads,
            squares: None,
            scale: Some(max_norm / (norm + 1e-6)),
        };
        module.visit(&mut pass);
    }
    norm
}

/// SGD with momentum and weight decay, as the reference trains.
pub(crate) fn optimizer(config: &OptimizerConfig) -> ModuleOptimizer {
    SgdConfig::new()
        .with_momentum(Some(MomentumConfig {
            momentum: config.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(Some(WeightDecayConfig {
            penalty: config.weight_decay as f32,
        }))
        .init()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

fn evaluate_now(evaluator: &Evaluator, model: &FaceModel, device: &Device) -> Result<EvalReport> {
    let inference = model.backbone.valid();
    evaluator.evaluate(&inference, device)
}

/// Runs (or resumes) the training described by `config`.
pub fn run(config: &TrainConfig, resume: bool, evaluate_untrained: bool) -> Result<RunSummary> {
    config.validate()?;
    let started = Instant::now();
    let output = &config.output;
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create output folder {}", output.display()))?;

    let resume_from = if resume {
        let latest = checkpoint::latest(output)?;
        if latest.is_none() {
            bail!("--resume: {} holds no checkpoint", output.display());
        }
        latest
    } else {
        if checkpoint::latest(output)?.is_some() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another output",
                output.display()
            );
        }
        None
    };
    std::fs::write(output.join("config.toml"), config.to_toml()?)?;

    let chosen = backend::choose(config.backend)?;
    tracing::info!("device: {}", chosen.description);
    let device = chosen.device.clone();
    device.seed(config.seed);
    let train_device = device.clone().autodiff();

    let dataset = Arc::new(TrainingSet::open(&config.data)?);
    let (smallest, median, largest) = dataset.identity_sizes();
    tracing::info!(
        "training set: {} images of {} identities (images per identity: min {smallest}, median \
         {median}, max {largest})",
        dataset.samples.len(),
        dataset.classes.len()
    );
    if dataset.skipped_images + dataset.skipped_identities > 0 {
        tracing::warn!(
            "skipped {} unreadable images and {} identities without usable images",
            dataset.skipped_images,
            dataset.skipped_identities
        );
    }
    std::fs::write(
        output.join("classes.txt"),
        dataset.classes.join("\n") + "\n",
    )?;

    let batch_size = config.data.batch_size;
    let steps_per_epoch = dataset.samples.len() / batch_size;
    if steps_per_epoch == 0 {
        bail!(
            "batch size {batch_size} is larger than the training set ({} images)",
            dataset.samples.len()
        );
    }
    let mut total_steps = steps_per_epoch * config.train.epochs;
    if let Some(max_steps) = config.train.max_steps {
        total_steps = total_steps.min(max_steps);
    }

    let evaluator = match &config.eval {
        Some(eval) => {
            let evaluator = Evaluator::new(eval, config.data.skip_bad)?;
            tracing::info!(
                "evaluation: {} pairs from {} ({} images)",
                evaluator.faces.pairs.len(),
                eval.pairs.display(),
                evaluator.faces.faces.len()
            );
            Some(evaluator)
        }
        None => None,
    };

    let mut head = MarginHead::new(config.head.clone(), config.seed)?;
    let mut optim = optimizer(&config.optimizer);
    let mut state = TrainingState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        sampler: head.sampler.state(),
        num_classes: dataset.classes.len(),
        backbone: config.backbone.clone(),
        elapsed_seconds: 0.0,
    };
    let mut model = match &resume_from {
        Some(path) => {
            state = checkpoint::read_state(path)?;
            if state.num_classes != dataset.classes.len() {
                bail!(
                    "checkpoint {} has {} classes but the training set now has {}",
                    path.display(),
                    state.num_classes,
                    dataset.classes.len()
                );
            }
            head.sampler = MarginSampler::from_state(&state.sampler)?;
            optim = checkpoint::load_optimizer(path, optim)?;
            tracing::info!("resuming from {} at step {}", path.display(), state.step);
            checkpoint::load_model(path, &state, &train_device)?
        }
        None => FaceModel::new(&config.backbone, dataset.classes.len(), &train_device),
    };
    tracing::info!(
        "model: {} backbone ({:.2} M parameters), {} head (s = {}, m = {}, σ = {}), {} classes",
        serde_json::to_string(&config.backbone.architecture)?.trim_matches('"'),
        elasticface_core::backbone::parameter_count(&model.backbone) as f64 / 1e6,
        config.head.kind.name(),
        config.head.scale,
        config.head.margin,
        config.head.sigma,
        dataset.classes.len()
    );

    let metrics_path = output.join("metrics.csv");
    let plot_path = output.join("curves.png");
    let mut metrics = if resume_from.is_some() {
        plot::read_metrics(&metrics_path)?
            .into_iter()
            .filter(|row| row.step <= state.step)
            .collect()
    } else {
        Vec::new()
    };
    let title = format!(
        "{} · {}",
        config.head.kind.name(),
        serde_json::to_string(&config.backbone.architecture)?.trim_matches('"')
    );

    let untrained_eval = match (&evaluator, evaluate_untrained && state.step == 0) {
        (Some(evaluator), true) => {
            let report = evaluate_now(evaluator, &model, &device)?;
            tracing::info!(
                "untrained network: accuracy {:.2} %",
                100.0 * report.accuracy
            );
            Some(report)
        }
        _ => None,
    };

    let mut loader = Loader::start(
        dataset.clone(),
        &config.data,
        config.seed,
        config.train.epochs,
        (state.epoch, state.batch_in_epoch),
    );
    let progress = ProgressBar::new(total_steps as u64).with_style(style(
        "{prefix} [{bar:30}] {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
    ));
    progress.set_position(state.step as u64);
    progress.set_prefix(config.head.kind.name().to_string());

    let elapsed_before = state.elapsed_seconds;
    let session_start = Instant::now();
    let mut window_start = Instant::now();
    let mut window_images = 0usize;
    let mut window_loss: Option<Tensor<1>> = None;
    let mut window_steps = 0usize;
    let mut last_eval: Option<EvalReport> = None;
    let budget = config.train.max_minutes.map(|m| m * 60.0);
    let log_every = config.train.log_every.max(1);

    while state.step < total_steps {
        if let Some(budget) = budget
            && elapsed_before + session_start.elapsed().as_secs_f64() >= budget
        {
            tracing::info!(
                "time budget of {:.1} minutes reached at step {}",
                budget / 60.0,
                state.step
            );
            break;
        }
        let Some(batch) = loader.next() else { break };
        let batch = batch?;
        if batch.labels.len() < 2 {
            // All but at most one image of this batch were unreadable and skipped; batch
            // normalisation cannot train on a single face.
            tracing::warn!(
                "skipping batch {} of epoch {}: fewer than two readable faces",
                batch.index,
                batch.epoch
            );
            continue;
        }
        let lr = config.schedule.lr_at(
            config.optimizer.lr,
            state.step,
            total_steps,
            steps_per_epoch,
        );

        let faces = Tensor::<4>::from_data(
            TensorData::new(batch.faces, [batch.labels.len(), 3, INPUT_SIZE, INPUT_SIZE]),
            &train_device,
        );
        let embeddings = model.embed(faces);
        let loss = head
            .forward(&model.centers, embeddings, &batch.labels)?
            .loss;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if config.optimizer.grad_clip_norm > 0.0 {
            clip_global_norm(&model.backbone, &mut grads, config.optimizer.grad_clip_norm);
        }
        model = optim.step(lr, model, grads);

        state.step += 1;
        state.epoch = batch.epoch;
        state.batch_in_epoch = batch.index + 1;
        if state.batch_in_epoch == steps_per_epoch {
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        window_images += batch.labels.len();
        window_steps += 1;
        let loss = loss.detach();
        window_loss = Some(match window_loss.take() {
            Some(sum) => sum + loss,
            None => loss,
        });
        progress.inc(1);

        let elapsed = elapsed_before + session_start.elapsed().as_secs_f64();
        if state.step % log_every == 0 || state.step == total_steps {
            let mean_loss = f64::from(
                window_loss
                    .take()
                    .expect("a step was taken")
                    .into_scalar::<f32>(),
            ) / window_steps as f64;
            if !mean_loss.is_finite() {
                bail!(
                    "training diverged at step {}: loss is {mean_loss}; lower optimizer.lr or \
                     the margin",
                    state.step
                );
            }
            let rate = window_images as f64 / window_start.elapsed().as_secs_f64();
            progress.set_message(format!(
                "loss {mean_loss:.3} · {rate:.1} img/s · lr {lr:.4}"
            ));
            if progress.is_hidden() {
                // No terminal to draw the bar on (a log file, CI): a log line instead.
                tracing::info!(
                    "step {}/{total_steps}: loss {mean_loss:.4}, {rate:.1} images/s, lr {lr:.5}",
                    state.step
                );
            }
            metrics.push(MetricRow {
                step: state.step,
                epoch: state.step as f64 / steps_per_epoch as f64,
                loss: Some(mean_loss),
                lr,
                images_per_second: Some(rate),
                accuracy: None,
                elapsed_seconds: elapsed,
            });
            window_start = Instant::now();
            window_images = 0;
            window_steps = 0;
        }

        let eval_due = config
            .eval
            .as_ref()
            .is_some_and(|e| e.every_steps > 0 && state.step % e.every_steps == 0);
        if let (true, Some(evaluator)) = (eval_due && state.step < total_steps, &evaluator) {
            let report = progress.suspend(|| evaluate_now(evaluator, &model, &device))?;
            progress.suspend(|| {
                tracing::info!(
                    "step {}: verification accuracy {:.2} % ± {:.2} (threshold {:.2})",
                    state.step,
                    100.0 * report.accuracy,
                    100.0 * report.std,
                    report.thresholds.first().copied().unwrap_or(f64::NAN)
                )
            });
            metrics.push(MetricRow {
                step: state.step,
                epoch: state.step as f64 / steps_per_epoch as f64,
                loss: None,
                lr,
                images_per_second: None,
                accuracy: Some(report.accuracy),
                elapsed_seconds: elapsed,
            });
            plot::write_metrics(&metrics_path, &metrics)?;
            plot::draw_curves(&plot_path, &title, &metrics)?;
            last_eval = Some(report);
            window_start = Instant::now();
            window_images = 0;
        }

        // The last step's checkpoint is written once, after the loop.
        if state.step % config.train.checkpoint_every.max(1) == 0 && state.step < total_steps {
            state.sampler = head.sampler.state();
            state.elapsed_seconds = elapsed;
            let path = checkpoint::save(output, &model, &optim, &state)?;
            progress.suspend(|| tracing::info!("checkpoint written: {}", path.display()));
            window_start = Instant::now();
            window_images = 0;
        }
    }
    drop(loader);
    progress.finish();
    let skipped_while_training = dataset
        .skipped_while_training
        .load(std::sync::atomic::Ordering::Relaxed);
    if skipped_while_training > 0 {
        tracing::warn!(
            "skipped {skipped_while_training} unreadable training images during training"
        );
    }

    let elapsed = elapsed_before + session_start.elapsed().as_secs_f64();
    state.sampler = head.sampler.state();
    state.elapsed_seconds = elapsed;
    let path = checkpoint::save(output, &model, &optim, &state)?;
    tracing::info!("checkpoint written: {}", path.display());

    if let Some(evaluator) = &evaluator {
        let report = evaluate_now(evaluator, &model, &device)?;
        tracing::info!(
            "final verification accuracy {:.2} % ± {:.2} at step {}",
            100.0 * report.accuracy,
            100.0 * report.std,
            state.step
        );
        metrics.push(MetricRow {
            step: state.step,
            epoch: state.step as f64 / steps_per_epoch as f64,
            loss: None,
            lr: config.schedule.lr_at(
                config.optimizer.lr,
                state.step.saturating_sub(1),
                total_steps,
                steps_per_epoch,
            ),
            images_per_second: None,
            accuracy: Some(report.accuracy),
            elapsed_seconds: elapsed,
        });
        last_eval = Some(report);
    }
    plot::write_metrics(&metrics_path, &metrics)?;
    plot::draw_curves(&plot_path, &title, &metrics)?;

    let summary = RunSummary {
        head: config.head.kind.name().to_string(),
        backbone: serde_json::to_string(&config.backbone.architecture)?
            .trim_matches('"')
            .to_string(),
        device: chosen.description,
        images: dataset.samples.len(),
        identities: dataset.classes.len(),
        skipped_images: dataset.skipped_images + skipped_while_training,
        steps: state.step,
        wall_seconds: started.elapsed().as_secs_f64() + elapsed_before,
        images_per_second: (state.step * batch_size) as f64 / elapsed.max(1e-9),
        final_eval: last_eval,
        untrained_eval,
    };
    std::fs::write(
        output.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}
