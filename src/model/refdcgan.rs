//! Port of the pretrained DCGAN generator of PyPI `gan-face-generate` 1.1.1 (MIT; the PyTorch
//! DCGAN tutorial's generator, nz = 100, ngf = 64, trained on DigiFace-1M), plus our recoder.
//!
//! Generator (`gen.main.*`, PyTorch's own tensor names): five 4x4 transposed convs without bias
//! (100→512 from 1x1 to 4x4 with stride 1 and no padding, then stride 2 padding 1 up to 64x64),
//! batch norm in eval mode (running statistics, ε = 1e-5) and ReLU between them, tanh at the
//! end. We map the tanh output from [-1, 1] to [0, 1].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::conv::ConvGeom;
use super::gan::ConvHead;
use super::layers::{channel_affine, ConvT};

/// Eval-mode batch norm with PyTorch's tensor names.
#[derive(Clone, Debug)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn new(vb: VarBuilder, ch: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(ch, "weight")?,
            bias: vb.get(ch, "bias")?,
            running_mean: vb.get(ch, "running_mean")?,
            running_var: vb.get(ch, "running_var")?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let scale = (&self.weight / (&self.running_var + 1e-5)?.sqrt()?)?;
        let shift = (&self.bias - (&self.running_mean * &scale)?)?;
        channel_affine(x, &scale, &shift)
    }
}

/// The reference DCGAN generator (`gen.*`) and its recoder (`rec.*`).
#[derive(Clone, Debug)]
pub struct RefDcgan {
    convs: Vec<ConvT>,
    norms: Vec<BatchNorm>,
    rec: ConvHead,
}

impl RefDcgan {
    /// `d` = nz (100 for the shipped weights), `ngf` = 64 for the shipped weights; the recoder
    /// uses base width 32.
    pub fn new(vb: VarBuilder, d: usize, ngf: usize) -> Result<Self> {
        let m = vb.pp("gen").pp("main");
        let widths = [d, 8 * ngf, 4 * ngf, 2 * ngf, ngf, 3];
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for i in 0..5 {
            let geom = if i == 0 {
                ConvGeom {
                    kernel: 4,
                    stride: 1,
                    padding: 0,
                }
            } else {
                ConvGeom {
                    kernel: 4,
                    stride: 2,
                    padding: 1,
                }
            };
            convs.push(ConvT::new(
                m.pp(3 * i),
                widths[i],
                widths[i + 1],
                geom,
                false,
            )?);
            if i < 4 {
                norms.push(BatchNorm::new(m.pp(3 * i + 1), widths[i + 1])?);
            }
        }
        let rec = ConvHead::new(vb.pp("rec"), 32, d)?;
        Ok(Self { convs, norms, rec })
    }
    /// `[n, d]` → `[n, 3, 64, 64]` in [0, 1].
    pub fn generate(&self, z: &Tensor) -> Result<Tensor> {
        (self.generate_tanh(z)? + 1.0)?
            .affine(0.5, 0.0)?
            .clamp(0f32, 1f32)
    }
    /// `[n, d]` → the original `[-1, 1]` output of the PyTorch model.
    pub fn generate_tanh(&self, z: &Tensor) -> Result<Tensor> {
        let n = z.dim(0)?;
        let mut h = z.reshape((n, (), 1, 1))?;
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(&h)?;
            if let Some(bn) = self.norms.get(i) {
                h = bn.forward(&h)?.relu()?;
            }
        }
        h.tanh()
    }
    /// Images → codes `[n, d]` (the recoder).
    pub fn recode(&self, x: &Tensor) -> Result<Tensor> {
        self.rec.forward(x)
    }
    /// [`Self::recode`] at inference (channels-last where it applies; detached).
    pub fn recode_inference(&self, x: &Tensor) -> Result<Tensor> {
        self.rec.forward_inference(x)
    }
}
