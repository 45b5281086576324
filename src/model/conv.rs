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
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
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

/// Side lengths of the stride-phase planes of a `h x w` channel: `(ceil(h/s), ceil(w/s))`.
fn plane_dims(d: &Dims, s: usize) -> (usize, usize) {
    (d.h.div_ceil(s), d.w.div_ceil(s))
}

/// Where tap `tap` of output position `o` lands in the phase planes:
/// input position `o * s + tap - p = (o + shift) * s + phase`.
fn tap_phase(tap: usize, g: &ConvGeom) -> (usize, isize) {
    let q = tap as isize - g.padding as isize;
    let s = g.stride as isize;
    (q.rem_euclid(s) as usize, q.div_euclid(s))
}

/// Splits one channel (`h x w`) into its `s x s` stride phases:
/// `planes[(ry * s + rx)][a][b] = x[a * s + ry][b * s + rx]` (entries past the edge stay as
/// they are: no tap ever reads them).
fn to_planes(xc: &[f32], d: &Dims, s: usize, planes: &mut [f32]) {
    let (hp, wp) = plane_dims(d, s);
    for iy in 0..d.h {
        let (a, ry) = (iy / s, iy % s);
        let src = &xc[iy * d.w..(iy + 1) * d.w];
        if s == 2 {
            // the common case, as pairs (vectorises into shuffles)
            let (p0, rest) = planes[(ry * 2 * hp + a) * wp..].split_at_mut(hp * wp);
            let p1 = &mut rest[..wp];
            let pairs = src.chunks_exact(2);
            if let [last] = pairs.remainder() {
                p0[d.w / 2] = *last;
            }
            for ((pair, o0), o1) in pairs.zip(p0.iter_mut()).zip(p1.iter_mut()) {
                *o0 = pair[0];
                *o1 = pair[1];
            }
            continue;
        }
        for rx in 0..s {
            let dst = &mut planes[((ry * s + rx) * hp + a) * wp..][..wp];
            for (o, &v) in dst.iter_mut().zip(src.iter().skip(rx).step_by(s)) {
                *o = v;
            }
        }
    }
}

/// The inverse of [`to_planes`]: writes every pixel of one channel from its phase planes.
fn from_planes(planes: &[f32], d: &Dims, s: usize, xc: &mut [f32]) {
    let (hp, wp) = plane_dims(d, s);
    for iy in 0..d.h {
        let (a, ry) = (iy / s, iy % s);
        let dst = &mut xc[iy * d.w..(iy + 1) * d.w];
        if s == 2 {
            let p0 = &planes[(ry * 2 * hp + a) * wp..][..wp];
            let p1 = &planes[((ry * 2 + 1) * hp + a) * wp..][..wp];
            let mut pairs = dst.chunks_exact_mut(2);
            for ((pair, &v0), &v1) in (&mut pairs).zip(p0).zip(p1) {
                pair[0] = v0;
                pair[1] = v1;
            }
            if let [last] = pairs.into_remainder() {
                *last = p0[d.w / 2];
            }
            continue;
        }
        for rx in 0..s {
            let src = &planes[((ry * s + rx) * hp + a) * wp..][..wp];
            for (o, &v) in dst.iter_mut().skip(rx).step_by(s).zip(src) {
                *o = v;
            }
        }
    }
}

/// Unfolds one image `x` (`[c_in, h, w]`) into `cols` (`[c_in*k*k, ho*wo]`).
///
/// Strided convolutions first split each channel into its stride phases ([`to_planes`]), so
/// that every tap becomes a contiguous row copy instead of a strided gather.
fn im2col(x: &[f32], d: &Dims, g: &ConvGeom, cols: &mut [f32]) {
    let (k, s) = (g.kernel, g.stride);
    let n = d.col_cols();
    let (hp, wp) = plane_dims(d, s);
    let mut planes = if s > 1 {
        vec![0f32; s * s * hp * wp]
    } else {
        Vec::new()
    };
    for c in 0..d.c_in {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        // (source, rows, row length) the taps copy from
        let (src, src_rows_len) = if s > 1 {
            to_planes(xc, d, s, &mut planes);
            (&planes[..], wp)
        } else {
            (xc, d.w)
        };
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            let (ry, dy) = tap_phase(ki, g);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                let (rx, dx) = tap_phase(kj, g);
                let plane = &src[(ry * s + rx) * hp * wp..]; // s = 1: one plane, the channel
                let row = &mut cols[((c * k + ki) * k + kj) * n..][..n];
                for oy in 0..d.ho {
                    let dst = &mut row[oy * d.wo..(oy + 1) * d.wo];
                    if oy < oy_lo || oy >= oy_hi || ox_lo >= ox_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let a = (oy as isize + dy) as usize;
                    let b0 = (ox_lo as isize + dx) as usize;
                    let src_row = &plane[a * src_rows_len..(a + 1) * src_rows_len];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    dst[ox_lo..ox_hi].copy_from_slice(&src_row[b0..b0 + (ox_hi - ox_lo)]);
                }
            }
        }
    }
}

/// Folds `cols` (`[c_in*k*k, ho*wo]`) back into one image `x` (`[c_in, h, w]`), summing overlaps.
///
/// Strided convolutions accumulate into the stride phases of each channel (contiguous adds)
/// and interleave them once at the end ([`from_planes`]).
fn col2im(cols: &[f32], d: &Dims, g: &ConvGeom, x: &mut [f32]) {
    let (k, s) = (g.kernel, g.stride);
    let n = d.col_cols();
    let (hp, wp) = plane_dims(d, s);
    let mut planes = if s > 1 {
        vec![0f32; s * s * hp * wp]
    } else {
        Vec::new()
    };
    for c in 0..d.c_in {
        let xc = &mut x[c * d.h * d.w..(c + 1) * d.h * d.w];
        let (acc, acc_row_len): (&mut [f32], usize) = if s > 1 {
            planes.fill(0.0);
            (&mut planes[..], wp)
        } else {
            xc.fill(0.0);
            (&mut xc[..], d.w)
        };
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            let (ry, dy) = tap_phase(ki, g);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                if ox_lo >= ox_hi {
                    continue;
                }
                let (rx, dx) = tap_phase(kj, g);
                let plane_at = (ry * s + rx) * hp * wp; // 0 when s = 1
                let row = &cols[((c * k + ki) * k + kj) * n..][..n];
                let b0 = (ox_lo as isize + dx) as usize;
                for oy in oy_lo..oy_hi {
                    let a = (oy as isize + dy) as usize;
                    let dst = &mut acc[plane_at + a * acc_row_len..][..acc_row_len];
                    let src = &row[oy * d.wo + ox_lo..oy * d.wo + ox_hi];
                    for (o, v) in dst[b0..b0 + src.len()].iter_mut().zip(src) {
                        *o += *v;
                    }
                }
            }
        }
        if s > 1 {
            from_planes(&planes, d, s, xc);
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
    let d = Mat {
        ptr: dst.as_ptr(),
        rs: n as isize,
        cs: 1,
    };
    matmul_into(dst, d, m, n, k, lhs, rhs, accumulate, par)
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with `dst` at the strides of `layout` (its pointer is
/// ignored; `dst` must hold every element those strides reach).
#[allow(clippy::too_many_arguments)]
fn matmul_into(
    dst: &mut [f32],
    layout: Mat,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(
        m == 0
            || n == 0
            || (m - 1) * (layout.rs as usize) + (n - 1) * (layout.cs as usize) < dst.len()
    );
    // SAFETY: the callers build `lhs`/`rhs` from slices that hold at least m*k / k*n elements at
    // the given strides, and `dst` holds every element the (non-negative) strides of `layout`
    // reach for m x n; gemm reads and writes only those.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            layout.cs,
            layout.rs,
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

/// `y_i = w · cols_i` into one image's output `yb` (`[c_out, n]`).
///
/// Computed transposed, yᵀ[n, c_out] = colsᵀ[n, rows] · wᵀ[rows, c_out], written into y's
/// [c_out, n] layout: both operands are then column-major for gemm and neither is re-packed
/// per image (the weights were, once per image), and the kernel's long side is the n pixels
/// rather than c_out (3 for an RGB output conv).
fn forward_image(
    cols: &[f32],
    w: &[f32],
    yb: &mut [f32],
    d: &Dims,
    rows: usize,
    par: gemm::Parallelism,
) {
    let n = d.col_cols();
    let lhs = Mat {
        ptr: cols.as_ptr(),
        rs: 1,
        cs: n as isize,
    };
    let rhs = Mat {
        ptr: w.as_ptr(),
        rs: 1,
        cs: rows as isize,
    };
    let layout = Mat {
        ptr: yb.as_ptr(),
        rs: 1,
        cs: n as isize,
    };
    matmul_into(yb, layout, n, d.c_out, rows, lhs, rhs, false, par);
}

/// `acc (+)= gy_i · cols_iᵀ` (`[c_out, n] x [n, rows]`): one image's share of ∂/∂w.
#[allow(clippy::too_many_arguments)]
fn grad_weight_image(
    gy_i: &[f32],
    cols: &[f32],
    acc: &mut [f32],
    d: &Dims,
    rows: usize,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    let n = d.col_cols();
    let lhs = Mat {
        ptr: gy_i.as_ptr(),
        rs: n as isize,
        cs: 1,
    };
    let rhs = Mat {
        ptr: cols.as_ptr(),
        rs: 1,
        cs: n as isize,
    };
    matmul(acc, d.c_out, rows, n, lhs, rhs, accumulate, par);
}

fn forward(x: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let img = d.c_in * d.h * d.w;
    let mut y = vec![0f32; b * d.c_out * n];
    let par = inner_par(b);
    y.par_chunks_mut(d.c_out * n).enumerate().for_each_init(
        || vec![0f32; rows * n],
        |cols, (i, yb)| {
            im2col(&x[i * img..][..img], d, g, cols);
            forward_image(cols, w, yb, d, rows, par);
        },
    );
    y
}

/// `(conv2d(x, w), ∂/∂w given gy)` from one im2col of each image of `x`: the backward of a
/// transposed convolution needs both for the same tensor (its incoming gradient).
fn forward_and_grad_weight(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
) -> (Vec<f32>, Vec<f32>) {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let (img, out) = (d.c_in * d.h * d.w, d.c_out * n);
    let mut y = vec![0f32; b * out];
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let par = inner_par(chunks);
    let partial: Vec<Vec<f32>> = y
        .par_chunks_mut(per * out)
        .enumerate()
        .map(|(c, ychunk)| {
            let mut acc = vec![0f32; d.c_out * rows];
            let mut cols = vec![0f32; rows * n];
            for (j, yb) in ychunk.chunks_mut(out).enumerate() {
                let i = c * per + j;
                im2col(&x[i * img..][..img], d, g, &mut cols);
                forward_image(&cols, w, yb, d, rows, par);
                grad_weight_image(&gy[i * out..][..out], &cols, &mut acc, d, rows, j > 0, par);
            }
            acc
        })
        .collect();
    (y, sum_partials(partial, d.c_out * rows))
}

fn sum_partials(partial: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// `w[co, ci, ki, kj]` → `w'[ci, co, k-1-ki, k-1-kj]`: the kernel whose stride-1
/// convolution is the adjoint of `w`'s.
fn flipped_transposed(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            let src = &w[(co * c_in + ci) * k * k..][..k * k];
            let dst = &mut out[(ci * c_out + co) * k * k..][..k * k];
            for (o, v) in dst.iter_mut().zip(src.iter().rev()) {
                *o = *v;
            }
        }
    }
    out
}

fn grad_input(gy: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    // A stride-1 convolution's adjoint is the stride-1 convolution of gy with the flipped,
    // transposed kernel and padding k-1-p. When gy has fewer channels than x (an RGB output
    // conv: 3 vs 16), its im2col is that much smaller than the col2im route's columns.
    if g.stride == 1 && g.padding < g.kernel && d.c_out < d.c_in {
        let k = g.kernel;
        let adjoint = Dims {
            c_in: d.c_out,
            h: d.ho,
            w: d.wo,
            c_out: d.c_in,
            ho: d.h,
            wo: d.w,
        };
        let ga = ConvGeom {
            kernel: k,
            stride: 1,
            padding: k - 1 - g.padding,
        };
        if ga.conv_out(d.ho) == d.h && ga.conv_out(d.wo) == d.w {
            return forward(
                gy,
                &flipped_transposed(w, d.c_out, d.c_in, k),
                b,
                &adjoint,
                &ga,
            );
        }
    }
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
    let (img, out) = (d.c_in * d.h * d.w, d.c_out * n);
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
                grad_weight_image(
                    &gy[i * out..][..out],
                    &cols,
                    &mut acc,
                    d,
                    rows,
                    i > c * per,
                    par,
                );
            }
            acc
        })
        .collect();
    sum_partials(partial, d.c_out * rows)
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
