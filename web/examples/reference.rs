//! Native reference for the browser tests, and the development model.
//!
//! ```sh
//! # Embeddings of aligned crops (PNG files the page showed) and their cosine, as JSON:
//! cargo run --example reference -- embed assets/model/model.safetensors crop-0.png crop-1.png
//! # An untrained MobileFaceNet model file, for building the page before a trained one exists:
//! cargo run --example reference -- dev-model assets/model/model.safetensors
//! ```
//!
//! `embed` runs the page's own pipeline (`elasticface_web::pipeline`) on burn's CPU backend, so
//! the tests can hold the score the page shows to a computation outside the browser.

use std::path::Path;
use std::pin::pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};

use burn::module::Module;
use burn::tensor::Device;
use elasticface_core::backbone::{Architecture, BackboneConfig};
use elasticface_core::export::{ModelCard, export_backbone};
use elasticface_web::pipeline::{Recognizer, cosine};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("embed") if args.len() >= 3 => embed(&args[1], &args[2..]),
        Some("dev-model") if args.len() == 2 => dev_model(Path::new(&args[1])),
        _ => Err(
            "usage: reference embed MODEL CROP.png [CROP.png …] | reference dev-model OUT".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("reference: {message}");
            ExitCode::FAILURE
        }
    }
}

fn embed(model: &str, crops: &[String]) -> Result<(), String> {
    let bytes = std::fs::read(model).map_err(|e| format!("cannot read {model}: {e}"))?;
    let device = Device::flex();
    let recognizer = Recognizer::load(&bytes, &device).map_err(|e| format!("{model}: {e}"))?;
    let mut embeddings = Vec::new();
    for path in crops {
        let crop = image::open(path)
            .map_err(|e| format!("cannot decode {path}: {e}"))?
            .to_rgb8();
        embeddings.push(block_on(recognizer.embed(&crop))?);
    }
    let score = (embeddings.len() == 2).then(|| cosine(&embeddings[0], &embeddings[1]));
    let report = serde_json::json!({ "embeddings": embeddings, "score": score });
    println!("{report}");
    Ok(())
}

/// Writes a MobileFaceNet with freshly initialised weights (f16) and a card that says so.
fn dev_model(out: &Path) -> Result<(), String> {
    let device = Device::flex();
    let config = BackboneConfig::new(Architecture::MobileFaceNet);
    let backbone = config.init(&device).valid();
    let card = ModelCard {
        backbone: config,
        // An arbitrary line (cosine 0.5): an untrained network's scores mean nothing.
        threshold: Some(1.0),
        threshold_note: "Development model: untrained random weights, so the score and the \
                         verdict mean nothing; replace assets/model/model.safetensors with a \
                         trained model."
            .into(),
        trained_with: "nothing (untrained development model)".into(),
        accuracy: None,
        false_accept_rate: None,
    };
    let bytes = export_backbone(&backbone, &card, true).map_err(|e| e.to_string())?;
    if let Some(folder) = out.parent() {
        std::fs::create_dir_all(folder)
            .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    }
    std::fs::write(out, &bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
    Ok(())
}

/// Runs a future to completion on this thread; the CPU backend's reads are ready at once.
fn block_on<T>(future: impl Future<Output = T>) -> T {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut context) {
            return value;
        }
        std::thread::yield_now();
    }
}
