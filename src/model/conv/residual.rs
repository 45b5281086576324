//! A residual block `x + conv3x3(leaky(x), w) + b` (the Split-VAE's, padding 1, channels
//! kept) as one autograd node on the Winograd F(2x2, 3x3) kernels of `wino3.rs`, where the
//! composite runs five elementwise passes over the block's activations besides the
//! convolutions (the leaky ReLU, the bias, the skip addition, and backward the leaky ReLU's
//! gradient and the sum of the two input gradients):
//!
//! - forward: the leaky ReLU is applied as the input transform reads `x`; the output
//!   transform adds the bias, then each finished plane adds `x`;
//! - input gradient: the convolution's adjoint (the forward on the flipped, transposed
//!   kernel) with each finished plane multiplied by `leaky′(x)` and added to the incoming
//!   gradient (the skip connection's share);
//! - weight gradient: the Winograd weight gradient with the leaky ReLU applied as it reads `x`;
//! - bias gradient: per-channel sums of the incoming gradient.

use candle_core::Tensor;

use super::{conv2d, ConvGeom};

/// The block's convolution geometry.
const G: ConvGeom = ConvGeom {
    kernel: 3,
    stride: 1,
    padding: 1,
};

/// A residual block `x + conv2d(leaky_relu(x, slope), w) + b` with a 3x3 padding-1 kernel
/// `w` `[c, c, 3, 3]` and bias `b` `[c]` (the Split-VAE's): one fused autograd node on the
/// Winograd F(2x2, 3x3) kernels where they apply (CPU, f32, 32+ channels, even sides, a
/// batch of at least the thread count), the separate ops elsewhere.
pub fn residual_conv3x3(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    slope: f32,
) -> candle_core::Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if fused::applies(x, w, b) {
        return fused::forward(x, w, b, slope);
    }
    let h = crate::model::activation::leaky_relu(x, slope)?;
    x + crate::model::channel_op::add_bias(&conv2d(&h, w, G)?, b)?
}

#[cfg(target_arch = "x86_64")]
mod fused {
    use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

    use super::super::f32_slice;
    use super::super::kernels::threads;
    use super::super::unfold::{flipped_transposed, Dims};
    use super::super::wino3::{self, Post};
    use super::G;

    /// Whether the fused kernels take the block: `x` `[n, c, h, w]` f32 on the CPU, a
    /// `[c, c, 3, 3]` weight and `[c]` bias, and the Winograd kernels apply.
    pub(super) fn applies(x: &Tensor, w: &Tensor, b: &Tensor) -> bool {
        let Ok((n, c, h, wd)) = x.dims4() else {
            return false;
        };
        let d = Dims::of(c, (h, wd), c, &G);
        x.device().is_cpu()
            && [x, w, b]
                .iter()
                .all(|t| t.dtype() == candle_core::DType::F32)
            && w.dims() == [c, c, 3, 3]
            && b.dims() == [c]
            && n >= threads()
            && wino3::applies(&d, &G)
    }

    /// `x + conv3x3(leaky(x, slope), w) + b` as one node ([`applies`] must hold).
    pub(super) fn forward(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        slope: f32,
    ) -> candle_core::Result<Tensor> {
        x.contiguous()?
            .apply_op3(&w.contiguous()?, &b.contiguous()?, Residual { slope })
    }

    fn dims(l: &Layout) -> candle_core::Result<(usize, Dims)> {
        let (n, c, h, w) = l.shape().dims4()?;
        Ok((n, Dims::of(c, (h, w), c, &G)))
    }

    /// Errors unless `l` is `[c, c, 3, 3]` (or, `bias`, `[c]`) for `d`.
    fn check(what: &str, l: &Layout, d: &Dims) -> candle_core::Result<()> {
        let want: &[usize] = if what == "bias" {
            &[d.c_in]
        } else {
            &[d.c_in, d.c_in, 3, 3]
        };
        if l.dims() != want {
            candle_core::bail!("residual conv: {what} {:?}, expected {want:?}", l.dims())
        }
        Ok(())
    }

    /// `(x, w, b) ↦ x + conv3x3(leaky(x), w) + b`.
    struct Residual {
        slope: f32,
    }

    impl CustomOp3 for Residual {
        fn name(&self) -> &'static str {
            "fast-residual-conv3x3"
        }
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let (n, d) = dims(l1)?;
            check("weight", l2, &d)?;
            check("bias", l3, &d)?;
            let x = f32_slice(s1, l1, "input")?;
            let w = f32_slice(s2, l2, "weight")?;
            let bias = f32_slice(s3, l3, "bias")?;
            let post = Post::Residual { bias, res: x };
            let y = wino3::forward_with(x, w, n, &d, self.slope, post);
            Ok((CpuStorage::F32(y), l1.shape().clone()))
        }
        fn bwd(
            &self,
            x: &Tensor,
            w: &Tensor,
            b: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let g = grad.contiguous()?;
            let slope = self.slope;
            let gx = if x.track_op() {
                Some(g.apply_op3_no_bwd(x, w, &ResidualGradInput { slope })?)
            } else {
                None
            };
            let gw = if w.track_op() {
                Some(x.apply_op2_no_bwd(&g, &ResidualGradWeight { slope })?)
            } else {
                None
            };
            let gb = if b.track_op() {
                Some(g.apply_op1_no_bwd(&crate::model::channel_op::ChannelSum)?)
            } else {
                None
            };
            Ok((gx, gw, gb))
        }
    }

    /// `(g, x, w) ↦ convᵀ(g, w) · leaky′(x) + g`: the block's input gradient.
    struct ResidualGradInput {
        slope: f32,
    }

    impl CustomOp3 for ResidualGradInput {
        fn name(&self) -> &'static str {
            "fast-residual-conv3x3-grad-input"
        }
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let (n, d) = dims(l1)?;
            if l2.dims() != l1.dims() {
                candle_core::bail!(
                    "residual conv grad: {:?} for input {:?}",
                    l1.dims(),
                    l2.dims()
                )
            }
            check("weight", l3, &d)?;
            let g = f32_slice(s1, l1, "gradient")?;
            let x = f32_slice(s2, l2, "input")?;
            let w = f32_slice(s3, l3, "weight")?;
            // the adjoint of a 3x3 padding-1 convolution: the same geometry, channels swapped
            // (here equal), the kernel flipped and transposed
            let wf = flipped_transposed(w, d.c_out, d.c_in, 3);
            let post = Post::MaskAdd {
                mask: x,
                slope: self.slope,
                add: g,
            };
            let gx = wino3::forward_with(g, &wf, n, &d, 1.0, post);
            Ok((CpuStorage::F32(gx), l1.shape().clone()))
        }
    }

    /// `(x, g) ↦ ∂/∂w` of `conv3x3(leaky(x), w)` given `g`.
    struct ResidualGradWeight {
        slope: f32,
    }

    impl CustomOp2 for ResidualGradWeight {
        fn name(&self) -> &'static str {
            "fast-residual-conv3x3-grad-weight"
        }
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let (n, d) = dims(l1)?;
            if l2.dims() != l1.dims() {
                candle_core::bail!(
                    "residual conv grad: {:?} for input {:?}",
                    l2.dims(),
                    l1.dims()
                )
            }
            let x = f32_slice(s1, l1, "input")?;
            let g = f32_slice(s2, l2, "gradient")?;
            let gw = wino3::grad_weight_with(x, g, n, &d, self.slope);
            Ok((CpuStorage::F32(gw), Shape::from((d.c_out, d.c_in, 3, 3))))
        }
    }
}
