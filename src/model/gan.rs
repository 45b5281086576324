//! Vanilla DCGAN-style GAN (paper appendix A.1): the generator has the VAE decoder's
//! architecture (so objective, not architecture, is what differs between the two), the
//! discriminator the encoder's conv stack plus one dense logit, and the recoder (inversion
//! network) the encoder's conv stack plus a dense layer to the latent.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::linear;
use super::vae::{ConvDecoder, ConvEncoder};

/// A conv stack and a dense head, used for the recoder (`rec.*`) and the discriminator (`disc.*`).
#[derive(Clone, Debug)]
pub struct ConvHead {
    body: ConvEncoder,
    head: candle_nn::Linear,
}

impl ConvHead {
    /// Conv stack of base width `c` and a dense head to `out` values.
    pub fn new(vb: VarBuilder, c: usize, out: usize) -> Result<Self> {
        Ok(Self {
            body: ConvEncoder::new(vb.clone(), c)?,
            head: linear(vb.pp("head"), ConvEncoder::features(c), out)?,
        })
    }
    /// `[n, 3, 64, 64]` → `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.body.forward(x)?)
    }
}

/// Generator `gen.*`, recoder `rec.*` and, while training, discriminator `disc.*`.
#[derive(Clone, Debug)]
pub struct Gan {
    gen: ConvDecoder,
    rec: ConvHead,
    disc: Option<ConvHead>,
}

impl Gan {
    /// Builds the GAN with latent dimension `d` and base width `c`.
    pub fn new(vb: VarBuilder, d: usize, c: usize, with_discriminator: bool) -> Result<Self> {
        let gen = ConvDecoder::new(vb.pp("gen"), d, c, 3)?;
        let rec = ConvHead::new(vb.pp("rec"), c, d)?;
        let disc = if with_discriminator {
            Some(ConvHead::new(vb.pp("disc"), c, 1)?)
        } else {
            None
        };
        Ok(Self { gen, rec, disc })
    }
    /// `[n, d]` → `[n, 3, 64, 64]` in [0, 1].
    pub fn generate(&self, z: &Tensor) -> Result<Tensor> {
        self.gen.forward(z)
    }
    /// Images → codes `[n, d]` (the recoder).
    pub fn recode(&self, x: &Tensor) -> Result<Tensor> {
        self.rec.forward(x)
    }
    /// Images → real/fake logits `[n, 1]`; errors when built without a discriminator.
    pub fn discriminate(&self, x: &Tensor) -> Result<Tensor> {
        match &self.disc {
            Some(d) => d.forward(x),
            None => candle_core::bail!("this GAN was loaded without its discriminator"),
        }
    }
}
