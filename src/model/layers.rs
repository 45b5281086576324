//! Small layers on top of the fast convolutions, built from a `VarBuilder`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::channel_op;
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
        channel_op::add_bias(&y, &self.bias)
    }
}

impl Conv {
    /// The same layer with its parameters detached: gradients flow through it to its input
    /// but none is computed for (or reaches) its weight and bias.
    pub fn frozen(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            geom: self.geom,
        }
    }
    /// Weight, bias and geometry, as the channels-last inference stack takes them.
    pub fn parts(&self) -> (&Tensor, &Tensor, ConvGeom) {
        (&self.weight, &self.bias, self.geom)
    }
    /// The convolution without its bias, for a layer followed by a batch norm with batch
    /// statistics: that subtracts each channel's mean, so the bias cancels exactly (and its
    /// gradient is zero up to rounding); skipping it saves a pass over the output and the bias
    /// gradient's reduction. The bias stays a (trained-to-nothing) variable of the model.
    pub fn forward_before_batch_norm(&self, x: &Tensor) -> Result<Tensor> {
        conv::conv2d(x, &self.weight, self.geom)
    }
    /// `leaky(forward(x))`: convolution, bias and activation in one fused op.
    pub fn forward_leaky(&self, x: &Tensor) -> Result<Tensor> {
        conv::conv2d_bias_leaky(x, &self.weight, &self.bias, self.geom, LEAKY_SLOPE)
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
    /// Weight (`[Ci, Co, k, k]`), bias and geometry, as the inference stacks take them.
    pub fn parts(&self) -> (&Tensor, Option<&Tensor>, ConvGeom) {
        (&self.weight, self.bias.as_ref(), self.geom)
    }
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
            Some(b) => channel_op::add_bias(&y, b),
            None => Ok(y),
        }
    }
}

impl ConvT {
    /// `leaky(forward(x))` with the bias and the activation in one fused op.
    pub fn forward_leaky(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => {
                conv::conv_transpose2d_bias_leaky(x, &self.weight, b, self.geom, LEAKY_SLOPE)
            }
            None => leaky(&conv::conv_transpose2d(x, &self.weight, self.geom)?),
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
    super::activation::leaky_relu(x, LEAKY_SLOPE)
}

/// The negative slope of every leaky ReLU in the conv models (the paper's α = 0.2).
pub const LEAKY_SLOPE: f32 = 0.2;

/// Per-channel affine `x * scale + shift` for `[B, C, H, W]` (an eval-mode batch norm).
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    channel_op::channel_affine(x, scale, shift)
}

/// Batch normalisation over `[B, C, H, W]` with variables `weight`, `bias`, `running_mean`,
/// `running_var` (PyTorch names, ε = 1e-5), always followed by the conv models' leaky ReLU
/// (fused into its affine step).
///
/// Training uses the batch statistics ([`BatchNorm::forward_batch_leaky`], which also returns
/// them); inference uses the stored running statistics ([`BatchNorm::forward_eval_leaky`]). The running
/// statistics are not updated as a side effect of the forward pass (candle-nn's `batch_norm`
/// keeps them in copies that never reach the variable map): the owner re-estimates them with
/// [`BatchNorm::set_running`] from batch statistics (see `gan::Gan::calibrate_batch_norm`).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    name: String,
}

/// ε of [`BatchNorm`].
pub const BN_EPS: f64 = 1e-5;

impl BatchNorm {
    /// Creates the four variables of a `c`-channel batch norm under `vb`.
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(c, "weight")?,
            bias: vb.get(c, "bias")?,
            running_mean: vb.get(c, "running_mean")?,
            running_var: vb.get(c, "running_var")?,
            name: vb.prefix(),
        })
    }
    /// The same layer with its parameters detached (see [`Conv::frozen`]).
    pub fn frozen(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            running_mean: self.running_mean.detach(),
            running_var: self.running_var.detach(),
            name: self.name.clone(),
        }
    }
    /// Variable-name prefix (e.g. `gen.n0`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Normalises with the batch statistics, then the leaky ReLU (fused into the affine step);
    /// returns `(y, mean [C], biased variance [C])` (the statistics detached).
    pub fn forward_batch_leaky(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (mean, var) = super::batchnorm_op::batch_statistics(x)?;
        Ok((self.forward_train_leaky(x)?, mean, var))
    }
    /// Normalises with the batch statistics (training), then the affine and the leaky ReLU,
    /// as one fused op ([`super::batchnorm_op::batch_norm_leaky`]); the output of
    /// [`BatchNorm::forward_batch_leaky`] without the statistics.
    pub fn forward_train_leaky(&self, x: &Tensor) -> Result<Tensor> {
        super::batchnorm_op::batch_norm_leaky(x, &self.weight, &self.bias, BN_EPS, LEAKY_SLOPE)
    }
    /// Normalises with the running statistics (inference), then the leaky ReLU (fused into
    /// the affine step).
    pub fn forward_eval_leaky(&self, x: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.eval_affine()?;
        channel_op::channel_affine_leaky(x, &scale, &shift, LEAKY_SLOPE)
    }
    /// The per-channel scale and shift that apply the running statistics.
    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = ((&self.running_var + BN_EPS)?.sqrt()?.recip()? * &self.weight)?;
        let shift = (&self.bias - (&self.running_mean * &scale)?)?;
        Ok((scale, shift))
    }
    /// Writes new running statistics into this layer's variables in `varmap`.
    pub fn set_running(
        &self,
        varmap: &candle_nn::VarMap,
        mean: &Tensor,
        var: &Tensor,
    ) -> candle_core::Result<()> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        for (suffix, value) in [("running_mean", mean), ("running_var", var)] {
            let key = format!("{}.{suffix}", self.name);
            match data.get(&key) {
                Some(v) => crate::model::weights::assign(v, &value.detach().to_dtype(v.dtype())?)?,
                None => candle_core::bail!("no variable {key} in the model"),
            }
        }
        Ok(())
    }
}
