//! iResNet, as in the InsightFace and ElasticFace reference code: a pre-activation-style
//! residual block (BN → conv → BN → PReLU → conv → BN), four stride-2 stages, and a head of
//! BN2d → flatten → dropout → linear → BN1d with its scale fixed at 1.
//! Field names follow the reference's parameter names (`layer1.0.bn1.weight`, ...).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::tensor::{Device, Tensor};

use super::prelu::Prelu;

/// Epsilon of every batch norm in the reference.
pub const BATCH_NORM_EPSILON: f64 = 1e-5;

/// Spatial size of the last feature map for a 112×112 input.
const FINAL_MAP: usize = 7;

/// The depths of the reference: blocks per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IResNetDepth {
    /// iResNet-18: 2, 2, 2, 2 blocks.
    R18,
    /// iResNet-34: 3, 4, 6, 3 blocks.
    R34,
    /// iResNet-50: 3, 4, 14, 3 blocks.
    R50,
    /// iResNet-100: 3, 13, 30, 3 blocks.
    R100,
    /// iResNet-200: 6, 26, 60, 6 blocks.
    R200,
}

impl IResNetDepth {
    /// Blocks in each of the four stages.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            IResNetDepth::R18 => [2, 2, 2, 2],
            IResNetDepth::R34 => [3, 4, 6, 3],
            IResNetDepth::R50 => [3, 4, 14, 3],
            IResNetDepth::R100 => [3, 13, 30, 3],
            IResNetDepth::R200 => [6, 26, 60, 6],
        }
    }
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            kernel / 2,
            kernel / 2,
            kernel / 2,
            kernel / 2,
        ))
        .with_bias(false)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.1,
        })
        .init(device)
}

fn batch_norm(features: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(features)
        .with_epsilon(BATCH_NORM_EPSILON)
        .init(device)
}

/// The 1×1 convolution and batch norm that match a shortcut to its block's output.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1×1 convolution with the block's stride.
    pub conv: Conv2d,
    /// Batch norm after it.
    pub bn: BatchNorm,
}

/// The reference's `IBasicBlock`.
#[derive(Module, Debug)]
pub struct IBasicBlock {
    /// Batch norm of the input.
    pub bn1: BatchNorm,
    /// First 3×3 convolution (stride 1).
    pub conv1: Conv2d,
    /// Batch norm after it.
    pub bn2: BatchNorm,
    /// Per-channel PReLU.
    pub prelu: Prelu,
    /// Second 3×3 convolution (carries the block's stride).
    pub conv2: Conv2d,
    /// Batch norm of the output.
    pub bn3: BatchNorm,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample>,
}

impl IBasicBlock {
    fn new(input: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || input != planes).then(|| Downsample {
            conv: conv(input, planes, 1, stride, device),
            bn: batch_norm(planes, device),
        });
        Self {
            bn1: batch_norm(input, device),
            conv1: conv(input, planes, 3, 1, device),
            bn2: batch_norm(planes, device),
            prelu: Prelu::new(planes, device),
            conv2: conv(planes, planes, 3, stride, device),
            bn3: batch_norm(planes, device),
            downsample,
        }
    }

    /// # Shapes
    /// `[batch, input, h, w]` → `[batch, planes, h / stride, w / stride]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let out = self.bn1.forward(input.clone());
        let out = self.conv1.forward(out);
        let out = self.bn2.forward(out);
        let out = self.prelu.forward(out);
        let out = self.conv2.forward(out);
        let out = self.bn3.forward(out);

        let shortcut = match &self.downsample {
            Some(downsample) => downsample.bn.forward(downsample.conv.forward(input)),
            None => input,
        };
        out + shortcut
    }
}

/// The iResNet backbone.
#[derive(Module, Debug)]
pub struct IResNet {
    /// Stem: 3×3 convolution, 3 → 64, stride 1.
    pub conv1: Conv2d,
    /// Stem batch norm.
    pub bn1: BatchNorm,
    /// Stem PReLU.
    pub prelu: Prelu,
    /// Stage of width 64.
    pub layer1: Vec<IBasicBlock>,
    /// Stage of width 128.
    pub layer2: Vec<IBasicBlock>,
    /// Stage of width 256.
    pub layer3: Vec<IBasicBlock>,
    /// Stage of width 512.
    pub layer4: Vec<IBasicBlock>,
    /// Batch norm of the last feature map.
    pub bn2: BatchNorm,
    /// Dropout before the linear layer.
    pub dropout: Dropout,
    /// 512·7·7 → embedding.
    pub fc: Linear,
    /// Batch norm of the embedding; its scale is fixed at 1 and not trained.
    pub features: BatchNorm,
}

impl IResNet {
    /// A freshly initialised iResNet (convolutions N(0, 0.1), batch norms 1 and 0) whose four
    /// stages have `widths` channels (the reference: 64, 128, 256, 512).
    pub fn new(
        depth: IResNetDepth,
        widths: [usize; 4],
        embedding_size: usize,
        dropout: f64,
        device: &Device,
    ) -> Self {
        let mut input = widths[0];
        let mut stages: Vec<Vec<IBasicBlock>> = Vec::with_capacity(4);
        for (&planes, &blocks) in widths.iter().zip(depth.blocks().iter()) {
            let mut stage = Vec::with_capacity(blocks);
            stage.push(IBasicBlock::new(input, planes, 2, device));
            for _ in 1..blocks {
                stage.push(IBasicBlock::new(planes, planes, 1, device));
            }
            input = planes;
            stages.push(stage);
        }
        let layer4 = stages.pop().expect("four stages");
        let layer3 = stages.pop().expect("four stages");
        let layer2 = stages.pop().expect("four stages");
        let layer1 = stages.pop().expect("four stages");

        let mut features = batch_norm(embedding_size, device);
        features.gamma = features.gamma.set_require_grad(false);

        Self {
            conv1: conv(3, widths[0], 3, 1, device),
            bn1: batch_norm(widths[0], device),
            prelu: Prelu::new(widths[0], device),
            layer1,
            layer2,
            layer3,
            layer4,
            bn2: batch_norm(widths[3], device),
            dropout: DropoutConfig::new(dropout).init(),
            fc: LinearConfig::new(widths[3] * FINAL_MAP * FINAL_MAP, embedding_size).init(device),
            features,
        }
    }

    /// # Shapes
    /// - `faces`: `[batch_size, 3, 112, 112]`
    /// - output: `[batch_size, embedding_size]`
    pub fn forward(&self, faces: Tensor<4>) -> Tensor<2> {
        let x = self
            .prelu
            .forward(self.bn1.forward(self.conv1.forward(faces)));
        let x = [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .fold(x, |x, block| block.forward(x));
        let x = self.bn2.forward(x);
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.dropout.forward(x);
        self.features.forward(self.fc.forward(x))
    }
}
