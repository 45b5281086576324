//! The stride-phase input gradient of a 4x4 stride-2 convolution (`phases.rs`) with the
//! input channels in the vector lanes (AVX-512): the encoder's and discriminator's input
//! gradients onto 32-128 channels, and the decoder's and generator's transposed layers'
//! forwards.
//!
//! `phases.rs` puts 16 pixels in a vector and broadcasts one weight per FMA: 17 loads per 16
//! FMAs, about 60 % of the FMA peak on the Xeon of sessions 17-20. Here a vector holds 16
//! input channels of one tap row of the weights (`[4·c_out][c_in]` per phase, packed once per
//! call) and each FMA broadcasts one output-gradient value: a tile of `MR` pixels by up to 64
//! channels (6 x 64, 8 x 48 or 12 x 32) spends `MR + NV` loads on `MR·NV` FMAs (10 on 24),
//! 81-84 % of the peak in the same standalone test. The strip (`[4·c_out][MR]`) is packed
//! with AVX-512 masked loads, which need no margins: a lane whose source lies outside the
//! plane is neither read nor kept. The tiles (`[pixel][c_in]` per phase) are transposed 16 x
//! 16 into the channel planes of `∂/∂x`, interleaving each row's two phases, with the
//! epilogue (a transposed layer's bias and leaky ReLU) applied on the way.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::kernels::{threads, Epilogue};
use super::phases::PhaseTaps;
use super::unfold::Dims;
use super::wide::transpose16;
use super::ConvGeom;

static ON: AtomicBool = AtomicBool::new(true);

/// Turns the channels-in-lanes phase kernel on or off for this process (on by default where
/// the CPU has AVX-512F; off, the input gradients it takes run on `phases.rs`' 16-pixel
/// kernel): for benchmarks and tests that pin one route to the other.
pub fn set_phase_lanes(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether [`grad_input`] runs where it applies: AVX-512F (our kernels not turned off by
/// `LATENT_ATLAS_NO_AVX512`) and [`set_phase_lanes`] not turned off.
pub fn phase_lanes_enabled() -> bool {
    static VL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ON.load(Ordering::Relaxed)
        && super::micro::has_avx512()
        && *VL.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vl"))
}

/// Whether [`grad_input`] takes this input gradient (the caller checked `phases.rs`'
/// geometry, a 4x4 stride-2 padding-1 kernel): at least 32 input channels (16 go to
/// Winograd), output rows [`scatter`] takes (its 16 x 16 transposes take 16 pixels of a
/// row's two phases, or of two rows), and even image sides.
pub(super) fn applies(d: &Dims) -> bool {
    phase_lanes_enabled() && d.c_in >= 32 && scatters(d) && d.h == 2 * d.ho && d.w == 2 * d.wo
}

/// Input channels per tile at most: 4 vectors.
const BLOCK: usize = 64;

/// Pixels per tile for a layer whose widest channel block has `nv` vectors: 24 accumulators
/// (12 x 2, 8 x 3, 6 x 4) beside the `nv` weight vectors and a broadcast.
fn pixels_per_tile(nv: usize) -> usize {
    match nv {
        4 => 6,
        3 => 8,
        _ => 12,
    }
}

/// Floats from one strip row to the next for `mr` pixels: a whole aligned ymm or zmm, so that
/// packing never splits a cache line (a 24-float stride made the packing a quarter of the
/// kernel's time).
const fn strip_stride(mr: usize) -> usize {
    if mr <= 8 {
        8
    } else {
        16
    }
}

/// A tile kernel: `(k, strip, weights, weight row stride, dst, dst row stride, rows kept,
/// accumulate)`.
type Kernel = unsafe fn(usize, *const f32, *const f32, usize, *mut f32, usize, usize, bool);

/// The kernel for `nv` channel vectors and `mr` pixels ([`pixels_per_tile`] of the widest
/// block): 6 pixels beside blocks of 1-4 vectors (64+ channels), 8 beside 3 (48), 12 beside
/// 2 (32; [`applies`] takes no fewer channels).
fn kernel(nv: usize, mr: usize) -> Kernel {
    debug_assert!(mr == pixels_per_tile(nv.max(2)) || mr == 6);
    match (nv, mr) {
        (4, _) => tile::<4, 6>,
        (3, 6) => tile::<3, 6>,
        (2, 6) => tile::<2, 6>,
        (1, _) => tile::<1, 6>,
        (3, _) => tile::<3, 8>,
        _ => tile::<2, 12>,
    }
}

/// `dst[i][v·16..] (+)= Σ_q strip[q][i] · w[q][v·16..]` for pixels `i < m` (of `MR`) and
/// `NV` vectors of channels; `dst` rows `ldc` apart, `w` rows `ldw` apart, `strip` rows
/// [`strip_stride`] apart; with `acc` the tile is added to `dst`, else stored.
///
/// # Safety
/// AVX-512F; `strip` holds `k·MR` floats, `w` `16·NV` at each of `k` rows, `dst` `16·NV` at
/// each of `m ≤ MR` rows.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // constant indices keep the accumulators in registers
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const NV: usize, const MR: usize>(
    k: usize,
    strip: *const f32,
    w: *const f32,
    ldw: usize,
    dst: *mut f32,
    ldc: usize,
    m: usize,
    acc: bool,
) {
    let mut c = [[_mm512_setzero_ps(); NV]; MR];
    if acc {
        for i in 0..MR.min(m) {
            for v in 0..NV {
                c[i][v] = _mm512_loadu_ps(dst.add(i * ldc + 16 * v));
            }
        }
    }
    let ls = strip_stride(MR);
    let (mut s, mut p) = (strip, w);
    for _ in 0..k {
        let mut b = [_mm512_setzero_ps(); NV];
        for v in 0..NV {
            b[v] = _mm512_loadu_ps(p.add(16 * v));
        }
        for i in 0..MR {
            let a = _mm512_set1_ps(*s.add(i));
            for v in 0..NV {
                c[i][v] = _mm512_fmadd_ps(b[v], a, c[i][v]);
            }
        }
        s = s.add(ls);
        p = p.add(ldw);
    }
    for i in 0..MR.min(m) {
        for v in 0..NV {
            _mm512_storeu_ps(dst.add(i * ldc + 16 * v), c[i][v]);
        }
    }
}

/// The weights of each phase as rows of input channels, and the taps' geometry.
struct LaneWeights {
    /// Per phase `[4·c_out][cp]`: row `co·4 + j` holds tap `j`'s weights onto every input
    /// channel, zero past `c_in`.
    rows: Vec<f32>,
    /// `c_in` rounded up to whole vectors.
    cp: usize,
    /// Per phase, per tap: the source offset in a `gy` plane.
    offs: [[isize; 4]; 4],
    /// Per phase, per tap, per tile of `mr` pixels: which of its pixels have a source.
    bits: Vec<u16>,
    mr: usize,
    tiles: usize,
}

impl LaneWeights {
    fn new(w: &[f32], d: &Dims, g: &ConvGeom) -> Self {
        let (n, k) = (d.col_cols(), 4 * d.c_out);
        let cp = d.c_in.next_multiple_of(16);
        let mr = pixels_per_tile((cp / 16).min(BLOCK / 16));
        let tiles = n.div_ceil(mr);
        let mut offs = [[0isize; 4]; 4];
        let mut taps = [[(0usize, 0usize); 4]; 4];
        let mut bits = vec![0u16; 16 * tiles];
        for phase in 0..4 {
            let pt = PhaseTaps::new(d, g, phase);
            (offs[phase], taps[phase]) = (pt.offs, pt.taps);
            for j in 0..4 {
                let mask = &pt.masks[j * n..][..n];
                for (t, b) in bits[(phase * 4 + j) * tiles..][..tiles]
                    .iter_mut()
                    .enumerate()
                {
                    for (i, &m) in mask.iter().skip(t * mr).take(mr).enumerate() {
                        *b |= u16::from(m != 0) << i;
                    }
                }
            }
        }
        let c_in = d.c_in;
        let fill = |rows: &mut [MaybeUninit<f32>]| {
            // in parallel over output-gradient channels: each writes its 4 rows of each phase,
            // reading its weights once, 16 taps at a time
            let (r0, rest) = rows.split_at_mut(k * cp);
            let (r1, rest) = rest.split_at_mut(k * cp);
            let (r2, r3) = rest.split_at_mut(k * cp);
            let step = 4 * cp;
            r0.par_chunks_mut(step)
                .zip(r1.par_chunks_mut(step))
                .zip(r2.par_chunks_mut(step))
                .zip(r3.par_chunks_mut(step))
                .enumerate()
                .for_each(|(co, (((a, b), c), e))| {
                    let mut parts = [a, b, c, e];
                    for part in parts.iter_mut() {
                        for j in 0..4 {
                            part[j * cp + c_in..(j + 1) * cp].fill(MaybeUninit::new(0.0));
                        }
                    }
                    for ci in 0..c_in {
                        let wk = &w[(co * c_in + ci) * 16..][..16];
                        for (part, tp) in parts.iter_mut().zip(&taps) {
                            for (j, &(ki, kj)) in tp.iter().enumerate() {
                                part[j * cp + ci].write(wk[ki * 4 + kj]);
                            }
                        }
                    }
                })
        };
        // SAFETY: each channel's chunk of each phase has its 4 rows of cp floats written
        // (c_in weights, then zeros).
        let rows = unsafe { crate::model::activation::filled_vec(4 * k * cp, fill) };
        Self {
            rows,
            cp,
            offs,
            bits,
            mr,
            tiles,
        }
    }
}

/// Per-task buffers: a strip of one block of rows, and the 4 phases of tiles of each image
/// of a group (`[cnt][4][n][cp]`).
#[derive(Default)]
struct Scratch {
    strip: Vec<f32>,
    tiles: Vec<f32>,
}

/// `∂/∂x` of `conv2d(x, w)` for the batch `gy` (`[b, c_out, ho, wo]`) with `epi` applied
/// (a transposed layer's forward): requires `phases.rs`' geometry and [`applies`].
pub(super) fn grad_input(
    gy: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
    epi: Option<Epilogue>,
) -> Vec<f32> {
    let (n, img) = (d.col_cols(), d.c_in * d.h * d.w);
    let out = d.c_out * n;
    assert!(gy.len() >= b * out && w.len() >= d.c_out * d.c_in * 16);
    let lw = LaneWeights::new(w, d, g);
    // enough images per task that a block of weights serves 64 pixels of each phase
    let per = GROUP_PIXELS.div_ceil(n).clamp(1, b.div_ceil(threads()));
    let fill = |gx: &mut [MaybeUninit<f32>]| {
        gx.par_chunks_mut(per * img)
            .enumerate()
            .for_each_init(Scratch::default, |s, (t, chunk)| {
                let cnt = chunk.len() / img;
                group(
                    &gy[t * per * out..][..cnt * out],
                    cnt,
                    &lw,
                    d,
                    s,
                    chunk,
                    epi,
                );
            })
    };
    // SAFETY: the chunks cover gx, and group() writes every element of each image.
    unsafe { crate::model::activation::filled_vec(b * img, fill) }
}

/// Pixels of each phase a block of weights serves at least (several images of small planes).
const GROUP_PIXELS: usize = 64;

/// `cnt` images: the 4 phases' tiles of each into `s.tiles`, then transposed into `gx`.
fn group(
    gy: &[f32],
    cnt: usize,
    lw: &LaneWeights,
    d: &Dims,
    s: &mut Scratch,
    gx: &mut [MaybeUninit<f32>],
    epi: Option<Epilogue>,
) {
    let (n, k, cp, mr) = (d.col_cols(), 4 * d.c_out, lw.cp, lw.mr);
    let ls = strip_stride(mr);
    // Blocks of `kc` rows (whole output-gradient channels), so that a block's weights (at
    // most 16 KB), the strip and the gy lines it reads stay in L1 from one strip to the next
    let kc = if cp <= 32 { 128 } else { 64 };
    s.strip.resize(kc.min(k) * ls + 16, 0.0);
    // the strip from a 64-byte boundary: its rows are whole aligned vectors
    let skip = s.strip.as_ptr().align_offset(64).min(15);
    let strip = &mut s.strip[skip..];
    s.tiles.resize(cnt * 4 * n * cp, 0.0);
    let out = d.c_out * n;
    for phase in 0..4 {
        let weights = &lw.rows[phase * k * cp..][..k * cp];
        for k0 in (0..k).step_by(kc) {
            let rows = kc.min(k - k0);
            let cos = (k0 / 4, rows / 4);
            for (i, t, p0) in
                (0..cnt).flat_map(|i| (0..n).step_by(mr).enumerate().map(move |(t, p)| (i, t, p)))
            {
                let gy = &gy[i * out..][..out];
                let m = mr.min(n - p0);
                let mut masks = [0u16; 4];
                for (j, mask) in masks.iter_mut().enumerate() {
                    *mask = lw.bits[(phase * 4 + j) * lw.tiles + t];
                }
                // SAFETY: AVX-512F and VL (applies); the strip holds kc·ls floats from a
                // 64-byte boundary; masked lanes are pixels p0 + i < n whose source lies
                // inside gy's plane.
                unsafe { pack_strip(gy, n, cos, &lw.offs[phase], masks, p0, ls, strip) };
                for c0 in (0..cp).step_by(BLOCK) {
                    let nv = (cp - c0).min(BLOCK) / 16;
                    let dst = s.tiles[((i * 4 + phase) * n + p0) * cp + c0..].as_mut_ptr();
                    // SAFETY: the weights hold 16·nv floats from c0 at each of the block's
                    // rows; dst m rows of 16·nv floats, cp apart, inside the phase's tiles.
                    unsafe {
                        kernel(nv, mr)(
                            rows,
                            strip.as_ptr(),
                            weights.as_ptr().add(k0 * cp + c0),
                            cp,
                            dst,
                            cp,
                            m,
                            k0 > 0,
                        )
                    };
                }
            }
        }
    }
    let img = d.c_in * d.h * d.w;
    for (tiles, gx) in s
        .tiles
        .chunks_exact(4 * n * cp)
        .zip(gx.chunks_exact_mut(img))
    {
        // SAFETY: AVX-512F; each image's tiles hold 4·n·cp floats, its gx c_in·h·w.
        unsafe { scatter(tiles, d, cp, gx, epi) };
    }
}

/// The strip of pixels `p0..` of one phase for output-gradient channels `co0..co0 + cn`:
/// row `(co - co0)·4 + j` (`ls` floats from the last) is `gy[co][p + offs[j]]` for pixel `p`
/// where `masks[j]` has its bit, else 0.
///
/// # Safety
/// AVX-512F and VL; `strip` is 64-byte aligned and holds `4·cn·ls` floats, `ls` 8 or 16;
/// each masked pixel's source lies in `gy`.
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_strip(
    gy: &[f32],
    n: usize,
    (co0, cn): (usize, usize),
    offs: &[isize; 4],
    masks: [u16; 4],
    p0: usize,
    ls: usize,
    strip: &mut [f32],
) {
    debug_assert!(strip.len() >= 4 * cn * ls && strip.as_ptr().align_offset(64) == 0);
    let mut dst = strip.as_mut_ptr();
    // lanes off the mask are not read (AVX-512 fault suppression): wrapping_offset only
    // forms their address
    if ls == 8 {
        for co in co0..co0 + cn {
            let base = gy.as_ptr().wrapping_add(co * n + p0);
            for j in 0..4 {
                let v = _mm256_maskz_loadu_ps(masks[j] as u8, base.wrapping_offset(offs[j]));
                _mm256_store_ps(dst, v);
                dst = dst.add(8);
            }
        }
    } else {
        for co in co0..co0 + cn {
            let base = gy.as_ptr().wrapping_add(co * n + p0);
            for j in 0..4 {
                let v = _mm512_maskz_loadu_ps(masks[j], base.wrapping_offset(offs[j]));
                _mm512_store_ps(dst, v);
                dst = dst.add(16);
            }
        }
    }
}

/// `gx[ci][2a + ry][2b + rx] = tiles[ry·2 + rx][a·wo + b][ci]` (then the epilogue), 16
/// channels by 16 pixels per 16 x 16 transpose: 8 pixels of both of a row's phases, or
/// with `wo` = 4 the 4 of each phase of two rows `2a + ry`, `2a + 2 + ry`.
///
/// # Safety
/// AVX-512F; `tiles` holds `4·n·cp` floats, `gx` `c_in·h·w`; `wo` is a multiple of 8, or 4
/// with `ho` even.
#[target_feature(enable = "avx512f")]
unsafe fn scatter(
    tiles: &[f32],
    d: &Dims,
    cp: usize,
    gx: &mut [MaybeUninit<f32>],
    epi: Option<Epilogue>,
) {
    let (n, plane) = (d.col_cols(), d.h * d.w);
    assert!(tiles.len() >= 4 * n * cp && gx.len() >= d.c_in * plane && scatters(d));
    let out = gx.as_mut_ptr().cast::<f32>();
    let src = tiles.as_ptr();
    let slope = _mm512_set1_ps(epi.map_or(1.0, |e| e.slope));
    // (row of the first pixel, its column, the plane pixel of vector q = 0, the plane pixel
    // step from q to q + 8); with wo = 4, vectors 8.. are the next row pair
    let blocks: Vec<(usize, usize, usize, usize)> = if d.wo == 4 {
        (0..d.ho)
            .step_by(2)
            .flat_map(|a| (0..2).map(move |ry| (2 * a + ry, 0, a * 4, 4)))
            .collect()
    } else {
        (0..d.h)
            .flat_map(|iy| {
                (0..d.wo)
                    .step_by(8)
                    .map(move |b0| (iy, 2 * b0, (iy / 2) * d.wo + b0, 4))
            })
            .collect()
    };
    for c0 in (0..d.c_in).step_by(16) {
        let cn = 16.min(d.c_in - c0);
        let mut bias = [0f32; 16];
        if let Some(e) = epi {
            bias[..cn].copy_from_slice(&e.bias[c0..c0 + cn]);
        }
        for &(iy, ix, p, step) in &blocks {
            let ry = iy % 2;
            let mut r = [_mm512_setzero_ps(); 16];
            for (q, rq) in r.iter_mut().enumerate() {
                let (rx, at) = (q % 2, p + (q / 8) * step + (q % 8) / 2);
                *rq = _mm512_loadu_ps(src.add(((ry * 2 + rx) * n + at) * cp + c0));
            }
            for (c, &v) in transpose16(r).iter().enumerate().take(cn) {
                let v = if epi.is_some() {
                    // leaky(v + bias) as Epilogue::apply: t · (1 if t > 0 else slope)
                    let s = _mm512_add_ps(v, _mm512_set1_ps(bias[c]));
                    let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(s, _mm512_setzero_ps());
                    _mm512_mask_blend_ps(pos, _mm512_mul_ps(s, slope), s)
                } else {
                    v
                };
                let o = out.add((c0 + c) * plane + iy * d.w + ix);
                if d.wo == 4 {
                    // 8 pixels of row iy, 8 of row iy + 2
                    _mm256_storeu_ps(o, _mm512_castps512_ps256(v));
                    _mm256_storeu_ps(
                        o.add(2 * d.w),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                    );
                } else {
                    _mm512_storeu_ps(o, v);
                }
            }
        }
    }
}

/// Whether [`scatter`] takes this shape: each output row a whole number of 8-pixel blocks,
/// or 4 pixels in an even number of rows.
fn scatters(d: &Dims) -> bool {
    d.wo.is_multiple_of(8) || (d.wo == 4 && d.ho.is_multiple_of(2))
}
