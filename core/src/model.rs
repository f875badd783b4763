//! The trained model: a backbone and the class centres of its margin head, kept together so
//! the optimiser updates both and a checkpoint holds both.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::backbone::{Backbone, BackboneConfig};
use crate::head::ClassCenters;

/// Backbone plus class centres.
#[derive(Module, Debug)]
pub struct FaceModel {
    /// Network from faces to embeddings.
    pub backbone: Backbone,
    /// One centre per training identity.
    pub centers: ClassCenters,
}

impl FaceModel {
    /// A freshly initialised model for `num_classes` identities.
    pub fn new(backbone: &BackboneConfig, num_classes: usize, device: &Device) -> Self {
        Self {
            backbone: backbone.init(device),
            centers: ClassCenters::new(num_classes, backbone.embedding_size, device),
        }
    }

    /// Embeddings of a batch of faces.
    ///
    /// # Shapes
    /// - `faces`: `[batch_size, 3, 112, 112]`
    /// - output: `[batch_size, embedding_size]`
    pub fn embed(&self, faces: Tensor<4>) -> Tensor<2> {
        self.backbone.forward(faces)
    }
}
