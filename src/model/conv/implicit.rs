//! Implicit-gemm forward and weight gradient for the VAE's, GAN's and recoders' 4x4 stride-2
//! layers and the Split-VAE's 3x3 stride-1 residual convs: no im2col matrix. Each image is
//! split once into its stride-phase planes (a stride-1 channel is its own single plane);
//! then, for each 16-pixel strip and each slice of at most [`KC`] rows of the im2col matrix,
//! the strip's slice is packed straight from the planes into a small buffer (one unaligned
//! load and a mask per row: with planes as wide as the output, every tap of a strip is a
//! contiguous run of the plane) and multiplied by every 6-channel panel of the packed weights
//! with gemm's own AVX2/FMA micro-kernel (`gemm_f32`, 16 x 6).
//!
//! The im2col + gemm route wrote a `[c_in·16, pixels]` matrix (16 times the input) that gemm
//! then copied again into its own panels; here the packed strip stays in L1 and a weight slice
//! (≤ 256 KB) in L2 for a whole group of images. The weight gradient
//! ([`grad_weight_images`]) works the same way with the roles turned: strips of 16 output
//! channels of the output gradient against panels of 6 im2col rows, copied (masked) from the
//! planes per slice of pixels. The input gradient is in `phases`. Outputs match the
//! reference ops to rounding (tests).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::kernels::{group_size, threads, Epilogue};
pub(super) use super::micro::MR;
use super::micro::{has_avx512, tile16, Micro};
use super::unfold::{plane_dims, tap_phase, to_planes, valid_range, Dims};
use super::wide::transpose_rows;
use super::ConvGeom;
use crate::model::activation::filled_vec;

/// im2col rows per panel of the weight gradient on gemm's AVX2 micro-kernel (its width).
pub(super) const NR: usize = 6;
/// Rows of the im2col matrix per slice: a packed strip slice is `KC x 16` floats (16 KB,
/// in L1) and a weight slice `c_out x KC` (at most 256 KB for 256 channels, in L2).
pub(super) const KC: usize = 256;

/// Whether [`grad_weight_images`] handles this convolution: [`applies`], and the
/// `[rows][c_out]` accumulator it updates after every slice of pixels fits in L2 (at most
/// 512 KB). The 128 → 256-channel layer's 2 MB one (re-read and re-written per slice)
/// made its weight gradient slower than im2col + gemm (best-of-20: 6.6 → 7.4 ms; taking its
/// output channels in blocks of 64, each with a 512 KB accumulator, was slower still:
/// 8.6 ms), while the 32- to 128-channel layers gain 11-19 % (7.3-7.6 → 6.0 ms,
/// 6.7 → 5.9 ms).
pub(super) fn applies_grad_weight(d: &Dims, g: &ConvGeom) -> bool {
    d.col_rows(g) * d.c_out * std::mem::size_of::<f32>() <= 512 << 10 && applies(d, g)
}

/// Fewer im2col rows than this (under 32 input channels of a 4x4 kernel) stay on im2col +
/// gemm: with short products the micro-kernel calls and their stores cost more than the copy
/// saved (best-of-20, batch 64: the 3-channel first encoder layer 1.4 → 1.5-1.8 ms, the
/// 16-channel 64x64 layer 8.1 → 8.3-8.5 ms; 32 channels and up gain 4-9 %).
const MIN_ROWS: usize = 512;

/// [`MIN_ROWS`] for stride-1 convolutions, whose strips need no phase split: the Split-VAE's
/// 3x3 residual convs gain from 32 channels (288 rows) up (paired best-of-30 runs, batch 64:
/// 32 ch at 32x32, forward 10.9-12.5 → 9.3-9.7 ms; 64 ch at 16x16, forward 8.7-13.1 →
/// 6.5-12.1 ms and its input gradient, the same kernel on flipped weights, 7.2-9.6 →
/// 6.4-7.7 ms; 128 ch at 8x8, 7.0-10.1 → 6.1-8.0 ms).
const MIN_ROWS_STRIDE1: usize = 256;

/// Whether [`forward_images`] handles this convolution on this CPU: stride 2 on even sides or
/// stride 1, with planes as wide as the output (true for a 4x4 stride-2 or a 3x3 stride-1
/// kernel with padding 1), 16-pixel strips that do not cross images, at least [`MIN_ROWS`]
/// im2col rows, and AVX2 + FMA.
pub(super) fn applies(d: &Dims, g: &ConvGeom) -> bool {
    let min_rows = if g.stride == 1 {
        MIN_ROWS_STRIDE1
    } else {
        MIN_ROWS
    };
    d.col_rows(g) >= min_rows && applies_geometry(d, g)
}

/// [`applies`] without the minimum number of im2col rows: the layout and CPU conditions.
pub(super) fn applies_geometry(d: &Dims, g: &ConvGeom) -> bool {
    let phase_split = match g.stride {
        1 => true,
        2 => d.h.is_multiple_of(2) && d.w.is_multiple_of(2),
        _ => false,
    };
    phase_split
        && plane_dims(d, g.stride) == (d.ho, d.wo)
        && d.col_cols().is_multiple_of(MR)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// The weights `w` (`[c_out, rows]`) as panels of `nr` output channels, each `[rows][nr]`,
/// the last one padded with zero channels.
pub(super) fn pack_weights(w: &[f32], c_out: usize, rows: usize, nr: usize) -> Vec<f32> {
    let panels = c_out.div_ceil(nr);
    let mut out = vec![0f32; panels * rows * nr];
    for (co, wr) in w.chunks_exact(rows).take(c_out).enumerate() {
        let panel = &mut out[(co / nr) * rows * nr..][..rows * nr];
        for (r, &v) in wr.iter().enumerate() {
            panel[r * nr + co % nr] = v;
        }
    }
    out
}

/// Per-thread buffers of [`forward_images`].
#[derive(Default)]
pub(super) struct Scratch {
    /// Input phase planes (or a margin-padded copy of the output gradient).
    pub(super) planes: Vec<f32>,
    /// A packed strip (or the weight gradient's output-gradient strips).
    pub(super) strip: Vec<f32>,
    /// The weight gradient's panel of im2col rows.
    pub(super) panel: Vec<f32>,
    /// The input gradient's phase planes before they are interleaved.
    pub(super) phases: Vec<f32>,
}

/// Where each tap reads in the planes and which pixels it covers.
pub(super) struct Taps {
    /// Stride-phase planes per channel (stride², 1 for a stride-1 convolution).
    phases: usize,
    /// Per tap: (phase plane index, offset of the source from the output pixel's index).
    at: Vec<(usize, isize)>,
    /// Per tap, per output pixel of an image: all ones where the tap has a source, else 0.
    masks: Vec<u32>,
    /// Floats of margin before and after the planes, so that a strip's load never leaves them.
    margin: usize,
}

impl Taps {
    pub(super) fn new(d: &Dims, g: &ConvGeom) -> Self {
        let (k, n) = (g.kernel, d.col_cols());
        let mut at = Vec::with_capacity(k * k);
        let mut masks = vec![0u32; k * k * n];
        let mut reach = 0isize;
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            let (ry, dy) = tap_phase(ki, g);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                let (rx, dx) = tap_phase(kj, g);
                let t = ki * k + kj;
                let off = dy * d.wo as isize + dx;
                reach = reach.max(off.abs());
                at.push((ry * g.stride + rx, off));
                let m = &mut masks[t * n..][..n];
                for oy in oy_lo..oy_hi {
                    m[oy * d.wo + ox_lo..oy * d.wo + ox_hi].fill(u32::MAX);
                }
            }
        }
        Self {
            phases: g.stride * g.stride,
            at,
            masks,
            margin: (reach as usize + MR).next_multiple_of(16),
        }
    }
}

/// `y = conv2d(x, w)` for `cnt` consecutive images of `x` (`[cnt, c_in, h, w]`) into `y`
/// (`[cnt, c_out, ho, wo]`; every element written, so `y` may be uninitialised), with
/// `wp` the weights from [`pack_weights`] in panels of `micro.nr`. Requires [`applies`].
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_images(
    x: &[f32],
    cnt: usize,
    (wp, micro): (&[f32], Micro),
    taps: &Taps,
    d: &Dims,
    g: &ConvGeom,
    y: &mut [std::mem::MaybeUninit<f32>],
    scratch: &mut Scratch,
    epi: Option<Epilogue>,
) {
    let (kk, n) = (g.kernel * g.kernel, d.col_cols());
    let rows = d.c_in * kk;
    let (img, plane) = (d.c_in * d.h * d.w, d.ho * d.wo);
    let nr = micro.nr;
    assert!(x.len() >= cnt * img && y.len() >= cnt * d.c_out * n && wp.len() >= rows * nr);
    // every image's channels as phase planes, one image after the other, with margins
    let (per_img, margin) = (d.c_in * taps.phases * plane, taps.margin);
    split_planes(x, cnt, d, taps.phases, margin, &mut scratch.planes);
    scratch.strip.resize(KC * MR, 0.0);
    let ydst = y.as_mut_ptr().cast::<f32>();
    for k0 in (0..rows).step_by(KC) {
        let kc = KC.min(rows - k0);
        for i in 0..cnt {
            let base = margin + i * per_img;
            for p0 in (0..n).step_by(MR) {
                // SAFETY: applies() checked AVX2; pack_strip reads planes[base + plane index
                // + p0 + off .. + 16] with |off| + 16 <= margin, inside the buffer.
                unsafe {
                    pack_strip(
                        &scratch.planes,
                        base,
                        plane,
                        taps,
                        kk,
                        n,
                        p0,
                        k0,
                        kc,
                        &mut scratch.strip,
                    )
                };
                for (j, panel) in wp.chunks_exact(rows * nr).enumerate() {
                    let co = j * nr;
                    let cols = nr.min(d.c_out - co);
                    // SAFETY: applies() checked FMA, Micro AVX-512 for its wide kernel; the
                    // strip holds kc x 16 floats, the panel rows x nr, and the 16 x `cols`
                    // tile of y is inside image i's output (p0 + 16 <= n, co + cols <= c_out).
                    unsafe {
                        let at = ydst.add((i * d.c_out + co) * n + p0);
                        micro.tile(
                            (cols, kc),
                            at,
                            n,
                            scratch.strip.as_ptr(),
                            panel.as_ptr().add(k0 * nr),
                            k0 > 0,
                        );
                        // the tile is final after the last slice
                        if let (Some(e), true) = (epi, k0 + kc == rows) {
                            for j in 0..cols {
                                e.apply(co + j, at.add(j * n), MR);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every image's channels as `phases` stride-phase planes each (4 for stride 2; for stride 1
/// the channel itself), `c_in * phases` planes of `ho x wo` per image, one image after the
/// other, into `planes`, after `margin` floats and with `margin` floats after.
fn split_planes(
    x: &[f32],
    cnt: usize,
    d: &Dims,
    phases: usize,
    margin: usize,
    planes: &mut Vec<f32>,
) {
    let (img, plane) = (d.c_in * d.h * d.w, d.ho * d.wo);
    let per_img = d.c_in * phases * plane;
    planes.resize(cnt * per_img + 2 * margin, 0.0);
    if phases == 1 {
        planes[margin..][..cnt * img].copy_from_slice(&x[..cnt * img]);
        return;
    }
    for i in 0..cnt {
        for c in 0..d.c_in {
            let xc = &x[i * img + c * d.h * d.w..][..d.h * d.w];
            let dst = &mut planes[margin + i * per_img + c * phases * plane..][..phases * plane];
            to_planes(xc, d, 2, dst);
        }
    }
}

/// `acc_t += (∂/∂w)ᵀ` of `conv2d(x, w)` for `cnt` consecutive images of `x` and of the
/// output gradient `gy` (`[cnt, c_out, ho, wo]`); `acc_t` is `[rows][c_out]` (the transpose
/// of the weight layout, so that the micro-kernel's 16 output channels are contiguous).
/// Requires [`applies`] (and is slower than im2col + gemm unless [`applies_grad_weight`]).
///
/// The sum over pixels is the product's inner dimension, in slices of [`KC`] pixels: per
/// slice, the output gradient is packed into 16-channel strips (`[KC][16]`, a transpose), and
/// each panel of 6 im2col rows is copied from the planes (masked) into a small `[6][KC]`
/// buffer, then multiplied with every strip.
#[allow(clippy::too_many_arguments)]
pub(super) fn grad_weight_images(
    x: &[f32],
    gy: &[f32],
    cnt: usize,
    taps: &Taps,
    d: &Dims,
    g: &ConvGeom,
    acc_t: &mut [f32],
    scratch: &mut Scratch,
) {
    let (kk, n, c_out) = (g.kernel * g.kernel, d.col_cols(), d.c_out);
    let rows = d.c_in * kk;
    let plane = d.ho * d.wo;
    let (per_img, margin) = (d.c_in * taps.phases * plane, taps.margin);
    assert!(
        x.len() >= cnt * d.c_in * d.h * d.w
            && gy.len() >= cnt * c_out * n
            && acc_t.len() >= rows * c_out
    );
    split_planes(x, cnt, d, taps.phases, margin, &mut scratch.planes);
    let strips = c_out.div_ceil(MR);
    let total = cnt * n;
    for q0 in (0..total).step_by(KC) {
        let kc = KC.min(total - q0);
        // output-gradient strips: strip[s][q][ch] = gy[image, 16 s + ch, pixel] (0 past c_out)
        scratch.strip.clear();
        scratch.strip.resize(strips * kc * MR, 0.0);
        for co in 0..c_out {
            let (s_i, ch) = (co / MR, co % MR);
            let st = &mut scratch.strip[s_i * kc * MR..][..kc * MR];
            for_segments(q0, kc, n, |i, p, len, at| {
                let src = &gy[(i * c_out + co) * n + p..][..len];
                for (j, &v) in src.iter().enumerate() {
                    st[(at + j) * MR + ch] = v;
                }
            });
        }
        // panels of `width` im2col rows: 16 for the AVX-512 kernel (transposed to [kc][16]
        // after the copy), else 6 for gemm's, which reads the [6][kc] rows as they are
        let wide = has_avx512();
        let width = if wide { MR } else { NR };
        scratch.panel.resize(width * kc, 0.0);
        if wide {
            scratch.phases.resize(MR * kc, 0.0);
        }
        for r0 in (0..rows).step_by(width) {
            let nr = width.min(rows - r0);
            for jj in 0..width {
                let row = &mut scratch.panel[jj * kc..][..kc];
                if jj >= nr {
                    row.fill(0.0);
                    continue;
                }
                let r = r0 + jj;
                let (c, t) = (r / kk, r % kk);
                let (phase, off) = taps.at[t];
                let mask = &taps.masks[t * n..][..n];
                for_segments(q0, kc, n, |i, p, len, at| {
                    let from = ((margin + i * per_img + (c * taps.phases + phase) * plane + p)
                        as isize
                        + off) as usize;
                    let src = &scratch.planes[from..][..len];
                    for ((o, &v), &m) in row[at..at + len].iter_mut().zip(src).zip(&mask[p..]) {
                        *o = f32::from_bits(v.to_bits() & m);
                    }
                });
            }
            if wide {
                let panel_t = scratch.phases.as_mut_ptr();
                // SAFETY: AVX-512F checked; the panel holds 16 rows of kc floats, panel_t
                // 16 kc floats.
                unsafe { transpose_rows(scratch.panel.as_ptr(), kc, kc, panel_t) };
            }
            for s_i in 0..strips {
                let co = s_i * MR;
                let at = (r0 * c_out + co, MR.min(c_out - co));
                let strip = scratch.strip.as_ptr().wrapping_add(s_i * kc * MR);
                if wide {
                    // SAFETY: AVX-512F checked; the strip holds kc x 16 floats, panel_t
                    // kc x 16, and the tile (16 channels from co, nr rows from r0) of the
                    // [rows][c_out] accumulator lies inside it (partial rows are masked).
                    unsafe {
                        tile16(
                            (at.1, nr, kc),
                            acc_t.as_mut_ptr().add(at.0),
                            c_out,
                            (strip, MR),
                            scratch.phases.as_ptr(),
                            true,
                        )
                    };
                    continue;
                }
                // SAFETY: applies() checked FMA; the strip holds kc x 16 floats, the panel
                // 6 x kc, and the tile (16 channels from co, nr rows from r0) of the
                // [rows][c_out] accumulator lies inside it (partial tiles are clipped).
                unsafe {
                    tile(
                        (at.1, nr, kc),
                        acc_t.as_mut_ptr().add(at.0),
                        c_out,
                        strip,
                        (scratch.panel.as_ptr(), 1, kc),
                        true,
                    );
                }
            }
        }
    }
}

/// Calls `f(image, pixel, len, at)` for each run of one image's pixels in the slice of
/// `kc` pixels from global pixel `q0` (image-major, `n` pixels per image); `at` is the run's
/// position in the slice.
fn for_segments(q0: usize, kc: usize, n: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let mut at = 0;
    while at < kc {
        let q = q0 + at;
        let (i, p) = (q / n, q % n);
        let len = (n - p).min(kc - at);
        f(i, p, len, at);
        at += len;
    }
}

/// Rows `k0..k0 + kc` of the im2col matrix at pixels `p0..p0 + 16` of one image, row after
/// row of 16 floats, from that image's phase planes starting at `planes[base]`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_strip(
    planes: &[f32],
    base: usize,
    plane: usize,
    taps: &Taps,
    kk: usize,
    n: usize,
    p0: usize,
    k0: usize,
    kc: usize,
    strip: &mut [f32],
) {
    debug_assert!(strip.len() >= kc * MR);
    let src = planes.as_ptr();
    let dst = strip.as_mut_ptr();
    for r in 0..kc {
        let k = k0 + r;
        let (c, t) = (k / kk, k % kk);
        let (phase, off) = taps.at[t];
        let from = (base + (c * taps.phases + phase) * plane + p0) as isize + off;
        debug_assert!(from >= 0 && from as usize + MR <= planes.len());
        masked_row(
            src.offset(from),
            taps.masks.as_ptr().add(t * n + p0),
            dst.add(r * MR),
        );
    }
}

/// One micro-kernel call (gemm_f32's 16 x 6 AVX2/FMA kernel): `dst (+)= strip · panel` for
/// an `m x n` tile (`m ≤ 16` pixels or channels, contiguous in `dst`; `n ≤ 6` columns
/// `dst_cs` apart) over `k` steps. `strip` is packed `[k][16]`; the panel's element
/// `(step, column)` is at `panel + step * rhs_rs + column * rhs_cs` and it must hold all 6
/// columns (zero past `n`). With `accumulate` the tile is added to `dst`, else stored (`dst`
/// is not read).
///
/// # Safety
/// The CPU has FMA; `strip` holds `16 k` floats, the panel every element named above, and
/// `dst` the whole `m x n` tile.
#[inline]
pub(super) unsafe fn tile(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_cs: usize,
    strip: *const f32,
    (panel, rhs_rs, rhs_cs): (*const f32, usize, usize),
    accumulate: bool,
) {
    gemm_f32::microkernel::fma::f32::x2x6(
        m,
        n,
        k,
        dst,
        strip,
        panel,
        dst_cs as isize,
        1,
        MR as isize,
        rhs_rs as isize,
        rhs_cs as isize,
        1.0,
        1.0,
        u8::from(accumulate),
        false,
        false,
        false,
        strip,
    );
}

/// `dst[i] = src[i] & mask[i]` for 16 floats (a mask of all ones keeps the value, 0 gives
/// +0.0 whatever `src` holds): one row of a packed strip.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn masked_row(src: *const f32, mask: *const u32, dst: *mut f32) {
    use std::arch::x86_64::*;
    let m = mask.cast::<f32>();
    let lo = _mm256_and_ps(_mm256_loadu_ps(src), _mm256_loadu_ps(m));
    let hi = _mm256_and_ps(_mm256_loadu_ps(src.add(8)), _mm256_loadu_ps(m.add(8)));
    _mm256_storeu_ps(dst, lo);
    _mm256_storeu_ps(dst.add(8), hi);
}

/// `conv2d(x, w)` for a batch of `b` images by [`forward_images`] ([`applies`]), in parallel
/// over groups of images (at least 256 pixels each, so that a weight slice is reused across
/// them).
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
    epi: Option<Epilogue>,
) -> Vec<f32> {
    let (rows, n) = (d.col_rows(g), d.col_cols());
    let img = d.c_in * d.h * d.w;
    let micro = Micro::for_cols(d.c_out);
    let wp = pack_weights(w, d.c_out, rows, micro.nr);
    let taps = Taps::new(d, g);
    let nb = group_size(n).min(b.div_ceil(threads()));
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(nb * d.c_out * n)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (gi, ychunk)| {
                let cnt = ychunk.len() / (d.c_out * n);
                let xg = &x[gi * nb * img..][..cnt * img];
                forward_images(xg, cnt, (&wp, micro), &taps, d, g, ychunk, scratch, epi);
            })
    };
    // SAFETY: the chunks cover the output and forward_images writes every element of each.
    unsafe { filled_vec(b * d.c_out * n, fill) }
}

/// `∂/∂w` of `conv2d(x, w)` for a batch by [`grad_weight_images`] ([`applies`]): each thread sums
/// its share of the images into a transposed (`[rows][c_out]`) accumulator.
pub(super) fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    let (rows, n, c_out) = (d.col_rows(g), d.col_cols(), d.c_out);
    let (img, out) = (d.c_in * d.h * d.w, c_out * n);
    let taps = Taps::new(d, g);
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let nb = group_size(n).min(per);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc_t = vec![0f32; rows * c_out];
            let mut scratch = Scratch::default();
            let (start, end) = (c * per, ((c + 1) * per).min(b));
            for i0 in (start..end).step_by(nb) {
                let cnt = nb.min(end - i0);
                let (xg, gyg) = (&x[i0 * img..][..cnt * img], &gy[i0 * out..][..cnt * out]);
                grad_weight_images(xg, gyg, cnt, &taps, d, g, &mut acc_t, &mut scratch);
            }
            acc_t
        })
        .collect();
    // sum the threads' accumulators, then transpose in 16 x 16 tiles (a plain transpose of a
    // 2 MB accumulator strides 8 KB per store: it took a fifth of the kernel, perf)
    let mut parts = partial.into_iter();
    let mut sum = parts.next().unwrap_or_else(|| vec![0f32; rows * c_out]);
    for p in parts {
        for (o, v) in sum.iter_mut().zip(p) {
            *o += v;
        }
    }
    let mut gw = vec![0f32; c_out * rows];
    const T: usize = 16;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..c_out).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for co in c0..(c0 + T).min(c_out) {
                    gw[co * rows + r] = sum[r * c_out + co];
                }
            }
        }
    }
    gw
}
