//! Backbones: the networks that map a 112×112 face to its embedding, before the margin head.
//! iResNet follows the InsightFace / ElasticFace reference structure; MobileFaceNet is the small
//! model for CPUs, phones and the browser.

pub mod iresnet;
pub mod mobilefacenet;
pub mod prelu;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use iresnet::{IResNet, IResNetDepth};
pub use mobilefacenet::MobileFaceNet;

/// Side of the square face crop every backbone takes.
pub const INPUT_SIZE: usize = 112;

/// Which network, as written in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// iResNet-18.
    #[serde(rename = "iresnet18")]
    IResNet18,
    /// iResNet-34.
    #[serde(rename = "iresnet34")]
    IResNet34,
    /// iResNet-50.
    #[serde(rename = "iresnet50")]
    IResNet50,
    /// iResNet-100.
    #[serde(rename = "iresnet100")]
    IResNet100,
    /// iResNet-200.
    #[serde(rename = "iresnet200")]
    IResNet200,
    /// MobileFaceNet.
    #[serde(rename = "mobilefacenet")]
    MobileFaceNet,
}

impl Architecture {
    /// Every backbone with its config name.
    pub const NAMES: [(&'static str, Architecture); 6] = [
        ("iresnet18", Architecture::IResNet18),
        ("iresnet34", Architecture::IResNet34),
        ("iresnet50", Architecture::IResNet50),
        ("iresnet100", Architecture::IResNet100),
        ("iresnet200", Architecture::IResNet200),
        ("mobilefacenet", Architecture::MobileFaceNet),
    ];
}

impl std::str::FromStr for Architecture {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Architecture::NAMES
            .into_iter()
            .find(|(known, _)| *known == name)
            .map(|(_, architecture)| architecture)
            .ok_or_else(|| {
                format!(
                    "unknown backbone {name:?}; expected iresnet18, iresnet34, iresnet50, \
                     iresnet100, iresnet200 or mobilefacenet"
                )
            })
    }
}

/// A backbone's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// Which network.
    pub architecture: Architecture,
    /// Size of the embedding (512 in the reference).
    #[serde(default = "default_embedding_size")]
    pub embedding_size: usize,
    /// Dropout before the iResNet's final linear layer (0 in the reference).
    #[serde(default)]
    pub dropout: f64,
    /// Channels of the iResNet's four stages: the reference's 64, 128, 256, 512 unless set
    /// (narrower ones give quick models and small test fixtures). Not used by MobileFaceNet.
    #[serde(default = "reference_widths")]
    pub widths: [usize; 4],
}

fn default_embedding_size() -> usize {
    512
}

fn reference_widths() -> [usize; 4] {
    [64, 128, 256, 512]
}

impl BackboneConfig {
    /// Refuses sizes no face model has (which would otherwise ask for absurd allocations when a
    /// configuration comes from a damaged file): embeddings of 1 to 16 384 values, stage widths
    /// of 1 to 8 192 channels, dropout in [0, 1).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=16_384).contains(&self.embedding_size) {
            return Err(format!(
                "embedding size {} is outside 1 ..= 16384",
                self.embedding_size
            ));
        }
        if let Some(width) = self.widths.iter().find(|w| !(1..=8_192).contains(*w)) {
            return Err(format!("stage width {width} is outside 1 ..= 8192"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// The reference configuration of `architecture`.
    pub fn new(architecture: Architecture) -> Self {
        Self {
            architecture,
            embedding_size: default_embedding_size(),
            dropout: 0.0,
            widths: reference_widths(),
        }
    }

    /// Builds the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Backbone {
        let depth = match self.architecture {
            Architecture::IResNet18 => IResNetDepth::R18,
            Architecture::IResNet34 => IResNetDepth::R34,
            Architecture::IResNet50 => IResNetDepth::R50,
            Architecture::IResNet100 => IResNetDepth::R100,
            Architecture::IResNet200 => IResNetDepth::R200,
            Architecture::MobileFaceNet => {
                return Backbone::MobileFaceNet(MobileFaceNet::new(self.embedding_size, device));
            }
        };
        Backbone::IResNet(IResNet::new(
            depth,
            self.widths,
            self.embedding_size,
            self.dropout,
            device,
        ))
    }
}

/// Counts parameters as PyTorch's `sum(p.numel() for p in model.parameters())` does: every
/// weight, frozen ones included, but not the batch norms' running statistics, which PyTorch
/// keeps as buffers (burn's `num_params` counts those too).
pub fn parameter_count<M: Module>(module: &M) -> usize {
    struct Counter {
        path: Vec<String>,
        count: usize,
    }
    impl ModuleVisitor for Counter {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let running = self
                .path
                .last()
                .is_some_and(|name| name == "running_mean" || name == "running_var");
            if !running {
                self.count += param.shape().num_elements();
            }
        }
    }
    let mut counter = Counter {
        path: Vec::new(),
        count: 0,
    };
    module.visit(&mut counter);
    counter.count
}

/// One of the backbones.
#[derive(Module, Debug)]
pub enum Backbone {
    /// An iResNet.
    IResNet(IResNet),
    /// A MobileFaceNet.
    MobileFaceNet(MobileFaceNet),
}

impl Backbone {
    /// Embeddings of a batch of normalised faces.
    ///
    /// # Shapes
    /// - `faces`: `[batch_size, 3, 112, 112]`
    /// - output: `[batch_size, embedding_size]`
    pub fn forward(&self, faces: Tensor<4>) -> Tensor<2> {
        match self {
            Backbone::IResNet(net) => net.forward(faces),
            Backbone::MobileFaceNet(net) => net.forward(faces),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(architecture: Architecture) -> usize {
        parameter_count(&BackboneConfig::new(architecture).init(&Device::flex()))
    }

    // Counts of the reference PyTorch iResNets (sum of `p.numel()` over `parameters()`, the
    // fixed BN1d scale included), worked out from the reference's layer shapes: stem
    // 3·64·9 + BN + PReLU; per block BN(in) + conv 3×3 in→p + BN(p) + PReLU(p) + conv 3×3 p→p
    // + BN(p), plus conv 1×1 + BN on the first block of each stage; BN2d(512);
    // fc 25088·512 + 512; BN1d(512).
    #[test]
    fn iresnet_parameter_counts_match_the_reference() {
        assert_eq!(parameters(Architecture::IResNet18), 24_025_600);
        assert_eq!(parameters(Architecture::IResNet34), 34_139_328);
        assert_eq!(parameters(Architecture::IResNet50), 43_590_848);
        assert_eq!(parameters(Architecture::IResNet100), 65_156_160);
    }

    #[test]
    fn mobilefacenet_has_about_one_million_parameters() {
        let count = parameters(Architecture::MobileFaceNet);
        assert!((900_000..1_400_000).contains(&count), "{count}");
    }

    #[test]
    fn backbones_map_a_face_batch_to_embeddings() {
        let device = Device::flex();
        let faces = Tensor::<4>::zeros([2, 3, INPUT_SIZE, INPUT_SIZE], &device);
        let mut config = BackboneConfig::new(Architecture::MobileFaceNet);
        config.embedding_size = 128;
        let embeddings = config.init(&device).valid().forward(faces);
        assert_eq!(embeddings.dims(), [2, 128]);
    }

    #[test]
    fn architecture_names_round_trip() {
        for (name, architecture) in Architecture::NAMES {
            assert_eq!(name.parse::<Architecture>(), Ok(architecture));
        }
        assert!(
            "resnet18"
                .parse::<Architecture>()
                .unwrap_err()
                .contains("iresnet18")
        );
    }
}
