//! Split-VAE (paper appendix A.3): the decoder emits two images x1, x2 and a compositional map
//! σ, and the output is σ⊙x1 + (1−σ)⊙x2. ResNet-like: a residual block (3x3 conv, leaky ReLU,
//! skip connection) follows the 16x16 and 8x8 stages of the encoder and precedes the 16x16 and
//! 32x32 stages of the decoder; a larger latent (128 by default).

use candle_core::{Module, Result, Tensor, D};
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
        x + self.conv.forward(&leaky(x)?)?
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

    /// `[n, d]` → (output, x1, x2, σ); images `[n, 3, 64, 64]`, σ `[n, 1, 64, 64]`, all in [0, 1].
    pub fn decode_parts(&self, z: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let n = z.dim(0)?;
        let mut h = leaky(&self.fc.forward(z)?)?.reshape((n, 8 * self.c, 4, 4))?;
        for (i, up) in self.ups.iter().enumerate() {
            h = up.forward_leaky(&h)?;
            for (_, r) in self.dec_res.iter().filter(|(at, _)| *at == i) {
                h = r.forward(&h)?;
            }
        }
        let logits = candle_nn::ops::sigmoid(&self.out.forward(&h)?)?;
        let x1 = logits.narrow(D::Minus(3), 0, 3)?;
        let x2 = logits.narrow(D::Minus(3), 3, 3)?;
        let sigma = logits.narrow(D::Minus(3), 6, 1)?;
        let out = (x1.broadcast_mul(&sigma)? + x2.broadcast_mul(&(1.0 - &sigma)?)?)?;
        Ok((out, x1, x2, sigma))
    }

    /// `[n, d]` → `[n, 3, 64, 64]` in [0, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.decode_parts(z)?.0)
    }
}
