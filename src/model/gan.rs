//! DCGAN-style GAN after the paper's appendix A.1, with batch normalisation added.
//!
//! The generator has the VAE decoder's layout (dense to 8c x 4 x 4, four 4x4 stride-2
//! transposed convs to c/2 channels, a 3x3 conv to RGB with a sigmoid) so that objective, not
//! architecture, is what differs between the two; unlike the paper (and our VAE decoder) every
//! hidden layer is followed by batch normalisation, because without it the GAN collapsed on
//! two CPU cores (one red checkerboard after two epochs, D loss 0.41, G loss 4.5). The
//! discriminator is the encoder's conv stack with batch normalisation after convs 2–4 (batch
//! statistics only: it is used in training alone) and one dense logit. The recoder (inversion
//! network) is the encoder's conv stack plus a dense layer to the latent.

use candle_core::{Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::layers::{linear, BatchNorm, Conv, ConvT};
use super::vae::{decoder_widths, upsampling_stack, ConvEncoder, TRANSPOSED_4X4};

/// A conv stack and a dense head: the recoder (`rec.*`).
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
    /// [`Self::forward`] at inference (through [`ConvEncoder::forward_inference`]), detached.
    pub fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .head
            .forward(&self.body.forward_inference(x)?)?
            .detach())
    }
}

/// The discriminator `disc.*`: convs `c0..c3` (4x4, stride 2), batch norms `n1..n3` after
/// convs 1–3, leaky ReLU, and a dense logit `head`.
#[derive(Clone, Debug)]
pub struct Discriminator {
    convs: Vec<Conv>,
    norms: Vec<BatchNorm>,
    head: candle_nn::Linear,
}

impl Discriminator {
    /// Builds the discriminator of base width `c`.
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        let widths = [3, c, 2 * c, 4 * c, 8 * c];
        let convs = (0..4)
            .map(|i| Conv::new(vb.pp(format!("c{i}")), widths[i], widths[i + 1], 4, 2, 1))
            .collect::<Result<_>>()?;
        let norms = (1..4)
            .map(|i| BatchNorm::new(vb.pp(format!("n{i}")), widths[i + 1]))
            .collect::<Result<_>>()?;
        let head = linear(vb.pp("head"), ConvEncoder::features(c), 1)?;
        Ok(Self { convs, norms, head })
    }
    /// The same discriminator with every parameter detached: the generator step passes its
    /// gradient through it to the images without computing (then discarding) the
    /// discriminator's own weight gradients.
    pub fn frozen(&self) -> Self {
        let head = candle_nn::Linear::new(
            self.head.weight().detach(),
            self.head.bias().map(Tensor::detach),
        );
        Self {
            convs: self.convs.iter().map(Conv::frozen).collect(),
            norms: self.norms.iter().map(BatchNorm::frozen).collect(),
            head,
        }
    }
    /// `[n, 3, 64, 64]` → logits `[n, 1]` (batch statistics).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.convs[0].forward_leaky(x)?;
        for (conv, norm) in self.convs[1..].iter().zip(&self.norms) {
            // batch statistics cancel the conv's bias: not added
            h = norm.forward_train_leaky(&conv.forward_before_batch_norm(&h)?)?;
        }
        self.head.forward(&h.flatten_from(1)?)
    }
}

/// The generator `gen.*`: `fc`, batch norm `n0`, transposed convs `t0..t3` each followed by
/// batch norm `n1..n4`, leaky ReLU, and the output conv `out` with a sigmoid.
#[derive(Clone, Debug)]
pub struct Generator {
    dense: candle_nn::Linear,
    ups: Vec<ConvT>,
    norms: Vec<BatchNorm>,
    out: Conv,
    c: usize,
    /// The channels-last stack's packed weights (batch norms folded), kept between
    /// inference calls.
    packed: super::conv::StackCache,
}

/// How the generator's batch norms normalise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NormMode {
    /// Running statistics (inference).
    Running,
    /// Batch statistics (training).
    Batch,
    /// Batch statistics, also returned (calibration).
    BatchWithStats,
}

/// Per-layer batch statistics `(mean [C], variance [C])` of one generator pass.
pub type BatchStats = Vec<(Tensor, Tensor)>;

impl Generator {
    /// Builds the generator with latent dimension `d` and base width `c`.
    pub fn new(vb: VarBuilder, d: usize, c: usize) -> Result<Self> {
        let (dense, ups) = upsampling_stack(&vb, d, c, false)?;
        let widths = decoder_widths(c);
        let norms = (0..5)
            .map(|i| BatchNorm::new(vb.pp(format!("n{i}")), widths[i]))
            .collect::<Result<_>>()?;
        let out = Conv::new(vb.pp("out"), c / 2, 3, 3, 1, 1)?;
        Ok(Self {
            dense,
            ups,
            norms,
            out,
            c,
            packed: Default::default(),
        })
    }

    fn run(&self, z: &Tensor, mode: NormMode) -> Result<(Tensor, BatchStats)> {
        let n = z.dim(0)?;
        let mut stats = Vec::new();
        let norm = |i: usize, h: &Tensor, stats: &mut BatchStats| -> Result<Tensor> {
            Ok(match mode {
                NormMode::Running => self.norms[i].forward_eval_leaky(h)?,
                NormMode::Batch => self.norms[i].forward_train_leaky(h)?,
                NormMode::BatchWithStats => {
                    let (y, m, v) = self.norms[i].forward_batch_leaky(h)?;
                    stats.push((m, v));
                    y
                }
            })
        };
        let mut h = norm(
            0,
            &self.dense.forward(z)?.reshape((n, 8 * self.c, 4, 4))?,
            &mut stats,
        )?;
        for (i, up) in self.ups.iter().enumerate() {
            h = norm(i + 1, &up.forward(&h)?, &mut stats)?;
        }
        Ok((super::activation::sigmoid(&self.out.forward(&h)?)?, stats))
    }

    /// Inference: `[n, d]` → images in [0, 1], normalised with the running statistics.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.run(z, NormMode::Running)?.0)
    }

    /// [`Self::forward`] without autograd: the transposed convs with their batch norms folded
    /// in, channels-last (`conv/nhwc.rs`) where that applies, else NCHW; detached.
    pub fn forward_inference(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let h = self.norms[0].forward_eval_leaky(&self.dense.forward(z)?.reshape((
            n,
            8 * self.c,
            4,
            4,
        ))?)?;
        let mut affine = Vec::with_capacity(self.ups.len());
        for (up, norm) in self.ups.iter().zip(&self.norms[1..]) {
            let (w, bias, g) = up.parts();
            if bias.is_some() || g != TRANSPOSED_4X4 {
                return Ok(self.forward(z)?.detach());
            }
            let (scale, shift) = norm.eval_affine()?;
            affine.push((w.clone(), scale, shift));
        }
        let layers: Vec<_> = affine.iter().map(|(w, s, t)| (w, Some(s), t)).collect();
        let stack =
            super::conv::deconv_stack_leaky(&h, &layers, super::layers::LEAKY_SLOPE, &self.packed)?;
        let h = match stack {
            Some(h) => h,
            // NCHW (no AVX2 + FMA, or not the CPU): each batch norm
            // folded into its transposed conv, the scale into the weights and the shift as a
            // bias that the kernel's epilogue adds with the leaky ReLU, instead of a separate
            // pass over each output
            None => {
                let mut h = h.detach();
                for (w, scale, shift) in &affine {
                    let w = w
                        .detach()
                        .broadcast_mul(&scale.detach().reshape((1, (), 1, 1))?)?;
                    h = super::conv::conv_transpose2d_bias_leaky(
                        &h,
                        &w,
                        &shift.detach(),
                        TRANSPOSED_4X4,
                        super::layers::LEAKY_SLOPE,
                    )?;
                }
                h
            }
        };
        let y = super::activation::sigmoid(&self.out.forward(&h)?)?;
        Ok(y.detach())
    }

    /// Training: normalised with the batch statistics (fused batch norm).
    pub fn forward_train(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.run(z, NormMode::Batch)?.0)
    }

    /// Training-mode pass that also returns every layer's batch statistics.
    pub fn forward_train_with_stats(&self, z: &Tensor) -> Result<(Tensor, BatchStats)> {
        self.run(z, NormMode::BatchWithStats)
    }

    /// Re-estimates every running mean and variance from `batches` (the generator's own
    /// training-mode statistics on latent batches) and writes them into `varmap`: the mean of
    /// the batch means, and the mean batch variance plus the variance of the batch means.
    pub fn calibrate_batch_norm(&self, varmap: &VarMap, batches: &[Tensor]) -> Result<()> {
        if batches.is_empty() {
            candle_core::bail!("batch-norm calibration needs at least one batch");
        }
        let mut sums: Vec<Option<(Tensor, Tensor, Tensor)>> = vec![None; self.norms.len()];
        for z in batches {
            let (_, stats) = self.forward_train_with_stats(&z.detach())?;
            for (slot, (m, v)) in sums.iter_mut().zip(stats) {
                let (m, v) = (m.detach(), v.detach());
                let m2 = m.sqr()?;
                *slot = Some(match slot.take() {
                    None => (m, v, m2),
                    Some((sm, sv, sm2)) => ((sm + m)?, (sv + v)?, (sm2 + m2)?),
                });
            }
        }
        let k = batches.len() as f64;
        for (norm, slot) in self.norms.iter().zip(sums) {
            let Some((sm, sv, sm2)) = slot else {
                candle_core::bail!("batch-norm calibration lost a layer");
            };
            let mean = (sm / k)?;
            let var_of_means = ((sm2 / k)? - mean.sqr()?)?.relu()?;
            let var = ((sv / k)? + var_of_means)?;
            norm.set_running(varmap, &mean, &var)?;
        }
        Ok(())
    }
}

/// Generator `gen.*`, recoder `rec.*` and, while training, discriminator `disc.*`.
#[derive(Clone, Debug)]
pub struct Gan {
    gen: Generator,
    rec: ConvHead,
    disc: Option<Discriminator>,
}

impl Gan {
    /// Builds the GAN with latent dimension `d` and base width `c`.
    pub fn new(vb: VarBuilder, d: usize, c: usize, with_discriminator: bool) -> Result<Self> {
        let gen = Generator::new(vb.pp("gen"), d, c)?;
        let rec = ConvHead::new(vb.pp("rec"), c, d)?;
        let disc = if with_discriminator {
            Some(Discriminator::new(vb.pp("disc"), c)?)
        } else {
            None
        };
        Ok(Self { gen, rec, disc })
    }
    /// The generator.
    pub fn generator(&self) -> &Generator {
        &self.gen
    }
    /// `[n, d]` → `[n, 3, 64, 64]` in [0, 1] (inference: running statistics).
    pub fn generate(&self, z: &Tensor) -> Result<Tensor> {
        self.gen.forward(z)
    }
    /// [`Self::generate`] without autograd (channels-last where it applies; detached).
    pub fn generate_inference(&self, z: &Tensor) -> Result<Tensor> {
        self.gen.forward_inference(z)
    }
    /// Images → codes `[n, d]` (the recoder).
    pub fn recode(&self, x: &Tensor) -> Result<Tensor> {
        self.rec.forward(x)
    }
    /// [`Self::recode`] at inference (channels-last where it applies; detached).
    pub fn recode_inference(&self, x: &Tensor) -> Result<Tensor> {
        self.rec.forward_inference(x)
    }
    /// Images → real/fake logits `[n, 1]`; errors when built without a discriminator.
    pub fn discriminate(&self, x: &Tensor) -> Result<Tensor> {
        self.discriminator()?.forward(x)
    }
    /// The discriminator; errors when loaded without one.
    pub fn discriminator(&self) -> Result<&Discriminator> {
        match &self.disc {
            Some(d) => Ok(d),
            None => candle_core::bail!("this GAN was loaded without its discriminator"),
        }
    }
}
