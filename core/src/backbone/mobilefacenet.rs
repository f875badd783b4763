//! MobileFaceNet in the InsightFace layout (`blocks = (1, 4, 6, 2)`, width scale 1): depthwise
//! separable bottlenecks, a 1×1 expansion to 512 channels and a global depthwise 7×7 convolution
//! (GDC) before a bias-free linear layer and BN1d. About 1.2 M parameters with a 512-D embedding.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::iresnet::BATCH_NORM_EPSILON;
use super::prelu::Prelu;

/// Convolution, batch norm and (optionally) PReLU: the reference's `ConvBlock` and, without
/// the PReLU, its `LinearBlock`.
#[derive(Module, Debug)]
pub struct ConvUnit {
    /// Bias-free convolution.
    pub conv: Conv2d,
    /// Batch norm after it.
    pub bn: BatchNorm,
    /// PReLU, absent in linear units.
    pub prelu: Option<Prelu>,
}

struct UnitSpec {
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    activation: bool,
}

impl ConvUnit {
    fn new(spec: UnitSpec, device: &Device) -> Self {
        let UnitSpec {
            input,
            output,
            kernel,
            stride,
            padding,
            groups,
            activation,
        } = spec;
        Self {
            conv: Conv2dConfig::new([input, output], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_groups(groups)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(output)
                .with_epsilon(BATCH_NORM_EPSILON)
                .init(device),
            prelu: activation.then(|| Prelu::new(output, device)),
        }
    }

    fn pointwise(input: usize, output: usize, activation: bool, device: &Device) -> Self {
        Self::new(
            UnitSpec {
                input,
                output,
                kernel: 1,
                stride: 1,
                padding: 0,
                groups: 1,
                activation,
            },
            device,
        )
    }

    fn depthwise(
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        activation: bool,
        device: &Device,
    ) -> Self {
        Self::new(
            UnitSpec {
                input: channels,
                output: channels,
                kernel,
                stride,
                padding,
                groups: channels,
                activation,
            },
            device,
        )
    }

    /// # Shapes
    /// `[batch, input, h, w]` → `[batch, output, h', w']`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = self.bn.forward(self.conv.forward(input));
        match &self.prelu {
            Some(prelu) => prelu.forward(x),
            None => x,
        }
    }
}

/// The reference's `DepthWise` bottleneck: 1×1 expansion, 3×3 depthwise, 1×1 linear
/// projection, with a residual connection inside the `Residual` stacks.
#[derive(Module, Debug)]
pub struct DepthWise {
    /// 1×1 expansion with PReLU.
    pub expand: ConvUnit,
    /// 3×3 depthwise convolution with PReLU.
    pub depthwise: ConvUnit,
    /// 1×1 linear projection.
    pub project: ConvUnit,
    /// Whether the input is added to the output.
    pub residual: bool,
}

impl DepthWise {
    fn new(
        input: usize,
        output: usize,
        expanded: usize,
        stride: usize,
        residual: bool,
        device: &Device,
    ) -> Self {
        Self {
            expand: ConvUnit::pointwise(input, expanded, true, device),
            depthwise: ConvUnit::depthwise(expanded, 3, stride, 1, true, device),
            project: ConvUnit::pointwise(expanded, output, false, device),
            residual,
        }
    }

    /// # Shapes
    /// `[batch, input, h, w]` → `[batch, output, h / stride, w / stride]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = self.expand.forward(input.clone());
        let x = self.depthwise.forward(x);
        let x = self.project.forward(x);
        if self.residual { x + input } else { x }
    }
}

/// MobileFaceNet.
#[derive(Module, Debug)]
pub struct MobileFaceNet {
    /// 3×3 stride-2 convolution, 3 → 64.
    pub stem: ConvUnit,
    /// 3×3 depthwise convolution at 56×56.
    pub stem_depthwise: ConvUnit,
    /// Bottlenecks: the stride-2 reductions and the residual stacks between them.
    pub blocks: Vec<DepthWise>,
    /// 1×1 expansion to 512 channels.
    pub conv_sep: ConvUnit,
    /// Global depthwise 7×7 convolution, no activation.
    pub gdc: ConvUnit,
    /// Bias-free linear layer 512 → embedding.
    pub linear: Linear,
    /// Batch norm of the embedding.
    pub features: BatchNorm,
}

impl MobileFaceNet {
    /// A freshly initialised MobileFaceNet with `embedding_size` outputs.
    pub fn new(embedding_size: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        // (input, output, expanded, stride, repeats of the residual stack that follows)
        let stages = [(64, 64, 128, 4), (64, 128, 256, 6), (128, 128, 512, 2)];
        for (input, output, expanded, repeats) in stages {
            blocks.push(DepthWise::new(input, output, expanded, 2, false, device));
            let residual_width = if output == 64 { 128 } else { 256 };
            for _ in 0..repeats {
                blocks.push(DepthWise::new(
                    output,
                    output,
                    residual_width,
                    1,
                    true,
                    device,
                ));
            }
        }
        Self {
            stem: ConvUnit::new(
                UnitSpec {
                    input: 3,
                    output: 64,
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                    groups: 1,
                    activation: true,
                },
                device,
            ),
            stem_depthwise: ConvUnit::depthwise(64, 3, 1, 1, true, device),
            blocks,
            conv_sep: ConvUnit::pointwise(128, 512, true, device),
            gdc: ConvUnit::depthwise(512, 7, 1, 0, false, device),
            linear: LinearConfig::new(512, embedding_size)
                .with_bias(false)
                .init(device),
            features: BatchNormConfig::new(embedding_size)
                .with_epsilon(BATCH_NORM_EPSILON)
                .init(device),
        }
    }

    /// # Shapes
    /// - `faces`: `[batch_size, 3, 112, 112]`
    /// - output: `[batch_size, embedding_size]`
    pub fn forward(&self, faces: Tensor<4>) -> Tensor<2> {
        let x = self.stem_depthwise.forward(self.stem.forward(faces));
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x));
        let x = self.gdc.forward(self.conv_sep.forward(x));
        let x: Tensor<2> = x.flatten(1, 3);
        self.features.forward(self.linear.forward(x))
    }
}
