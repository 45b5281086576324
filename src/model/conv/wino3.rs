//! Winograd F(2x2, 3x3) for the 3x3 stride-1 padding-1 convolutions (the Split-VAE's residual
//! blocks): each 2x2 output tile from a 4x4 tile of the padded input with 16 products where
//! the direct route does 36 (Lavin & Gray 2016), with the transforms
//!
//! ```text
//! Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//! G  = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]          Aᵀ = [1 1 1 0; 0 1 -1 -1]
//! y  = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! Summed over the input channels, the 16 element-wise products become 16 matrix products
//! over the tiles (`[tiles, ci] · [ci, co]`) on the AVX-512 kernel of `wide.rs` (or gemm's).
//!
//! - Forward: input transform → 16 products → output transform (bias and leaky ReLU fused).
//! - Input gradient: the forward of `gy` with the flipped, transposed kernel (`kernels.rs`
//!   routes it here: a 3x3 padding-1 convolution's adjoint is one).
//! - Weight gradient: the adjoint of the forward in `g`,
//!   `gw = Gᵀ [ Σ_tiles (A gy Aᵀ) ⊙ (Bᵀ d B) ] G`, so the sum over tiles and images is the
//!   inner dimension of 16 products `[co, tiles] · [tiles, ci]`.
//!
//! The transforms (`wino3/tiles.rs`) run on rows of tiles, vectorized over the tiles of a row
//! (AVX2); the weight gradient is in `wino3/grad_weight.rs`. Layouts as in
//! `wino.rs`: transformed data `[16][channels][lead(tg)]`, tiles contiguous, the 16 points'
//! blocks a little more than their size apart.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::kernels::{threads, Epilogue};
use super::mm::Mat;
use super::unfold::Dims;
use super::wino::{lead, point_stride, product, with_scratch};
use super::ConvGeom;
use crate::model::activation::filled_vec;

mod grad_weight;
mod tiles;
pub(super) use grad_weight::{grad_weight, grad_weight_with};
use tiles::{finish_plane, post_plane, transform_plane, Split};

/// Fewest input and output channels for which the Winograd route runs: with shorter
/// products, the transforms cost more than the multiplications saved.
const MIN_CHANNELS: usize = 32;

/// Transformed floats per point and group, at most (`channels · tiles`; 2 x 16 x 64 KB for
/// the transformed input and the products). Best-of-15 fwd+bwd, batch 64, on a Xeon with
/// AVX-512 and 2 MB of L2 per core: 8192 → 16384 took 128 channels at 8x8 from 15.5-15.8 to
/// 13.5-14.2 ms and 64 at 16x16 from 13.5-13.7 to 12.6-12.8 (packing the transformed
/// kernel less often), 32 at 32x32 unchanged at 16.8; 32768 was slower at 32 and 64
/// channels (20.9 and 14.9 ms).
const GROUP_FLOATS: usize = 16384;

/// 0: not yet read from the environment, 1: on, 2: off.
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether 3x3 stride-1 convolutions with enough channels run on Winograd F(2x2, 3x3): on
/// where AVX2 + FMA are available, unless `LATENT_ATLAS_NO_WINOGRAD3` is set or
/// [`set_winograd3`] turned it off.
pub fn winograd3_enabled() -> bool {
    let on = match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("LATENT_ATLAS_NO_WINOGRAD3").is_none();
            STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        s => s == 1,
    };
    on && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Turns the Winograd F(2x2, 3x3) kernels for 3x3 stride-1 convolutions (`conv/wino3.rs`)
/// on or off for this process (on by default; `LATENT_ATLAS_NO_WINOGRAD3` in the environment
/// turns them off).
pub fn set_winograd3(on: bool) {
    STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the kernels here compute this convolution: 3x3, stride 1, padding 1, even sides,
/// at least [`MIN_CHANNELS`] input and output channels.
pub(super) fn applies(d: &Dims, g: &ConvGeom) -> bool {
    g.kernel == 3
        && g.stride == 1
        && g.padding == 1
        && d.h.is_multiple_of(2)
        && d.w.is_multiple_of(2)
        && d.h >= 2
        && d.w >= 2
        && d.ho == d.h
        && d.wo == d.w
        && d.c_in >= MIN_CHANNELS
        && d.c_out >= MIN_CHANNELS
        && winograd3_enabled()
}

/// Whether a convolution of `batch` images of `c_in` x `h` x `w` into `c_out` channels runs
/// on the kernels here (benchmarks and tests name the route they time or check).
pub fn winograd3_applies(
    batch: usize,
    c_in: usize,
    (h, w): (usize, usize),
    c_out: usize,
    geom: ConvGeom,
) -> bool {
    let d = Dims::of(c_in, (h, w), c_out, &geom);
    batch >= threads() && applies(&d, &geom)
}

/// Tiles per axis of an image.
fn tiles_of(d: &Dims) -> (usize, usize) {
    (d.h / 2, d.w / 2)
}

/// Images per group: as many as keep `channels · tiles` within [`GROUP_FLOATS`], at least
/// one, at most `per` (a thread's share).
fn group_images(tiles: usize, channels: usize, per: usize) -> usize {
    (GROUP_FLOATS / (tiles * channels).max(1)).clamp(1, per.max(1))
}

/// G g Gᵀ of a 3x3 kernel `g` (row-major), as 16 values `p = 4·row + col`.
#[inline(always)]
fn filter_tile(g: &[f32]) -> [f32; 16] {
    let row = |r: [f32; 3]| {
        let s = 0.5 * (r[0] + r[2]);
        let h = 0.5 * r[1];
        [r[0], s + h, s - h, r[2]]
    };
    let q = [
        row([g[0], g[1], g[2]]),
        row([g[3], g[4], g[5]]),
        row([g[6], g[7], g[8]]),
    ];
    let mut out = [0f32; 16];
    for b in 0..4 {
        let s = 0.5 * (q[0][b] + q[2][b]);
        let h = 0.5 * q[1][b];
        out[b] = q[0][b];
        out[4 + b] = s + h;
        out[8 + b] = s - h;
        out[12 + b] = q[2][b];
    }
    out
}

/// Gᵀ s G of 16 values `p = 4·row + col`: the 3x3 kernel (row-major).
#[inline(always)]
fn gradient_tile(s: [f32; 16]) -> [f32; 9] {
    let col = |r: [f32; 4]| {
        let h = 0.5 * (r[1] + r[2]);
        [r[0] + h, 0.5 * (r[1] - r[2]), h + r[3]]
    };
    let row = |a: usize| [s[4 * a], s[4 * a + 1], s[4 * a + 2], s[4 * a + 3]];
    let (s0, s1, s2, s3) = (row(0), row(1), row(2), row(3));
    let mut t = [[0f32; 4]; 3];
    for b in 0..4 {
        let h = 0.5 * (s1[b] + s2[b]);
        t[0][b] = s0[b] + h;
        t[1][b] = 0.5 * (s1[b] - s2[b]);
        t[2][b] = h + s3[b];
    }
    let (a, b, c) = (col(t[0]), col(t[1]), col(t[2]));
    [a[0], a[1], a[2], b[0], b[1], b[2], c[0], c[1], c[2]]
}

/// The forward's transformed kernel `[16][c_in][c_out]` (each point's `c_in x c_out` block
/// contiguous: the products pack it row after row; with the points interleaved, the rows of
/// one point were `16·c_out` floats apart, a multiple of 4 KB at 64 outputs and up, and all
/// fell into one L1 set).
fn forward_filter(w: &[f32], c_in: usize, c_out: usize) -> Vec<f32> {
    let (k, n) = (c_in, c_out);
    let mut u = vec![0f32; 16 * k * n];
    for co in 0..n {
        for ci in 0..k {
            let ut = filter_tile(&w[(co * k + ci) * 9..][..9]);
            for (p, val) in ut.into_iter().enumerate() {
                u[(p * k + ci) * n + co] = val;
            }
        }
    }
    u
}

/// What the forward does to each finished output value `y` (channel `c`, at flat index `i`
/// of the output).
#[derive(Clone, Copy)]
pub(super) enum Post<'a> {
    /// `leaky(y + bias[c])` ([`Epilogue`]), or nothing.
    Act(Option<Epilogue<'a>>),
    /// `y + bias[c] + res[i]`: a residual block's output.
    Residual { bias: &'a [f32], res: &'a [f32] },
    /// `y · leaky′(mask[i]) + add[i]`: a residual block's input gradient (the conv's input
    /// gradient through the leaky ReLU at `mask`, plus the skip connection's `add`).
    MaskAdd {
        mask: &'a [f32],
        slope: f32,
        add: &'a [f32],
    },
}

/// `conv2d(x, w)` ([`applies`]) with `epi` applied to the output.
pub(super) fn forward(x: &[f32], w: &[f32], b: usize, d: &Dims, epi: Option<Epilogue>) -> Vec<f32> {
    forward_with(x, w, b, d, 1.0, Post::Act(epi))
}

/// `conv2d(leaky(x, pre), w)` ([`applies`]; `pre` 1: plain `x`) with `post` applied to the
/// output.
pub(super) fn forward_with(
    x: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    pre: f32,
    post: Post,
) -> Vec<f32> {
    let u = forward_filter(w, d.c_in, d.c_out);
    let (th, tw) = tiles_of(d);
    let (k, n, tiles) = (d.c_in, d.c_out, th * tw);
    let (img, out) = (k * d.h * d.w, n * d.ho * d.wo);
    assert!(x.len() >= b * img && w.len() >= n * k * 9);
    match post {
        Post::Act(_) => {}
        Post::Residual { bias, res } => assert!(bias.len() >= n && res.len() >= b * out),
        Post::MaskAdd { mask, add, .. } => assert!(mask.len() >= b * out && add.len() >= b * out),
    }
    let per = b.div_ceil(threads().min(b).max(1));
    let nb = group_images(tiles, k.max(n), per);
    let tg = nb * tiles;
    let ld = lead(tg);
    let (vs, ms) = (point_stride(k, ld), point_stride(n, ld));
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(per * out)
            .enumerate()
            .for_each(|(c, share)| {
                with_scratch((16, k, n, tg), |s| {
                    for (j, chunk) in share.chunks_mut(nb * out).enumerate() {
                        let (i0, cnt) = (c * per + j * nb, chunk.len() / out);
                        let mut split = Split::new(&mut s.planes[0], d.h, tw);
                        let vp = s.v.as_mut_ptr();
                        for ci in 0..k {
                            for i in 0..cnt {
                                let plane = &x[((i0 + i) * k + ci) * d.h * d.w..][..d.h * d.w];
                                // SAFETY: AVX2 (applies); the plane has h x 2tw floats, and point
                                // p's row for channel ci, image i is inside v (Scratch::fit).
                                unsafe {
                                    split.fill(plane, tw, pre);
                                    transform_plane(
                                        &split,
                                        th,
                                        tw,
                                        vp.add(ci * ld + i * tiles),
                                        vs,
                                    );
                                }
                            }
                        }
                        let cols = cnt * tiles;
                        for p in 0..16 {
                            let lhs = Mat {
                                ptr: s.v[p * vs..].as_ptr(),
                                rs: 1,
                                cs: ld as isize,
                            };
                            let rhs = Mat {
                                ptr: u[p * k * n..].as_ptr(),
                                rs: n as isize,
                                cs: 1,
                            };
                            product(
                                &mut s.m[p * ms..][..n * ld],
                                ld,
                                (cols, n, k),
                                lhs,
                                rhs,
                                false,
                            );
                        }
                        let plane = d.ho * d.wo;
                        for co in 0..n {
                            let (bias, slope) = match post {
                                Post::Act(Some(e)) => (e.bias[co], e.slope),
                                Post::Residual { bias, .. } => (bias[co], 1.0),
                                _ => (0.0, 1.0),
                            };
                            for i in 0..cnt {
                                let yo = chunk[(i * n + co) * plane..][..plane]
                                    .as_mut_ptr()
                                    .cast::<f32>();
                                // SAFETY: AVX2; point p of tile t is at p·ms + co·ld + i·tiles + t,
                                // inside m; the plane holds 4·th·tw floats; post's slices
                                // have the output's length (asserted).
                                unsafe {
                                    finish_plane(
                                        s.m.as_ptr().add(co * ld + i * tiles),
                                        ms,
                                        th,
                                        tw,
                                        yo,
                                        bias,
                                        slope,
                                    );
                                    post_plane(yo, plane, post, ((i0 + i) * n + co) * plane);
                                };
                            }
                        }
                    }
                })
            })
    };
    // SAFETY: the groups cover the output, and finish_plane writes every pixel of each plane.
    unsafe { filled_vec(b * out, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms against the direct sums on one tile: filter, input, output, and the
    /// weight gradient's adjoint.
    #[test]
    fn tile_transforms_match_direct_sums() {
        let g: Vec<f32> = (0..9).map(|i| (i as f32 * 0.37).sin()).collect();
        let d: Vec<f32> = (0..16).map(|i| (i as f32 * 0.71).cos()).collect();
        // V = Bᵀ d B directly
        let bt = [
            [1., 0., -1., 0.],
            [0., 1., 1., 0.],
            [0., -1., 1., 0.],
            [0., 1., 0., -1.],
        ];
        let mut v = [0f32; 16];
        for a in 0..4 {
            for c in 0..4 {
                for r in 0..4 {
                    for s in 0..4 {
                        v[4 * a + c] += bt[a][r] * d[4 * r + s] * bt[c][s];
                    }
                }
            }
        }
        let u = filter_tile(&g);
        let m: Vec<f32> = (0..16).map(|p| u[p] * v[p]).collect();
        let at = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
        for oy in 0..2 {
            for ox in 0..2 {
                let mut y = 0f32;
                for r in 0..4 {
                    for s in 0..4 {
                        y += at[oy][r] * m[4 * r + s] * at[ox][s];
                    }
                }
                let mut want = 0f32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        want += d[4 * (oy + ky) + ox + kx] * g[3 * ky + kx];
                    }
                }
                assert!((y - want).abs() < 1e-5, "y[{oy}][{ox}] {y} vs {want}");
            }
        }
        // gw = Gᵀ [(A gy Aᵀ) ⊙ V] G against Σ_o d[o + k] gy[o]
        let gy = [0.3f32, -1.2, 0.8, 0.45];
        let mut agy = [0f32; 16];
        for a in 0..4 {
            for c in 0..4 {
                for r in 0..2 {
                    for s in 0..2 {
                        agy[4 * a + c] += at[r][a] * gy[2 * r + s] * at[s][c];
                    }
                }
            }
        }
        let st: [f32; 16] = std::array::from_fn(|p| agy[p] * v[p]);
        let gw = gradient_tile(st);
        for ky in 0..3 {
            for kx in 0..3 {
                let mut want = 0f32;
                for oy in 0..2 {
                    for ox in 0..2 {
                        want += d[4 * (oy + ky) + ox + kx] * gy[2 * oy + ox];
                    }
                }
                assert!((gw[3 * ky + kx] - want).abs() < 1e-5, "gw[{ky}][{kx}]");
            }
        }
    }
}
