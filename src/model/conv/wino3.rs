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
//! The transforms run on rows of tiles, vectorized over the tiles of a row (AVX2, 8 at a
//! time): each padded input row is first split into its even and odd columns, so that the 4
//! columns a tile reads are 4 vectors (even / odd at tile `tx` and `tx + 1`). Layouts as in
//! `wino.rs`: transformed data `[16][channels][lead(tg)]`, tiles contiguous, the 16 points'
//! blocks a little more than their size apart.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use super::kernels::{threads, Epilogue};
use super::mm::Mat;
use super::unfold::Dims;
use super::wino::{lead, point_stride, product};
use super::ConvGeom;
use crate::model::activation::filled_vec;

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
    let d = Dims {
        c_in,
        h,
        w,
        c_out,
        ho: geom.conv_out(h),
        wo: geom.conv_out(w),
    };
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

/// Per-thread buffers: transformed inputs, products (or transformed output gradients), the
/// even / odd split of one padded plane.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    split: Vec<f32>,
}

impl Scratch {
    fn fit(&mut self, k: usize, n: usize, tg: usize) {
        let ld = lead(tg);
        for (buf, len) in [
            (&mut self.v, 16 * point_stride(k, ld)),
            (&mut self.m, 16 * point_stride(n, ld)),
        ] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `f` with this thread's scratch grown to `k`, `n`, `tg` (a fresh one if it is in use).
fn with_scratch<R>(k: usize, n: usize, tg: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            s.fit(k, n, tg);
            f(&mut s)
        }
        Err(_) => {
            let mut s = Scratch::default();
            s.fit(k, n, tg);
            f(&mut s)
        }
    })
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

/// One padded plane split by column parity: `e[R][j]` = padded pixel `(R, 2j)`, `o[R][j]` =
/// `(R, 2j + 1)`, for `R` in `0..h + 2` and `j` in `0..tw + 1` (the padding's positions stay
/// zero: every plane writes the same interior ones).
struct Split<'a> {
    e: &'a mut [f32],
    o: &'a mut [f32],
    /// Floats per row (`tw + 1`).
    rl: usize,
}

impl<'a> Split<'a> {
    fn new(buf: &'a mut Vec<f32>, h: usize, tw: usize) -> Self {
        let rl = tw + 1;
        let len = (h + 2) * rl;
        buf.clear();
        buf.resize(2 * len, 0.0);
        let (e, o) = buf.split_at_mut(len);
        Split { e, o, rl }
    }

    /// Fills the interior from one `h x w` plane: source row `y` is padded row `y + 1`, its
    /// even columns `o[..tw]`, its odd columns `e[1..]`; each value through a leaky ReLU of
    /// slope `pre` (1: unchanged).
    ///
    /// # Safety
    /// AVX2 is available; `src` holds `h · 2·tw` floats for the `h` of [`Split::new`].
    #[target_feature(enable = "avx2")]
    unsafe fn fill(&mut self, src: &[f32], tw: usize, pre: f32) {
        let (vp, one, zero) = (
            _mm256_set1_ps(pre),
            _mm256_set1_ps(1.0),
            _mm256_setzero_ps(),
        );
        // a select, not a branch; exact for pre = 1
        let lk = |v: __m256| {
            _mm256_mul_ps(
                v,
                _mm256_blendv_ps(vp, one, _mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)),
            )
        };
        let lk1 = |v: f32| v * if v > 0.0 { 1.0 } else { pre };
        let w = 2 * tw;
        let h = src.len() / w;
        assert!(self.e.len() >= (h + 2) * self.rl && self.rl == tw + 1);
        for (y, row) in src.chunks_exact(w).enumerate() {
            let r = (y + 1) * self.rl;
            let (e, o) = (&mut self.e[r + 1..][..tw], &mut self.o[r..][..tw]);
            let mut j = 0;
            while j + 8 <= tw {
                let a = lk(_mm256_loadu_ps(row.as_ptr().add(2 * j)));
                let b = lk(_mm256_loadu_ps(row.as_ptr().add(2 * j + 8)));
                // [a0 a2 b0 b2 | a4 a6 b4 b6] → lanes 0 2 1 3: [a0 a2 a4 a6 b0 b2 b4 b6]
                let ev = _mm256_shuffle_ps::<0x88>(a, b);
                let od = _mm256_shuffle_ps::<0xDD>(a, b);
                let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(ev)));
                let od = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(od)));
                _mm256_storeu_ps(o.as_mut_ptr().add(j), ev);
                _mm256_storeu_ps(e.as_mut_ptr().add(j), od);
                j += 8;
            }
            if j + 4 <= tw {
                // one row of 8: [a0 a2 a0 a2 | a4 a6 a4 a6] → lanes 0 2: [a0 a2 a4 a6 …]
                let a = lk(_mm256_loadu_ps(row.as_ptr().add(2 * j)));
                let ev = _mm256_shuffle_ps::<0x88>(a, a);
                let od = _mm256_shuffle_ps::<0xDD>(a, a);
                let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(ev)));
                let od = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(od)));
                _mm_storeu_ps(o.as_mut_ptr().add(j), _mm256_castps256_ps128(ev));
                _mm_storeu_ps(e.as_mut_ptr().add(j), _mm256_castps256_ps128(od));
                j += 4;
            }
            for jj in j..tw {
                o[jj] = lk1(row[2 * jj]);
                e[jj] = lk1(row[2 * jj + 1]);
            }
        }
    }
}

/// Runs `body` over `0..n` in steps of 8, then 4, then 1 lanes: `$j` the first index, `$wd`
/// the width.
macro_rules! lanes {
    ($n:expr, |$j:ident, $wd:ident| $body:block) => {{
        let n = $n;
        let mut $j = 0usize;
        while $j < n {
            let $wd: usize = if $j + 8 <= n {
                8
            } else if $j + 4 <= n {
                4
            } else {
                1
            };
            $body
            $j += $wd;
        }
    }};
}

/// 8, 4 or 1 floats (the width `wd`) in a ymm register: loads, stores and arithmetic that
/// take the same code for the vector body and the tails.
#[derive(Clone, Copy)]
struct V(__m256);

impl V {
    #[inline(always)]
    unsafe fn load(p: *const f32, wd: usize) -> V {
        match wd {
            8 => V(_mm256_loadu_ps(p)),
            4 => V(_mm256_castps128_ps256(_mm_loadu_ps(p))),
            _ => V(_mm256_set1_ps(*p)),
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, wd: usize) {
        match wd {
            8 => _mm256_storeu_ps(p, self.0),
            4 => _mm_storeu_ps(p, _mm256_castps256_ps128(self.0)),
            _ => *p = _mm256_cvtss_f32(self.0),
        }
    }
    #[inline(always)]
    unsafe fn add(self, o: V) -> V {
        V(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: V) -> V {
        V(_mm256_sub_ps(self.0, o.0))
    }
}

/// Bᵀ d B of every tile of one padded plane (split) into the 16 point rows at `dst + p·ps`
/// (`tw` tiles per tile row, `th` tile rows, consecutive).
///
/// # Safety
/// AVX2 is available; `dst + p·ps` has `th·tw` writable floats for each `p < 16`; `s` was
/// made for `th` tile rows of `tw` tiles.
#[target_feature(enable = "avx2")]
unsafe fn transform_plane(s: &Split, th: usize, tw: usize, dst: *mut f32, ps: usize) {
    let rl = s.rl;
    assert!(rl == tw + 1 && s.e.len() >= (2 * th + 2) * rl);
    let (e, o) = (s.e.as_ptr(), s.o.as_ptr());
    for ty in 0..th {
        let r = 2 * ty * rl;
        let out = dst.add(ty * tw);
        lanes!(tw, |j, wd| {
            let ld = |base: *const f32, row: usize, off: usize| {
                V::load(base.add(r + row * rl + j + off), wd)
            };
            // Bᵀ over the 4 rows, per column (even / odd at tiles j and j + 1)
            let mut cols = [[V(_mm256_setzero_ps()); 4]; 4];
            for (c, (base, off)) in [(e, 0), (o, 0), (e, 1), (o, 1)].into_iter().enumerate() {
                let (d0, d1, d2, d3) = (
                    ld(base, 0, off),
                    ld(base, 1, off),
                    ld(base, 2, off),
                    ld(base, 3, off),
                );
                cols[c] = [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)];
            }
            // then B over the 4 columns, per row
            let [e0, o0, e1, o1] = cols;
            let rows = e0.into_iter().zip(o0).zip(e1).zip(o1);
            for (a, (((c0, c1), c2), c3)) in rows.enumerate() {
                let q = out.add(4 * a * ps + j);
                c0.sub(c2).store(q, wd);
                c1.add(c2).store(q.add(ps), wd);
                c2.sub(c1).store(q.add(2 * ps), wd);
                c1.sub(c3).store(q.add(3 * ps), wd);
            }
        });
    }
}

/// A gy Aᵀ of the 2x2 tiles of one `2th x 2tw` plane into the 16 point rows at `dst + p·ps`.
///
/// # Safety
/// AVX2 is available; `g` holds `4·th·tw` floats; `dst + p·ps` has `th·tw` writable floats
/// for each `p < 16`; `split` holds `4·tw` floats.
#[target_feature(enable = "avx2")]
unsafe fn transform_grad_plane(
    g: &[f32],
    th: usize,
    tw: usize,
    dst: *mut f32,
    ps: usize,
    split: &mut [f32],
) {
    let w = 2 * tw;
    assert!(g.len() >= 2 * th * w && split.len() >= 4 * tw);
    for ty in 0..th {
        // even / odd columns of the tile row's two rows: e0, o0, e1, o1
        for r in 0..2 {
            let row = &g[(2 * ty + r) * w..][..w];
            let (e, o) = split[2 * r * tw..][..2 * tw].split_at_mut(tw);
            for j in 0..tw {
                e[j] = row[2 * j];
                o[j] = row[2 * j + 1];
            }
        }
        let sp = split.as_ptr();
        let out = dst.add(ty * tw);
        lanes!(tw, |j, wd| {
            let e0 = V::load(sp.add(j), wd);
            let o0 = V::load(sp.add(tw + j), wd);
            let e1 = V::load(sp.add(2 * tw + j), wd);
            let o1 = V::load(sp.add(3 * tw + j), wd);
            let zero = V(_mm256_setzero_ps());
            // A over rows: h0 = r0, h1 = r0 + r1, h2 = r0 - r1, h3 = -r1 (even, odd)
            let rows = [
                (e0, o0),
                (e0.add(e1), o0.add(o1)),
                (e0.sub(e1), o0.sub(o1)),
                (zero.sub(e1), zero.sub(o1)),
            ];
            for (a, (he, ho)) in rows.into_iter().enumerate() {
                let q = out.add(4 * a * ps + j);
                he.store(q, wd);
                he.add(ho).store(q.add(ps), wd);
                he.sub(ho).store(q.add(2 * ps), wd);
                zero.sub(ho).store(q.add(3 * ps), wd);
            }
        });
    }
}

/// Aᵀ m A of the products of one output plane (16 point rows at `m + p·ps`), with `bias` and
/// `slope`, into `y` (`2th x 2tw`).
///
/// # Safety
/// AVX2 is available; `m + p·ps` has `th·tw` readable floats for each `p < 16`; `y` has
/// `4·th·tw` writable floats.
#[target_feature(enable = "avx2")]
unsafe fn finish_plane(
    m: *const f32,
    ps: usize,
    th: usize,
    tw: usize,
    y: *mut f32,
    bias: f32,
    slope: f32,
) {
    let w = 2 * tw;
    let (vb, vs, zero) = (
        _mm256_set1_ps(bias),
        _mm256_set1_ps(slope),
        _mm256_setzero_ps(),
    );
    let one = _mm256_set1_ps(1.0);
    let act = |v: V| {
        let t = _mm256_add_ps(v.0, vb);
        // a select, not a branch
        let f = _mm256_blendv_ps(vs, one, _mm256_cmp_ps::<_CMP_GT_OQ>(t, zero));
        _mm256_mul_ps(t, f)
    };
    for ty in 0..th {
        let src = m.add(ty * tw);
        let (y0, y1) = (y.add(2 * ty * w), y.add((2 * ty + 1) * w));
        lanes!(tw, |j, wd| {
            let ld = |p: usize| V::load(src.add(p * ps + j), wd);
            // Aᵀ over rows: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (per column b)
            let mut s0 = [V(zero); 4];
            let mut s1 = [V(zero); 4];
            for b in 0..4 {
                let (m0, m1, m2, m3) = (ld(b), ld(4 + b), ld(8 + b), ld(12 + b));
                s0[b] = m0.add(m1).add(m2);
                s1[b] = m1.sub(m2).sub(m3);
            }
            let mut outs = [zero; 4];
            for (k, s) in [s0, s1].into_iter().enumerate() {
                outs[2 * k] = act(s[0].add(s[1]).add(s[2]));
                outs[2 * k + 1] = act(s[1].sub(s[2]).sub(s[3]));
            }
            for (k, dst) in [y0, y1].into_iter().enumerate() {
                let (a, b) = (outs[2 * k], outs[2 * k + 1]);
                // interleaved: a0 b0 a1 b1 …
                let lo = _mm256_unpacklo_ps(a, b);
                let hi = _mm256_unpackhi_ps(a, b);
                match wd {
                    8 => {
                        _mm256_storeu_ps(dst.add(2 * j), _mm256_permute2f128_ps::<0x20>(lo, hi));
                        _mm256_storeu_ps(
                            dst.add(2 * j + 8),
                            _mm256_permute2f128_ps::<0x31>(lo, hi),
                        );
                    }
                    4 => {
                        _mm_storeu_ps(dst.add(2 * j), _mm256_castps256_ps128(lo));
                        _mm_storeu_ps(dst.add(2 * j + 4), _mm256_castps256_ps128(hi));
                    }
                    _ => {
                        *dst.add(2 * j) = _mm256_cvtss_f32(a);
                        *dst.add(2 * j + 1) = _mm256_cvtss_f32(b);
                    }
                }
            }
        });
    }
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

/// The [`Post::Residual`] / [`Post::MaskAdd`] step over one finished plane `y` of `len`
/// values, `res` / `mask` and `add` at the same offsets.
///
/// # Safety
/// AVX2 is available; `y` holds `len` floats; the slices of `post` hold `at + len`.
#[target_feature(enable = "avx2")]
unsafe fn post_plane(y: *mut f32, len: usize, post: Post, at: usize) {
    match post {
        Post::Act(_) => {}
        Post::Residual { res, .. } => {
            let r = res[at..][..len].as_ptr();
            lanes!(len, |j, wd| {
                V::load(y.add(j), wd)
                    .add(V::load(r.add(j), wd))
                    .store(y.add(j), wd);
            });
        }
        Post::MaskAdd { mask, slope, add } => {
            let (mp, ap) = (mask[at..][..len].as_ptr(), add[at..][..len].as_ptr());
            let (vs, one, zero) = (
                _mm256_set1_ps(slope),
                _mm256_set1_ps(1.0),
                _mm256_setzero_ps(),
            );
            lanes!(len, |j, wd| {
                let m = V::load(mp.add(j), wd);
                let f = _mm256_blendv_ps(vs, one, _mm256_cmp_ps::<_CMP_GT_OQ>(m.0, zero));
                V(_mm256_mul_ps(V::load(y.add(j), wd).0, f))
                    .add(V::load(ap.add(j), wd))
                    .store(y.add(j), wd);
            });
        }
    }
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
                with_scratch(k, n, tg, |s| {
                    for (j, chunk) in share.chunks_mut(nb * out).enumerate() {
                        let (i0, cnt) = (c * per + j * nb, chunk.len() / out);
                        let mut split = Split::new(&mut s.split, d.h, tw);
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

/// `∂/∂w` of `conv2d(x, w)` given `gy` ([`applies`]), `[c_out, c_in, 3, 3]`.
pub(super) fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims) -> Vec<f32> {
    grad_weight_with(x, gy, b, d, 1.0)
}

/// `∂/∂w` of `conv2d(leaky(x, pre), w)` given `gy` ([`applies`]; `pre` 1: plain `x`).
pub(super) fn grad_weight_with(x: &[f32], gy: &[f32], b: usize, d: &Dims, pre: f32) -> Vec<f32> {
    let (th, tw) = tiles_of(d);
    let (k, n, tiles) = (d.c_in, d.c_out, th * tw);
    let (img, out) = (k * d.h * d.w, n * d.ho * d.wo);
    assert!(x.len() >= b * img && gy.len() >= b * out);
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let nb = group_images(tiles, k.max(n), per);
    let tg = nb * tiles;
    let ld = lead(tg);
    let (vs, ms) = (point_stride(k, ld), point_stride(n, ld));
    let ldn = lead(n);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            // [16][k][ldn]: (ci, co) at ci·ldn + co, summed over this thread's images
            let mut acc = vec![0f32; 16 * k * ldn];
            with_scratch(k, n, tg, |s| {
                let (start, end) = (c * per, ((c + 1) * per).min(b));
                let mut first = true;
                for i0 in (start..end).step_by(nb) {
                    let cnt = nb.min(end - i0);
                    let mut split = Split::new(&mut s.split, d.h, tw);
                    let vp = s.v.as_mut_ptr();
                    for ci in 0..k {
                        for i in 0..cnt {
                            let plane = &x[((i0 + i) * k + ci) * d.h * d.w..][..d.h * d.w];
                            // SAFETY: as in forward.
                            unsafe {
                                split.fill(plane, tw, pre);
                                transform_plane(&split, th, tw, vp.add(ci * ld + i * tiles), vs);
                            }
                        }
                    }
                    let mut gsplit = vec![0f32; 4 * tw];
                    let mp = s.m.as_mut_ptr();
                    for co in 0..n {
                        for i in 0..cnt {
                            let plane = &gy[((i0 + i) * n + co) * d.ho * d.wo..][..d.ho * d.wo];
                            // SAFETY: AVX2; the plane has 2th x 2tw floats; point p's row for
                            // channel co, image i is inside m (Scratch::fit).
                            unsafe {
                                transform_grad_plane(
                                    plane,
                                    th,
                                    tw,
                                    mp.add(co * ld + i * tiles),
                                    ms,
                                    &mut gsplit,
                                )
                            };
                        }
                    }
                    let cols = cnt * tiles;
                    // acc[p] (+)= ug[p] · v[p]ᵀ: [n, cols] · [cols, k], (co, ci) at ci·ldn + co
                    for p in 0..16 {
                        let lhs = Mat {
                            ptr: s.m[p * ms..].as_ptr(),
                            rs: ld as isize,
                            cs: 1,
                        };
                        let rhs = Mat {
                            ptr: s.v[p * vs..].as_ptr(),
                            rs: 1,
                            cs: ld as isize,
                        };
                        let dst = &mut acc[p * k * ldn..][..k * ldn];
                        product(dst, ldn, (n, k, cols), lhs, rhs, !first);
                    }
                    first = false;
                }
            });
            acc
        })
        .collect();
    let ps = k * ldn;
    let fill = |gw: &mut [MaybeUninit<f32>]| {
        gw.par_chunks_mut(k * 9).enumerate().for_each(|(co, gwc)| {
            for ci in 0..k {
                let at = ci * ldn + co;
                let mut st = [0f32; 16];
                for part in &partial {
                    for (p, v) in st.iter_mut().enumerate() {
                        *v += part[p * ps + at];
                    }
                }
                for (o, val) in gwc[ci * 9..][..9].iter_mut().zip(gradient_tile(st)) {
                    o.write(val);
                }
            }
        })
    };
    // SAFETY: every (co, ci) gets its 9 values.
    unsafe { filled_vec(n * k * 9, fill) }
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
