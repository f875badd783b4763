//! elasticface-core: everything of the ElasticFace trainer that does not touch files, threads
//! or clocks, so that the command-line trainer and the browser share one copy of the math.
//!
//! Pipeline order: [`preprocess`] → [`backbone`] → [`head`] (margin logits and loss) →
//! [`verify`] and [`ijb`] (evaluation protocols). [`model`] ties a backbone to its class centres;
//! [`kernel`] runs the margin loss as WGSL kernels on wgpu. Before preprocessing, [`mtcnn`]
//! finds faces and their landmarks in photos and [`align`] warps them to the template.

pub mod align;
pub mod backbone;
pub mod export;
pub mod head;
pub mod ijb;
#[cfg(feature = "wgpu")]
pub mod kernel;
pub mod model;
pub mod mtcnn;
pub mod preprocess;
pub mod verify;

pub use burn;
