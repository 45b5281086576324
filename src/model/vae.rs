//! The paper's vanilla VAE (appendix A.2), scaled to train on two CPU cores, and the conv
//! encoder/decoder that the GAN generator and the recoders share with it.
//!
//! Encoder: four 4x4 stride-2 convs (c, 2c, 4c, 8c channels; 64→4 pixels) with leaky ReLU
//! (α = 0.2), flattened, then dense layers. Decoder: dense to 8c x 4 x 4, four 4x4 stride-2
//! transposed convs (4c, 2c, c, c/2) with leaky ReLU, and a 3x3 conv to RGB with a sigmoid.
//! The paper's dropout layer is left out (it regularises the GAN discriminator, not the VAE).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::ConvGeom;
use super::layers::{leaky, linear, Conv, ConvT};

/// Down-sampling conv stack: `[n, 3, 64, 64]` → `[n, 8c * 16]` features.
#[derive(Clone, Debug)]
pub struct ConvEncoder {
    convs: Vec<Conv>,
    /// The channels-last stack's packed weights, kept between inference calls.
    packed: super::conv::StackCache,
}

impl ConvEncoder {
    /// Variables `c0..c3` under `vb`.
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        let widths = [3, c, 2 * c, 4 * c, 8 * c];
        let convs = (0..4)
            .map(|i| Conv::new(vb.pp(format!("c{i}")), widths[i], widths[i + 1], 4, 2, 1))
            .collect::<Result<_>>()?;
        Ok(Self {
            convs,
            packed: Default::default(),
        })
    }
    /// Number of output features for base width `c`.
    pub fn features(c: usize) -> usize {
        8 * c * 16
    }
    /// `[n, 3, 64, 64]` → `[n, 8c·16]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = conv.forward_leaky(&h)?;
        }
        h.flatten_from(1)
    }
    /// [`Self::forward`] at inference: the same values (to rounding) through the
    /// channels-last stack of `conv/nhwc.rs` where it applies, else through `forward`,
    /// detached either way (no gradient reaches the weights).
    pub fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        let parts: Vec<_> = self.convs.iter().map(Conv::parts).collect();
        match super::conv::conv_stack_leaky(x, &parts, super::layers::LEAKY_SLOPE, &self.packed)? {
            Some(h) => Ok(h),
            None => Ok(self.forward(x)?.detach()),
        }
    }
}

/// Up-sampling stack: `[n, d]` → `[n, 3, 64, 64]` in [0, 1] (sigmoid), or the 64x64 feature
/// map before the output conv via [`ConvDecoder::features`].
#[derive(Clone, Debug)]
pub struct ConvDecoder {
    dense: candle_nn::Linear,
    ups: Vec<ConvT>,
    out: Conv,
    c: usize,
    /// The channels-last stack's packed weights, kept between inference calls.
    packed: super::conv::StackCache,
}

/// Channel widths of the decoder / generator stages: `8c` at 4x4 down to `c/2` at 64x64.
pub(crate) fn decoder_widths(c: usize) -> [usize; 5] {
    [8 * c, 4 * c, 2 * c, c, c / 2]
}

/// The dense layer `fc` (`d` → `8c x 4 x 4`) and the four 4x4 stride-2 transposed convolutions
/// `t0..t3` (4x4 → 64x64) shared by the VAE decoders and the GAN generator (`bias`: whether
/// the convolutions have one; the generator's batch norm makes it redundant).
pub(crate) fn upsampling_stack(
    vb: &VarBuilder,
    d: usize,
    c: usize,
    bias: bool,
) -> Result<(candle_nn::Linear, Vec<ConvT>)> {
    let dense = linear(vb.pp("fc"), d, 8 * c * 16)?;
    let widths = decoder_widths(c);
    let ups = (0..4)
        .map(|i| {
            let (ci, co) = (widths[i], widths[i + 1]);
            ConvT::new(vb.pp(format!("t{i}")), ci, co, TRANSPOSED_4X4, bias)
        })
        .collect::<Result<_>>()?;
    Ok((dense, ups))
}

impl ConvDecoder {
    /// Variables `fc`, `t0..t3`, `out` under `vb`; `out_channels` is 3 for images.
    pub fn new(vb: VarBuilder, latent_dim: usize, c: usize, out_channels: usize) -> Result<Self> {
        let (dense, ups) = upsampling_stack(&vb, latent_dim, c, true)?;
        let out = Conv::new(vb.pp("out"), c / 2, out_channels, 3, 1, 1)?;
        Ok(Self {
            dense,
            ups,
            out,
            c,
            packed: Default::default(),
        })
    }
    /// `[n, d]` → raw output-conv logits `[n, out_channels, 64, 64]`.
    pub fn logits(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let mut h = leaky(&self.dense.forward(z)?)?.reshape((n, 8 * self.c, 4, 4))?;
        for up in &self.ups {
            h = up.forward_leaky(&h)?;
        }
        self.out.forward(&h)
    }
    /// `[n, d]` → images `[n, 3, 64, 64]` in [0, 1].
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        super::activation::sigmoid(&self.logits(z)?)
    }
    /// [`Self::forward`] at inference: the same values (to rounding) with the transposed
    /// convs on the channels-last stack of `conv/nhwc.rs` where it applies (else through
    /// `forward`), detached either way (no gradient reaches the weights or `z`).
    pub fn forward_inference(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let mut layers = Vec::with_capacity(self.ups.len());
        for up in &self.ups {
            match up.parts() {
                (w, Some(b), g) if g == TRANSPOSED_4X4 => layers.push((w, None, b)),
                _ => return Ok(self.forward(z)?.detach()),
            }
        }
        let h = leaky(&self.dense.forward(&z.detach())?)?.reshape((n, 8 * self.c, 4, 4))?;
        match super::conv::deconv_stack_leaky(
            &h,
            &layers,
            super::layers::LEAKY_SLOPE,
            &self.packed,
        )? {
            Some(h) => Ok(super::activation::sigmoid(&self.out.forward(&h)?)?.detach()),
            None => Ok(self.forward(z)?.detach()),
        }
    }
}

/// The decoders' and generators' transposed convolutions: 4x4, stride 2, padding 1.
pub(crate) const TRANSPOSED_4X4: ConvGeom = ConvGeom {
    kernel: 4,
    stride: 2,
    padding: 1,
};

/// Vanilla VAE: `enc.*` (conv stack, `mean`, `logvar`) and `dec.*`.
#[derive(Clone, Debug)]
pub struct Vae {
    enc: ConvEncoder,
    mean: candle_nn::Linear,
    logvar: candle_nn::Linear,
    dec: ConvDecoder,
}

impl Vae {
    /// Builds the VAE with latent dimension `d` and base width `c`.
    pub fn new(vb: VarBuilder, d: usize, c: usize) -> Result<Self> {
        let enc = ConvEncoder::new(vb.pp("enc"), c)?;
        let f = ConvEncoder::features(c);
        let mean = linear(vb.pp("enc").pp("mean"), f, d)?;
        let logvar = linear(vb.pp("enc").pp("logvar"), f, d)?;
        let dec = ConvDecoder::new(vb.pp("dec"), d, c, 3)?;
        Ok(Self {
            enc,
            mean,
            logvar,
            dec,
        })
    }
    /// `[n, 3, 64, 64]` → (mean `[n, d]`, log-variance `[n, d]`).
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.enc.forward(x)?;
        Ok((self.mean.forward(&h)?, self.logvar.forward(&h)?))
    }
    /// [`Self::encode`]'s mean at inference (through [`ConvEncoder::forward_inference`]).
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.enc.forward_inference(x)?;
        Ok(self.mean.forward(&h)?.detach())
    }
    /// `[n, d]` → `[n, 3, 64, 64]` in [0, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.dec.forward(z)
    }
    /// [`Self::decode`] at inference (through [`ConvDecoder::forward_inference`]; detached).
    pub fn decode_inference(&self, z: &Tensor) -> Result<Tensor> {
        self.dec.forward_inference(z)
    }
}
