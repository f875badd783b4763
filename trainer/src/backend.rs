//! Choosing the burn device a run computes on: the CPU backend, wgpu on a hardware or software
//! adapter, or CUDA. This is the only place that names a backend.

use anyhow::{Result, bail};
use burn::tensor::Device;

use crate::config::BackendChoice;

/// A chosen device and the words that describe it in logs.
pub struct ChosenDevice {
    /// The device (without autodiff).
    pub device: Device,
    /// What it is, for logs and result tables.
    pub description: String,
}

/// The hardware GPU adapters wgpu can see (software adapters such as lavapipe excluded), and
/// the software ones, by name.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> (Vec<String>, Vec<String>) {
    let instance = wgpu::Instance::default();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let mut hardware = Vec::new();
    let mut software = Vec::new();
    for adapter in adapters {
        let info = adapter.get_info();
        let name = format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
        match info.device_type {
            wgpu::DeviceType::Cpu => software.push(name),
            _ => hardware.push(name),
        }
    }
    (hardware, software)
}

/// Resolves a backend choice to a device, refusing choices this build or machine cannot serve.
pub fn choose(choice: BackendChoice) -> Result<ChosenDevice> {
    match choice {
        BackendChoice::Cpu => Ok(cpu()),
        BackendChoice::Auto => {
            #[cfg(feature = "wgpu")]
            {
                let (hardware, _) = wgpu_adapters();
                if let Some(name) = hardware.first() {
                    return Ok(ChosenDevice {
                        device: Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
                        description: format!("wgpu on {name}"),
                    });
                }
            }
            Ok(cpu())
        }
        BackendChoice::Wgpu => wgpu_device(false),
        BackendChoice::WgpuSoftware => wgpu_device(true),
        BackendChoice::Cuda => cuda(),
    }
}

fn cpu() -> ChosenDevice {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    ChosenDevice {
        device: Device::flex(),
        description: format!("cpu (burn flex, {threads} threads)"),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device(software: bool) -> Result<ChosenDevice> {
    let (hardware, soft) = wgpu_adapters();
    if software {
        let Some(name) = soft.first() else {
            bail!(
                "no software wgpu adapter found; on Debian install mesa-vulkan-drivers for lavapipe"
            );
        };
        return Ok(ChosenDevice {
            device: Device::wgpu(burn::tensor::DeviceKind::Cpu),
            description: format!("wgpu on {name}"),
        });
    }
    let Some(name) = hardware.first().or(soft.first()) else {
        bail!("wgpu finds no adapter at all (no GPU driver, and no lavapipe)");
    };
    Ok(ChosenDevice {
        device: Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        description: format!("wgpu on {name}"),
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_software: bool) -> Result<ChosenDevice> {
    bail!("this build has no wgpu backend; rebuild with `--features wgpu`")
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<ChosenDevice> {
    Ok(ChosenDevice {
        device: Device::cuda(0),
        description: "cuda device 0".into(),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<ChosenDevice> {
    bail!("this build has no CUDA backend; rebuild with `--features cuda`")
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::{DeviceKind, Int, Tensor, TensorData};
    use elasticface_core::backbone::{Architecture, BackboneConfig, INPUT_SIZE};
    use elasticface_core::head::{HeadConfig, HeadKind, cross_entropy, margin_logits};
    use elasticface_core::model::FaceModel;
    use rand::{Rng, SeedableRng};

    fn max_abs(values: &[f32]) -> f32 {
        values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    fn assert_close(name: &str, cpu: &[f32], gpu: &[f32], relative: f32) {
        assert_eq!(cpu.len(), gpu.len());
        let scale = max_abs(cpu).max(1e-6);
        let worst = cpu
            .iter()
            .zip(gpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= relative * scale,
            "{name}: largest difference {worst} exceeds {relative} × {scale}"
        );
    }

    fn assert_relative_l2(name: &str, expected: &[f32], actual: &[f32], relative: f64) {
        assert_eq!(expected.len(), actual.len());
        let norm = expected
            .iter()
            .map(|&a| f64::from(a).powi(2))
            .sum::<f64>()
            .sqrt();
        let error = expected
            .iter()
            .zip(actual)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            error <= relative * norm,
            "{name}: ‖difference‖ {error} exceeds {relative} × ‖expected‖ {norm}"
        );
    }

    /// The hardware adapter when there is one, else the software one (lavapipe in CI).
    fn test_gpu() -> Device {
        let (hardware, software) = wgpu_adapters();
        assert!(
            !hardware.is_empty() || !software.is_empty(),
            "no wgpu adapter; on Debian install mesa-vulkan-drivers (scripts/setup.sh does)"
        );
        if hardware.is_empty() {
            Device::wgpu(DeviceKind::Cpu)
        } else {
            Device::wgpu(DeviceKind::DefaultDevice)
        }
    }

    /// MobileFaceNet with a 64-D embedding, enough to exercise every layer kind.
    fn small_backbone() -> BackboneConfig {
        let mut backbone = BackboneConfig::new(Architecture::MobileFaceNet);
        backbone.embedding_size = 64;
        backbone
    }

    /// `batch` random faces in [−1, 1) from a seeded stream.
    fn random_faces(batch: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..batch * 3 * INPUT_SIZE * INPUT_SIZE)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    /// One forward pass of a backbone and a margin head on wgpu (lavapipe where no GPU is
    /// present) against burn's CPU backend, with the same weights and inputs.
    #[test]
    fn wgpu_forward_of_backbone_and_head_matches_the_cpu_backend() {
        let gpu = test_gpu();
        let cpu = Device::flex();
        let model_cpu = FaceModel::new(&small_backbone(), 10, &cpu).valid();
        let model_gpu = model_cpu.clone().to_device(&gpu);

        let batch = 3;
        let faces = random_faces(batch, 5);
        let shape = [batch, 3, INPUT_SIZE, INPUT_SIZE];
        let embed = |model: &FaceModel, device: &Device| {
            model.embed(Tensor::<4>::from_data(
                TensorData::new(faces.clone(), shape),
                device,
            ))
        };
        let embeddings_cpu = embed(&model_cpu, &cpu);
        let embeddings_gpu = embed(&model_gpu, &gpu);

        let config = HeadConfig::new(HeadKind::ElasticArc);
        let labels = [2i64, -1, 7];
        let margins = [0.47f32, 0.0, 0.55];
        let head = |model: &FaceModel, embeddings: Tensor<2>, device: &Device| {
            let labels =
                Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [batch]), device);
            let margins =
                Tensor::<1>::from_data(TensorData::new(margins.to_vec(), [batch]), device);
            let logits = margin_logits(
                model.centers.cos_theta(embeddings),
                labels.clone(),
                margins,
                &config,
            );
            let loss = cross_entropy(logits.clone(), labels);
            (logits, loss)
        };
        let read = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let (logits_cpu, loss_cpu) = head(&model_cpu, embeddings_cpu.clone(), &cpu);
        let (logits_gpu, loss_gpu) = head(&model_gpu, embeddings_gpu.clone(), &gpu);

        assert_close(
            "embeddings",
            &read(embeddings_cpu),
            &read(embeddings_gpu),
            1e-3,
        );
        assert_close("logits", &read(logits_cpu), &read(logits_gpu), 1e-3);
        let loss_cpu = loss_cpu.into_scalar::<f32>();
        let loss_gpu = loss_gpu.into_scalar::<f32>();
        assert!(
            (loss_cpu - loss_gpu).abs() <= 1e-3 * loss_cpu.abs(),
            "{loss_cpu} vs {loss_gpu}"
        );
    }

    /// A training step's gradients on wgpu, where the margin loss runs as the fused WGSL
    /// kernels, against the CPU backend's tensor-op path: the trainer's results must not depend
    /// on which path ran.
    #[test]
    fn a_training_step_on_wgpu_has_the_cpu_gradients() {
        use elasticface_core::backbone::Backbone;
        use elasticface_core::head::MarginHead;

        let gpu = test_gpu();
        let cpu = Device::flex();
        let model_cpu = FaceModel::new(&small_backbone(), 10, &cpu.clone().autodiff());
        let model_gpu = model_cpu.clone().fork(&gpu.clone().autodiff());

        let batch = 4;
        let faces = random_faces(batch, 6);
        let labels = [2i64, -1, 7, 7];
        let step = |model: &FaceModel, device: &Device| {
            let faces = Tensor::<4>::from_data(
                TensorData::new(faces.clone(), [batch, 3, INPUT_SIZE, INPUT_SIZE]),
                device,
            );
            let mut head = MarginHead::new(HeadConfig::new(HeadKind::ElasticArc), 9).unwrap();
            let loss = head
                .forward(&model.centers, model.embed(faces), &labels)
                .unwrap()
                .loss;
            let grads = loss.clone().backward();
            let Backbone::MobileFaceNet(net) = &model.backbone else {
                unreachable!()
            };
            let read1 = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            let read2 = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            (
                loss.into_scalar::<f32>(),
                read2(model.centers.weight.grad(&grads).unwrap()),
                read1(net.stem.conv.weight.grad(&grads).unwrap()),
            )
        };
        let (loss_cpu, centers_cpu, stem_cpu) = step(&model_cpu, &cpu.autodiff());
        let (loss_gpu, centers_gpu, stem_gpu) = step(&model_gpu, &gpu.autodiff());
        assert!(
            (loss_cpu - loss_gpu).abs() <= 1e-3 * loss_cpu.abs(),
            "{loss_cpu} vs {loss_gpu}"
        );
        assert_close("class-centre gradient", &centers_cpu, &centers_gpu, 1e-3);
        // The stem gradient has passed back through every layer and ~50 batch normalisations
        // of a 4-image batch, which amplify f32 rounding differently on each backend and each
        // CPU's SIMD width (2·10⁻³ of the largest entry was seen between machines). A wrong
        // kernel derivative moves it by order one, so the check uses the relative L2 error.
        assert_relative_l2("stem convolution gradient", &stem_cpu, &stem_gpu, 1e-2);
    }
}
