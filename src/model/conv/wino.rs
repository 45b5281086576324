//! Winograd F(2x2, 2x2) for the 4x4 stride-2 padding-1 convolutions of the conv models: the
//! same results (to rounding) with 9 products where the direct route does 16.
//!
//! A 4x4 stride-2 convolution with padding 1 is a 2x2 stride-1 convolution on the
//! space-to-depth view of the padded input: output pixel `o` reads padded input rows
//! `2o + ky`, and writing `ky = 2·dy + by` these are rows `2(o + dy) + by`, i.e. tap `dy` of a
//! 2x2 kernel over the `by` phase plane. The phase planes (4 per channel, side `ho + 1`) are
//! the input channels `k = 4·ci + 2·by + bx` of that 2x2 convolution. Each 2x2 tile of its
//! output is then computed from a 3x3 tile of the planes by Winograd's minimal filtering
//! (Lavin & Gray 2016) with the transforms
//!
//! ```text
//! Bᵀ = [1 -1 0; 0 1 0; 0 -1 1]    G = [1 0; 1 1; 0 1]    Aᵀ = [1 1 0; 0 1 1]
//! y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A
//! ```
//!
//! (only additions, so no growth of rounding error beyond a factor of a few). Summed over the
//! input channels, the 9 element-wise products become 9 matrix products over the tiles
//! (`[tiles, 4·ci] · [4·ci, co]`): 9 multiply-adds per tile and channel pair instead of 16, a
//! 1.78x smaller product than the implicit-gemm route's.
//!
//! The same identity gives the weight gradient: `gw[k] = Σ_o d[o + k] · gy[o]` is, per 2x2
//! tile of `gy`, a 2x2 "output" `k` filtered by the gy tile (the same transforms with gy in
//! the filter's place), and the sum over tiles and images becomes the inner dimension of 9
//! products `[co, tiles] · [tiles, 4·ci]`.
//!
//! The input gradient (a transposed convolution's forward) stays on `phases.rs`: as a
//! Winograd convolution of the padded output gradient its `ho + 1` phase rows do not fill
//! whole tiles (the 4x4 → 8x8 layer computes 3x3 tiles for 5x5 rows), and a first version
//! ran 1.3-2.7x slower than the phase kernel at every VAE layer (example harness, batch 64;
//! before the layout fixes below).
//!
//! Data layouts: the transformed inputs `v` are `[9][4·ci][tiles]` (tiles contiguous, a
//! column-major left operand), written channel by channel so that each line is finished in L1;
//! the 9 points' blocks are 32 floats further apart than their size, since blocks whose size
//! is a multiple of 4 KB put the 9 streams of a tile transform into one L1 set (the 32 → 64
//! layer's input transform: 5.5 → 2.9 thread-ms per batch).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::kernels::{threads, Epilogue};
use super::mm::{matmul_into, Mat};
use super::unfold::Dims;
use super::ConvGeom;
use crate::model::activation::filled_vec;

#[cfg(target_arch = "x86_64")]
mod filters;
#[cfg(target_arch = "x86_64")]
mod grad_input;
mod grad_weight;
#[cfg(target_arch = "x86_64")]
pub(super) use grad_input::{applies_grad_input, grad_input};
pub(super) use grad_weight::{forward_and_grad_weight, grad_weight};
mod scratch;
pub(in crate::model::conv) use scratch::{with_scratch, Scratch};
mod switches;
#[cfg(target_arch = "x86_64")]
use switches::input_gradient_takes;
pub use switches::{
    set_winograd, set_winograd_input_gradient, set_winograd_vector_transforms, winograd_applies,
    winograd_enabled, winograd_input_gradient, winograd_vector_transforms, InputGradientRoute,
    NARROW_INPUT, WIDE_GRADIENT,
};

/// Fewest input channels of the 2x2 phase convolution (4 per input channel: 16 input
/// channels) and fewest output channels for which the Winograd route runs: with shorter
/// products (the 3-channel first encoder layer), the transforms cost more than the
/// multiplications saved.
const MIN_CHANNELS: usize = 64;
const MIN_OUT: usize = 16;

/// Tiles per group: the transformed inputs of a group (`9 · 4ci · tiles` floats) are the
/// rows of 9 products, each reusing its packed weights over the group. Half as many where
/// the products are narrow (their inner and outer channel counts, `4·c_in + c_out` for the
/// forward, at most [`NARROW_GROUP`] together): measured with
/// the weights packed once per call (session 19, batch 64, fwd + bwd), 128 tiles took the
/// 32 → 64 layer 14.3-14.4 → 13.8-13.9 ms and the 64 → 32 transposed one 15.4-15.6 →
/// 14.6-15.0, but the 64 → 128 layer 12.6-12.7 → 12.8-13.0.
const GROUP_TILES: usize = 256;
/// See [`GROUP_TILES`].
const NARROW_GROUP: usize = 192;

/// Whether the Winograd kernels compute this convolution: a 4x4 kernel with stride 2 and
/// padding 1 on sides divisible by 4 (whole 2x2 output tiles).
pub(super) fn applies(d: &Dims, g: &ConvGeom) -> bool {
    g.kernel == 4
        && g.stride == 2
        && g.padding == 1
        && d.h.is_multiple_of(4)
        && d.w.is_multiple_of(4)
        && d.ho * 2 == d.h
        && d.wo * 2 == d.w
        && 4 * d.c_in >= MIN_CHANNELS
        && d.c_out >= MIN_OUT
        && d.c_in >= MIN_OUT / 4
        && winograd_enabled()
}

/// G g Gᵀ of a 2x2 tile `g[row][col]`, as 9 values `p = 3·row + col` (explicit: `array::map`
/// closures were left as calls, a fifth of the forward).
#[inline(always)]
fn filter_tile(g: [[f32; 2]; 2]) -> [f32; 9] {
    let (a, b, c, d) = (g[0][0], g[0][1], g[1][0], g[1][1]);
    let (ac, bd) = (a + c, b + d);
    [a, a + b, b, ac, ac + bd, bd, c, c + d, d]
}

/// Aᵀ m A of 9 values `p = 3·row + col`, as a 2x2 tile `[row][col]`.
#[inline(always)]
fn output_tile(m: [f32; 9]) -> [[f32; 2]; 2] {
    // rows: q0 = m0 + m1, q1 = m1 + m2 (per column), then the same on columns
    let q0 = [m[0] + m[3], m[1] + m[4], m[2] + m[5]];
    let q1 = [m[3] + m[6], m[4] + m[7], m[5] + m[8]];
    [
        [q0[0] + q0[1], q0[1] + q0[2]],
        [q1[0] + q1[1], q1[1] + q1[2]],
    ]
}

/// Geometry of one Winograd convolution over tiles of a source plane padded by 1 on every
/// side.
#[derive(Clone, Copy)]
struct Tiling {
    /// Source planes per image (input channels of the original convolution or of gy).
    planes: usize,
    /// Source plane side.
    sh: usize,
    sw: usize,
    /// Tiles per axis and per image.
    th: usize,
    tw: usize,
    /// 3x3 windows every 2 pixels of the padded plane at the 4 phase offsets (the input
    /// gradient, vector transforms only) instead of the stride phases' tiles.
    pairs: bool,
}

impl Tiling {
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
    /// Channels of the 2x2 convolution: 4 stride phases per plane.
    fn k(&self) -> usize {
        self.planes * 4
    }
    /// The phase planes of the padded input of a 4x4 stride-2 convolution: padded side
    /// `h + 2`, tiles of 3x3 phase pixels every 2 (4 input pixels).
    fn strided(d: &Dims) -> Self {
        Tiling {
            planes: d.c_in,
            sh: d.h,
            sw: d.w,
            th: d.ho / 2,
            tw: d.wo / 2,
            pairs: false,
        }
    }
    /// The windows of the padded output gradient (side `ho + 2`) that the input gradient's
    /// four output phases read: phase `(py, px)`'s 2x2 tile `(ty, tx)` reads the 3x3 window
    /// at padded pixel `(2ty + py, 2tx + px)`.
    fn pairs(d: &Dims) -> Self {
        Tiling {
            planes: d.c_out,
            sh: d.ho,
            sw: d.wo,
            th: d.ho / 2,
            tw: d.wo / 2,
            pairs: true,
        }
    }
}

/// Bᵀ d B of every tile of `cnt` images of `src` into `v` (`[9][k][lead(tg)]`: point `p`,
/// channel `k = 4c + phase`, tile `t` of image `i` at column `col0 + i·tiles + t`); `bufs` hold one
/// padded plane. A tile of phase `(by, bx)` starts every 4 padded pixels, its values 2 apart.
fn transform_input(
    src: &[f32],
    cnt: usize,
    tl: &Tiling,
    v: &mut [f32],
    (tg, col0): (usize, usize),
    bufs: &mut [Vec<f32>; 2],
) {
    const P: usize = 2;
    let (tiles, plane) = (tl.tiles(), tl.sh * tl.sw);
    // the padded plane: side + 2, the source's first pixel at (1, 1)
    let (pad, pw) = (1, tl.sw + 2);
    let pp = (tl.sh + 2) * pw;
    assert!(src.len() >= cnt * tl.planes * plane);
    let ld = lead(tg);
    assert!(v.len() >= 9 * point_stride(tl.k(), ld) && col0 + cnt * tiles <= tg);
    // the first image's tiles from column col0
    let (vp, ps) = (v[col0..].as_mut_ptr(), point_stride(tl.k(), ld));
    #[cfg(target_arch = "x86_64")]
    if winograd_vector_transforms() {
        use super::wino_simd::Windows;
        let (windows, m) = match tl.pairs {
            false => (Windows::Strided, 4),
            true => (Windows::Pairs, 2),
        };
        assert!(tl.th * m == tl.sh && tl.tw * m == tl.sw);
        // SAFETY: AVX2 is available (winograd_vector_transforms); the planes have the sides the
        // windows need (asserted); the 9 rows at kk·ld + col0 + i·tiles, ps apart, each have
        // `tiles` floats up to column col0 + cnt·tiles <= tg < ld (asserted above).
        unsafe {
            super::wino_simd::transform_planes(
                src,
                (cnt, tl.planes),
                (tl.sh, tl.sw),
                windows,
                (vp, ld, ps),
                bufs,
            )
        };
        return;
    }
    assert!(
        !tl.pairs,
        "the input gradient's windows have vector transforms only"
    );
    let (step, rs) = (2 * P, P * pw);
    // the last tile's last value of the last phase lies inside the padded plane
    assert!((step * (tl.th - 1) + P - 1) * pw + step * (tl.tw - 1) + P - 1 + 2 * rs + 2 * P < pp);
    let buf = &mut bufs[0];
    buf.clear();
    buf.resize(pp, 0.0);
    let bp = buf.as_mut_ptr();
    // channel outside, images inside: the writes to each channel's rows of v run along the
    // tiles, so every line of v is finished while in L1 (v is larger than L2)
    for c in 0..tl.planes {
        for i in 0..cnt {
            let s = &src[(i * tl.planes + c) * plane..][..plane];
            for (y, row) in s.chunks_exact(tl.sw).enumerate() {
                buf[(y + pad) * pw + pad..][..tl.sw].copy_from_slice(row);
            }
            for ph in 0..P * P {
                let (by, bx) = (ph / P, ph % P);
                let kk = c * P * P + ph;
                let col0 = i * tiles;
                for ty in 0..tl.th {
                    for tx in 0..tl.tw {
                        let base = (step * ty + by) * pw + step * tx + bx;
                        let col = col0 + ty * tl.tw + tx;
                        // SAFETY: the asserts above bound every read of the padded plane
                        // (the last tile's values are the farthest) and every write
                        // (point p < 9, col0 + col < tg).
                        unsafe {
                            let r0 = bp.add(base) as *const f32;
                            let (r1, r2) = (r0.add(rs), r0.add(2 * rs));
                            // Bᵀ over rows, per column j
                            let c0 = [*r0 - *r1, *r1, *r2 - *r1];
                            let c1 = [*r0.add(P) - *r1.add(P), *r1.add(P), *r2.add(P) - *r1.add(P)];
                            let c2 = [
                                *r0.add(2 * P) - *r1.add(2 * P),
                                *r1.add(2 * P),
                                *r2.add(2 * P) - *r1.add(2 * P),
                            ];
                            let o = vp.add(kk * ld + col);
                            for a in 0..3 {
                                let q = o.add(3 * a * ps);
                                *q = c0[a] - c1[a];
                                *q.add(ps) = c1[a];
                                *q.add(2 * ps) = c2[a] - c1[a];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The forward's transformed kernel `[4·c_in][9][c_out]`: channel `k = 4ci + 2by + bx`, tap
/// `(dy, dx)` of the 2x2 kernel is `w[co, ci, 2dy + by, 2dx + bx]`.
fn forward_filter(w: &[f32], d: &Dims) -> Vec<f32> {
    let n = d.c_out;
    let fill = |u: &mut [MaybeUninit<f32>]| {
        // in parallel over input channels, each owning its 4 rows of every point
        u.par_chunks_mut(4 * 9 * n)
            .enumerate()
            .for_each(|(ci, part)| {
                for co in 0..n {
                    let wk = &w[(co * d.c_in + ci) * 16..][..16];
                    for ph in 0..4 {
                        let (by, bx) = (ph / 2, ph % 2);
                        let tap = |dy: usize, dx: usize| wk[(2 * dy + by) * 4 + 2 * dx + bx];
                        let ut = filter_tile([[tap(0, 0), tap(0, 1)], [tap(1, 0), tap(1, 1)]]);
                        for (p, val) in ut.into_iter().enumerate() {
                            part[(ph * 9 + p) * n + co].write(val);
                        }
                    }
                }
            })
    };
    // SAFETY: each chunk's loops write all of its 4 x 9 x c_out values.
    unsafe { filled_vec(4 * d.c_in * 9 * n, fill) }
}

/// A Winograd forward's transformed kernel: `[k][9][n]` for [`product`], or packed panels
/// for the AVX-512 kernel where they apply.
pub(super) enum Filter {
    Plain(Vec<f32>),
    #[cfg(target_arch = "x86_64")]
    Packed(super::packed::Panels),
}

/// The forward's transformed kernel ([`forward_filter`], packed where panels apply).
fn forward_kernel(w: &[f32], d: &Dims) -> Filter {
    #[cfg(target_arch = "x86_64")]
    if super::packed::Panels::applies(d.c_out) {
        return Filter::Packed(filters::forward_panels(w, d));
    }
    Filter::Plain(forward_filter(w, d))
}

impl Filter {
    /// `dst = lhs · u` for one point of the kernel (`cols x n`, inner dimension `k`) into the
    /// column-major `dst` with columns `ld` apart, on this thread: the plain kernel's point
    /// starts at `u[at..]` with its `k` rows `9·n` apart, the packed one is point `point`.
    fn product(
        &self,
        (point, at): (usize, usize),
        dst: &mut [f32],
        ld: usize,
        (cols, n, k): (usize, usize, usize),
        lhs: Mat,
    ) {
        assert!(cols <= ld && (n == 0 || dst.len() >= (n - 1) * ld + cols));
        match self {
            Filter::Plain(u) => {
                assert!(k == 0 || at + (k - 1) * 9 * n + n <= u.len());
                let rhs = Mat {
                    ptr: u[at..].as_ptr(),
                    rs: (9 * n) as isize,
                    cs: 1,
                };
                product(dst, ld, (cols, n, k), lhs, rhs, false);
            }
            #[cfg(target_arch = "x86_64")]
            Filter::Packed(pan) => {
                assert!(pan.k() == k && pan.n() == n);
                // SAFETY: panels apply (AVX-512F); the callers' lhs holds k steps of cols
                // values (as for `product`), dst n columns of ld >= cols (asserted).
                unsafe { pan.product(point, dst.as_mut_ptr(), ld, cols, lhs, false) };
            }
        }
    }
}

/// `m[p] = v[p] · u[p]` for the 9 points over the first `cols` tiles: `v` `[9][k][tg]`, `u`
/// `[k][9][n]` (or its panels), `m` `[9][n][tg]`.
fn products(v: &[f32], u: &Filter, m: &mut [f32], k: usize, n: usize, tg: usize, cols: usize) {
    let ld = lead(tg);
    let (vs, ms) = (point_stride(k, ld), point_stride(n, ld));
    assert!(v.len() >= 9 * vs && m.len() >= 9 * ms && cols <= tg);
    for p in 0..9 {
        let lhs = Mat {
            ptr: v[p * vs..].as_ptr(),
            rs: 1,
            cs: ld as isize,
        };
        u.product(
            (p, p * n),
            &mut m[p * ms..][..n * ld],
            ld,
            (cols, n, k),
            lhs,
        );
    }
}

/// `dst (+)= lhs · rhs` (`m x n`, inner dimension `k`) into the column-major `dst` with
/// columns `ld` apart, on this thread.
pub(super) fn product(
    dst: &mut [f32],
    ld: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
) {
    let layout = Mat {
        ptr: dst.as_ptr(),
        rs: 1,
        cs: ld as isize,
    };
    matmul_into(
        super::mm::as_uninit(dst),
        layout,
        m,
        n,
        k,
        lhs,
        rhs,
        accumulate,
        gemm::Parallelism::None,
    );
}

/// Floats between the 9 points' blocks of `rows x tg` values: 32 more than the block, so
/// that the 9 streams a tile transform writes (or its output transform reads) do not all
/// fall into the same L1 set (`rows · tg` is a multiple of 4 KB in every layer).
pub(super) fn point_stride(rows: usize, ld: usize) -> usize {
    rows * ld + 32
}

/// Leading dimension of a block with rows of `len` values: 16 floats more. The products read
/// their left operand a column at a time over the whole inner dimension; at a row length
/// that is a multiple of 1 KB, those columns share a few L1 sets (the same padding as
/// `kernels::padded`).
pub(super) fn lead(len: usize) -> usize {
    len + 16
}

/// Images per group for `tiles` tiles per image, at most `per` (a thread's share), for
/// products over `channels` input and output channels together.
fn group_images(tiles: usize, channels: usize, per: usize) -> usize {
    let group = if channels <= NARROW_GROUP {
        GROUP_TILES / 2
    } else {
        GROUP_TILES
    };
    group.div_ceil(tiles.max(1)).min(per).max(1)
}

/// Runs `f(first image, images, output chunk, scratch)` over the groups of `nb` images of
/// `out` (`img_out` values per image), one contiguous share of the batch per thread, with one
/// scratch per thread.
fn per_thread_groups(
    out: &mut [MaybeUninit<f32>],
    img_out: usize,
    b: usize,
    nb: usize,
    (k, n, tg): (usize, usize, usize),
    f: impl Fn(usize, usize, &mut [MaybeUninit<f32>], &mut Scratch) + Sync,
) {
    let per = b.div_ceil(threads().min(b).max(1));
    out.par_chunks_mut(per * img_out)
        .enumerate()
        .for_each(|(c, share)| {
            with_scratch((9, k, n, tg), |s| {
                for (j, chunk) in share.chunks_mut(nb * img_out).enumerate() {
                    f(c * per + j * nb, chunk.len() / img_out, chunk, s);
                }
            })
        });
}

/// `conv2d(x, w)` ([`applies`]) with `epi` applied to the finished output.
pub(super) fn forward(x: &[f32], w: &[f32], b: usize, d: &Dims, epi: Option<Epilogue>) -> Vec<f32> {
    let tl = Tiling::strided(d);
    let u = forward_kernel(w, d);
    let (k, n, tiles) = (tl.k(), d.c_out, tl.tiles());
    let (img, out) = (d.c_in * d.h * d.w, d.c_out * d.ho * d.wo);
    let nb = group_images(tiles, k + n, b.div_ceil(threads()));
    let tg = nb * tiles;
    let fill = |y: &mut [MaybeUninit<f32>]| {
        per_thread_groups(y, out, b, nb, (k, n, tg), |i0, cnt, ychunk, s| {
            let xg = &x[i0 * img..][..cnt * img];
            transform_input(xg, cnt, &tl, &mut s.v, (tg, 0), &mut s.planes);
            products(&s.v, &u, &mut s.m, k, n, tg, cnt * tiles);
            forward_output(&s.m, cnt, d, tg, ychunk, epi);
        })
    };
    // SAFETY: the groups cover the output, and forward_output writes every pixel of each.
    unsafe { filled_vec(b * out, fill) }
}

/// `(bias, slope)` of channel `c` (`(0, 1)`: no epilogue).
#[inline(always)]
fn epilogue(epi: Option<Epilogue>, c: usize) -> (f32, f32) {
    match epi {
        Some(e) => (e.bias[c], e.slope),
        None => (0.0, 1.0),
    }
}

/// Aᵀ m A of the 9 values at `p`, `p + ps`, …: the 2x2 tile with `bias` and `slope` applied.
///
/// # Safety
/// `p` points to at least `8·ps + 1` readable floats.
#[inline(always)]
unsafe fn finish_tile(p: *const f32, ps: usize, bias: f32, slope: f32) -> [[f32; 2]; 2] {
    let tg = ps;
    let mt = [
        *p,
        *p.add(tg),
        *p.add(2 * tg),
        *p.add(3 * tg),
        *p.add(4 * tg),
        *p.add(5 * tg),
        *p.add(6 * tg),
        *p.add(7 * tg),
        *p.add(8 * tg),
    ];
    let o = output_tile(mt);
    // a select, not a branch (a branch mispredicts on half of random signs)
    let f = |v: f32| {
        let t = v + bias;
        t * if t > 0.0 { 1.0 } else { slope }
    };
    [[f(o[0][0]), f(o[0][1])], [f(o[1][0]), f(o[1][1])]]
}

/// Aᵀ m A of the forward's products into the output images (`[cnt][c_out][ho][wo]`).
fn forward_output(
    m: &[f32],
    cnt: usize,
    d: &Dims,
    tg: usize,
    y: &mut [MaybeUninit<f32>],
    epi: Option<Epilogue>,
) {
    let (th, tw) = (d.ho / 2, d.wo / 2);
    let (n, tiles, plane) = (d.c_out, th * tw, d.ho * d.wo);
    let ld = lead(tg);
    let ps = point_stride(n, ld);
    assert!(m.len() >= 9 * ps && cnt * tiles <= tg && y.len() >= cnt * n * plane);
    #[cfg(target_arch = "x86_64")]
    if winograd_vector_transforms() {
        for co in 0..n {
            let (bias, slope) = epilogue(epi, co);
            for i in 0..cnt {
                let out = y[(i * n + co) * plane..][..plane]
                    .as_mut_ptr()
                    .cast::<f32>();
                // SAFETY: AVX2 is available (winograd_vector_transforms); point p of tile t < tiles
                // is at co·ld + i·tiles + t + p·ps < 9·ps (i·tiles + t < tg < ld); the plane
                // holds ho·wo = 4·th·tw floats.
                unsafe {
                    super::wino_simd::finish_tiles(
                        m.as_ptr().add(co * ld + i * tiles),
                        ps,
                        (th, tw),
                        out,
                        bias,
                        slope,
                    )
                }
            }
        }
        return;
    }
    // channel outside, images inside: the 9 reads per tile run along each channel's rows
    for co in 0..n {
        let (bias, slope) = epilogue(epi, co);
        let mc = &m[co * ld..][..8 * ps + tg];
        for i in 0..cnt {
            let yo = &mut y[(i * n + co) * plane..][..plane];
            for ty in 0..th {
                let (r0, r1) = yo[2 * ty * d.wo..][..2 * d.wo].split_at_mut(d.wo);
                for tx in 0..tw {
                    let t = i * tiles + ty * tw + tx;
                    // SAFETY: t < cnt·tiles <= tg, so the 9 values at t, t + ps, … lie in mc.
                    let o = unsafe { finish_tile(mc.as_ptr().add(t), ps, bias, slope) };
                    r0[2 * tx].write(o[0][0]);
                    r0[2 * tx + 1].write(o[0][1]);
                    r1[2 * tx].write(o[1][0]);
                    r1[2 * tx + 1].write(o[1][1]);
                }
            }
        }
    }
}
