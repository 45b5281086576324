//! Direct stride-1 convolution for few output channels (the decoders' RGB output conv,
//! 16 → 3, 3x3, and the Split-VAE's 16 → 7): no im2col.
//!
//! Through im2col that layer wrote and re-read a 144 x 4096 matrix per image (2.4 MB, past
//! the L2 cache) and then ran gemm with 3 output columns, about 32 GFLOP/s. Here each image
//! is copied once into a zero-padded buffer, and every output row is computed in blocks of
//! `PV` vectors x `CO` channels held in registers: per kernel tap, `PV` loads and `CO`
//! broadcasts feed `CO x PV` FMAs.

use rayon::prelude::*;

use super::kernels::{sum_partials, threads};
use super::unfold::Dims;
use super::ConvGeom;

/// Output channels up to which [`conv_rows`] applies: two groups of [`GROUP`] (the
/// Split-VAE's 16 → 7 output conv at 64x64, batch 64: 13.2 ms by im2col + gemm with 7
/// columns).
pub(super) const MAX_OUT: usize = 8;
/// Output channels per pass of the AVX2 kernel: `GROUP x PV` accumulators, `PV` loads and one
/// broadcast fill the 16 AVX2 registers (the AVX-512 kernel takes all [`MAX_OUT`] at once).
const GROUP: usize = 4;

/// Whether this kernel runs `g` with `d` on this CPU (stride 1, at most [`MAX_OUT`] outputs,
/// AVX2 and FMA).
pub(super) fn applies(d: &Dims, g: &ConvGeom) -> bool {
    g.stride == 1 && d.c_out <= MAX_OUT && d.c_out > 0 && g.padding < g.kernel && has_fma()
}

fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Lanes per vector and vectors per block: a block is `PV * 8` output pixels of one row.
const LANES: usize = 8;
const PV: usize = 3;

/// Row length of the padded copy: every block's loads stay inside it.
fn padded_width(d: &Dims, g: &ConvGeom) -> usize {
    let block = block_pixels();
    d.wo.div_ceil(block) * block + g.kernel - 1
}

/// Whether the AVX-512 kernel runs (our AVX-512 kernels are on): all of up to 8 output
/// channels in one pass, 32 pixels per block.
fn wide() -> bool {
    super::avx512_kernels_enabled()
}

/// Output pixels per block of the kernel that runs.
fn block_pixels() -> usize {
    if wide() {
        WIDE_BLOCK
    } else {
        PV * LANES
    }
}

/// Pixels per block of the AVX-512 kernel (2 vectors of 16).
const WIDE_BLOCK: usize = 32;

/// Copies one image (`[c_in, h, w]`) into `buf` with `padding` zeros on every side (and on
/// the right up to [`padded_width`]); returns the padded row length.
pub(super) fn pad_image(x: &[f32], d: &Dims, g: &ConvGeom, buf: &mut Vec<f32>) -> usize {
    let (p, wp) = (g.padding, padded_width(d, g));
    let hp = d.h + 2 * p;
    buf.clear();
    buf.resize(d.c_in * hp * wp, 0.0);
    for c in 0..d.c_in {
        for iy in 0..d.h {
            let src = &x[(c * d.h + iy) * d.w..][..d.w];
            buf[(c * hp + iy + p) * wp + p..][..d.w].copy_from_slice(src);
        }
    }
    wp
}

/// Output rows `oy0..oy1` of one image: `y[co, oy, ox] = Σ w[co, c, ky, kx] ·
/// padded[c, oy + ky, ox + kx]`, written into `y_rows` (`[c_out, oy1 - oy0, wo]`, the rows of
/// every channel for this range: `y_rows[co]` starts at `co * stride`). `padded` comes from
/// [`pad_image`]. Requires [`applies`].
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_rows(
    padded: &[f32],
    wp: usize,
    w: &[f32],
    d: &Dims,
    g: &ConvGeom,
    rows: std::ops::Range<usize>,
    y: &mut [f32],
    channel_stride: usize,
) {
    assert!(applies(d, g));
    let hp = d.h + 2 * g.padding;
    assert!(padded.len() >= d.c_in * hp * wp && w.len() >= d.c_out * d.c_in * g.kernel.pow(2));
    assert!(rows.end <= d.ho && wp >= padded_width(d, g));
    assert!(y.len() >= (d.c_out - 1) * channel_stride + rows.len() * d.wo);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` checked AVX2 and FMA, `wide` AVX-512F for its kernel; the asserts
    // bound every index the kernels use (the padded rows cover whole blocks).
    unsafe {
        // groups of at most GROUP output channels (their accumulators fill the registers; all
        // 8 at once with AVX-512's 32 registers), each a pass over the padded image
        let per_channel = d.c_in * g.kernel * g.kernel;
        let group = if wide() { MAX_OUT } else { GROUP };
        let mut c0 = 0;
        while c0 < d.c_out {
            let cnt = group.min(d.c_out - c0);
            type Rows = unsafe fn(
                &[f32],
                usize,
                usize,
                &[f32],
                &Dims,
                usize,
                std::ops::Range<usize>,
                &mut [f32],
                usize,
            );
            let f: Rows = match (wide(), cnt) {
                (true, 1) => avx512::rows::<1>,
                (true, 2) => avx512::rows::<2>,
                (true, 3) => avx512::rows::<3>,
                (true, 4) => avx512::rows::<4>,
                (true, 5) => avx512::rows::<5>,
                (true, 6) => avx512::rows::<6>,
                (true, 7) => avx512::rows::<7>,
                (true, _) => avx512::rows::<8>,
                (false, 1) => fma::rows::<1>,
                (false, 2) => fma::rows::<2>,
                (false, 3) => fma::rows::<3>,
                (false, _) => fma::rows::<4>,
            };
            let wg = &w[c0 * per_channel..];
            let yg = &mut y[c0 * channel_stride..];
            f(
                padded,
                wp,
                hp,
                wg,
                d,
                g.kernel,
                rows.clone(),
                yg,
                channel_stride,
            );
            c0 += cnt;
        }
    }
}

/// One kernel body for both instruction sets: for each block of `PV` vectors of `LANES`
/// output pixels of a row, `CO x PV` accumulators over every input channel and tap (per tap,
/// `PV` loads and one broadcast per output channel), stored through a small buffer so that a
/// partial last block writes only its pixels. Both sum in the same order, so give the same
/// bits.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_kernel {
    ($feature:literal, $lanes:expr, $pv:expr, $zero:ident, $load:ident, $set1:ident,
     $fmadd:ident, $store:ident) => {
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn rows<const CO: usize>(
            padded: &[f32],
            wp: usize,
            hp: usize,
            w: &[f32],
            d: &Dims,
            k: usize,
            rows: std::ops::Range<usize>,
            y: &mut [f32],
            channel_stride: usize,
        ) {
            const LANES: usize = $lanes;
            const PV: usize = $pv;
            let kk = k * k;
            let block = PV * LANES;
            let mut out = [[0f32; PV * LANES]; CO];
            for (r, oy) in rows.enumerate() {
                let mut ox = 0;
                while ox < d.wo {
                    let mut s = [[$zero(); PV]; CO];
                    for c in 0..d.c_in {
                        for ky in 0..k {
                            let row = padded.as_ptr().add((c * hp + oy + ky) * wp + ox);
                            for kx in 0..k {
                                let mut v = [$zero(); PV];
                                for (j, vj) in v.iter_mut().enumerate() {
                                    *vj = $load(row.add(kx + j * LANES));
                                }
                                for (co, sc) in s.iter_mut().enumerate() {
                                    let wv = $set1(
                                        *w.get_unchecked(co * d.c_in * kk + c * kk + ky * k + kx),
                                    );
                                    for (acc, vj) in sc.iter_mut().zip(&v) {
                                        *acc = $fmadd(wv, *vj, *acc);
                                    }
                                }
                            }
                        }
                    }
                    let len = block.min(d.wo - ox);
                    for (co, sc) in s.iter().enumerate() {
                        for (j, acc) in sc.iter().enumerate() {
                            $store(out[co].as_mut_ptr().add(j * LANES), *acc);
                        }
                        let dst = &mut y[co * channel_stride + r * d.wo + ox..][..len];
                        dst.copy_from_slice(&out[co][..len]);
                    }
                    ox += block;
                }
            }
        }
    };
}

/// AVX2 + FMA: 3 vectors of 8 pixels, up to 4 output channels per pass.
#[cfg(target_arch = "x86_64")]
mod fma {
    use super::Dims;
    use std::arch::x86_64::*;
    rows_kernel!(
        "avx2,fma",
        super::LANES,
        super::PV,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );
}

/// AVX-512F: 2 vectors of 16 pixels (`WIDE_BLOCK`), up to 8 output channels (16
/// accumulators of the 32 registers) in one pass.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Dims;
    use std::arch::x86_64::*;
    rows_kernel!(
        "avx512f",
        16,
        super::WIDE_BLOCK / 16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
}

/// A batch's forward by [`conv_rows`] (requires [`applies`]): in parallel over images, or
/// over bands of output rows when there are fewer images than threads.
pub(super) fn forward(x: &[f32], w: &[f32], b: usize, d: &Dims, g: &ConvGeom, y: &mut [f32]) {
    let (img, n) = (d.c_in * d.h * d.w, d.col_cols());
    if b >= threads() {
        y.par_chunks_mut(d.c_out * n)
            .enumerate()
            .for_each_init(Vec::new, |buf, (i, yb)| {
                let wp = pad_image(&x[i * img..][..img], d, g, buf);
                conv_rows(buf, wp, w, d, g, 0..d.ho, yb, n);
            });
        return;
    }
    let band = d.ho.div_ceil(threads()).max(1);
    let mut buf = Vec::new();
    for (i, yb) in y.chunks_mut(d.c_out * n).enumerate() {
        let wp = pad_image(&x[i * img..][..img], d, g, &mut buf);
        let padded = &buf[..];
        // each band into its own [c_out, rows, wo] block, then copied into place
        let bands: Vec<(usize, Vec<f32>)> = (0..d.ho.div_ceil(band))
            .into_par_iter()
            .map(|j| {
                let r = j * band..((j + 1) * band).min(d.ho);
                let stride = r.len() * d.wo;
                let mut out = vec![0f32; d.c_out * stride];
                conv_rows(padded, wp, w, d, g, r.clone(), &mut out, stride);
                (r.start, out)
            })
            .collect();
        for (start, out) in bands {
            let stride = out.len() / d.c_out;
            for (co, part) in out.chunks(stride).enumerate() {
                yb[co * n + start * d.wo..][..stride].copy_from_slice(part);
            }
        }
    }
}

/// Whether [`grad_weight`] computes this convolution's weight gradient: the shapes of
/// [`applies`] with a 3x3 kernel.
pub(super) fn applies_grad_weight(d: &Dims, g: &ConvGeom) -> bool {
    applies(d, g) && g.kernel == 3
}

/// `∂/∂w` (`[c_out, c_in, 3, 3]`) of a stride-1 3x3 convolution with few output channels
/// ([`applies_grad_weight`]) without im2col: each image is zero-padded once (rows `w + 2p`
/// long) and each output-gradient row copied into a row of the same length whose tail is
/// zero; then tap `(ky, kx)` of channel `ci` is one long dot product of the padded gradient
/// with the padded channel read from row `ky`, column `kx` on (the zero tails cancel the
/// wrapped reads). Per image: 2.4 MB of im2col columns at 64x64 with 16 channels, written
/// and read back, avoided. Images in parallel, one accumulator per thread.
pub(super) fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims, g: &ConvGeom) -> Vec<f32> {
    assert!(applies_grad_weight(d, g));
    let p = g.padding;
    let (hp, wp) = (d.h + 2 * p, d.w + 2 * p);
    // stride 1, kernel 3: ho = hp - 2, wo = wp - 2
    let n = d.ho * wp;
    let rows = d.c_in * 9;
    let (img, out) = (d.c_in * d.h * d.w, d.c_out * d.ho * d.wo);
    assert!(x.len() >= b * img && gy.len() >= b * out);
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; d.c_out * rows];
            // 2 floats past the last padded plane: the shift-2 reads of its last band
            let mut xp = vec![0f32; d.c_in * hp * wp + 2];
            let mut gp = vec![0f32; d.c_out * n];
            let mut a3 = [0f32; 12];
            for i in c * per..((c + 1) * per).min(b) {
                // interiors only: the borders and tails stay zero from the allocation
                for ci in 0..d.c_in {
                    for iy in 0..d.h {
                        let src = &x[i * img + (ci * d.h + iy) * d.w..][..d.w];
                        xp[(ci * hp + iy + p) * wp + p..][..d.w].copy_from_slice(src);
                    }
                }
                for co in 0..d.c_out {
                    for oy in 0..d.ho {
                        let src = &gy[i * out + (co * d.ho + oy) * d.wo..][..d.wo];
                        gp[co * n + oy * wp..][..d.wo].copy_from_slice(src);
                    }
                }
                for co0 in (0..d.c_out).step_by(4) {
                    let cnt = 4.min(d.c_out - co0);
                    for ci in 0..d.c_in {
                        for ky in 0..3 {
                            a3.fill(0.0);
                            let band = &xp[(ci * hp + ky) * wp..];
                            super::dot::shifted_dots3(&gp[co0 * n..], band, cnt, n, &mut a3);
                            for a in 0..cnt {
                                let dst = &mut acc[(co0 + a) * rows + ci * 9 + ky * 3..][..3];
                                for (o, v) in dst.iter_mut().zip(&a3[a * 3..a * 3 + 3]) {
                                    *o += v;
                                }
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    sum_partials(partial, d.c_out * rows)
}
