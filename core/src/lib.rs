//! elasticface-core: everything of the ElasticFace trainer that does not touch files, threads
//! or clocks, so that the command-line trainer and the browser share one copy of the math.
//!
//! Pipeline order: [`preprocess`] → [`backbone`] → [`head`] (margin logits and loss) →
//! [`verify`] (evaluation protocols). [`model`] ties a backbone to its class centres.

pub mod backbone;
pub mod head;
#[cfg(feature = "wgpu")]
pub mod kernel;
pub mod model;
pub mod preprocess;
pub mod verify;

pub use burn;
