//! The batch drivers of the three convolution kernels on raw NCHW f32 slices: which images,
//! channel groups or image groups go to which thread, and which inner kernel (im2col + gemm,
//! the direct kernel, register-blocked dot products) runs each piece.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::mm::{as_uninit, matmul, matmul_into, Mat};
use super::unfold::{col2im, flipped_transposed, im2col, Dims};
use super::{direct, dot, wino, ConvGeom};
#[cfg(target_arch = "x86_64")]
use super::{implicit, phases, wino3};
use crate::model::activation::filled_vec;

/// candle's thread count, read once (candle re-reads the CPU mask from `/proc` on each call).
pub(super) fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// Row stride of an im2col matrix (or a gemm result on its way to col2im) with `m` columns:
/// `m` plus 16 floats. The VAE's column counts are powers of two (1024 pixels, or groups of
/// 256), so without the pad every row of a 16-pixel strip or of a 6-row panel starts at the
/// same offset modulo 4 KB: the rows gemm and the dot kernels read side by side fall into a
/// few L1 sets and alias in the store-to-load check. With the pad (best-of-20, batch 64): the
/// first encoder layer 2.0-2.2 → 1.4 ms, the last transposed layer's input gradient
/// 9.0-10.1 → 8.0 ms.
fn padded(m: usize) -> usize {
    m + 16
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

/// `out = w · cols` (`[c_out, m]`, every element written; `out` may be uninitialised) for
/// `cols` (`[rows, m]`, row stride `ld`): one image (`m` its pixels) or a group of images side by
/// side.
///
/// Computed transposed, outᵀ[m, c_out] = colsᵀ[m, rows] · wᵀ[rows, c_out], written into the
/// [c_out, m] layout: both operands are then column-major for gemm, and the kernel's long
/// side is the m pixels rather than c_out (3 for an RGB output conv).
#[allow(clippy::too_many_arguments)]
fn forward_cols(
    cols: &[f32],
    m: usize,
    ld: usize,
    w: &[f32],
    out: &mut [MaybeUninit<f32>],
    c_out: usize,
    rows: usize,
    par: gemm::Parallelism,
) {
    let lhs = Mat {
        ptr: cols.as_ptr(),
        rs: 1,
        cs: ld as isize,
    };
    let rhs = Mat {
        ptr: w.as_ptr(),
        rs: 1,
        cs: rows as isize,
    };
    let layout = Mat {
        ptr: out.as_ptr().cast::<f32>(),
        rs: 1,
        cs: m as isize,
    };
    matmul_into(out, layout, m, c_out, rows, lhs, rhs, false, par);
}

/// `acc (+)= gy · colsᵀ` (`[c_out, m] x [m, rows]`, `cols` at row stride `ld`) over `m`
/// pixels (one image or a group): their share of ∂/∂w.
#[allow(clippy::too_many_arguments)]
fn grad_weight_cols(
    gy: &[f32],
    cols: &[f32],
    ld: usize,
    m: usize,
    acc: &mut [f32],
    c_out: usize,
    rows: usize,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    if dot::preferred(c_out, m) {
        if !accumulate {
            acc[..c_out * rows].fill(0.0);
        }
        return dot::nt_dots(gy, cols, ld, c_out, rows, m, acc);
    }
    let lhs = Mat {
        ptr: gy.as_ptr(),
        rs: m as isize,
        cs: 1,
    };
    let rhs = Mat {
        ptr: cols.as_ptr(),
        rs: 1,
        cs: ld as isize,
    };
    matmul(acc, c_out, rows, m, lhs, rhs, accumulate, par);
}

/// Pixels one gemm should span at least: layers with fewer per image (8x8 and 4x4 maps)
/// process images in groups side by side, so that their weights (up to 2 MB, past the L2
/// cache) are streamed once per group instead of once per image, and their weight-gradient
/// accumulator is read and written once per group.
const GROUP_PIXELS: usize = 256;

/// Images per group for `n` pixels per image.
pub(super) fn group_size(n: usize) -> usize {
    GROUP_PIXELS.div_ceil(n.max(1))
}

/// im2col of `cnt` images of `x` from image `i0`, side by side: `cols` `[rows, cnt * n]` at
/// row stride `padded(cnt * n)`.
fn im2col_group(x: &[f32], i0: usize, cnt: usize, d: &Dims, g: &ConvGeom, cols: &mut [f32]) {
    let (img, n) = (d.c_in * d.h * d.w, d.col_cols());
    let ld = padded(cnt * n);
    for j in 0..cnt {
        im2col(&x[(i0 + j) * img..][..img], d, g, &mut cols[j * n..], ld);
    }
}

/// `cnt` per-image `[c, n]` blocks from image `i0` of `src` → one `[c, cnt * n]` matrix.
fn gather(src: &[f32], i0: usize, cnt: usize, c: usize, n: usize, dst: &mut Vec<f32>) {
    dst.resize(c * cnt * n, 0.0);
    for j in 0..cnt {
        for ch in 0..c {
            dst[(ch * cnt + j) * n..][..n].copy_from_slice(&src[((i0 + j) * c + ch) * n..][..n]);
        }
    }
}

/// The inverse of [`gather`]: `[c, cnt * n]` → `cnt` consecutive `[c, n]` blocks of `dst`
/// (every element written; `dst` may be uninitialised).
fn scatter(src: &[f32], cnt: usize, c: usize, n: usize, dst: &mut [MaybeUninit<f32>]) {
    for j in 0..cnt {
        for ch in 0..c {
            let to = &mut dst[(j * c + ch) * n..][..n];
            for (o, v) in to.iter_mut().zip(&src[(ch * cnt + j) * n..][..n]) {
                o.write(*v);
            }
        }
    }
}

/// `y = w · cols` (from [`im2col_group`]) for a group of `cnt` images into their consecutive outputs `ychunk`
/// (through `tmp` and [`scatter`] when `cnt > 1`); writes every element of `ychunk`.
#[allow(clippy::too_many_arguments)]
fn forward_group(
    cols: &[f32],
    cnt: usize,
    w: &[f32],
    ychunk: &mut [MaybeUninit<f32>],
    tmp: &mut Vec<f32>,
    d: &Dims,
    rows: usize,
    par: gemm::Parallelism,
) {
    let m = cnt * d.col_cols();
    if cnt == 1 {
        return forward_cols(cols, m, padded(m), w, ychunk, d.c_out, rows, par);
    }
    tmp.resize(d.c_out * m, 0.0);
    forward_cols(cols, m, padded(m), w, as_uninit(tmp), d.c_out, rows, par);
    scatter(tmp, cnt, d.c_out, d.col_cols(), ychunk);
}

/// Channels per group when one image's `c` channels are split among the threads.
fn channels_per_thread(c: usize) -> usize {
    c.div_ceil(threads().min(c).max(1)).max(1)
}

/// `v ↦ leaky(v + bias[channel], slope)` on finished output, while in cache (no extra pass).
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub(super) bias: &'a [f32],
    pub(super) slope: f32,
}

impl Epilogue<'_> {
    /// Applies the epilogue of channel `ch` to `len` finished floats at `p`.
    ///
    /// # Safety
    /// `p` points to `len` initialised floats.
    #[inline]
    pub(super) unsafe fn apply(&self, ch: usize, p: *mut f32, len: usize) {
        let (b, slope) = (self.bias[ch], self.slope);
        let row = std::slice::from_raw_parts_mut(p, len);
        for v in row {
            let t = *v + b;
            *v = t * if t > 0.0 { 1.0 } else { slope };
        }
    }
}

/// [`forward`] with `epi` applied inside the kernel where it can be: returns whether it was.
pub(super) fn forward_fused(
    x: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
    epi: Option<Epilogue>,
) -> (Vec<f32>, bool) {
    if b >= threads() && wino::applies(d, g) {
        return (wino::forward(x, w, b, d, epi), epi.is_some());
    }
    #[cfg(target_arch = "x86_64")]
    if b >= threads() && wino3::applies(d, g) {
        return (wino3::forward(x, w, b, d, epi), epi.is_some());
    }
    #[cfg(target_arch = "x86_64")]
    if epi.is_some() && b >= threads() && implicit::applies(d, g) {
        return (implicit::forward(x, w, b, d, g, epi), true);
    }
    forward_impl(x, w, b, d, g, epi)
}

pub(super) fn forward(x: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    forward_impl(x, w, b, d, g, None).0
}

/// [`grad_input`] (a transposed conv's forward) with `epi` as in [`forward_fused`].
pub(super) fn grad_input_fused(
    gy: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
    epi: Option<Epilogue>,
) -> (Vec<f32>, bool) {
    #[cfg(target_arch = "x86_64")]
    if epi.is_some() && b >= threads() {
        if wino::applies_grad_input(d, g) {
            return (wino::grad_input(gy, w, b, d, epi), true);
        }
        if phases::applies_grad_input(d, g) {
            return (phases::grad_input(gy, w, b, d, g, epi), true);
        }
    }
    (grad_input(gy, w, b, d, g), false)
}

/// [`forward`]; `epi` is applied to each group's output right after its gemm on the im2col
/// route (the first encoder layer), and not at all elsewhere: returns whether it was.
fn forward_impl(
    x: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
    epi: Option<Epilogue>,
) -> (Vec<f32>, bool) {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let img = d.c_in * d.h * d.w;
    if b >= threads() && wino::applies(d, g) {
        return (wino::forward(x, w, b, d, epi), epi.is_some());
    }
    #[cfg(target_arch = "x86_64")]
    if b >= threads() && wino3::applies(d, g) {
        return (wino3::forward(x, w, b, d, epi), epi.is_some());
    }
    #[cfg(target_arch = "x86_64")]
    if b >= threads() && implicit::applies(d, g) {
        return (implicit::forward(x, w, b, d, g, None), false);
    }
    let use_direct = direct::applies(d, g);
    if b >= threads() && !use_direct {
        let nb = group_size(n);
        let par = inner_par(b.div_ceil(nb));
        let fill = |y: &mut [MaybeUninit<f32>]| {
            y.par_chunks_mut(nb * d.c_out * n)
                .enumerate()
                .for_each_init(
                    || (vec![0f32; rows * padded(nb * n)], Vec::new()),
                    |(cols, tmp), (gi, ychunk)| {
                        let cnt = ychunk.len() / (d.c_out * n);
                        im2col_group(x, gi * nb, cnt, d, g, cols);
                        forward_group(cols, cnt, w, ychunk, tmp, d, rows, par);
                        if let Some(e) = epi {
                            for (j, ch) in ychunk.chunks_exact_mut(n).enumerate() {
                                // SAFETY: forward_group wrote the whole chunk.
                                unsafe { e.apply(j % d.c_out, ch.as_mut_ptr().cast(), n) };
                            }
                        }
                    },
                )
        };
        // SAFETY: the chunks cover the output and forward_group writes every element of each.
        return (unsafe { filled_vec(b * d.c_out * n, fill) }, epi.is_some());
    }
    let mut y = vec![0f32; b * d.c_out * n];
    if use_direct {
        direct::forward(x, w, b, d, g, &mut y);
        return (y, false);
    }
    // Fewer images than threads (a batch-1 decode): the im2col is split by input channel among
    // the threads too, not only the gemm.
    {
        let par = inner_par(b);
        let (kk, plane) = (g.kernel * g.kernel, d.h * d.w);
        let per = channels_per_thread(d.c_in);
        let mut cols = vec![0f32; rows * n];
        for (i, yb) in y.chunks_mut(d.c_out * n).enumerate() {
            let xi = &x[i * img..][..img];
            cols.par_chunks_mut(per * kk * n)
                .enumerate()
                .for_each(|(j, part)| {
                    let sub = Dims {
                        c_in: part.len() / (kk * n),
                        ..*d
                    };
                    im2col(&xi[j * per * plane..][..sub.c_in * plane], &sub, g, part, n);
                });
            forward_cols(&cols, n, n, w, as_uninit(yb), d.c_out, rows, par);
        }
    }
    (y, false)
}

/// `(conv2d(x, w), ∂/∂w given gy)` from one im2col of each image of `x`: the backward of a
/// transposed convolution needs both for the same tensor (its incoming gradient).
pub(super) fn forward_and_grad_weight(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
) -> (Vec<f32>, Vec<f32>) {
    if b >= threads() && wino::applies(d, g) {
        if let Some(both) = wino::forward_and_grad_weight(x, w, gy, b, d) {
            return both;
        }
        return (
            wino::forward(x, w, b, d, None),
            wino::grad_weight(x, gy, b, d),
        );
    }
    #[cfg(target_arch = "x86_64")]
    if b >= threads() && implicit::applies_grad_weight(d, g) {
        return (
            implicit::forward(x, w, b, d, g, None),
            implicit::grad_weight(x, gy, b, d, g),
        );
    }
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let out = d.c_out * n;
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let par = inner_par(chunks);
    let nb = group_size(n).min(per);
    let mut partial: Vec<Vec<f32>> = Vec::new();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        partial = y
            .par_chunks_mut(per * out)
            .enumerate()
            .map(|(c, ychunk)| {
                let mut acc = vec![0f32; d.c_out * rows];
                let mut cols = vec![0f32; rows * padded(nb * n)];
                let (mut tmp, mut gyg) = (Vec::new(), Vec::new());
                for (j, yg) in ychunk.chunks_mut(nb * out).enumerate() {
                    let (i0, cnt) = (c * per + j * nb, yg.len() / out);
                    im2col_group(x, i0, cnt, d, g, &mut cols);
                    forward_group(&cols, cnt, w, yg, &mut tmp, d, rows, par);
                    let gy_g = if cnt == 1 {
                        &gy[i0 * out..][..out]
                    } else {
                        gather(gy, i0, cnt, d.c_out, n, &mut gyg);
                        &gyg[..]
                    };
                    let (m, ld) = (cnt * n, padded(cnt * n));
                    grad_weight_cols(gy_g, &cols, ld, m, &mut acc, d.c_out, rows, j > 0, par);
                }
                acc
            })
            .collect();
    };
    // SAFETY: the chunks cover the output and forward_group writes every element of each.
    let y = unsafe { filled_vec(b * out, fill) };
    (y, sum_partials(partial, d.c_out * rows))
}

pub(super) fn sum_partials(partial: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

pub(super) fn grad_input(gy: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if b >= threads() {
        if wino::applies_grad_input(d, g) {
            return wino::grad_input(gy, w, b, d, None);
        }
        if phases::applies_grad_input(d, g) {
            return phases::grad_input(gy, w, b, d, g, None);
        }
    }
    // A stride-1 convolution's adjoint is the stride-1 convolution of gy with the flipped,
    // transposed kernel and padding k-1-p. When gy has fewer channels than x (an RGB output
    // conv: 3 vs 16), its im2col is that much smaller than the col2im route's columns; when
    // the implicit forward takes the adjoint (the Split-VAE's 3x3 residual convs), there is
    // no im2col at all.
    if g.stride == 1 && g.padding < g.kernel {
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
        #[cfg(target_arch = "x86_64")]
        let implicit_adjoint =
            b >= threads() && (implicit::applies(&adjoint, &ga) || wino3::applies(&adjoint, &ga));
        #[cfg(not(target_arch = "x86_64"))]
        let implicit_adjoint = false;
        if (d.c_out < d.c_in || implicit_adjoint)
            && ga.conv_out(d.ho) == d.h
            && ga.conv_out(d.wo) == d.w
        {
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
    if b < threads() {
        // Fewer images than threads (a batch-1 decode): each thread takes a group of input
        // channels, its rows of wᵀ · gy and their col2im, with no synchronisation between.
        let (kk, plane) = (g.kernel * g.kernel, d.h * d.w);
        let per = channels_per_thread(d.c_in);
        for (i, gxb) in gx.chunks_mut(img).enumerate() {
            let gy_i = &gy[i * d.c_out * n..][..d.c_out * n];
            gxb.par_chunks_mut(per * plane)
                .enumerate()
                .for_each(|(j, part)| {
                    let sub = Dims {
                        c_in: part.len() / plane,
                        ..*d
                    };
                    let sub_rows = sub.c_in * kk;
                    let mut cols = vec![0f32; sub_rows * n];
                    let lhs = Mat {
                        ptr: w[j * per * kk..].as_ptr(),
                        rs: 1,
                        cs: rows as isize,
                    };
                    let rhs = Mat {
                        ptr: gy_i.as_ptr(),
                        rs: n as isize,
                        cs: 1,
                    };
                    matmul(
                        &mut cols,
                        sub_rows,
                        n,
                        d.c_out,
                        lhs,
                        rhs,
                        false,
                        gemm::Parallelism::None,
                    );
                    col2im(&mut cols, &sub, g, part, n);
                });
        }
        return gx;
    }
    let nb = group_size(n);
    let par = inner_par(b.div_ceil(nb));
    gx.par_chunks_mut(nb * img).enumerate().for_each_init(
        || (vec![0f32; rows * padded(nb * n)], Vec::new()),
        |(cols, gyg), (gi, gxchunk)| {
            let (i0, cnt) = (gi * nb, gxchunk.len() / img);
            let m = cnt * n;
            let gy_g = if cnt == 1 {
                &gy[i0 * d.c_out * n..][..d.c_out * n]
            } else {
                gather(gy, i0, cnt, d.c_out, n, gyg);
                &gyg[..]
            };
            // cols = wᵀ · gy : [rows, c_out] x [c_out, m], at row stride ld
            let ld = padded(m);
            let lhs = Mat {
                ptr: w.as_ptr(),
                rs: 1,
                cs: rows as isize,
            };
            let rhs = Mat {
                ptr: gy_g.as_ptr(),
                rs: m as isize,
                cs: 1,
            };
            let layout = Mat {
                ptr: cols.as_ptr(),
                rs: ld as isize,
                cs: 1,
            };
            matmul_into(
                as_uninit(&mut cols[..]),
                layout,
                rows,
                m,
                d.c_out,
                lhs,
                rhs,
                false,
                par,
            );
            for (j, gxb) in gxchunk.chunks_mut(img).enumerate() {
                col2im(&mut cols[j * n..], d, g, gxb, ld);
            }
        },
    );
    gx
}

pub(super) fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    if b >= threads() && wino::applies(d, g) {
        return wino::grad_weight(x, gy, b, d);
    }
    #[cfg(target_arch = "x86_64")]
    if b >= threads() && wino3::applies(d, g) {
        return wino3::grad_weight(x, gy, b, d);
    }
    #[cfg(target_arch = "x86_64")]
    if b >= threads() && implicit::applies_grad_weight(d, g) {
        return implicit::grad_weight(x, gy, b, d, g);
    }
    if b >= threads() && direct::applies_grad_weight(d, g) {
        return direct::grad_weight(x, gy, b, d, g);
    }
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let out = d.c_out * n;
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let par = inner_par(chunks);
    let nb = group_size(n).min(per);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; d.c_out * rows];
            let mut cols = vec![0f32; rows * padded(nb * n)];
            let mut gyg = Vec::new();
            let (start, end) = (c * per, ((c + 1) * per).min(b));
            for i0 in (start..end).step_by(nb) {
                let cnt = nb.min(end - i0);
                im2col_group(x, i0, cnt, d, g, &mut cols);
                let gy_g = if cnt == 1 {
                    &gy[i0 * out..][..out]
                } else {
                    gather(gy, i0, cnt, d.c_out, n, &mut gyg);
                    &gyg[..]
                };
                let first = i0 == start;
                let (m, ld) = (cnt * n, padded(cnt * n));
                grad_weight_cols(gy_g, &cols, ld, m, &mut acc, d.c_out, rows, !first, par);
            }
            acc
        })
        .collect();
    sum_partials(partial, d.c_out * rows)
}
