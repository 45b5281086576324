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

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

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

/// Rows of the im2col matrix: `c * k * k`; columns: `ho * wo`.
struct Dims {
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    ho: usize,
    wo: usize,
}

impl Dims {
    fn col_rows(&self, g: &ConvGeom) -> usize {
        self.c_in * g.kernel * g.kernel
    }
    fn col_cols(&self) -> usize {
        self.ho * self.wo
    }
}

/// Range of output positions `o` whose input position `o * s + tap - p` lies in `0..len`.
fn valid_range(tap: usize, g: &ConvGeom, len: usize, out_len: usize) -> (usize, usize) {
    let (s, p) = (g.stride as isize, g.padding as isize);
    let off = tap as isize - p;
    // smallest o with o*s + off >= 0
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    // largest o with o*s + off <= len-1, plus one
    let hi_num = len as isize - 1 - off;
    let hi = if hi_num < 0 { 0 } else { hi_num / s + 1 };
    (
        lo.clamp(0, out_len as isize) as usize,
        hi.clamp(0, out_len as isize) as usize,
    )
}

/// Unfolds one image `x` (`[c_in, h, w]`) into `cols` (`[c_in*k*k, ho*wo]`).
fn im2col(x: &[f32], d: &Dims, g: &ConvGeom, cols: &mut [f32]) {
    let k = g.kernel;
    let n = d.col_cols();
    for c in 0..d.c_in {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                let row = &mut cols[((c * k + ki) * k + kj) * n..][..n];
                for oy in 0..d.ho {
                    let dst = &mut row[oy * d.wo..(oy + 1) * d.wo];
                    if oy < oy_lo || oy >= oy_hi || ox_lo >= ox_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = oy * g.stride + ki - g.padding;
                    let src = &xc[iy * d.w..(iy + 1) * d.w];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    if g.stride == 1 {
                        let ix0 = ox_lo + kj - g.padding;
                        dst[ox_lo..ox_hi].copy_from_slice(&src[ix0..ix0 + (ox_hi - ox_lo)]);
                    } else {
                        for (ox, v) in dst.iter_mut().enumerate().take(ox_hi).skip(ox_lo) {
                            *v = src[ox * g.stride + kj - g.padding];
                        }
                    }
                }
            }
        }
    }
}

/// Folds `cols` (`[c_in*k*k, ho*wo]`) back into one image `x` (`[c_in, h, w]`), summing overlaps.
fn col2im(cols: &[f32], d: &Dims, g: &ConvGeom, x: &mut [f32]) {
    let k = g.kernel;
    let n = d.col_cols();
    x.fill(0.0);
    for c in 0..d.c_in {
        let xc = &mut x[c * d.h * d.w..(c + 1) * d.h * d.w];
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                if ox_lo >= ox_hi {
                    continue;
                }
                let row = &cols[((c * k + ki) * k + kj) * n..][..n];
                for oy in oy_lo..oy_hi {
                    let iy = oy * g.stride + ki - g.padding;
                    let dst = &mut xc[iy * d.w..(iy + 1) * d.w];
                    let src = &row[oy * d.wo..(oy + 1) * d.wo];
                    if g.stride == 1 {
                        let ix0 = ox_lo + kj - g.padding;
                        for (a, b) in dst[ix0..ix0 + (ox_hi - ox_lo)]
                            .iter_mut()
                            .zip(&src[ox_lo..ox_hi])
                        {
                            *a += *b;
                        }
                    } else {
                        for (ox, v) in src.iter().enumerate().take(ox_hi).skip(ox_lo) {
                            dst[ox * g.stride + kj - g.padding] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Row-major matrix view: pointer plus (row stride, column stride) in elements.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, `dst` row-major and contiguous.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the callers build `lhs`/`rhs` from slices that hold at least m*k / k*n elements at
    // the given strides, and `dst` holds m*n elements; gemm reads and writes only those.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

/// Parallelism inside one gemm: only when the batch is too small to split across threads.
fn inner_par(batch: usize) -> gemm::Parallelism {
    let t = threads();
    if batch >= t || t == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(t)
    }
}

fn forward(x: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let mut y = vec![0f32; b * d.c_out * n];
    let par = inner_par(b);
    y.par_chunks_mut(d.c_out * n).enumerate().for_each_init(
        || vec![0f32; rows * n],
        |cols, (i, yb)| {
            im2col(
                &x[i * d.c_in * d.h * d.w..][..d.c_in * d.h * d.w],
                d,
                g,
                cols,
            );
            let lhs = Mat {
                ptr: w.as_ptr(),
                rs: rows as isize,
                cs: 1,
            };
            let rhs = Mat {
                ptr: cols.as_ptr(),
                rs: n as isize,
                cs: 1,
            };
            matmul(yb, d.c_out, n, rows, lhs, rhs, false, par);
        },
    );
    y
}

fn grad_input(gy: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let img = d.c_in * d.h * d.w;
    let mut gx = vec![0f32; b * img];
    let par = inner_par(b);
    gx.par_chunks_mut(img).enumerate().for_each_init(
        || vec![0f32; rows * n],
        |cols, (i, gxb)| {
            // cols = wᵀ · gy_i : [rows, c_out] x [c_out, n]
            let lhs = Mat {
                ptr: w.as_ptr(),
                rs: 1,
                cs: rows as isize,
            };
            let rhs = Mat {
                ptr: gy[i * d.c_out * n..].as_ptr(),
                rs: n as isize,
                cs: 1,
            };
            matmul(cols, rows, n, d.c_out, lhs, rhs, false, par);
            col2im(cols, d, g, gxb);
        },
    );
    gx
}

fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let img = d.c_in * d.h * d.w;
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let par = inner_par(chunks);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; d.c_out * rows];
            let mut cols = vec![0f32; rows * n];
            for i in (c * per)..((c + 1) * per).min(b) {
                im2col(&x[i * img..][..img], d, g, &mut cols);
                // acc += gy_i · colsᵀ : [c_out, n] x [n, rows]
                let lhs = Mat {
                    ptr: gy[i * d.c_out * n..].as_ptr(),
                    rs: n as isize,
                    cs: 1,
                };
                let rhs = Mat {
                    ptr: cols.as_ptr(),
                    rs: 1,
                    cs: n as isize,
                };
                matmul(&mut acc, d.c_out, rows, n, lhs, rhs, i > c * per, par);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; d.c_out * rows];
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
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
                let y = forward(a, bw, b, &d, g);
                Ok((CpuStorage::F32(y), Shape::from((b, c_out, d.ho, d.wo))))
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
                let gx = grad_input(a, bw, b, &d, g);
                Ok((CpuStorage::F32(gx), Shape::from((b, c_in, in_h, in_w))))
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
                Ok((CpuStorage::F32(gw), Shape::from((c_out, c_in, k, k))))
            }
        }
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
                let gb = a.apply_op2_no_bwd(
                    &grad,
                    &ConvOp {
                        kernel: Kernel::GradWeight,
                        geom: g,
                    },
                )?;
                Ok((ga, Some(gb)))
            }
            Kernel::GradInput { .. } => {
                // a = gy-like input of the transposed conv, b = weight, result has the conv-input shape.
                let ga = grad.apply_op2_no_bwd(
                    b,
                    &ConvOp {
                        kernel: Kernel::Forward,
                        geom: g,
                    },
                )?;
                let gb = grad.apply_op2_no_bwd(
                    a,
                    &ConvOp {
                        kernel: Kernel::GradWeight,
                        geom: g,
                    },
                )?;
                Ok((Some(ga), Some(gb)))
            }
            Kernel::GradWeight => {
                candle_core::bail!("fast conv: no second-order gradient for grad-weight")
            }
        }
    }
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
