//! The margin kernels' host side: launches the WGSL compute shaders of `shaders/` on burn's wgpu
//! backend and registers their backward passes with burn's autodiff. [`crate::head`] calls these
//! first and falls back to its tensor-op formulas on every other backend (CPU, CUDA), so the
//! stage between the cos θ matrix product and the optimiser runs as two fused kernels on any GPU.
//!
//! Kernels: `margin_logits` and its backward (the scaled logits with the margin on each target
//! column), and the fused `softmax_cross_entropy` forward and backward, which never store the
//! logits: the forward reads cos θ once and writes three numbers per row, the backward writes
//! d loss / d cos θ.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::wgpu::{
    CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::backend::{Autodiff, Cube, RuntimeId};
use burn::cubecl::prelude::KernelId;
use burn::cubecl::server::KernelArguments;
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::{DType, Int, Shape, Tensor};

use crate::head::{HeadConfig, MarginFamily, ThetaOverflow};

/// Invocations per workgroup: WebGPU's guaranteed maximum, so the kernels run in browsers too.
const WORKGROUP_SIZE: u32 = 256;

/// Largest workgroup count of one dispatch dimension that every WebGPU device accepts.
const MAX_WORKGROUPS_PER_DIMENSION: u64 = 65_535;

/// Shared margin formulas, prepended to every kernel.
const MARGIN_SOURCE: &str = include_str!("../../shaders/margin.wgsl");

/// The kernels, one WGSL file each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kernel {
    MarginLogits,
    MarginLogitsBackward,
    SoftmaxCrossEntropy,
    SoftmaxCrossEntropyBackward,
}

impl Kernel {
    fn source(self) -> &'static str {
        match self {
            Kernel::MarginLogits => include_str!("../../shaders/margin_logits.wgsl"),
            Kernel::MarginLogitsBackward => {
                include_str!("../../shaders/margin_logits_backward.wgsl")
            }
            Kernel::SoftmaxCrossEntropy => include_str!("../../shaders/softmax_cross_entropy.wgsl"),
            Kernel::SoftmaxCrossEntropyBackward => {
                include_str!("../../shaders/softmax_cross_entropy_backward.wgsl")
            }
        }
    }
}

/// A kernel as burn's template launcher takes it.
#[derive(Debug)]
struct WgslKernel(Kernel);

impl KernelSource for WgslKernel {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(MARGIN_SOURCE)
            .add_template(self.0.source())
            .register("workgroup_size", WORKGROUP_SIZE.to_string())
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.0, WORKGROUP_SIZE))
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// What every margin kernel needs besides its tensors.
#[derive(Clone, Copy, Debug)]
struct MarginParams {
    rows: usize,
    columns: usize,
    family: MarginFamily,
    overflow: ThetaOverflow,
    scale: f32,
}

impl MarginParams {
    /// The `params` buffer layout of `shaders/margin.wgsl`.
    fn words(&self) -> [u32; 5] {
        let family = match self.family {
            MarginFamily::None => 0,
            MarginFamily::Angular => 1,
            MarginFamily::Cosine => 2,
        };
        let overflow = match self.overflow {
            ThetaOverflow::None => 0,
            ThetaOverflow::Monotonic => 1,
        };
        [
            self.rows as u32,
            self.columns as u32,
            family,
            overflow,
            self.scale.to_bits(),
        ]
    }

    /// Whether one launch can cover the problem: the grids stay within WebGPU's per-dimension
    /// limit and every element index fits in 32 bits. Larger problems use the tensor-op path.
    fn fits(&self) -> bool {
        let rows = self.rows as u64;
        let columns = self.columns as u64;
        rows > 0
            && columns > 0
            && rows <= MAX_WORKGROUPS_PER_DIMENSION
            && columns.div_ceil(u64::from(WORKGROUP_SIZE)) <= MAX_WORKGROUPS_PER_DIMENSION
            && rows * columns <= u64::from(u32::MAX)
    }

    /// One invocation per element: x over columns, y over rows.
    fn element_grid(&self) -> CubeCount {
        CubeCount::Static(
            (self.columns as u32).div_ceil(WORKGROUP_SIZE),
            self.rows as u32,
            1,
        )
    }

    /// One workgroup per row.
    fn row_grid(&self) -> CubeCount {
        CubeCount::Static(1, self.rows as u32, 1)
    }
}

/// Allocates an uninitialised f32 tensor on the device of `like`.
fn empty_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let bytes = shape.num_elements() * std::mem::size_of::<f32>();
    let handle = like.client.empty(bytes);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

fn launch(kernel: Kernel, grid: CubeCount, tensors: &[&CubeTensor], params: &MarginParams) {
    let client = &tensors[0].client;
    let words = params.words();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let params_handle = client.create_from_slice(&bytes);
    let mut bindings: Vec<_> = tensors.iter().map(|t| t.handle.clone().binding()).collect();
    bindings.push(params_handle.binding());
    client.launch(
        Box::new(SourceKernel::new(
            WgslKernel(kernel),
            CubeDim::new_1d(WORKGROUP_SIZE),
        )),
        grid,
        KernelArguments::new().with_buffers(bindings),
    );
}

/// The inputs of a margin kernel, contiguous and of the dtypes the WGSL declares.
#[derive(Clone, Debug)]
struct MarginInputs {
    cos_theta: CubeTensor,
    labels: CubeTensor,
    margins: CubeTensor,
    params: MarginParams,
}

fn margin_logits_forward(inputs: &MarginInputs) -> CubeTensor {
    let p = &inputs.params;
    let logits = empty_f32(&inputs.cos_theta, Shape::new([p.rows, p.columns]));
    launch(
        Kernel::MarginLogits,
        p.element_grid(),
        &[&inputs.cos_theta, &inputs.labels, &inputs.margins, &logits],
        p,
    );
    logits
}

fn margin_logits_backward(inputs: &MarginInputs, logits_grad: CubeTensor) -> CubeTensor {
    let p = &inputs.params;
    let logits_grad = into_contiguous(logits_grad);
    let grad = empty_f32(&inputs.cos_theta, Shape::new([p.rows, p.columns]));
    launch(
        Kernel::MarginLogitsBackward,
        p.element_grid(),
        &[
            &inputs.cos_theta,
            &inputs.labels,
            &inputs.margins,
            &logits_grad,
            &grad,
        ],
        p,
    );
    grad
}

/// Per-row outputs of the fused forward kernel.
struct RowStatistics {
    loss: CubeTensor,
    /// The row's largest logit M.
    maximum: CubeTensor,
    /// log Σ exp(z − M).
    log_sum: CubeTensor,
}

fn cross_entropy_forward(inputs: &MarginInputs) -> RowStatistics {
    let p = &inputs.params;
    let rows = Shape::new([p.rows]);
    let loss = empty_f32(&inputs.cos_theta, rows.clone());
    let maximum = empty_f32(&inputs.cos_theta, rows.clone());
    let log_sum = empty_f32(&inputs.cos_theta, rows);
    launch(
        Kernel::SoftmaxCrossEntropy,
        p.row_grid(),
        &[
            &inputs.cos_theta,
            &inputs.labels,
            &inputs.margins,
            &loss,
            &maximum,
            &log_sum,
        ],
        p,
    );
    RowStatistics {
        loss,
        maximum,
        log_sum,
    }
}

fn cross_entropy_backward(
    inputs: &MarginInputs,
    maximum: &CubeTensor,
    log_sum: &CubeTensor,
    row_grad: CubeTensor,
) -> CubeTensor {
    let p = &inputs.params;
    let row_grad = into_contiguous(row_grad);
    let grad = empty_f32(&inputs.cos_theta, Shape::new([p.rows, p.columns]));
    launch(
        Kernel::SoftmaxCrossEntropyBackward,
        p.element_grid(),
        &[
            &inputs.cos_theta,
            &inputs.labels,
            &inputs.margins,
            maximum,
            log_sum,
            &row_grad,
            &grad,
        ],
        p,
    );
    grad
}

/// Backward of the margin logits with respect to cos θ.
#[derive(Debug)]
struct MarginLogitsBackward;

impl Backward<Cube, 1> for MarginLogitsBackward {
    type State = MarginInputs;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [cos_theta] = ops.parents;
        let logits_grad = grads.consume::<Cube>(&ops.node);
        if let Some(cos_theta) = cos_theta {
            grads.register::<Cube>(
                cos_theta.id,
                margin_logits_backward(&ops.state, logits_grad),
            );
        }
    }
}

/// Backward of the fused per-row loss with respect to cos θ.
#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Cube, 1> for CrossEntropyBackward {
    /// The inputs, the row maxima and log Σ exp(z − M).
    type State = (MarginInputs, CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [cos_theta] = ops.parents;
        let row_grad = grads.consume::<Cube>(&ops.node);
        if let Some(cos_theta) = cos_theta {
            let (inputs, maximum, log_sum) = &ops.state;
            let grad = cross_entropy_backward(inputs, maximum, log_sum, row_grad);
            grads.register::<Cube>(cos_theta.id, grad);
        }
    }
}

/// cos θ as the kernels hold it: on a wgpu device, with or without autodiff tracking.
enum WgpuCosTheta {
    Plain,
    Tracked(<Autodiff<Cube> as burn::backend::BackendTypes>::FloatTensorPrimitive),
}

fn is_wgpu(tensor: &CubeTensor) -> bool {
    tensor.device.runtime() == RuntimeId::Wgpu
}

/// Takes the three inputs apart into wgpu primitives, or gives them back unchanged when they do
/// not live on wgpu (or do not fit one launch), so the caller can use the tensor-op path.
#[allow(clippy::type_complexity)]
fn to_wgpu(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Result<(WgpuCosTheta, MarginInputs), (Tensor<2>, Tensor<1, Int>, Tensor<1>)> {
    let [rows, columns] = cos_theta.dims();
    let params = MarginParams {
        rows,
        columns,
        family: config.kind.family(),
        overflow: config.overflow,
        scale: config.scale as f32,
    };
    if !params.fits() || labels.dims() != [rows] || margins.dims() != [rows] {
        return Err((cos_theta, labels, margins));
    }
    let autodiff = cos_theta.device().is_autodiff();

    let (cos, cos_primitive) = if autodiff {
        match cos_theta.clone().try_into_primitive::<Autodiff<Cube>>() {
            Ok(tracked)
                if is_wgpu(tracked.primitive()) && tracked.primitive().dtype == DType::F32 =>
            {
                let primitive = tracked.primitive().clone();
                (WgpuCosTheta::Tracked(tracked), primitive)
            }
            _ => return Err((cos_theta, labels, margins)),
        }
    } else {
        match cos_theta.clone().try_into_primitive::<Cube>() {
            Ok(plain) if is_wgpu(&plain) && plain.dtype == DType::F32 => {
                (WgpuCosTheta::Plain, plain)
            }
            _ => return Err((cos_theta, labels, margins)),
        }
    };
    let labels_primitive = if autodiff {
        labels.clone().try_into_primitive::<Autodiff<Cube>>().ok()
    } else {
        labels.clone().try_into_primitive::<Cube>().ok()
    };
    let margins_primitive = if autodiff {
        margins
            .clone()
            .try_into_primitive::<Autodiff<Cube>>()
            .ok()
            .map(|tracked| tracked.into_primitive())
    } else {
        margins.clone().try_into_primitive::<Cube>().ok()
    };
    match (labels_primitive, margins_primitive) {
        (Some(labels_primitive), Some(margins_primitive))
            if labels_primitive.dtype == DType::I32 && margins_primitive.dtype == DType::F32 =>
        {
            Ok((
                cos,
                MarginInputs {
                    cos_theta: into_contiguous(cos_primitive),
                    labels: into_contiguous(labels_primitive),
                    margins: into_contiguous(margins_primitive),
                    params,
                },
            ))
        }
        _ => Err((cos_theta, labels, margins)),
    }
}

/// Margin logits computed by the `margin_logits` kernel, differentiable with respect to cos θ,
/// when the inputs live on wgpu; the inputs back otherwise.
///
/// # Shapes
/// - `cos_theta`: `[batch_size, num_classes]`; `labels`, `margins`: `[batch_size]`
/// - output: `[batch_size, num_classes]`
#[allow(clippy::type_complexity)]
pub fn margin_logits(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Result<Tensor<2>, (Tensor<2>, Tensor<1, Int>, Tensor<1>)> {
    let (cos, inputs) = to_wgpu(cos_theta, labels, margins, config)?;
    let logits = margin_logits_forward(&inputs);
    Ok(match cos {
        WgpuCosTheta::Plain => Tensor::from_primitive::<Cube>(logits),
        WgpuCosTheta::Tracked(tracked) => {
            let prepared = MarginLogitsBackward
                .prepare::<NoCheckpointing>([tracked.node()])
                .compute_bound()
                .stateful();
            let output = match prepared {
                OpsKind::Tracked(prep) => prep.finish(inputs, logits),
                OpsKind::UnTracked(prep) => prep.finish(logits),
            };
            Tensor::from_primitive::<Autodiff<Cube>>(output)
        }
    })
}

/// The per-row outputs of the fused margin softmax cross-entropy.
pub struct FusedRows {
    /// Loss of each row (0 for rows without a target), differentiable with respect to cos θ.
    pub loss: Tensor<1>,
    /// Largest logit of each row.
    pub maximum: Tensor<1>,
    /// log Σ exp(logits) of each row.
    pub log_sum_exp: Tensor<1>,
}

/// The fused margin softmax cross-entropy of every row, when the inputs live on wgpu; the
/// inputs back otherwise.
///
/// # Shapes
/// - `cos_theta`: `[batch_size, num_classes]`; `labels`, `margins`: `[batch_size]`
/// - outputs: `[batch_size]` each
#[allow(clippy::type_complexity)]
pub fn softmax_cross_entropy_rows(
    cos_theta: Tensor<2>,
    labels: Tensor<1, Int>,
    margins: Tensor<1>,
    config: &HeadConfig,
) -> Result<FusedRows, (Tensor<2>, Tensor<1, Int>, Tensor<1>)> {
    let (cos, inputs) = to_wgpu(cos_theta, labels, margins, config)?;
    let rows = cross_entropy_forward(&inputs);
    let tracked = matches!(cos, WgpuCosTheta::Tracked(_));
    let plain = |tensor: CubeTensor| {
        let tensor = Tensor::<1>::from_primitive::<Cube>(tensor);
        // On an autodiff device the statistics join it as constants.
        if tracked {
            Tensor::from_inner(tensor)
        } else {
            tensor
        }
    };
    let maximum = plain(rows.maximum.clone());
    let log_sum_exp = maximum.clone() + plain(rows.log_sum.clone());
    let loss = match cos {
        WgpuCosTheta::Plain => Tensor::from_primitive::<Cube>(rows.loss),
        WgpuCosTheta::Tracked(tracked) => {
            let prepared = CrossEntropyBackward
                .prepare::<NoCheckpointing>([tracked.node()])
                .compute_bound()
                .stateful();
            let output = match prepared {
                OpsKind::Tracked(prep) => {
                    prep.finish((inputs, rows.maximum, rows.log_sum), rows.loss)
                }
                OpsKind::UnTracked(prep) => prep.finish(rows.loss),
            };
            Tensor::from_primitive::<Autodiff<Cube>>(output)
        }
    };
    Ok(FusedRows {
        loss,
        maximum,
        log_sum_exp,
    })
}

#[cfg(test)]
mod tests {
    //! The kernels against the tensor-op formulas of `head` on the same wgpu device (lavapipe
    //! where there is no GPU): same loss to 1e-5 relative, same gradient to 1e-5 of its largest
    //! entry, on random inputs and on the edge cases.

    use burn::tensor::{DeviceKind, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::head::{self, HeadKind};
    use burn::tensor::Device;

    const TOLERANCE: f64 = 1e-5;

    fn device() -> Device {
        Device::wgpu(DeviceKind::DefaultDevice)
    }

    struct Case {
        rows: usize,
        columns: usize,
        cos_theta: Vec<f32>,
        labels: Vec<i64>,
        margins: Vec<f32>,
    }

    /// Random cos θ in [−1, 1] with some entries exactly ±1, labels with some −1 rows, margins
    /// around 0.5 (wide enough to cross θ + m = π on some rows).
    fn random_case(rows: usize, columns: usize, seed: u64) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cos_theta: Vec<f32> = (0..rows * columns)
            .map(|_| rng.random_range(-1.0f32..=1.0))
            .collect();
        let labels: Vec<i64> = (0..rows)
            .map(|row| {
                if row % 5 == 3 {
                    -1
                } else {
                    rng.random_range(0..columns as i64)
                }
            })
            .collect();
        for (row, &label) in labels.iter().enumerate() {
            if label >= 0 && row % 4 == 1 {
                cos_theta[row * columns + label as usize] = if row % 8 == 1 { 1.0 } else { -1.0 };
            }
        }
        let margins = (0..rows).map(|_| rng.random_range(0.2f32..0.8)).collect();
        Case {
            rows,
            columns,
            cos_theta,
            labels,
            margins,
        }
    }

    fn tensors(case: &Case, device: &Device) -> (Tensor<2>, Tensor<1, Int>, Tensor<1>) {
        (
            Tensor::from_data(
                TensorData::new(case.cos_theta.clone(), [case.rows, case.columns]),
                device,
            ),
            Tensor::from_data(TensorData::new(case.labels.clone(), [case.rows]), device),
            Tensor::from_data(TensorData::new(case.margins.clone(), [case.rows]), device),
        )
    }

    fn read<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    }

    fn configs() -> Vec<HeadConfig> {
        let mut configs = Vec::new();
        for kind in [
            HeadKind::Softmax,
            HeadKind::ElasticArc,
            HeadKind::ElasticCos,
        ] {
            configs.push(HeadConfig::new(kind));
        }
        let mut monotonic = HeadConfig::new(HeadKind::ArcFace);
        monotonic.overflow = ThetaOverflow::Monotonic;
        configs.push(monotonic);
        configs
    }

    fn assert_close(what: &str, kernel: &[f32], reference: &[f32], relative_to: f64) {
        assert_eq!(kernel.len(), reference.len(), "{what}: lengths differ");
        for (index, (k, r)) in kernel.iter().zip(reference).enumerate() {
            assert!(k.is_finite(), "{what}[{index}] is {k}");
            let difference = f64::from((k - r).abs());
            assert!(
                difference <= TOLERANCE * relative_to,
                "{what}[{index}]: kernel {k}, tensor ops {r} (allowed {})",
                TOLERANCE * relative_to
            );
        }
    }

    fn largest(values: &[f32]) -> f64 {
        values.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
    }

    /// Loss and d loss / d cos θ through `loss`, on an autodiff device.
    fn loss_and_gradient(
        case: &Case,
        config: &HeadConfig,
        loss: fn(Tensor<2>, Tensor<1, Int>, Tensor<1>, &HeadConfig) -> Tensor<1>,
    ) -> (f32, Vec<f32>) {
        let device = device().autodiff();
        let (cos_theta, labels, margins) = tensors(case, &device);
        let cos_theta = cos_theta.require_grad();
        let value = loss(cos_theta.clone(), labels, margins, config);
        let grads = value.backward();
        let gradient = cos_theta
            .grad(&grads)
            .expect("cos θ takes part in the loss");
        (value.into_scalar::<f32>(), read(gradient))
    }

    fn check_loss_and_gradient(case: &Case) {
        for config in configs() {
            let name = format!(
                "{} {:?} B={} C={}",
                config.kind.name(),
                config.overflow,
                case.rows,
                case.columns
            );
            let (kernel_loss, kernel_gradient) =
                loss_and_gradient(case, &config, head::margin_cross_entropy);
            let (reference_loss, reference_gradient) =
                loss_and_gradient(case, &config, head::margin_cross_entropy_tensor_ops);
            // Relative to max(|loss|, 1): a loss near 0 is the difference of logits as large as
            // s, which f32 resolves only to about s·2⁻²⁴ ≈ 4e-6 on either path.
            assert_close(
                &format!("{name}: loss"),
                &[kernel_loss],
                &[reference_loss],
                f64::from(reference_loss.abs()).max(1.0),
            );
            // Relative to the gradient's own scale s / (rows with a target): its entries are
            // s·(p − onehot)/N, and on a row classified almost perfectly p − 1 is a difference
            // f32 resolves only to about 2⁻²⁴ on either path.
            let valid_rows = case
                .labels
                .iter()
                .filter(|&&label| label >= 0)
                .count()
                .max(1);
            assert_close(
                &format!("{name}: gradient"),
                &kernel_gradient,
                &reference_gradient,
                largest(&reference_gradient).max(config.scale / valid_rows as f64),
            );
        }
    }

    /// Loss of each row in f64 on the host, from core's scalar margin formula.
    fn double_precision_row_losses(case: &Case, config: &HeadConfig) -> Vec<f64> {
        (0..case.rows)
            .map(|row| {
                let Ok(label) = usize::try_from(case.labels[row]) else {
                    return 0.0;
                };
                let cos = &case.cos_theta[row * case.columns..(row + 1) * case.columns];
                let logits: Vec<f64> = cos
                    .iter()
                    .enumerate()
                    .map(|(column, &c)| {
                        let c = f64::from(c);
                        let value = if column == label {
                            let margin = f64::from(case.margins[row]);
                            head::target_logit(c, margin, config.kind.family(), config.overflow)
                        } else {
                            c
                        };
                        config.scale * value
                    })
                    .collect();
                let maximum = logits.iter().copied().fold(f64::MIN, f64::max);
                let sum: f64 = logits.iter().map(|z| (z - maximum).exp()).sum();
                maximum + sum.ln() - logits[label]
            })
            .collect()
    }

    #[test]
    fn fused_loss_matches_double_precision_for_glint360k_sized_heads() {
        // Past 2¹⁷ classes burn's own reduction on wgpu can be off (it is on lavapipe for
        // 131 073 and 200 003 columns), so the oracle here is the scalar formula in f64.
        let device = device();
        for (columns, seed) in [(131_073, 11), (200_003, 12), (360_232, 13)] {
            let case = random_case(3, columns, seed);
            for config in configs() {
                let (cos_theta, labels, margins) = tensors(&case, &device);
                let rows = softmax_cross_entropy_rows(cos_theta, labels, margins, &config)
                    .ok()
                    .expect("wgpu tensors take the kernel path");
                let kernel: Vec<f32> = read(rows.loss);
                let expected = double_precision_row_losses(&case, &config);
                for (row, (k, e)) in kernel.iter().zip(&expected).enumerate() {
                    assert!(
                        (f64::from(*k) - e).abs() <= TOLERANCE * e.abs().max(1.0),
                        "{} C={columns} row {row}: kernel {k}, f64 {e}",
                        config.kind.name()
                    );
                }
            }
        }
    }

    #[test]
    fn fused_kernels_run_on_wgpu_tensors() {
        let case = random_case(3, 5, 1);
        let (cos_theta, labels, margins) = tensors(&case, &device());
        let config = HeadConfig::new(HeadKind::ArcFace);
        assert!(
            softmax_cross_entropy_rows(cos_theta.clone(), labels.clone(), margins.clone(), &config)
                .is_ok()
        );
        assert!(super::margin_logits(cos_theta, labels, margins, &config).is_ok());
        // A CPU tensor is handed back for the tensor-op path.
        let (cos_theta, labels, margins) = tensors(&case, &Device::flex());
        assert!(softmax_cross_entropy_rows(cos_theta, labels, margins, &config).is_err());
    }

    #[test]
    fn fused_loss_and_gradient_match_tensor_ops_on_random_inputs() {
        check_loss_and_gradient(&random_case(13, 300, 2));
        check_loss_and_gradient(&random_case(40, 1000, 3));
    }

    #[test]
    fn fused_loss_and_gradient_match_tensor_ops_on_edge_shapes() {
        // One row; one column; a class count of MS1MV2's size, far from a multiple of 256.
        check_loss_and_gradient(&random_case(1, 37, 4));
        check_loss_and_gradient(&random_case(6, 1, 5));
        check_loss_and_gradient(&random_case(2, 85_742, 6));
        // More rows than a usual batch.
        check_loss_and_gradient(&random_case(600, 3, 10));
    }

    #[test]
    fn fused_statistics_are_the_row_maximum_and_log_sum_exp() {
        let case = random_case(9, 517, 7);
        let device = device();
        for config in configs() {
            let (cos_theta, labels, margins) = tensors(&case, &device);
            let rows = softmax_cross_entropy_rows(
                cos_theta.clone(),
                labels.clone(),
                margins.clone(),
                &config,
            )
            .ok()
            .unwrap();
            let logits =
                head::margin_logits_tensor_ops(cos_theta, labels.clone(), margins, &config);
            let maximum = logits.clone().max_dim(1).reshape([case.rows]);
            let log_sum_exp = (logits.clone() - maximum.clone().reshape([case.rows, 1]))
                .exp()
                .sum_dim(1)
                .log()
                .reshape([case.rows])
                + maximum.clone();
            let row_loss = head::cross_entropy_rows(logits, labels);
            let scale = config.scale;
            assert_close("maximum", &read(rows.maximum), &read(maximum), scale);
            assert_close(
                "log-sum-exp",
                &read(rows.log_sum_exp),
                &read(log_sum_exp),
                scale,
            );
            let reference_loss = read(row_loss);
            assert_close(
                "row loss",
                &read(rows.loss),
                &reference_loss,
                largest(&reference_loss).max(1.0),
            );
        }
    }

    #[test]
    fn margin_logits_kernel_matches_tensor_ops_forward_and_backward() {
        let case = random_case(11, 333, 8);
        let device = device().autodiff();
        for config in configs() {
            let run =
                |logits: fn(Tensor<2>, Tensor<1, Int>, Tensor<1>, &HeadConfig) -> Tensor<2>| {
                    let (cos_theta, labels, margins) = tensors(&case, &device);
                    let cos_theta = cos_theta.require_grad();
                    let output = logits(cos_theta.clone(), labels, margins, &config);
                    // A weighted sum, so every element's gradient is exercised with its own weight.
                    let weights = Tensor::<2>::from_data(
                        TensorData::new(
                            (0..case.rows * case.columns)
                                .map(|i| ((i % 7) as f32 - 3.0) / 3.0)
                                .collect::<Vec<_>>(),
                            [case.rows, case.columns],
                        ),
                        &device,
                    );
                    let grads = (output.clone() * weights).sum().backward();
                    (read(output), read(cos_theta.grad(&grads).unwrap()))
                };
            let (kernel_logits, kernel_gradient) = run(head::margin_logits);
            let (reference_logits, reference_gradient) = run(head::margin_logits_tensor_ops);
            assert_close(
                "logits",
                &kernel_logits,
                &reference_logits,
                largest(&reference_logits),
            );
            assert_close(
                "gradient",
                &kernel_gradient,
                &reference_gradient,
                largest(&reference_gradient),
            );
        }
    }
}
