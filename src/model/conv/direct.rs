//! Direct stride-1 convolution for few output channels (the decoders' RGB output conv,
//! 16 → 3, 3x3): no im2col.
//!
//! Through im2col that layer wrote and re-read a 144 x 4096 matrix per image (2.4 MB, past
//! the L2 cache) and then ran gemm with 3 output columns, about 32 GFLOP/s. Here each image
//! is copied once into a zero-padded buffer, and every output row is computed in blocks of
//! `PV` vectors x `CO` channels held in registers: per kernel tap, `PV` loads and `CO`
//! broadcasts feed `CO x PV` FMAs.

use super::unfold::Dims;
use super::ConvGeom;

/// Output channels up to which [`conv_rows`] applies.
pub(super) const MAX_OUT: usize = 4;

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
    d.wo.div_ceil(PV * LANES) * PV * LANES + g.kernel - 1
}

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
    // SAFETY: `applies` checked AVX2 and FMA; the asserts bound every index the kernel uses.
    unsafe {
        let f = match d.c_out {
            1 => fma::rows::<1>,
            2 => fma::rows::<2>,
            3 => fma::rows::<3>,
            _ => fma::rows::<4>,
        };
        f(padded, wp, hp, w, d, g.kernel, rows, y, channel_stride);
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use super::{Dims, LANES, PV};
    use std::arch::x86_64::*;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
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
        let kk = k * k;
        let block = PV * LANES;
        let mut out = [[0f32; PV * LANES]; CO];
        for (r, oy) in rows.enumerate() {
            let mut ox = 0;
            while ox < d.wo {
                let mut s = [[_mm256_setzero_ps(); PV]; CO];
                for c in 0..d.c_in {
                    for ky in 0..k {
                        let row = padded.as_ptr().add((c * hp + oy + ky) * wp + ox);
                        for kx in 0..k {
                            let mut v = [_mm256_setzero_ps(); PV];
                            for (j, vj) in v.iter_mut().enumerate() {
                                *vj = _mm256_loadu_ps(row.add(kx + j * LANES));
                            }
                            for (co, sc) in s.iter_mut().enumerate() {
                                let wv = _mm256_set1_ps(
                                    *w.get_unchecked(co * d.c_in * kk + c * kk + ky * k + kx),
                                );
                                for (acc, vj) in sc.iter_mut().zip(&v) {
                                    *acc = _mm256_fmadd_ps(wv, *vj, *acc);
                                }
                            }
                        }
                    }
                }
                let len = block.min(d.wo - ox);
                for (co, sc) in s.iter().enumerate() {
                    for (j, acc) in sc.iter().enumerate() {
                        _mm256_storeu_ps(out[co].as_mut_ptr().add(j * LANES), *acc);
                    }
                    let dst = &mut y[co * channel_stride + r * d.wo + ox..][..len];
                    dst.copy_from_slice(&out[co][..len]);
                }
                ox += block;
            }
        }
    }
}
