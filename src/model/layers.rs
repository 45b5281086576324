//! Small layers on top of the fast convolutions, built from a `VarBuilder`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::{self, ConvGeom};

/// Convolution with bias; weight `[Co, Ci, k, k]`.
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    geom: ConvGeom,
}

impl Conv {
    /// Creates `name.weight` and `name.bias` in `vb`.
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self {
            weight,
            bias,
            geom: ConvGeom {
                kernel,
                stride,
                padding,
            },
        })
    }
}

impl Module for Conv {
    /// `[B, Ci, H, W]` → `[B, Co, Ho, Wo]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv::conv2d(x, &self.weight, self.geom)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// Transposed convolution with bias; weight `[Ci, Co, k, k]` (PyTorch layout).
#[derive(Clone, Debug)]
pub struct ConvT {
    weight: Tensor,
    bias: Option<Tensor>,
    geom: ConvGeom,
}

impl ConvT {
    /// Creates `name.weight` (and `name.bias` when `bias`) in `vb`.
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        geom: ConvGeom,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((c_in, c_out, geom.kernel, geom.kernel), "weight")?;
        let bias = if bias {
            Some(vb.get(c_out, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias, geom })
    }
}

impl Module for ConvT {
    /// `[B, Ci, H, W]` → `[B, Co, (H-1)s-2p+k, …]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv::conv_transpose2d(x, &self.weight, self.geom)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Dense layer `y = x Wᵀ + b`; weight `[out, in]`.
pub fn linear(vb: VarBuilder, d_in: usize, d_out: usize) -> Result<candle_nn::Linear> {
    let weight = vb.get((d_out, d_in), "weight")?;
    let bias = vb.get(d_out, "bias")?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}

/// Leaky ReLU with slope 0.2 (the paper's α), fused on the CPU.
pub fn leaky(x: &Tensor) -> Result<Tensor> {
    super::activation::leaky_relu(x, 0.2)
}

/// Per-channel affine `x * scale + shift` for `[B, C, H, W]` (an eval-mode batch norm).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?
        .broadcast_add(&shift.reshape((1, (), 1, 1))?)
}
