//! Fast CPU convolutions for candle: im2col / col2im with direct `gemm` calls.
//!
//! Stock candle 0.11 runs `conv_transpose2d` on the CPU as a direct loop, and conv2d's backward
//! uses it for the input gradient, which makes training conv nets 5-8x slower than PyTorch
//! (shared/perf-notes.md). Everything here is built from three kernels on NCHW f32 tensors:
//!
//! - [`Kernel::Forward`]: `y = conv2d(x, w)`, x `[B, Ci, H, W]`, w `[Co, Ci, k, k]` → `[B, Co, Ho, Wo]`;
//! - [`Kernel::GradInput`]: the adjoint of the forward in `x` (this *is* a transposed
//!   convolution with PyTorch's `[in, out, k, k]` weight layout);
//! - [`Kernel::GradWeight`]: the adjoint in `w`.
//!
//! A transposed convolution is `GradInput`, so its backward reuses `Forward` and `GradWeight`.
//! On non-CPU devices [`conv2d`] and [`conv_transpose2d`] call candle's native ops.
//!
//! This file holds the candle ops; `kernels` splits a batch among threads and picks the inner
//! kernel: `wino` (4x4 stride-2 forward and weight gradient by Winograd F(2x2, 2x2), 16+
//! input and output channels, whole 2x2 output tiles; with AVX2 the input gradient too, its
//! tile transforms vectorized in `wino_simd`), `implicit` (4x4 stride-2 forward and
//! weight gradient with 32+ input channels otherwise,
//! packing gemm's micro-kernel operands straight from stride-phase planes; `phases`: their
//! input gradient as four 2x2 convolutions, one per stride phase), `unfold`
//! (im2col / col2im) with `mm` (gemm), `direct` (stride-1 convolution for at most 8 output
//! channels) or `dot` (weight gradients as register-blocked dot products). `wino3` runs the
//! 3x3 stride-1 convolutions of 32+ channels (the Split-VAE's residual blocks: forward,
//! weight gradient, and the input gradient as a forward) by Winograd F(2x2, 3x3).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

mod cache;
mod direct;
mod dot;
#[cfg(target_arch = "x86_64")]
mod implicit;
mod kernels;
#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod micro;
mod mm;
#[cfg(target_arch = "x86_64")]
mod nhwc;
#[cfg(target_arch = "x86_64")]
mod packed;
#[cfg(target_arch = "x86_64")]
mod phases;
mod residual;
mod unfold;
#[cfg(target_arch = "x86_64")]
mod wide;
mod wino;
#[cfg(target_arch = "x86_64")]
mod wino3;
#[cfg(target_arch = "x86_64")]
mod wino_simd;
pub use cache::StackCache;
use kernels::{forward_and_grad_weight, forward_fused, grad_input_fused, grad_weight};
#[cfg(target_arch = "x86_64")]
pub use lanes::{phase_lanes_enabled, set_phase_lanes};
pub use residual::residual_conv3x3;
use unfold::Dims;
pub use wino::{
    set_winograd, set_winograd_input_gradient, set_winograd_vector_transforms, winograd_applies,
    winograd_enabled, winograd_input_gradient, winograd_vector_transforms, InputGradientRoute,
    NARROW_INPUT, WIDE_GRADIENT,
};
#[cfg(target_arch = "x86_64")]
pub use wino3::{set_winograd3, winograd3_applies, winograd3_enabled};

/// Geometry of a square-kernel convolution (dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Kernel side.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvGeom {
    /// Output side of a convolution applied to an input of side `input`.
    pub fn conv_out(&self, input: usize) -> usize {
        (input + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }
    /// Output side of a transposed convolution applied to an input of side `input`.
    pub fn transposed_out(&self, input: usize) -> usize {
        ((input.max(1) - 1) * self.stride + self.kernel).saturating_sub(2 * self.padding)
    }
}

/// Which of the three kernels a [`ConvOp`] runs.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    /// (x, w) → conv2d(x, w).
    Forward,
    /// (gy, w) → ∂/∂x; `in_h`, `in_w` give the size of x.
    GradInput {
        /// Height of the convolution input.
        in_h: usize,
        /// Width of the convolution input.
        in_w: usize,
    },
    /// (x, gy) → ∂/∂w.
    GradWeight,
}

/// A candle custom op running one [`Kernel`] with a [`ConvGeom`].
#[derive(Clone, Copy, Debug)]
pub struct ConvOp {
    /// The kernel to run.
    pub kernel: Kernel,
    /// The convolution geometry.
    pub geom: ConvGeom,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("fast conv: {what} must be f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fast conv: {what} must be contiguous"),
    }
}

/// Errors unless a fused bias has one value per output channel.
fn check_bias(epi: Option<kernels::Epilogue>, channels: usize) -> candle_core::Result<()> {
    match epi {
        Some(e) if e.bias.len() != channels => candle_core::bail!(
            "fast conv + bias + leaky: bias of {} for {channels} output channels",
            e.bias.len()
        ),
        _ => Ok(()),
    }
}

impl ConvOp {
    /// [`CustomOp2::cpu_fwd`], with `epi` (a bias + leaky ReLU) applied inside the forward or
    /// transposed kernel where that kernel supports it: returns whether it was applied.
    fn run(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        epi: Option<kernels::Epilogue>,
    ) -> candle_core::Result<(CpuStorage, Shape, bool)> {
        let a = f32_slice(s1, l1, "lhs")?;
        let bw = f32_slice(s2, l2, "rhs")?;
        let g = &self.geom;
        let k = g.kernel;
        match self.kernel {
            Kernel::Forward => {
                let (b, c_in, h, w) = l1.shape().dims4()?;
                let (c_out, c_in2, k1, k2) = l2.shape().dims4()?;
                if c_in != c_in2 || k1 != k || k2 != k {
                    candle_core::bail!(
                        "fast conv2d: input {:?} does not match weight {:?}",
                        l1.shape(),
                        l2.shape()
                    )
                }
                let d = Dims {
                    c_in,
                    h,
                    w,
                    c_out,
                    ho: g.conv_out(h),
                    wo: g.conv_out(w),
                };
                check_bias(epi, c_out)?;
                let (y, fused) = forward_fused(a, bw, b, &d, g, epi);
                Ok((
                    CpuStorage::F32(y),
                    Shape::from((b, c_out, d.ho, d.wo)),
                    fused,
                ))
            }
            Kernel::GradInput { in_h, in_w } => {
                let (b, c_out, ho, wo) = l1.shape().dims4()?;
                let (c_out2, c_in, k1, k2) = l2.shape().dims4()?;
                let d = Dims {
                    c_in,
                    h: in_h,
                    w: in_w,
                    c_out,
                    ho,
                    wo,
                };
                if c_out != c_out2
                    || k1 != k
                    || k2 != k
                    || g.conv_out(in_h) != ho
                    || g.conv_out(in_w) != wo
                {
                    candle_core::bail!(
                        "fast conv grad-input: {:?} does not match weight {:?}",
                        l1.shape(),
                        l2.shape()
                    )
                }
                check_bias(epi, c_in)?;
                let (gx, fused) = grad_input_fused(a, bw, b, &d, g, epi);
                Ok((
                    CpuStorage::F32(gx),
                    Shape::from((b, c_in, in_h, in_w)),
                    fused,
                ))
            }
            Kernel::GradWeight => {
                let (b, c_in, h, w) = l1.shape().dims4()?;
                let (b2, c_out, ho, wo) = l2.shape().dims4()?;
                if b != b2 || g.conv_out(h) != ho || g.conv_out(w) != wo {
                    candle_core::bail!(
                        "fast conv grad-weight: {:?} does not match {:?}",
                        l1.shape(),
                        l2.shape()
                    )
                }
                let d = Dims {
                    c_in,
                    h,
                    w,
                    c_out,
                    ho,
                    wo,
                };
                let gw = grad_weight(a, bw, b, &d, g);
                Ok((CpuStorage::F32(gw), Shape::from((c_out, c_in, k, k)), false))
            }
        }
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        match self.kernel {
            Kernel::Forward => "fast-conv2d",
            Kernel::GradInput { .. } => "fast-conv2d-grad-input",
            Kernel::GradWeight => "fast-conv2d-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, shape, _) = self.run(s1, l1, s2, l2, None)?;
        Ok((y, shape))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = self.geom;
        match self.kernel {
            Kernel::Forward => {
                let (_, _, h, w) = a.dims4()?;
                // The input gradient of a first layer (an image batch) is never needed.
                let ga = if a.track_op() {
                    Some(grad.apply_op2_no_bwd(
                        b,
                        &ConvOp {
                            kernel: Kernel::GradInput { in_h: h, in_w: w },
                            geom: g,
                        },
                    )?)
                } else {
                    None
                };
                // Nor is the weight gradient of a frozen (detached) weight, such as the
                // discriminator's in a generator step.
                let gb = if b.track_op() {
                    Some(a.apply_op2_no_bwd(
                        &grad,
                        &ConvOp {
                            kernel: Kernel::GradWeight,
                            geom: g,
                        },
                    )?)
                } else {
                    None
                };
                Ok((ga, gb))
            }
            Kernel::GradInput { .. } => {
                // a = gy-like input of the transposed conv, b = weight, result has the conv-input
                // shape. Both gradients need the im2col of `grad`: one fused pass computes them.
                let flat = grad.apply_op3_no_bwd(b, &a.contiguous()?, &TransposedBackward(g))?;
                let ylen = a.elem_count();
                let ga = flat.narrow(0, 0, ylen)?.reshape(a.shape())?;
                let gb = flat.narrow(0, ylen, b.elem_count())?.reshape(b.shape())?;
                Ok((Some(ga), Some(gb)))
            }
            Kernel::GradWeight => {
                candle_core::bail!("fast conv: no second-order gradient for grad-weight")
            }
        }
    }
}

/// Backward of a transposed convolution `conv_transpose2d(a, w)` (= [`Kernel::GradInput`]):
/// `(grad, w, a) ↦ [∂/∂a, ∂/∂w]` flattened into one vector, from a single im2col of `grad`.
struct TransposedBackward(ConvGeom);

impl CustomOp3 for TransposedBackward {
    fn name(&self) -> &'static str {
        "fast-conv-transpose2d-backward"
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
        let (x, w, gy) = (
            f32_slice(s1, l1, "grad")?,
            f32_slice(s2, l2, "weight")?,
            f32_slice(s3, l3, "input")?,
        );
        let g = &self.0;
        let (b, c_in, h, wd) = l1.shape().dims4()?;
        let (c_out, c_in2, k1, k2) = l2.shape().dims4()?;
        let (b2, c_out2, ho, wo) = l3.shape().dims4()?;
        if c_in != c_in2
            || c_out != c_out2
            || b != b2
            || k1 != g.kernel
            || k2 != g.kernel
            || g.conv_out(h) != ho
            || g.conv_out(wd) != wo
        {
            candle_core::bail!(
                "fast conv-transpose backward: {:?}, {:?} and {:?} do not match",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let d = Dims {
            c_in,
            h,
            w: wd,
            c_out,
            ho,
            wo,
        };
        let (mut y, gw) = forward_and_grad_weight(x, w, gy, b, &d, g);
        y.extend_from_slice(&gw);
        let len = y.len();
        Ok((CpuStorage::F32(y), Shape::from(len)))
    }
}

/// `leaky_relu(conv(x, w) + b, slope)` (a [`ConvOp`] forward or transposed kernel) as one
/// autograd node. Split into a conv node and a bias + activation node, candle zero-fills a
/// buffer the size of the conv output and adds the activation's gradient into it before the
/// conv's backward reads it (its `zeros_like` + `add` per accumulated gradient); here the
/// gradient before the activation goes straight to the conv kernels.
struct ConvBiasLeaky {
    conv: ConvOp,
    slope: f32,
}

impl CustomOp3 for ConvBiasLeaky {
    fn name(&self) -> &'static str {
        "fast-conv-bias-leaky-relu"
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
        let bias = f32_slice(s3, l3, "bias")?;
        let epi = kernels::Epilogue {
            bias,
            slope: self.slope,
        };
        let (y, shape, fused) = self.conv.run(s1, l1, s2, l2, Some(epi))?;
        if fused {
            return Ok((y, shape));
        }
        let CpuStorage::F32(y) = y else {
            candle_core::bail!("fast conv + bias + leaky: conv output must be f32")
        };
        let (_, c, h, w) = shape.dims4()?;
        let out = crate::model::channel_op::bias_leaky_rows(&y, bias, c, h * w, self.slope);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, gb) = crate::model::channel_op::bias_leaky_grads(grad, res, self.slope)?;
        let (gx, gw) = self.conv.bwd(x, w, res, &g)?;
        Ok((gx, gw, b.track_op().then_some(gb)))
    }
}

/// `leaky_relu(conv2d(x, w) + b, slope)`: one fused autograd node on the CPU (f32, slope > 0),
/// the separate ops elsewhere.
pub fn conv2d_bias_leaky(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    geom: ConvGeom,
    slope: f32,
) -> candle_core::Result<Tensor> {
    if fusable(x, w, b, slope) {
        let op = ConvOp {
            kernel: Kernel::Forward,
            geom,
        };
        return x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            ConvBiasLeaky { conv: op, slope },
        );
    }
    crate::model::channel_op::add_bias_leaky(&conv2d(x, w, geom)?, b, slope)
}

/// Inference through a stack of `leaky_relu(conv2d(h, w) + b, slope)` layers, flattened to
/// `[B, F]` in NCHW order: the channels-last path of `conv/nhwc.rs` (CPU with AVX-512F or
/// AVX2 + FMA, output channels in multiples of 16), `None` where it does not apply. No
/// gradient flows through the result. A batch smaller than the thread count has each layer's
/// tiles shared out among the threads.
pub fn conv_stack_leaky(
    x: &Tensor,
    layers: &[(&Tensor, &Tensor, ConvGeom)],
    slope: f32,
    cache: &StackCache,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    {
        nhwc::stack_forward(x, layers, slope, cache)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, layers, slope, cache);
        Ok(None)
    }
}

/// Whether the convolutions run on our AVX-512 micro-kernel (the CPU has AVX-512F and
/// `LATENT_ATLAS_NO_AVX512` is unset), else gemm's AVX2 one.
pub fn avx512_kernels_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        micro::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The kernel of the channels-last inference stacks ([`conv_stack_leaky`],
/// [`deconv_stack_leaky`]): `Some("AVX-512")` or `Some("AVX2")`, `None` where they decline
/// (no such CPU, or `LATENT_ATLAS_NO_CHANNELS_LAST` set) and the NCHW paths run.
pub fn channels_last_stack_kernel() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        nhwc::stack_kernel()
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Inference through transposed 4x4 stride-2 layers (padding 1), each
/// `leaky_relu(conv_transpose2d(h, w) · scale + shift, slope)` per output channel (a batch
/// norm at inference folds into `scale` and `shift`; no `scale`: 1): `[B, C, h, w]` →
/// `[B, C', 2^L h, 2^L w]` by the channels-last path of `conv/nhwc.rs` (CPU with AVX-512F
/// or AVX2 + FMA, output channels in multiples of 16), `None` where it does not apply. No
/// gradient flows through the result. A batch smaller than the thread count has each layer's
/// tiles shared out among the threads.
pub fn deconv_stack_leaky(
    x: &Tensor,
    layers: &[(&Tensor, Option<&Tensor>, &Tensor)],
    slope: f32,
    cache: &StackCache,
) -> candle_core::Result<Option<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    {
        nhwc::deconv_stack(x, layers, slope, cache)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, layers, slope, cache);
        Ok(None)
    }
}

/// `leaky_relu(conv_transpose2d(x, w) + b, slope)`: fused like [`conv2d_bias_leaky`].
pub fn conv_transpose2d_bias_leaky(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    geom: ConvGeom,
    slope: f32,
) -> candle_core::Result<Tensor> {
    if fusable(x, w, b, slope) {
        let (_, _, h, wd) = x.dims4()?;
        let (in_h, in_w) = (geom.transposed_out(h), geom.transposed_out(wd));
        if geom.conv_out(in_h) == h && geom.conv_out(in_w) == wd {
            let op = ConvOp {
                kernel: Kernel::GradInput { in_h, in_w },
                geom,
            };
            return x.contiguous()?.apply_op3(
                &w.contiguous()?,
                &b.contiguous()?,
                ConvBiasLeaky { conv: op, slope },
            );
        }
    }
    crate::model::channel_op::add_bias_leaky(&conv_transpose2d(x, w, geom)?, b, slope)
}

fn fusable(x: &Tensor, w: &Tensor, b: &Tensor, slope: f32) -> bool {
    use candle_core::DType::F32;
    x.device().is_cpu()
        && x.dtype() == F32
        && w.dtype() == F32
        && b.dtype() == F32
        && x.rank() == 4
        && crate::model::channel_op::fusable_slope(slope)
}

/// 2-D convolution without bias: x `[B, Ci, H, W]`, w `[Co, Ci, k, k]` → `[B, Co, Ho, Wo]`.
/// Fast gemm path on the CPU, candle's native op elsewhere.
pub fn conv2d(x: &Tensor, w: &Tensor, geom: ConvGeom) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            ConvOp {
                kernel: Kernel::Forward,
                geom,
            },
        )
    } else {
        x.conv2d(w, geom.padding, geom.stride, 1, 1)
    }
}

/// Transposed 2-D convolution without bias, PyTorch weight layout:
/// x `[B, Ci, H, W]`, w `[Ci, Co, k, k]` → `[B, Co, (H-1)s - 2p + k, …]`.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, geom: ConvGeom) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        let (_, _, h, wd) = x.dims4()?;
        let (in_h, in_w) = (geom.transposed_out(h), geom.transposed_out(wd));
        if geom.conv_out(in_h) != h || geom.conv_out(in_w) != wd {
            candle_core::bail!(
                "conv_transpose2d: geometry {geom:?} is not invertible for input {h}x{wd}"
            )
        }
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            ConvOp {
                kernel: Kernel::GradInput { in_h, in_w },
                geom,
            },
        )
    } else {
        x.conv_transpose2d(w, geom.padding, 0, geom.stride, 1)
    }
}
