//! A multi-scale normalizing flow (RealNVP / Glow style) on 64x64 RGB images, sized to train
//! on two CPU cores.
//!
//! # The map `x ↦ z`
//!
//! 1. **Dequantisation** (`x` in [0, 1], 8-bit levels): `x_deq = (255·x + u) / 256`, with
//!    `u ~ U[0, 1)` per pixel while training and `u = ½` (the bin centre) in [`Flow::encode`].
//! 2. **Logit** (RealNVP): `y = logit(α + (1 − 2α)·x_deq)`, `α =` [`LOGIT_ALPHA`].
//! 3. **Levels** `l = 0 … L−1` ([`FlowArch::levels`], 4 for 64x64): squeeze (space-to-depth,
//!    `[C, H, W] → [4C, H/2, W/2]`, channel `4c + 2dy + dx`), then
//!    [`FlowArch::steps_per_level`] steps of
//!    *actnorm* (per-channel `x·e^s + b`, data-initialised on the first training batch) →
//!    *invertible 1x1 conv* (Glow's LU form `W = P·L·(U + diag e^s)`, `P` the channel
//!    reversal, `L`, `U` start at zero so `W = P` at initialisation) →
//!    *affine coupling* (the first ⌊C/2⌋ channels `x_a` pass, the others become
//!    `x_b·e^{s} + t` with `(s̃, t) = NN(x_a)`, `s = B·tanh(s̃ / B)` bounded by
//!    `B =` [`LOG_SCALE_BOUND`]; `NN` = 3x3 conv, leaky ReLU, 1x1 conv, leaky ReLU, 3x3 conv
//!    initialised to zero, all with the fast convolutions of [`super::conv`]).
//!    After every level but the last, the last `C − ⌊C/2⌋` channels are **factored out**.
//! 4. **Prior**: every factored-out part and the last level's output are standard normal.
//!
//! # The latent
//!
//! `z` has all `3·64·64 = 12,288` dimensions ([`FLOW_LATENT_DIM`]): the factored-out parts
//! in level order, each flattened channel-major (`[C, H, W]` row-major). For 64x64 with four
//! levels that is `6x32x32` (6,144), `12x16x16` (3,072), `24x8x8` (1,536) and the last
//! level's `96x4x4` (1,536): the *last* 1,536 dimensions are the coarsest scale.
//!
//! # Exactness and stability
//!
//! [`Flow::encode`] is the exact forward map and [`Flow::decode`] its exact inverse (up to
//! `f32` rounding): every layer is inverted in closed form, the 1x1 convs through `W⁻¹`
//! computed in `f64`. `decode` of arbitrary codes (for example mapped codes far from the
//! data) stays finite: scales are bounded, intermediate values are clamped to
//! ±[`INVERSE_CLAMP`] (never reached by codes of real images), the final sigmoid saturates,
//! and the output is clamped to [0, 1].

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::conv::ConvGeom;
use super::{ModelError, Result};

pub mod ops;
mod steps;
use steps::{ActNorm, Coupling, InvConv, Step};

/// Latent dimension of the flow on `[3, 64, 64]` images: the image's own dimension.
pub const FLOW_LATENT_DIM: usize = 3 * 64 * 64;
/// `α` of the logit preprocessing `logit(α + (1 − 2α)·x)` (RealNVP's 0.05).
pub const LOGIT_ALPHA: f64 = 0.05;
/// Bound `B` of the coupling log-scales: `s = B·tanh(s̃ / B)`, so `e^s ∈ [e^-B, e^B]`.
pub const LOG_SCALE_BOUND: f64 = 2.0;
/// Values inside the inverse pass are clamped to ±this, so that decoding any finite code
/// gives a finite image.
pub const INVERSE_CLAMP: f64 = 1e4;
/// Temperature of the sample grids written while training (`z ~ N(0, T²I)`).
pub const SAMPLE_TEMPERATURE: f64 = 0.7;
/// Default number of levels (scales) on 64x64 images.
pub const DEFAULT_LEVELS: usize = 4;
/// Default number of flow steps per level.
pub const DEFAULT_STEPS_PER_LEVEL: usize = 4;
/// Number of 8-bit intensity levels (dequantisation bins).
const LEVELS_8BIT: f64 = 256.0;
/// Geometry of the 1x1 convolutions.
const POINTWISE: ConvGeom = ConvGeom {
    kernel: 1,
    stride: 1,
    padding: 0,
};

/// Architecture of a flow, saved in the model config (`flow` field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowArch {
    /// Number of scales; the image side must be divisible by `2^levels`.
    pub levels: usize,
    /// Flow steps (actnorm, 1x1 conv, coupling) per level.
    pub steps_per_level: usize,
    /// Hidden width of the coupling nets at level 0; level `l` uses `hidden · 2^min(l, 2)`.
    pub hidden: usize,
}

impl FlowArch {
    /// The default depth ([`DEFAULT_LEVELS`] x [`DEFAULT_STEPS_PER_LEVEL`]) with coupling
    /// width `hidden` at the first level.
    pub fn for_width(hidden: usize) -> Self {
        Self {
            levels: DEFAULT_LEVELS,
            steps_per_level: DEFAULT_STEPS_PER_LEVEL,
            hidden,
        }
    }
    /// Hidden width of the coupling nets at `level`.
    pub fn hidden_at(&self, level: usize) -> usize {
        self.hidden << level.min(2)
    }
}

/// Space-to-depth: `[B, C, H, W]` → `[B, 4C, H/2, W/2]`, channel `4c + 2dy + dx`.
pub fn squeeze(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    Ok(x.reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, 4 * c, h / 2, w / 2))?)
}

/// Inverse of [`squeeze`]: `[B, 4C, H, W]` → `[B, C, 2H, 2W]`.
pub fn unsqueeze(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    Ok(x.reshape((b, c, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c, 2 * h, 2 * w))?)
}

/// The flow: levels of steps between squeezes and factor-outs (variables `flow.l{L}.s{S}.*`).
#[derive(Clone, Debug)]
pub struct Flow {
    levels: Vec<Vec<Step>>,
    /// `(channels, side)` at the start of each level, after its squeeze.
    shapes: Vec<(usize, usize)>,
    input: (usize, usize),
    arch: FlowArch,
}

/// The output of the forward pass: each level's factored-out part (the last level's output
/// last), and the log-determinant per image of `y ↦ z` (`[B]`).
pub struct FlowOutput {
    /// `[B, C_l, H_l, W_l]` per level.
    pub parts: Vec<Tensor>,
    /// `log |det ∂z/∂y|` per image.
    pub log_det: Tensor,
}

impl Flow {
    /// Builds a flow on `[channels, side, side]` inputs. Errors unless `side` is divisible
    /// by `2^levels` and the widths are positive.
    pub fn new(vb: VarBuilder, arch: &FlowArch, channels: usize, side: usize) -> Result<Self> {
        if arch.levels == 0 || arch.steps_per_level == 0 || arch.hidden == 0 || channels == 0 {
            return Err(ModelError::BadInput(format!(
                "flow needs positive levels, steps and width, got {arch:?}"
            )));
        }
        if arch.levels > 8 || !side.is_multiple_of(1 << arch.levels) {
            return Err(ModelError::BadInput(format!(
                "a {side}x{side} image cannot be squeezed {} times",
                arch.levels
            )));
        }
        let vb = vb.pp("flow");
        let (mut c, mut s) = (channels, side);
        let mut levels = Vec::new();
        let mut shapes = Vec::new();
        for l in 0..arch.levels {
            c *= 4;
            s /= 2;
            shapes.push((c, s));
            let steps = (0..arch.steps_per_level)
                .map(|k| {
                    let v = vb.pp(format!("l{l}")).pp(format!("s{k}"));
                    Ok(Step {
                        norm: ActNorm::new(v.pp("norm"), c)?,
                        mix: InvConv::new(v.pp("mix"), c)?,
                        coupling: Coupling::new(v.pp("nn"), c, arch.hidden_at(l))?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            levels.push(steps);
            if l + 1 < arch.levels {
                c /= 2;
            }
        }
        Ok(Self {
            levels,
            shapes,
            input: (channels, side),
            arch: arch.clone(),
        })
    }

    /// The flow of a model config: `[3, 64, 64]` images, the architecture of `cfg.flow`
    /// (default: [`FlowArch::for_width`] of `cfg.base_channels`). Errors unless
    /// `cfg.latent_dim` is [`FLOW_LATENT_DIM`].
    pub fn for_config(cfg: &super::ModelConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.latent_dim != FLOW_LATENT_DIM {
            return Err(ModelError::BadInput(format!(
                "a flow's latent has the image's dimension {FLOW_LATENT_DIM} (3x64x64), not {}",
                cfg.latent_dim
            )));
        }
        let arch = cfg
            .flow
            .clone()
            .unwrap_or_else(|| FlowArch::for_width(cfg.base_channels));
        Self::new(vb, &arch, 3, 64)
    }

    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.levels[0][0].mix.device().clone()
    }

    /// The architecture.
    pub fn arch(&self) -> &FlowArch {
        &self.arch
    }

    /// Dimension of the latent (= of the input).
    pub fn latent_dim(&self) -> usize {
        self.input.0 * self.input.1 * self.input.1
    }

    /// Shape `(C, H, W)` of each latent part, in latent order.
    pub fn part_shapes(&self) -> Vec<(usize, usize, usize)> {
        let last = self.shapes.len() - 1;
        self.shapes
            .iter()
            .enumerate()
            .map(|(l, &(c, s))| {
                let kept = if l == last { c } else { c - c / 2 };
                (kept, s, s)
            })
            .collect()
    }

    /// Sets the flow to start as (nearly) the identity after random initialisation: the 1x1
    /// convs to the channel reversal (`L = U = 0`) and the last conv of every coupling net
    /// to zero. Called by [`super::Model::new`].
    pub fn identity_init(&self, varmap: &VarMap) -> Result<()> {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| ModelError::BadInput("variable map lock poisoned".into()))?;
        for (name, var) in data.iter() {
            if name.starts_with("flow.")
                && (name.ends_with(".mix.l")
                    || name.ends_with(".mix.u")
                    || name.ends_with(".nn.c3.weight"))
            {
                crate::model::weights::assign(var, &var.as_tensor().zeros_like()?)?;
            }
        }
        Ok(())
    }

    /// Forward pass `y ↦ z` on logit-space inputs `[B, C, S, S]`. With `init`, every actnorm
    /// is first initialised from the statistics of its own input (data-dependent init).
    pub fn forward(&self, y: &Tensor, init: Option<&VarMap>) -> Result<FlowOutput> {
        let (b, c, h, w) = y.dims4()?;
        if (c, h) != self.input || h != w {
            return Err(ModelError::BadInput(format!(
                "flow input must be [n, {}, {s}, {s}], got {:?}",
                self.input.0,
                y.dims(),
                s = self.input.1
            )));
        }
        let vars = match init {
            Some(vm) => Some(
                vm.data()
                    .lock()
                    .map_err(|_| ModelError::BadInput("variable map lock poisoned".into()))?
                    .clone(),
            ),
            None => None,
        };
        let mut log_det = Tensor::zeros(b, DType::F32, y.device())?;
        let mut parts = Vec::with_capacity(self.levels.len());
        let mut h = y.clone();
        let last = self.levels.len() - 1;
        for (l, steps) in self.levels.iter().enumerate() {
            h = squeeze(&h)?;
            for step in steps {
                if let Some(vars) = &vars {
                    step.norm.init_from(&h, vars)?;
                }
                let (a, ld) = step.mix.forward_after(&step.norm, &h)?;
                log_det = log_det.broadcast_add(&ld)?;
                let (a, ld) = step.coupling.forward(&a)?;
                log_det = (log_det + ld)?;
                h = a;
            }
            if l < last {
                let c = h.dim(1)?;
                parts.push(h.narrow(1, c / 2, c - c / 2)?);
                h = h.narrow(1, 0, c / 2)?;
            } else {
                parts.push(h.clone());
            }
        }
        Ok(FlowOutput { parts, log_det })
    }

    /// Inverse pass `z ↦ y`, `z` `[B, D]` in latent order → `[B, C, S, S]`. Intermediate
    /// values are clamped to ±[`INVERSE_CLAMP`].
    pub fn inverse(&self, z: &Tensor) -> Result<Tensor> {
        let (b, d) = z.dims2()?;
        if d != self.latent_dim() {
            return Err(ModelError::BadInput(format!(
                "codes must be [n, {}], got {:?}",
                self.latent_dim(),
                z.dims()
            )));
        }
        let clamp = |t: Tensor| t.clamp(-INVERSE_CLAMP as f32, INVERSE_CLAMP as f32);
        let z = clamp(z.clone())?;
        let mut parts = Vec::new();
        let mut offset = 0;
        for (c, h, w) in self.part_shapes() {
            parts.push(z.narrow(1, offset, c * h * w)?.reshape((b, c, h, w))?);
            offset += c * h * w;
        }
        let mut h: Option<Tensor> = None;
        for (l, steps) in self.levels.iter().enumerate().rev() {
            let mut cur = match h.take() {
                None => parts[l].clone(),
                Some(kept) => Tensor::cat(&[&kept, &parts[l]], 1)?,
            };
            for step in steps.iter().rev() {
                cur = clamp(step.coupling.inverse(&cur)?)?;
                cur = clamp(step.mix.inverse(&cur)?)?;
                cur = clamp(step.norm.inverse(&cur)?)?;
            }
            h = Some(unsqueeze(&cur)?);
        }
        h.ok_or_else(|| ModelError::BadInput("flow without levels".into()))
    }

    /// Concatenates the parts of a forward pass into codes `[B, D]` (latent order).
    pub fn flatten_parts(parts: &[Tensor]) -> Result<Tensor> {
        let flat = parts
            .iter()
            .map(|p| p.flatten_from(1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&flat, 1)?)
    }

    /// Images `[B, C, S, S]` in [0, 1] (clamped) → codes `[B, D]`, with `u = ½`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x_deq = dequantise(&x.clamp(0f32, 1f32)?, None)?;
        let (y, _) = logit_forward(&x_deq)?;
        Self::flatten_parts(&self.forward(&y, None)?.parts)
    }

    /// Codes `[B, D]` → images `[B, C, S, S]`, clamped to [0, 1]. Exact inverse of
    /// [`Flow::encode`] on its range; finite for any finite codes.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let y = self.inverse(z)?;
        let p = candle_nn::ops::sigmoid(&y)?;
        let x_deq = p.affine(
            1.0 / (1.0 - 2.0 * LOGIT_ALPHA),
            -LOGIT_ALPHA / (1.0 - 2.0 * LOGIT_ALPHA),
        )?;
        Ok(x_deq
            .affine(LEVELS_8BIT / 255.0, -0.5 / 255.0)?
            .clamp(0f32, 1f32)?)
    }

    /// Mean negative log-likelihood in bits per dimension of the 8-bit images `x`
    /// (`[B, C, S, S]` in [0, 1]) under dequantisation noise `noise` (`U[0, 1)`, same shape):
    /// `bpd = −(log N(z) + log|det ∂z/∂x_deq|) / (D ln 2) + 8`. With `init`, the actnorms are
    /// data-initialised first. Returns (mean bpd as a scalar tensor, mean `½‖z‖²/D`).
    pub fn nll_bits_per_dim(
        &self,
        x: &Tensor,
        noise: &Tensor,
        init: Option<&VarMap>,
    ) -> Result<(Tensor, f64)> {
        let x_deq = dequantise(x, Some(noise))?;
        let (y, ld_pre) = logit_forward(&x_deq)?;
        let out = self.forward(&y, init)?;
        let b = x.dim(0)?;
        let mut half_sq = Tensor::zeros(b, DType::F32, x.device())?;
        for p in &out.parts {
            half_sq = (half_sq + p.sqr()?.flatten_from(1)?.sum(1)?.affine(0.5, 0.0)?)?;
        }
        let d = self.latent_dim() as f64;
        let log_pz = half_sq.affine(-1.0, -0.5 * d * (2.0 * std::f64::consts::PI).ln())?;
        let log_px = ((log_pz + out.log_det)? + ld_pre)?;
        let bpd = log_px
            .affine(-1.0 / (d * std::f64::consts::LN_2), LEVELS_8BIT.log2())?
            .mean_all()?;
        let prior = half_sq.mean_all()?.to_scalar::<f32>()? as f64 / d;
        Ok((bpd, prior))
    }
}

/// `x_deq = (255·x + u) / 256`; `u = ½` when `noise` is `None`.
pub fn dequantise(x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
    let scaled = x.affine(255.0 / LEVELS_8BIT, 0.0)?;
    Ok(match noise {
        Some(u) => (scaled + u.affine(1.0 / LEVELS_8BIT, 0.0)?)?,
        None => scaled.affine(1.0, 0.5 / LEVELS_8BIT)?,
    })
}

/// `y = logit(α + (1 − 2α)·x)` and its log-determinant per image
/// `Σ [ln(1 − 2α) − ln p − ln(1 − p)]` (`[B]`).
pub fn logit_forward(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = x.affine(1.0 - 2.0 * LOGIT_ALPHA, LOGIT_ALPHA)?;
    let log_p = p.log()?;
    let log_q = p.affine(-1.0, 1.0)?.log()?;
    let y = (&log_p - &log_q)?;
    let n = x.elem_count() / x.dim(0)?;
    let ld = (log_p + log_q)?
        .flatten_from(1)?
        .sum(1)?
        .affine(-1.0, n as f64 * (1.0 - 2.0 * LOGIT_ALPHA).ln())?;
    Ok((y, ld))
}

/// Uniform `[0, 1)` dequantisation noise of shape `[n, c, s, s]` from the ChaCha stream
/// `(seed, stream)`.
pub fn dequant_noise(
    seed: u64,
    stream: u64,
    shape: (usize, usize, usize, usize),
    device: &Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Seed offset (XORed with the run's seed) of the training dequantisation noise.
pub const NOISE_SEED: u64 = 0xde9a_0000;
/// Seed offset of the held-out evaluation noise.
const EVAL_NOISE_SEED: u64 = 0xde9a_e000;
/// Steps of linear learning-rate warm-up at the start of training.
pub const WARMUP_STEPS: u64 = 200;

/// Learning-rate factor at (0-based) training step `step`: `min(1, (step + 1) / WARMUP_STEPS)`.
pub fn warmup_factor(step: u64) -> f64 {
    ((step + 1) as f64 / WARMUP_STEPS as f64).min(1.0)
}

/// Mean bits per dimension on up to `max_images` held-out images of `data` (test split,
/// else validation, else all), in batches of 64, with seeded dequantisation noise.
pub fn heldout_bits_per_dim(
    flow: &Flow,
    data: &crate::data::Dataset,
    max_images: usize,
    seed: u64,
) -> Result<f64> {
    let mut idx = super::quality::held_out(data);
    idx.truncate(max_images);
    let device = flow.device();
    let mut total = 0.0;
    for (i, chunk) in idx.chunks(64).enumerate() {
        let x = data
            .batch(chunk, &device)
            .map_err(|e| ModelError::BadInput(e.to_string()))?;
        let noise = dequant_noise(seed ^ EVAL_NOISE_SEED, i as u64, x.dims4()?, &device)?;
        let (bpd, _) = flow.nll_bits_per_dim(&x, &noise, None)?;
        total += bpd.to_scalar::<f32>()? as f64 * chunk.len() as f64;
    }
    Ok(total / idx.len().max(1) as f64)
}
