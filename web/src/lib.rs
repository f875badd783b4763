//! elasticface-web: the compare-two-photos page. [`pipeline`] holds the face pipeline (decode,
//! align, embed, compare) and builds everywhere, so the native `reference` example can recompute
//! what the page shows; [`detect`] is the seam to a face detector; the page itself (`app`, with
//! `browser` for the Web APIs it needs) exists only on `wasm32`.

pub mod detect;
pub mod pipeline;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod browser;

#[cfg(target_arch = "wasm32")]
pub use app::App;
