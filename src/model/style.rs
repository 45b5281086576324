//! A style-based generator (StyleGAN2's design, scaled to train on two CPU cores), its
//! discriminator and a recoder into the intermediate space W.
//!
//! - **Mapping network** `gen.map.fc0..fc3` (Z → W, `d → d`): pixel norm of `z`
//!   (`z / √(mean z² + 1e-8)`), then four dense layers, each followed by a leaky ReLU (α = 0.2)
//!   times √2. Dense weights are used ×√2 ("equalised" scale: `store::init_weights` draws them
//!   with variance `0.5 / fan_in`, the layers need `1 / fan_in` to keep unit variance).
//! - **Synthesis network** `gen.syn.*` (W → image): a learned constant `const` `[8c, 16]`
//!   (used as `[8c, 4, 4]`, ×√32 so that it starts with unit variance), a modulated 3x3 conv
//!   `b0` at 4x4, four modulated 4x4 stride-2 transposed convs `b1..b4` (8c → 4c → 2c → c → c/2
//!   channels, 4x4 → 64x64) and a modulated 3x3 conv `rgb` to RGB (no demodulation) with a
//!   sigmoid. Every layer `L` has its own style affine `L.style` (`d → C_in`, style
//!   `s = A(w) + 1`), weight and bias.
//! - **Recoder** `rec.*` (images → W): the shared conv stack and a dense head
//!   ([`ConvHead`]). **Discriminator** `disc.*` (training only): the GAN's ([`Discriminator`]).
//!
//! **Why modulated convolution with demodulation, not AdaIN.** It is StyleGAN2's operator,
//! the one the Local Basis paper analyses; it normalises the *weights* per sample
//! (`d_j = 1/√(Σ_i s_i² Σ_k w_ijk² + 1e-8)`) instead of the activations, so there are no
//! instance statistics to divide by (AdaIN's per-image standard deviation makes the Jacobian
//! blow up on flat feature maps and causes StyleGAN1's droplet artifacts). It is computed in the
//! "non-fused" form — scale the input channels by `s`, one shared-weight convolution
//! ([`conv::conv2d`] / [`conv::conv_transpose2d`], the fast kernels), scale the output channels
//! by `d` — which equals a per-sample convolution with weights `s_i w_ijk d_j`. For the stride-2
//! transposed convs only `k²/4` of the `k²` taps reach each output pixel, so the weight energy
//! is divided by 4. Up-sampling is by the transposed convs (as in our DCGAN generator, the same
//! cost), not nearest ×2 + 3x3 conv, which costs 2.4x the multiply-adds.
//!
//! **Left out:** noise inputs (they would make `decode` random; decode must be deterministic
//! and the Jacobians smooth), the truncation trick, style mixing, progressive growing and R1
//! (candle has no second-order gradients through our custom conv ops). No batch norm: every
//! image depends only on its own code, whatever the batch.
//!
//! **Two views of one generator.** Family [`Family::Style`] has codes in W: `encode` is the
//! recoder trained on `w = mapping(z)`, `decode` the synthesis network. Family
//! [`Family::StyleZ`] has codes in Z, the prior's space, like any GAN: `decode(z) =
//! synthesis(mapping(z))` (pixel norm included, so only the direction of `z` matters), and
//! `encode` is a recoder trained on `pixel_norm(z)` (the identifiable part of `z`, on the
//! sphere of radius √d; `train --model recoder-z`). The Z view has its own recoder because
//! the dense layers cannot be inverted numerically: the mapping Jacobian has σ₁/σ₆₃ ≈ 10⁶–10⁷
//! already at initialisation (d = 64), so an exact inverse of an `f32` W code lands on noise.
//! For the same reason the Z recoder is much less accurate than the W one: directions that
//! the mapping contracts barely show in the image.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use nalgebra::{DMatrix, DVector};

use super::conv::{self, ConvGeom};
use super::gan::{ConvHead, Discriminator};
use super::layers::leaky;
use super::{Family, ModelError, Result};

/// Slope of the leaky ReLU (the crate's `layers::leaky`).
pub const LEAKY_SLOPE: f64 = 0.2;
/// Gain after every leaky ReLU (keeps unit second moment).
pub const ACT_GAIN: f64 = std::f64::consts::SQRT_2;
/// Run-time multiplier of dense and un-demodulated weights (variance `0.5/fan_in` → `1/fan_in`).
pub const EQ_GAIN: f64 = std::f64::consts::SQRT_2;
/// Number of dense layers of the mapping network.
pub const MAPPING_LAYERS: usize = 4;
const CONST_GAIN: f64 = 5.656_854_249_492_381; // √32
const PIXEL_NORM_EPS: f64 = 1e-8;
const DEMOD_EPS: f64 = 1e-8;

/// Which space a style model's codes live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StyleView {
    /// The intermediate space W (family `style`).
    W,
    /// The prior's space Z, the mapping network's input (family `style-z`).
    Z,
}

impl StyleView {
    /// The view of `family`, `None` for other families.
    pub fn of(family: Family) -> Option<StyleView> {
        match family {
            Family::Style => Some(StyleView::W),
            Family::StyleZ => Some(StyleView::Z),
            _ => None,
        }
    }
}

fn act(x: &Tensor) -> candle_core::Result<Tensor> {
    leaky(x)? * ACT_GAIN
}

/// Dense layer with run-time weight gain [`EQ_GAIN`]; weight `[out, in]`, bias `[out]`.
#[derive(Clone, Debug)]
struct EqLinear {
    weight: Tensor,
    bias: Tensor,
}

impl EqLinear {
    fn new(vb: VarBuilder, d_in: usize, d_out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((d_out, d_in), "weight")?,
            bias: vb.get(d_out, "bias")?,
        })
    }
    /// `[n, in]` → `[n, out]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&(self.weight.t()? * EQ_GAIN)?)?
            .broadcast_add(&self.bias)
    }
    /// The effective weight (`out x in`) and bias in `f64`.
    fn host(&self) -> Result<(DMatrix<f64>, DVector<f64>)> {
        let (o, i) = self.weight.dims2()?;
        let w: Vec<f32> = self.weight.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = self.bias.to_vec1()?;
        Ok((
            DMatrix::from_row_iterator(o, i, w.iter().map(|&v| f64::from(v) * EQ_GAIN)),
            DVector::from_iterator(o, b.iter().map(|&v| f64::from(v))),
        ))
    }
}

/// The mapping network Z → W (`gen.map.fc0..fc3`).
#[derive(Clone, Debug)]
pub struct Mapping {
    layers: Vec<EqLinear>,
    d: usize,
}

impl Mapping {
    /// [`MAPPING_LAYERS`] dense `d → d` layers under `vb`.
    pub fn new(vb: VarBuilder, d: usize) -> candle_core::Result<Self> {
        let layers = (0..MAPPING_LAYERS)
            .map(|i| EqLinear::new(vb.pp(format!("fc{i}")), d, d))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers, d })
    }
    /// Pixel norm `[n, d]` → `[n, d]`: each row scaled to mean square one.
    pub fn pixel_norm(z: &Tensor) -> candle_core::Result<Tensor> {
        let r = (z.sqr()?.mean_keepdim(1)? + PIXEL_NORM_EPS)?.sqrt()?;
        z.broadcast_div(&r)
    }
    /// The dense layers alone (input: pixel-normalised `z`), `[n, d]` → `[n, d]`.
    pub fn dense(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = u.clone();
        for l in &self.layers {
            h = act(&l.forward(&h)?)?;
        }
        Ok(h)
    }
    /// `w = dense(pixel_norm(z))`, `[n, d]` → `[n, d]`.
    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.dense(&Self::pixel_norm(z)?)
    }
    fn host_layers(&self) -> Result<Vec<(DMatrix<f64>, DVector<f64>)>> {
        self.layers.iter().map(EqLinear::host).collect()
    }

    /// The Jacobian `∂w/∂z` (`d x d`, rows = W, columns = Z) of [`Mapping::forward`] at `z`
    /// (length `d`), exact (chain rule in `f64`): `D₄A₄ ⋯ D₁A₁ · (I/r − z zᵀ/(d r³))`, `Aᵢ`
    /// the effective weights, `Dᵢ` the activation slopes, `r` the root mean square of `z`.
    /// Its rank is at most `d − 1` (the pixel norm drops the radial direction).
    pub fn jacobian(&self, z: &[f32]) -> Result<DMatrix<f64>> {
        let d = self.d;
        if z.len() != d || z.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::BadInput(format!(
                "z must hold {d} finite values, got {} values",
                z.len()
            )));
        }
        let z = DVector::from_iterator(d, z.iter().map(|&v| f64::from(v)));
        let r = (z.norm_squared() / d as f64 + PIXEL_NORM_EPS).sqrt();
        let mut jac =
            DMatrix::<f64>::identity(d, d) / r - (&z * z.transpose()) / (d as f64 * r.powi(3));
        let mut h = &z / r;
        for (a, b) in self.host_layers()? {
            let pre = &a * &h + b;
            let slope = pre.map(|v| {
                if v > 0.0 {
                    ACT_GAIN
                } else {
                    ACT_GAIN * LEAKY_SLOPE
                }
            });
            h = pre.component_mul(&slope);
            jac = DMatrix::from_diagonal(&slope) * a * jac;
        }
        Ok(jac)
    }
}

/// A modulated convolution (optionally transposed, optionally demodulated); see the module docs.
#[derive(Clone, Debug)]
struct ModConv {
    /// `[Co, Ci, k, k]`, or `[Ci, Co, k, k]` when transposed.
    weight: Tensor,
    bias: Tensor,
    style: EqLinear,
    geom: ConvGeom,
    transposed: bool,
    demodulate: bool,
}

impl ModConv {
    fn new(
        vb: VarBuilder,
        d: usize,
        (c_in, c_out): (usize, usize),
        transposed: bool,
        demodulate: bool,
    ) -> candle_core::Result<Self> {
        let (weight, geom) = if transposed {
            let g = ConvGeom {
                kernel: 4,
                stride: 2,
                padding: 1,
            };
            (vb.get((c_in, c_out, 4, 4), "weight")?, g)
        } else {
            let g = ConvGeom {
                kernel: 3,
                stride: 1,
                padding: 1,
            };
            (vb.get((c_out, c_in, 3, 3), "weight")?, g)
        };
        Ok(Self {
            weight,
            bias: vb.get(c_out, "bias")?,
            style: EqLinear::new(vb.pp("style"), d, c_in)?,
            geom,
            transposed,
            demodulate,
        })
    }

    /// `x` `[n, Ci, H, W]` (multiplied by `in_gain` first), `w` `[n, d]` → `[n, Co, H', W']`.
    fn forward(&self, x: &Tensor, w: &Tensor, in_gain: f64) -> candle_core::Result<Tensor> {
        let n = w.dim(0)?;
        let s = (self.style.forward(w)? + 1.0)?;
        let xs = x.broadcast_mul(&(&s * in_gain)?.reshape((n, (), 1, 1))?)?;
        let y = if self.transposed {
            conv::conv_transpose2d(&xs, &self.weight, self.geom)?
        } else {
            conv::conv2d(&xs, &self.weight, self.geom)?
        };
        let y = if self.demodulate {
            let energy = self.weight.sqr()?.sum((2, 3))?;
            let energy = if self.transposed { energy.t()? } else { energy };
            let taps = (self.geom.stride * self.geom.stride) as f64;
            let energy = (energy / taps)?.t()?.contiguous()?; // [Ci, Co]
            let demod = (s.sqr()?.matmul(&energy)? + DEMOD_EPS)?.sqrt()?.recip()?;
            y.broadcast_mul(&demod.reshape((n, (), 1, 1))?)?
        } else {
            (y * EQ_GAIN)?
        };
        super::channel_op::add_bias(&y, &self.bias)
    }
}

/// The synthesis network W → image (`gen.syn.*`).
#[derive(Clone, Debug)]
pub struct Synthesis {
    constant: Tensor,
    blocks: Vec<ModConv>,
    rgb: ModConv,
    c: usize,
}

impl Synthesis {
    /// Builds the synthesis network for `d`-dimensional W and base width `c`.
    pub fn new(vb: VarBuilder, d: usize, c: usize) -> candle_core::Result<Self> {
        let widths = [8 * c, 4 * c, 2 * c, c, c / 2];
        let mut blocks = vec![ModConv::new(
            vb.pp("b0"),
            d,
            (widths[0], widths[0]),
            false,
            true,
        )?];
        for i in 1..5 {
            blocks.push(ModConv::new(
                vb.pp(format!("b{i}")),
                d,
                (widths[i - 1], widths[i]),
                true,
                true,
            )?);
        }
        Ok(Self {
            constant: vb.get((8 * c, 16), "const")?,
            blocks,
            rgb: ModConv::new(vb.pp("rgb"), d, (widths[4], 3), false, false)?,
            c,
        })
    }
    /// `w` `[n, d]` → images `[n, 3, 64, 64]` in [0, 1].
    pub fn forward(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        let n = w.dim(0)?;
        let shape = (n, 8 * self.c, 4, 4);
        let mut h =
            (self.constant.reshape((1, 8 * self.c, 4, 4))? * CONST_GAIN)?.broadcast_as(shape)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let gain = if i == 0 { 1.0 } else { ACT_GAIN };
            h = leaky(&block.forward(&h, w, gain)?)?;
        }
        super::activation::sigmoid(&self.rgb.forward(&h, w, ACT_GAIN)?)
    }
}

/// Mapping network, synthesis network, recoder and (training only) discriminator.
#[derive(Clone, Debug)]
pub struct Style {
    mapping: Mapping,
    synthesis: Synthesis,
    rec: ConvHead,
    disc: Option<Discriminator>,
}

impl Style {
    /// Builds the model with `d`-dimensional Z and W and base width `c`.
    pub fn new(
        vb: VarBuilder,
        d: usize,
        c: usize,
        with_discriminator: bool,
    ) -> candle_core::Result<Self> {
        let gen = vb.pp("gen");
        Ok(Self {
            mapping: Mapping::new(gen.pp("map"), d)?,
            synthesis: Synthesis::new(gen.pp("syn"), d, c)?,
            rec: ConvHead::new(vb.pp("rec"), c, d)?,
            disc: if with_discriminator {
                Some(Discriminator::new(vb.pp("disc"), c)?)
            } else {
                None
            },
        })
    }
    /// The mapping network.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }
    /// `z` `[n, d]` → `w` `[n, d]` (pixel norm and the dense layers).
    pub fn map_z_to_w(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.mapping.forward(z)
    }
    /// `w` `[n, d]` → images `[n, 3, 64, 64]` in [0, 1].
    pub fn synthesize(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        self.synthesis.forward(w)
    }
    /// Samples: `z` `[n, d]` (N(0, I) draws) → images `[n, 3, 64, 64]`.
    pub fn generate_from_z(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.synthesize(&self.map_z_to_w(z)?)
    }
    /// The recoder: images `[n, 3, 64, 64]` → codes `[n, d]` (W, or Z in the Z view).
    pub fn recode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.rec.forward(x)
    }
    /// [`Self::recode`] at inference (channels-last where it applies; detached).
    pub fn recode_inference(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.rec.forward_inference(x)
    }
    /// Images → real/fake logits `[n, 1]`; errors when built without a discriminator.
    pub fn discriminate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.discriminator()?.forward(x)
    }
    /// The discriminator; errors when loaded without one.
    pub fn discriminator(&self) -> candle_core::Result<&Discriminator> {
        match &self.disc {
            Some(d) => Ok(d),
            None => candle_core::bail!("this style model was loaded without its discriminator"),
        }
    }
    /// The recoder's training target for prior draws `z` `[n, d]`: `w = mapping(z)` in the W
    /// view, `pixel_norm(z)` in the Z view.
    pub fn recoder_target(&self, z: &Tensor, view: StyleView) -> Result<Tensor> {
        Ok(match view {
            StyleView::W => self.map_z_to_w(z)?,
            StyleView::Z => Mapping::pixel_norm(z)?,
        })
    }
    /// Codes `[n, d]` of `view` → images `[n, 3, 64, 64]` (Z: `synthesis(mapping(z))`).
    pub fn decode(&self, codes: &Tensor, view: StyleView) -> Result<Tensor> {
        Ok(match view {
            StyleView::W => self.synthesize(codes)?,
            StyleView::Z => self.generate_from_z(codes)?,
        })
    }
}
