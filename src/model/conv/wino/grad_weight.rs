//! The Winograd weight gradient (`wino.rs`): `gw[k] = Σ_o d[o + k] · gy[o]` is, per 2x2
//! tile of `gy`, a 2x2 "output" `k` filtered by the gy tile, so the sum over tiles and images
//! becomes the inner dimension of 9 products `[co, tiles] · [tiles, 4·ci]`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::mm::as_uninit;
use super::{
    filter_tile, forward_kernel, forward_output, group_images, lead, matmul_into, output_tile,
    point_stride, products, threads, transform_input, with_scratch, Dims, Filter, Mat, Tiling,
};
use gemm::Parallelism;

mod by_channels;
use crate::model::activation::filled_vec;
use by_channels::{grad_weight_by_channels, splits_channels};

/// `∂/∂w` of `conv2d(x, w)` given `gy` ([`applies`]), `[c_out, c_in, 4, 4]`.
pub(in crate::model::conv) fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims) -> Vec<f32> {
    let tl = Tiling::strided(d);
    if splits_channels(tl.k(), d.c_out, b * tl.tiles(), d.c_in) {
        return grad_weight_by_channels(x, gy, b, d);
    }
    finish(&partials(x, gy, b, d, None), d)
}

/// `conv2d(x, w)` and its weight gradient given `gy` ([`applies`]) in one pass over the
/// groups of images, each group's transformed input serving the forward's products and then
/// the weight gradient's: a transposed convolution's backward, whose input gradient is the
/// forward of the tensor that its weight gradient reads (the two separately transformed
/// it twice). `None` where the weight gradient splits by channels instead.
pub(in crate::model::conv) fn forward_and_grad_weight(
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    b: usize,
    d: &Dims,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let tl = Tiling::strided(d);
    if splits_channels(tl.k(), d.c_out, b * tl.tiles(), d.c_in) {
        return None;
    }
    let u = forward_kernel(w, d);
    let mut partial = Vec::new();
    let fill = |y: &mut [MaybeUninit<f32>]| partial = partials(x, gy, b, d, Some((&u, y)));
    // SAFETY: the threads' shares cover the output, and forward_output writes every pixel
    // of each group.
    let y = unsafe { filled_vec(b * d.c_out * d.ho * d.wo, fill) };
    Some((y, finish(&partial, d)))
}

/// Each thread's `[9][k][lead(n)]` weight-gradient accumulator over its contiguous share of
/// the images, in groups; with `fwd = (u, y)` also the forward of each group into `y`.
fn partials(
    x: &[f32],
    gy: &[f32],
    b: usize,
    d: &Dims,
    fwd: Option<(&Filter, &mut [MaybeUninit<f32>])>,
) -> Vec<Vec<f32>> {
    let tl = Tiling::strided(d);
    let (k, n, tiles) = (tl.k(), d.c_out, tl.tiles());
    let (img, out) = (d.c_in * d.h * d.w, d.c_out * d.ho * d.wo);
    let per = b.div_ceil(threads().min(b).max(1));
    let parts = b.div_ceil(per.max(1));
    let nb = group_images(tiles, k + n, per);
    let tg = nb * tiles;
    let ldn = lead(n);
    let (u, shares): (_, Vec<Option<&mut [MaybeUninit<f32>]>>) = match fwd {
        Some((u, y)) => {
            assert!(y.len() == b * out);
            (Some(u), y.chunks_mut(per * out).map(Some).collect())
        }
        None => (None, (0..parts).map(|_| None).collect()),
    };
    shares
        .into_par_iter()
        .enumerate()
        .map(|(c, mut share)| {
            // [9][k][ldn], summed over this thread's images
            let mut acc = vec![0f32; 9 * k * ldn];
            with_scratch((9, k, n, tg), |s| {
                let (start, end) = (c * per, ((c + 1) * per).min(b));
                for i0 in (start..end).step_by(nb) {
                    let cnt = nb.min(end - i0);
                    let xg = &x[i0 * img..][..cnt * img];
                    let gyg = &gy[i0 * out..][..cnt * out];
                    let cols = cnt * tiles;
                    transform_input(xg, cnt, &tl, &mut s.v, (tg, 0), &mut s.planes);
                    if let (Some(u), Some(y)) = (u, share.as_deref_mut()) {
                        products(&s.v, u, &mut s.m, k, n, tg, cols);
                        let yg = &mut y[(i0 - start) * out..][..cnt * out];
                        forward_output(&s.m, cnt, d, tg, yg, None);
                    }
                    transform_grad_tiles(gyg, cnt, d, &mut s.m, tg);
                    let (m, v) = (&s.m[..], &s.v[..]);
                    point_products(as_uninit(&mut acc), (m, v), (n, k, cols, tg), true);
                }
            });
            acc
        })
        .collect()
}

/// `[c_out, c_in, 4, 4]` from the threads' accumulators ([`partials`]).
fn finish(partial: &[Vec<f32>], d: &Dims) -> Vec<f32> {
    let k = 4 * d.c_in;
    let ldn = lead(d.c_out);
    // Aᵀ m A per (k, co) of the threads' summed accumulators into gw[co, ci, 2dy + by,
    // 2dx + bx], in parallel over blocks of 16 output channels: each (p, k) row is read 16
    // channels at a time, and each block's 16 x c_in x 16 weights are finished in L1/L2
    let ps = k * ldn;
    const CB: usize = 16;
    let fill = |gw: &mut [MaybeUninit<f32>]| {
        gw.par_chunks_mut(CB * d.c_in * 16)
            .enumerate()
            .for_each(|(blk, gwb)| {
                let co0 = blk * CB;
                let cols = gwb.len() / (d.c_in * 16);
                for kk in 0..k {
                    let (ci, by, bx) = (kk / 4, (kk / 2) % 2, kk % 2);
                    for j in 0..cols {
                        let at = kk * ldn + co0 + j;
                        let mut mt = [0f32; 9];
                        for part in partial {
                            for (p, m) in mt.iter_mut().enumerate() {
                                *m += part[p * ps + at];
                            }
                        }
                        let o = output_tile(mt);
                        let gwo = &mut gwb[(j * d.c_in + ci) * 16..][..16];
                        for (dy, row) in o.iter().enumerate() {
                            for (dx, &val) in row.iter().enumerate() {
                                gwo[(2 * dy + by) * 4 + 2 * dx + bx].write(val);
                            }
                        }
                    }
                }
            })
    };
    // SAFETY: every (co, ci) of each block gets its 4 phases x 4 taps = 16 values.
    unsafe { filled_vec(d.c_out * d.c_in * 16, fill) }
}

/// `gwᵀ[p] (+)= ugᵀ[p] · v[p]ᵀ` for the 9 points: `[n, cols] · [cols, k]` into `acc`
/// (`[9][k][lead(n)]`, column `kk` of point `p` at `(p·k + kk)·lead(n)`), from the
/// transformed output gradient `m` (`[9][tg][lead(n)]`) and input `v` (`[9][k][lead(tg)]`).
/// Without `accumulate`, `acc` may be uninitialised: rows `n..` of its columns stay so.
pub(super) fn point_products(
    acc: &mut [MaybeUninit<f32>],
    (m, v): (&[f32], &[f32]),
    (n, k, cols, tg): (usize, usize, usize, usize),
    accumulate: bool,
) {
    let (ld, ldn) = (lead(tg), lead(n));
    for p in 0..9 {
        let lhs = Mat {
            ptr: m[p * point_stride(tg, ldn)..].as_ptr(),
            rs: 1,
            cs: ldn as isize,
        };
        let rhs = Mat {
            ptr: v[p * point_stride(k, ld)..].as_ptr(),
            rs: 1,
            cs: ld as isize,
        };
        let dst = &mut acc[p * k * ldn..][..k * ldn];
        let layout = Mat {
            ptr: dst.as_ptr().cast(),
            rs: 1,
            cs: ldn as isize,
        };
        matmul_into(
            dst,
            layout,
            n,
            k,
            cols,
            lhs,
            rhs,
            accumulate,
            Parallelism::None,
        );
    }
}

/// G g Gᵀ of the 2x2 tiles of `cnt` images of the output gradient `gy` (`c_out` planes of
/// `ho x wo`) into `u` (`[9][tg][c_out]`: channels contiguous, the weight gradient's
/// products read it as a column-major left operand).
pub(super) fn transform_grad_tiles(gy: &[f32], cnt: usize, d: &Dims, u: &mut [f32], tg: usize) {
    let (th, tw, n) = (d.ho / 2, d.wo / 2, d.c_out);
    let (plane, tiles) = (d.ho * d.wo, th * tw);
    let ldn = lead(n);
    let ps = point_stride(tg, ldn);
    assert!(gy.len() >= cnt * n * plane && u.len() >= 9 * ps && cnt * tiles <= tg);
    // channels in blocks of 16 on AVX-512 (one vector per point and tile), the rest scalar
    #[cfg(target_arch = "x86_64")]
    let vector = if super::super::micro::has_avx512() {
        n / 16 * 16
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let vector = 0;
    for i in 0..cnt {
        let gi = &gy[i * n * plane..][..n * plane];
        #[cfg(target_arch = "x86_64")]
        if vector > 0 {
            // SAFETY: AVX-512F is available; the gathers read pixels of the first `vector`
            // planes of gi (2ty + 1 < ho, 2tx + 1 < wo), the stores write 16 channels from
            // cb < vector <= n at point p, column col < tg of u (asserted above).
            unsafe {
                grad_tiles16(
                    gi,
                    (th, tw, d.wo),
                    vector,
                    (u.as_mut_ptr(), ps, ldn),
                    i * tiles,
                )
            };
        }
        for ty in 0..th {
            for tx in 0..tw {
                let col = i * tiles + ty * tw + tx;
                let px = 2 * ty * d.wo + 2 * tx;
                for (co, s) in gi.chunks_exact(plane).enumerate().skip(vector) {
                    let g = [[s[px], s[px + 1]], [s[px + d.wo], s[px + d.wo + 1]]];
                    let ut = filter_tile(g);
                    for (p, val) in ut.into_iter().enumerate() {
                        u[p * ps + col * ldn + co] = val;
                    }
                }
            }
        }
    }
}

/// [`transform_grad_tiles`] of the first `channels` (a multiple of 16) planes of one image
/// `gi`, 16 channels at a time: the 4 pixels of a tile gathered across the channels' planes,
/// the 9 points stored as whole vectors (channels are contiguous in `u`). The scalar loop
/// wrote one float per point, tile and channel.
///
/// # Safety
/// AVX-512F is available; `gi` holds `channels` planes of `2th x wo` pixels (`2tw <= wo`);
/// `u` is writable at `p·ps + (col0 + t)·ldn + c` for `p < 9`, `t < th·tw`, `c < channels`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_tiles16(
    gi: &[f32],
    (th, tw, wo): (usize, usize, usize),
    channels: usize,
    (u, ps, ldn): (*mut f32, usize, usize),
    col0: usize,
) {
    use std::arch::x86_64::*;
    let plane = 2 * th * wo;
    assert!(channels.is_multiple_of(16) && gi.len() >= channels * plane && 2 * tw <= wo);
    assert!(16 * plane < i32::MAX as usize);
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let idx = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(plane as i32));
    for cb in (0..channels).step_by(16) {
        let base = gi.as_ptr().add(cb * plane);
        for ty in 0..th {
            for tx in 0..tw {
                let p = base.add(2 * ty * wo + 2 * tx);
                let a = _mm512_i32gather_ps::<4>(idx, p.cast());
                let b = _mm512_i32gather_ps::<4>(idx, p.add(1).cast());
                let c = _mm512_i32gather_ps::<4>(idx, p.add(wo).cast());
                let d = _mm512_i32gather_ps::<4>(idx, p.add(wo + 1).cast());
                // G g Gᵀ as filter_tile: a, a + b, b, a + c, a + b + c + d, b + d, c, c + d, d
                let (ac, bd) = (_mm512_add_ps(a, c), _mm512_add_ps(b, d));
                let vals = [
                    a,
                    _mm512_add_ps(a, b),
                    b,
                    ac,
                    _mm512_add_ps(ac, bd),
                    bd,
                    c,
                    _mm512_add_ps(c, d),
                    d,
                ];
                let o = u.add((col0 + ty * tw + tx) * ldn + cb);
                for (pt, v) in vals.into_iter().enumerate() {
                    _mm512_storeu_ps(o.add(pt * ps), v);
                }
            }
        }
    }
}
