//! `elasticface`: train face-recognition networks with ElasticFace and related margin losses,
//! and evaluate them with the standard verification protocols.

mod backend;
mod bench;
mod checkpoint;
mod config;
mod data;
mod evaluate;
mod plot;
mod train;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use elasticface_core::backbone::Architecture;
use elasticface_core::head::HeadKind;
use tracing_subscriber::EnvFilter;

use crate::config::{BackendChoice, EvalConfig, Protocol, TrainConfig};

#[derive(Parser)]
#[command(name = "elasticface", version, about = "Train and evaluate ElasticFace face-recognition models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML config (flags override the file).
    Train(TrainArgs),
    /// Evaluate a trained model (or raw pixels) on a verification pair list.
    Eval(EvalArgs),
    /// Benchmarks: training step time, or the margin loss's kernels against tensor operations.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training step time (forward, backward, optimiser) on random faces already in memory.
    Train(BenchTrainArgs),
    /// The margin loss with its gradient: fused WGSL kernels against burn tensor operations.
    Head(BenchHeadArgs),
}

#[derive(Args)]
struct BenchTrainArgs {
    /// Backbones to time.
    #[arg(long, value_delimiter = ',', default_value = "mobilefacenet,iresnet18,iresnet50")]
    backbones: Vec<Architecture>,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    batch_sizes: Vec<usize>,
    /// Class counts of the ElasticFace-Arc head.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    classes: Vec<usize>,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchHeadArgs {
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    batch_sizes: Vec<usize>,
    /// Class counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,85742")]
    classes: Vec<usize>,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Backend: a wgpu adapter (hardware when present, else software).
    #[arg(long, value_enum, default_value = "wgpu")]
    backend: BackendChoice,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    /// The experiment's config file.
    #[arg(long)]
    config: PathBuf,
    /// Continue the run in the output folder from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Output folder.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Backend.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Margin head (softmax, arcface, cosface, elastic-arc, elastic-cos, elastic-arc+,
    /// elastic-cos+); its s, m, σ reset to the head's defaults unless also given.
    #[arg(long)]
    head: Option<HeadKind>,
    /// Scale s.
    #[arg(long)]
    scale: Option<f64>,
    /// Margin m.
    #[arg(long)]
    margin: Option<f64>,
    /// Margin standard deviation σ.
    #[arg(long)]
    sigma: Option<f64>,
    /// Backbone (iresnet18/34/50/100/200, mobilefacenet).
    #[arg(long)]
    backbone: Option<Architecture>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Stop after this many minutes of wall time.
    #[arg(long)]
    max_minutes: Option<f64>,
    /// Images per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Log the loss every this many steps.
    #[arg(long)]
    log_every: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Skip unreadable images and empty identity folders, reporting their count.
    #[arg(long)]
    skip_bad: bool,
    /// Evaluate the untrained network first (a baseline row for result tables).
    #[arg(long)]
    eval_untrained: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder written by `elasticface train`.
    #[arg(long, required_unless_present = "raw_pixels")]
    model: Option<PathBuf>,
    /// Evaluate flattened, normalised pixels instead of a model (a baseline).
    #[arg(long)]
    raw_pixels: bool,
    /// Pair list: LFW pairs.txt format, or CSV with img1,img2,same[,fold].
    #[arg(long)]
    pairs: PathBuf,
    /// Folder the pair list's paths are relative to (default: the pair list's folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// k for the k-fold protocol.
    #[arg(long, default_value_t = 10)]
    folds: usize,
    /// Use the split protocol: choose the threshold on these folds of the pair list.
    #[arg(long, value_delimiter = ',', requires = "test_folds")]
    tune_folds: Vec<usize>,
    /// Use the split protocol: report accuracy on these folds of the pair list.
    #[arg(long, value_delimiter = ',', requires = "tune_folds")]
    test_folds: Vec<usize>,
    /// FARs at which TAR is reported.
    #[arg(long, value_delimiter = ',', default_value = "0.001,0.01,0.1")]
    fars: Vec<f64>,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Faces per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Drop pairs whose images cannot be read, reporting their count.
    #[arg(long)]
    skip_bad: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn train(args: TrainArgs) -> Result<()> {
    let mut config = TrainConfig::load(&args.config)?;
    if let Some(output) = args.output {
        config.output = output;
    }
    if let Some(backend) = args.backend {
        config.backend = backend;
    }
    if let Some(kind) = args.head {
        config.head = elasticface_core::head::HeadConfig::new(kind);
    }
    if let Some(scale) = args.scale {
        config.head.scale = scale;
    }
    if let Some(margin) = args.margin {
        config.head.margin = margin;
    }
    if let Some(sigma) = args.sigma {
        config.head.sigma = sigma;
    }
    if let Some(architecture) = args.backbone {
        config.backbone.architecture = architecture;
    }
    if let Some(epochs) = args.epochs {
        config.train.epochs = epochs;
    }
    if let Some(max_steps) = args.max_steps {
        config.train.max_steps = Some(max_steps);
    }
    if let Some(max_minutes) = args.max_minutes {
        config.train.max_minutes = Some(max_minutes);
    }
    if let Some(batch_size) = args.batch_size {
        config.data.batch_size = batch_size;
    }
    if let Some(log_every) = args.log_every {
        config.train.log_every = log_every;
    }
    if let Some(lr) = args.lr {
        config.optimizer.lr = lr;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if args.skip_bad {
        config.data.skip_bad = true;
    }

    let summary = train::run(&config, args.resume, args.eval_untrained)?;
    println!();
    println!(
        "trained {} steps in {:.1} min ({:.1} images/s) on {}",
        summary.steps,
        summary.wall_seconds / 60.0,
        summary.images_per_second,
        summary.device
    );
    if let Some(report) = &summary.untrained_eval {
        evaluate::print_report("untrained network", report);
    }
    if let Some(report) = &summary.final_eval {
        evaluate::print_report(&format!("{} after training", summary.head), report);
    }
    println!("outputs in {}", config.output.display());
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let protocol = if args.tune_folds.is_empty() {
        Protocol::Kfold { folds: args.folds }
    } else {
        Protocol::Split {
            tune_folds: args.tune_folds.clone(),
            test_folds: args.test_folds.clone(),
        }
    };
    let root = match args.root {
        Some(root) => root,
        None => args
            .pairs
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let eval_config = EvalConfig {
        root,
        pairs: args.pairs.clone(),
        every_steps: 0,
        protocol,
        batch_size: args.batch_size.max(1),
        fars: args.fars.clone(),
    };
    let evaluator = evaluate::Evaluator::new(&eval_config, args.skip_bad)?;

    let (name, report) = if args.raw_pixels {
        let embeddings = evaluate::raw_pixel_embeddings(&evaluator.faces.faces);
        ("raw pixels".to_string(), evaluator.evaluate_embeddings(&embeddings)?)
    } else {
        let run = args.model.expect("clap requires --model without --raw-pixels");
        let Some(latest) = checkpoint::latest(&run)? else {
            bail!("{} holds no checkpoint (expected a run folder of `elasticface train`)", run.display());
        };
        let state = checkpoint::read_state(&latest)?;
        let chosen = backend::choose(args.backend)?;
        tracing::info!("device: {}", chosen.description);
        let model = checkpoint::load_model(&latest, &state, &chosen.device)?;
        let backbone = burn::module::Module::valid(&model.backbone);
        let report = evaluator.evaluate(&backbone, &chosen.device)?;
        (format!("{} (step {})", run.display(), state.step), report)
    };
    evaluate::print_report(&name, &report);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn write_json<T: serde::Serialize>(path: Option<&PathBuf>, rows: &T) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(rows)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn bench_train(args: BenchTrainArgs) -> Result<()> {
    let chosen = backend::choose(args.backend)?;
    println!("training step on {} (median of {} steps after {} warm-up)", chosen.description, args.steps, args.warmup);
    println!(
        "{:<14} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "backbone", "batch", "classes", "forward", "backward", "optimizer", "step", "images/s"
    );
    let mut rows = Vec::new();
    for &architecture in &args.backbones {
        for &batch_size in &args.batch_sizes {
            for &classes in &args.classes {
                let row = bench::train_step(&chosen, architecture, batch_size, classes, args.warmup, args.steps)?;
                println!(
                    "{:<14} {:>6} {:>7} {:>9.3}s {:>9.3}s {:>9.3}s {:>9.3}s {:>9.1}",
                    row.backbone, row.batch_size, row.classes, row.forward, row.backward,
                    row.optimizer, row.step, row.images_per_second
                );
                rows.push(row);
            }
        }
    }
    write_json(args.json.as_ref(), &rows)
}

fn bench_head(args: BenchHeadArgs) -> Result<()> {
    let chosen = backend::choose(args.backend)?;
    println!(
        "ElasticFace-Arc loss and d loss / d cos θ on {} (median of {} after {} warm-up)",
        chosen.description, args.iterations, args.warmup
    );
    println!(
        "{:>6} {:>7} {:>11} {:>11} {:>8} {:>12} {:>12}",
        "batch", "classes", "fused", "tensor ops", "speed-up", "fused GB/s", "tensor GB/s"
    );
    let mut rows = Vec::new();
    for &batch_size in &args.batch_sizes {
        for &classes in &args.classes {
            let row = bench::head(&chosen, batch_size, classes, args.warmup, args.iterations)?;
            println!(
                "{:>6} {:>7} {:>9.2}ms {:>9.2}ms {:>7.2}× {:>12.2} {:>12.2}",
                row.batch_size,
                row.classes,
                1e3 * row.fused,
                1e3 * row.tensor_ops,
                row.speedup(),
                row.fused_bandwidth(),
                row.tensor_ops_bandwidth()
            );
            rows.push(row);
        }
    }
    println!("GB/s counts the least traffic: cos θ read twice and its gradient written once (12·B·C bytes).");
    write_json(args.json.as_ref(), &rows)
}

fn main() -> ExitCode {
    // Logs go to stderr, so stdout carries only results (tables, summaries) for scripts.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Bench(BenchCommand::Train(args)) => bench_train(args),
        Command::Bench(BenchCommand::Head(args)) => bench_head(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
