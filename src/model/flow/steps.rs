//! The layers of a flow step: actnorm, the invertible 1x1 convolution (Glow's LU form) and
//! the affine coupling with its small conv net (see the parent module for the maths).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::ops::{self, CouplingGeom};
use super::{LOG_SCALE_BOUND, POINTWISE};
use crate::model::conv::{self, ConvGeom};
use crate::model::layers::leaky;
use crate::model::{ModelError, Result};

/// Per-channel affine `y = x·e^logs + bias` (`name.logs`, `name.bias`, both `[C]`).
#[derive(Clone, Debug)]
pub(super) struct ActNorm {
    logs: Tensor,
    bias: Tensor,
    name: String,
}

impl ActNorm {
    pub(super) fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            logs: vb.get(c, "logs")?,
            bias: vb.get(c, "bias")?,
            name: vb.prefix(),
        })
    }

    /// Sets `logs`, `bias` so that the output of `x` has zero mean and unit variance per
    /// channel (Glow's data-dependent initialisation).
    pub(super) fn init_from(
        &self,
        x: &Tensor,
        vars: &HashMap<String, candle_core::Var>,
    ) -> Result<()> {
        let c = x.dim(1)?;
        let mean = x.mean_keepdim((0, 2, 3))?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
        let logs = ((var + 1e-6)?.sqrt()?.log()?.neg()?).reshape(c)?;
        let bias = (mean.reshape(c)? * logs.exp()?)?.neg()?;
        for (suffix, value) in [("logs", logs), ("bias", bias)] {
            let name = format!("{}.{suffix}", self.name);
            let var = vars.get(&name).ok_or_else(|| {
                ModelError::BadInput(format!("actnorm variable {name} is missing"))
            })?;
            crate::model::weights::assign(var, &value.detach())?;
        }
        Ok(())
    }

    pub(super) fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        let c = y.dim(1)?;
        Ok(y.broadcast_sub(&self.bias.reshape((1, c, 1, 1))?)?
            .broadcast_mul(&self.logs.neg()?.exp()?.reshape((1, c, 1, 1))?)?)
    }
}

/// Invertible 1x1 convolution in Glow's LU form: `W = P·(L + I)·(U + diag e^logs)` with `P`
/// the channel reversal, `L` strictly lower and `U` strictly upper triangular (`name.l`,
/// `name.u`: `[C, C]`, only their triangles are used; `name.logs`: `[C]`).
#[derive(Clone, Debug)]
pub(super) struct InvConv {
    l: Tensor,
    u: Tensor,
    logs: Tensor,
    lower: Tensor,
    upper: Tensor,
    eye: Tensor,
    reverse: Tensor,
}

impl InvConv {
    pub(super) fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        let dev = vb.device().clone();
        let mask = |keep: &dyn Fn(usize, usize) -> bool| -> Result<Tensor> {
            let v: Vec<f32> = (0..c * c)
                .map(|k| if keep(k / c, k % c) { 1.0 } else { 0.0 })
                .collect();
            Ok(Tensor::from_vec(v, (c, c), &dev)?)
        };
        Ok(Self {
            l: vb.get((c, c), "l")?,
            u: vb.get((c, c), "u")?,
            logs: vb.get(c, "logs")?,
            lower: mask(&|i, j| i > j)?,
            upper: mask(&|i, j| i < j)?,
            eye: mask(&|i, j| i == j)?,
            reverse: mask(&|i, j| i + j + 1 == c)?,
        })
    }

    /// Device of the parameters.
    pub(super) fn device(&self) -> &Device {
        self.l.device()
    }

    /// `W` as a `[C, C]` tensor (differentiable in the parameters).
    pub(super) fn weight(&self) -> Result<Tensor> {
        let c = self.eye.dim(0)?;
        let l = ((&self.l * &self.lower)? + &self.eye)?;
        let u = ((&self.u * &self.upper)?
            + self.eye.broadcast_mul(&self.logs.exp()?.reshape((1, c))?)?)?;
        Ok(self.reverse.matmul(&l.matmul(&u)?)?)
    }

    /// Actnorm `norm` followed by this 1x1 conv, folded into one conv with bias:
    /// `W·(x∘e^s + b) = (W diag e^s)·x + W·b`. Returns (`y`, log-det per image as a scalar
    /// tensor).
    pub(super) fn forward_after(&self, norm: &ActNorm, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, c, h, w) = x.dims4()?;
        let weight = self.weight()?;
        let folded = weight.broadcast_mul(&norm.logs.exp()?.reshape((1, c))?)?;
        let bias = weight.matmul(&norm.bias.reshape((c, 1))?)?;
        let y = conv::conv2d(x, &folded.reshape((c, c, 1, 1))?, POINTWISE)?;
        let y = crate::model::channel_op::add_bias(&y, &bias.reshape(c)?)?;
        let ld = (self.logs.sum_all()? + norm.logs.sum_all()?)?.affine((h * w) as f64, 0.0)?;
        Ok((y, ld))
    }

    /// `W⁻¹`, inverted in `f64`.
    pub(super) fn inverse_weight(&self) -> Result<Tensor> {
        let c = self.eye.dim(0)?;
        let w: Vec<f32> = self.weight()?.detach().flatten_all()?.to_vec1()?;
        let m = nalgebra::DMatrix::from_row_iterator(c, c, w.iter().map(|&v| f64::from(v)));
        let inv = m
            .try_inverse()
            .ok_or_else(|| ModelError::BadInput("a 1x1 convolution is singular".into()))?;
        let v: Vec<f32> = (0..c * c).map(|k| inv[(k / c, k % c)] as f32).collect();
        Ok(Tensor::from_vec(v, (c, c, 1, 1), self.l.device())?)
    }

    pub(super) fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        Ok(conv::conv2d(y, &self.inverse_weight()?, POINTWISE)?)
    }
}

/// Convolution with bias (`name.weight` `[Co, Ci, k, k]`, `name.bias` `[Co]`, stride 1,
/// same padding) whose bias gradient is a fused per-channel sum.
#[derive(Clone, Debug)]
pub(super) struct Conv {
    weight: Tensor,
    bias: Tensor,
    geom: ConvGeom,
}

impl Conv {
    pub(super) fn new(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_out, c_in, kernel, kernel), "weight")?,
            bias: vb.get(c_out, "bias")?,
            geom: ConvGeom {
                kernel,
                stride: 1,
                padding: kernel / 2,
            },
        })
    }
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv::conv2d(x, &self.weight, self.geom)?;
        Ok(crate::model::channel_op::add_bias(&y, &self.bias)?)
    }
}

/// Affine coupling: `x_a` passes, `x_b ↦ x_b·e^s + t` with `(s̃, t) = NN(x_a)`.
#[derive(Clone, Debug)]
pub(super) struct Coupling {
    c1: Conv,
    c2: Conv,
    c3: Conv,
    geom: CouplingGeom,
}

impl Coupling {
    pub(super) fn new(vb: VarBuilder, c: usize, hidden: usize) -> Result<Self> {
        let (ca, cb) = (c / 2, c - c / 2);
        Ok(Self {
            c1: Conv::new(vb.pp("c1"), ca, hidden, 3)?,
            c2: Conv::new(vb.pp("c2"), hidden, hidden, 1)?,
            c3: Conv::new(vb.pp("c3"), hidden, 2 * cb, 3)?,
            geom: CouplingGeom {
                ca,
                cb,
                bound: LOG_SCALE_BOUND as f32,
            },
        })
    }

    /// The net's raw output `[B, 2cb, H, W]` (log-scale logits, then shifts) from `x_a`.
    pub(super) fn net(&self, xa: &Tensor) -> Result<Tensor> {
        let h = leaky(&self.c1.forward(xa)?)?;
        let h = leaky(&self.c2.forward(&h)?)?;
        self.c3.forward(&h)
    }

    /// → (`y`, log-det per image `[B]`), with the fused kernels of [`ops`].
    pub(super) fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = self.net(&x.narrow(1, 0, self.geom.ca)?)?;
        let y = ops::coupling(x, &out, self.geom)?;
        Ok((y, ops::log_scale_sum(&out, self.geom)?))
    }

    /// Inverse with plain candle ops (differentiable in `y`).
    pub(super) fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        let g = self.geom;
        let ya = y.narrow(1, 0, g.ca)?;
        let yb = y.narrow(1, g.ca, g.cb)?;
        let (s, t) = ops::scale_shift_reference(&self.net(&ya)?, g)?;
        let xb = ((yb - t)? * s.neg()?.exp()?)?;
        Ok(Tensor::cat(&[&ya, &xb], 1)?)
    }
}

/// One flow step: actnorm → invertible 1x1 conv → affine coupling.
#[derive(Clone, Debug)]
pub(super) struct Step {
    pub(super) norm: ActNorm,
    pub(super) mix: InvConv,
    pub(super) coupling: Coupling,
}
