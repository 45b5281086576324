//! Split-VAE (paper appendix A.3): the decoder emits two images x1, x2 and a compositional map
//! σ, and the output is σ⊙x1 + (1−σ)⊙x2. ResNet-like: a residual block (3x3 conv, leaky ReLU,
//! skip connection) follows the 16x16 and 8x8 stages of the encoder and precedes the 16x16 and
//! 32x32 stages of the decoder; a larger latent (128 by default).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;

use super::conv::ConvGeom;
use super::layers::{leaky, linear, Conv, ConvT};

/// `x + conv3x3(leaky(x))`, channels preserved.
#[derive(Clone, Debug)]
struct ResBlock {
    conv: Conv,
}

impl ResBlock {
    fn new(vb: VarBuilder, ch: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv::new(vb, ch, ch, 3, 1, 1)?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b, _) = self.conv.parts();
        super::conv::residual_conv3x3(x, w, b, super::layers::LEAKY_SLOPE)
    }
}

/// The Split-VAE: `enc.*` and `dec.*` variables.
#[derive(Clone, Debug)]
pub struct Svae {
    down: Vec<Conv>,
    enc_res: Vec<(usize, ResBlock)>,
    mean: candle_nn::Linear,
    logvar: candle_nn::Linear,
    fc: candle_nn::Linear,
    ups: Vec<ConvT>,
    dec_res: Vec<(usize, ResBlock)>,
    out: Conv,
    c: usize,
}

impl Svae {
    /// Builds the Split-VAE with latent dimension `d` and base width `c`.
    pub fn new(vb: VarBuilder, d: usize, c: usize) -> Result<Self> {
        let e = vb.pp("enc");
        let widths = [3, c, 2 * c, 4 * c, 8 * c];
        let down = (0..4)
            .map(|i| Conv::new(e.pp(format!("c{i}")), widths[i], widths[i + 1], 4, 2, 1))
            .collect::<Result<_>>()?;
        // after conv 1 (16x16, 2c) and conv 2 (8x8, 4c)
        let enc_res = vec![
            (1, ResBlock::new(e.pp("r1"), 2 * c)?),
            (2, ResBlock::new(e.pp("r2"), 4 * c)?),
        ];
        let f = 8 * c * 16;
        let mean = linear(e.pp("mean"), f, d)?;
        let logvar = linear(e.pp("logvar"), f, d)?;
        let dv = vb.pp("dec");
        let fc = linear(dv.pp("fc"), d, f)?;
        let up_w = [8 * c, 4 * c, 2 * c, c, c / 2];
        let g = ConvGeom {
            kernel: 4,
            stride: 2,
            padding: 1,
        };
        let ups = (0..4)
            .map(|i| ConvT::new(dv.pp(format!("t{i}")), up_w[i], up_w[i + 1], g, true))
            .collect::<Result<_>>()?;
        // after up 1 (16x16, 2c) and up 2 (32x32, c)
        let dec_res = vec![
            (1, ResBlock::new(dv.pp("r1"), 2 * c)?),
            (2, ResBlock::new(dv.pp("r2"), c)?),
        ];
        let out = Conv::new(dv.pp("out"), c / 2, 7, 3, 1, 1)?;
        Ok(Self {
            down,
            enc_res,
            mean,
            logvar,
            fc,
            ups,
            dec_res,
            out,
            c,
        })
    }

    /// `[n, 3, 64, 64]` → (mean `[n, d]`, log-variance `[n, d]`).
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = x.clone();
        for (i, conv) in self.down.iter().enumerate() {
            h = conv.forward_leaky(&h)?;
            for (_, r) in self.enc_res.iter().filter(|(at, _)| *at == i) {
                h = r.forward(&h)?;
            }
        }
        let h = h.flatten_from(1)?;
        Ok((self.mean.forward(&h)?, self.logvar.forward(&h)?))
    }

    /// `[n, d]` → the decoder's 7 sigmoid channels `[n, 7, 64, 64]`: x1 (0..3), x2 (3..6), σ (6).
    fn channels(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let mut h = leaky(&self.fc.forward(z)?)?.reshape((n, 8 * self.c, 4, 4))?;
        for (i, up) in self.ups.iter().enumerate() {
            h = up.forward_leaky(&h)?;
            for (_, r) in self.dec_res.iter().filter(|(at, _)| *at == i) {
                h = r.forward(&h)?;
            }
        }
        super::activation::sigmoid(&self.out.forward(&h)?)
    }

    /// `[n, d]` → (output, x1, x2, σ); images `[n, 3, 64, 64]`, σ `[n, 1, 64, 64]`, all in [0, 1].
    pub fn decode_parts(&self, z: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let p = self.channels(z)?;
        let x1 = p.narrow(D::Minus(3), 0, 3)?;
        let x2 = p.narrow(D::Minus(3), 3, 3)?;
        let sigma = p.narrow(D::Minus(3), 6, 1)?;
        Ok((compose(&p)?, x1, x2, sigma))
    }

    /// `[n, d]` → `[n, 3, 64, 64]` in [0, 1]: the output of [`Svae::decode_parts`], composed by
    /// one fused op on the CPU (f32).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        compose(&self.channels(z)?)
    }
}

/// `x1 ⊙ σ + x2 ⊙ (1 − σ)` from the decoder's 7 sigmoid channels `p` `[n, 7, h, w]` (x1 = 0..3,
/// x2 = 3..6, σ = 6) → `[n, 3, h, w]`. On the CPU (f32) one parallel pass each way, where the
/// composite's three narrows, broadcasts and their backward (every narrow's gradient is
/// zero-padded back to 7 channels and added) pass over the 7-channel tensor about ten times.
fn compose(p: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = p.dims4()?;
    if c != 7 {
        candle_core::bail!("split-VAE compose: expected 7 channels, got {:?}", p.dims());
    }
    if p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
        return p.contiguous()?.apply_op1(Compose);
    }
    compose_reference(p)
}

/// [`compose`] from candle ops (other devices and dtypes; the tests' reference).
fn compose_reference(p: &Tensor) -> Result<Tensor> {
    let x1 = p.narrow(D::Minus(3), 0, 3)?;
    let x2 = p.narrow(D::Minus(3), 3, 3)?;
    let sigma = p.narrow(D::Minus(3), 6, 1)?;
    x1.broadcast_mul(&sigma)? + x2.broadcast_mul(&(1.0 - &sigma)?)?
}

struct Compose;
struct ComposeGrad;

/// Images of `[7, plane]` sigmoid channels per image.
fn compose_dims(l: &Layout) -> Result<(usize, usize)> {
    match l.dims() {
        &[n, 7, h, w] => Ok((n, h * w)),
        d => candle_core::bail!("split-VAE compose: expected [n, 7, h, w], got {d:?}"),
    }
}

impl CustomOp1 for Compose {
    fn name(&self) -> &'static str {
        "split-vae-compose"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = super::activation::contiguous_f32("split-VAE compose", s, l)?;
        let (n, plane) = compose_dims(l)?;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            super::activation::map_chunks(out, 3 * plane, |i, o| {
                let img = &p[i * 7 * plane..][..7 * plane];
                let sigma = &img[6 * plane..];
                for c in 0..3 {
                    let (a, b) = (&img[c * plane..][..plane], &img[(3 + c) * plane..][..plane]);
                    let o = &mut o[c * plane..][..plane];
                    for (((o, &a), &b), &s) in o.iter_mut().zip(a).zip(b).zip(sigma) {
                        o.write(b + (a - b) * s);
                    }
                }
            })
        };
        // SAFETY: one chunk per image, each written in full (3 channels of `plane`).
        let out = unsafe { super::activation::filled_vec(n * 3 * plane, fill) };
        let (n, _, h, w) = l.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, 3, h, w))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&arg.contiguous()?, &ComposeGrad)?,
        ))
    }
}

impl CustomOp2 for ComposeGrad {
    fn name(&self) -> &'static str {
        "split-vae-compose-grad"
    }
    /// `(g [n, 3, h, w], p [n, 7, h, w])` → `∂/∂p`: `g σ` for x1, `g (1 − σ)` for x2 and
    /// `Σ_c g (x1 − x2)` for σ.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = super::activation::contiguous_f32("split-VAE compose grad", s1, l1)?;
        let p = super::activation::contiguous_f32("split-VAE compose grad", s2, l2)?;
        let (n, plane) = compose_dims(l2)?;
        if g.len() != n * 3 * plane {
            candle_core::bail!(
                "split-VAE compose grad: gradient {:?} for input {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let fill = |out: &mut [MaybeUninit<f32>]| {
            super::activation::map_chunks(out, 7 * plane, |i, o| {
                let img = &p[i * 7 * plane..][..7 * plane];
                let gi = &g[i * 3 * plane..][..3 * plane];
                let sigma = &img[6 * plane..];
                let (head, gs) = o.split_at_mut(6 * plane);
                for (o, _) in gs.iter_mut().zip(sigma) {
                    o.write(0.0);
                }
                for c in 0..3 {
                    let (a, b) = (&img[c * plane..][..plane], &img[(3 + c) * plane..][..plane]);
                    let gc = &gi[c * plane..][..plane];
                    let (ga, rest) = head[c * plane..].split_at_mut(plane);
                    let gb = &mut rest[2 * plane..][..plane];
                    for ((((ga, gb), &g), &s), (gs, (&a, &b))) in ga
                        .iter_mut()
                        .zip(gb.iter_mut())
                        .zip(gc)
                        .zip(sigma)
                        .zip(gs.iter_mut().zip(a.iter().zip(b)))
                    {
                        ga.write(g * s);
                        gb.write(g - g * s);
                        // SAFETY: written (0.0) above, before the first channel.
                        let acc = unsafe { gs.assume_init() };
                        gs.write(acc + g * (a - b));
                    }
                }
            })
        };
        // SAFETY: one chunk per image, each of its 7 planes written in full.
        let out = unsafe { super::activation::filled_vec(n * 7 * plane, fill) };
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_compose_matches_the_composite_forward_and_gradient() {
        let dev = Device::Cpu;
        // two sizes: the serial and the parallel path of the fused op
        for (n, side) in [(2usize, 5usize), (3, 64)] {
            let logits = Tensor::randn(0f32, 3.0, (n, 7, side, side), &dev).unwrap();
            let p = Var::from_tensor(&candle_nn::ops::sigmoid(&logits).unwrap()).unwrap();
            let ours = compose(p.as_tensor()).unwrap();
            let reference = compose_reference(p.as_tensor()).unwrap();
            assert_eq!(ours.dims(), &[n, 3, side, side]);
            let diff = (&ours - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "forward differs by {diff}");
            let r = Tensor::randn(0f32, 1.0, (n, 3, side, side), &dev).unwrap();
            let g_ours = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (reference * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (g_ours.get(&p).unwrap(), g_ref.get(&p).unwrap());
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "gradient differs by {diff}");
        }
    }

    #[test]
    fn compose_rejects_a_wrong_channel_count() {
        let p = Tensor::zeros((1, 6, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = compose(&p).unwrap_err().to_string();
        assert!(err.contains("7 channels"), "{err}");
    }
}
