//! Per-channel PReLU, x ↦ max(x, 0) + a_c · min(x, 0), the activation of both backbones.
//! Written as relu(x) − a_c · relu(−x): burn's own PReLU differentiates through a masked select,
//! which on the CPU backend costs several times more than the two ReLUs.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// PReLU with one slope per channel (channel axis 1), named as PyTorch's `nn.PReLU`.
#[derive(Module, Debug)]
pub struct Prelu {
    /// Slope of the negative part, one per channel, `[channels]` (PyTorch's `weight`).
    pub weight: Param<Tensor<1>>,
}

impl Prelu {
    /// Slopes start at 0.25, as PyTorch's.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            weight: Initializer::Constant { value: 0.25 }.init([channels], device),
        }
    }

    /// # Shapes
    /// `[batch, channels, ...]` → same shape
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let mut shape = [1; D];
        shape[1] = self.weight.shape().dims::<1>()[0];
        let slope = self.weight.val().reshape(shape);
        relu(input.clone()) - relu(input.neg()) * slope
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn matches_burns_prelu_in_value_and_gradient() {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..2 * 3 * 2 * 2)
            .map(|i| (i as f32 - 11.5) / 4.0)
            .collect();
        let slopes = vec![0.25f32, -0.5, 1.5];
        let input = || {
            Tensor::<4>::from_data(TensorData::new(values.clone(), [2, 3, 2, 2]), &device)
                .require_grad()
        };
        let prelu = Prelu {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(slopes.clone(), [3]),
                &device,
            )),
        };
        let ours_input = input();
        let ours = prelu.forward(ours_input.clone());
        let theirs_input = input();
        let theirs_slopes =
            Tensor::<1>::from_data(TensorData::new(slopes, [3]), &device).require_grad();
        let theirs = burn::tensor::activation::prelu(theirs_input.clone(), theirs_slopes.clone());

        let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(read(ours.clone()), read(theirs.clone()));

        // Weighted sums so that every element's gradient is distinct.
        let weights = Tensor::<4>::from_data(
            TensorData::new(
                (0..24).map(|i| i as f32 * 0.1).collect::<Vec<_>>(),
                [2, 3, 2, 2],
            ),
            &device,
        );
        let ours_grads = (ours * weights.clone()).sum().backward();
        let theirs_grads = (theirs * weights).sum().backward();
        assert_eq!(
            read(ours_input.grad(&ours_grads).unwrap()),
            read(theirs_input.grad(&theirs_grads).unwrap())
        );
        let slope_grad = prelu
            .weight
            .grad(&ours_grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let expected = theirs_slopes
            .grad(&theirs_grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in slope_grad.iter().zip(&expected) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{slope_grad:?} vs {expected:?}"
            );
        }
    }
}
