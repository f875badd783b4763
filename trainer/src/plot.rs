//! The metrics of a run as a CSV file and as a PNG of the loss and verification-accuracy
//! curves, redrawn after every evaluation so a running job can be watched.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One row of `metrics.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricRow {
    /// Optimiser step.
    pub step: usize,
    /// Epoch (fractional).
    pub epoch: f64,
    /// Training loss (mean over the logging window), empty on evaluation rows.
    pub loss: Option<f64>,
    /// Learning rate.
    pub lr: f64,
    /// Images per second over the logging window.
    pub images_per_second: Option<f64>,
    /// Verification accuracy, on evaluation rows.
    pub accuracy: Option<f64>,
    /// Wall time since the start, in seconds.
    pub elapsed_seconds: f64,
}

/// Reads the metrics written so far (none when the file does not exist).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid {}", path.display()))
}

/// Rewrites the metrics file with `rows`.
pub fn write_metrics(path: &Path, rows: &[MetricRow]) -> Result<()> {
    let staging = path.with_extension("csv.partial");
    {
        let mut writer = csv::Writer::from_path(&staging)
            .with_context(|| format!("cannot write {}", staging.display()))?;
        for row in rows {
            writer.serialize(row)?;
        }
        writer.flush()?;
    }
    std::fs::rename(&staging, path)?;
    Ok(())
}

/// Fonts that plots may use, in order of preference (Debian's fonts-dejavu-core first).
const FONT_CANDIDATES: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system font for the plots' text once; returns whether one was found.
fn register_font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_CANDIDATES
            .iter()
            .find_map(|path| std::fs::read(path).ok())
            .is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

/// Draws the loss and accuracy curves into a PNG.
pub fn draw_curves(path: &Path, title: &str, rows: &[MetricRow]) -> Result<()> {
    if !register_font() {
        tracing::warn!(
            "no TrueType font found (install fonts-dejavu-core); skipping {}",
            path.display()
        );
        return Ok(());
    }
    let losses: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.loss.map(|l| (r.step as f64, l)))
        .collect();
    let accuracies: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.accuracy.map(|a| (r.step as f64, 100.0 * a)))
        .collect();
    let last_step = rows.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;

    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);

    let loss_max = losses.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&left)
        .caption("training loss", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..last_step, 0.0..loss_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(losses, &BLUE))
        .map_err(plot_error)?;

    let mut chart = ChartBuilder::on(&right)
        .caption("verification accuracy", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..last_step, 40.0..100.0)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("accuracy (%)")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(accuracies.clone(), &RED))
        .map_err(plot_error)?;
    chart
        .draw_series(
            accuracies
                .into_iter()
                .map(|p| Circle::new(p, 4, RED.filled())),
        )
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw plot: {error:?}")
}
