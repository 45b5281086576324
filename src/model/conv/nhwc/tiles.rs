//! The micro-kernels and layout transposes of the channels-last stacks (`conv/nhwc.rs`):
//! the AVX-512F tile (8 pixels x 16·`NZ` channels in zmm accumulators) and the AVX2 + FMA
//! tile (`AVX2_P` pixels x 16 channels in ymm ones), each with its epilogue (bias, leaky
//! ReLU, store), and the `[hw][co]` → `[co][hw]` output transposes.

use super::{AVX2_P, MP};

/// One image's `[hw][co]` pixels as `[co][hw]` planes (`co` a multiple of 16): 16 x 16
/// blocks through register transposes, so every store runs along a plane (a pixel-major
/// scatter strides a whole plane per store), and a scalar loop for the last `hw % 16`.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn to_planes(r: &[f32], o: &mut [f32], hw: usize, co: usize) {
    use std::arch::x86_64::*;
    debug_assert!(co.is_multiple_of(16) && r.len() == hw * co && o.len() == hw * co);
    let full = hw - hw % 16;
    for p0 in (0..full).step_by(16) {
        for c0 in (0..co).step_by(16) {
            // SAFETY: rows p0..p0+16 of r and planes c0..c0+16 of o hold 16 floats from the
            // offsets read and written.
            unsafe {
                let mut rows = [_mm512_setzero_ps(); 16];
                for (q, v) in rows.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(r.as_ptr().add((p0 + q) * co + c0));
                }
                let t = super::super::wide::transpose16(rows);
                for (q, v) in t.iter().enumerate() {
                    _mm512_storeu_ps(o.as_mut_ptr().add((c0 + q) * hw + p0), *v);
                }
            }
        }
    }
    for px in full..hw {
        for ch in 0..co {
            o[ch * hw + px] = r[px * co + ch];
        }
    }
}

/// `MP` output pixels x 16·`NZ` output channels: `Σ_kh Σ_q w[kh·seg + q] · from[j][kh·row + q]`,
/// then `+ bias`, leaky ReLU, stored at `to[j]` for `j < valid`.
///
/// # Safety
/// AVX-512F; `from[j] + kh·row + q` readable for `kh < k`, `q < seg`; `w` holds
/// `k·seg·16·NZ` floats, `bias` `16·NZ`, each `to[j]` (`j < valid`) `16·NZ`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile<const NZ: usize>(
    from: &[*const f32; MP],
    (k, seg, row): (usize, usize, usize),
    w: *const f32,
    bias: &[f32],
    slope: f32,
    to: &[*mut f32; MP],
    valid: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NZ]; MP];
    let mut wp = w;
    for kh in 0..k {
        let mut p = [std::ptr::null::<f32>(); MP];
        for j in 0..MP {
            p[j] = from[j].add(kh * row);
        }
        for q in 0..seg {
            let mut wv = [_mm512_setzero_ps(); NZ];
            for (z, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(wp.add(16 * z));
            }
            for j in 0..MP {
                let a = _mm512_set1_ps(*p[j].add(q));
                for z in 0..NZ {
                    acc[j][z] = _mm512_fmadd_ps(wv[z], a, acc[j][z]);
                }
            }
            wp = wp.add(16 * NZ);
        }
    }
    let s = _mm512_set1_ps(slope);
    let zero = _mm512_setzero_ps();
    let mut bv = [zero; NZ];
    for (z, v) in bv.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(bias.as_ptr().add(16 * z));
    }
    for j in 0..valid.min(MP) {
        for z in 0..NZ {
            let v = _mm512_add_ps(acc[j][z], bv[z]);
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
            _mm512_storeu_ps(to[j].add(16 * z), _mm512_mask_mul_ps(v, neg, v, s));
        }
    }
}

/// [`to_planes`] on AVX2: 8 x 8 blocks through register transposes, then a scalar loop for
/// the last `hw % 8` pixels.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn to_planes_avx2(r: &[f32], o: &mut [f32], hw: usize, co: usize) {
    use std::arch::x86_64::*;
    debug_assert!(co.is_multiple_of(8) && r.len() == hw * co && o.len() == hw * co);
    let full = hw - hw % 8;
    for p0 in (0..full).step_by(8) {
        for c0 in (0..co).step_by(8) {
            // SAFETY: rows p0..p0+8 of r and planes c0..c0+8 of o hold 8 floats from the
            // offsets read and written.
            unsafe {
                let mut rows = [_mm256_setzero_ps(); 8];
                for (q, v) in rows.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(r.as_ptr().add((p0 + q) * co + c0));
                }
                for (q, v) in transpose8(rows).iter().enumerate() {
                    _mm256_storeu_ps(o.as_mut_ptr().add((c0 + q) * hw + p0), *v);
                }
            }
        }
    }
    for px in full..hw {
        for ch in 0..co {
            o[ch * hw + px] = r[px * co + ch];
        }
    }
}

/// The transpose of an 8 x 8 block held as 8 row vectors.
#[target_feature(enable = "avx2")]
fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // pairs of rows interleaved, then pairs of pairs, then the 128-bit halves
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// [`tile`] on AVX2 + FMA for 16 output channels: `AVX2_P` output pixels x 2 ymm vectors
/// (12 accumulators), each step 2 weight loads and `AVX2_P` broadcasts of one input value
/// per pixel. Step `q`'s 16 weights are at `w + q·ws` (`ws` the packed block's width, 16 or
/// 32).
///
/// # Safety
/// AVX2 and FMA; `from[j] + kh·row + q` readable for `j < AVX2_P`, `kh < k`, `q < seg`;
/// `w + q·ws` holds 16 floats for `q < k·seg`, `bias` 16, each `to[j]` (`j < valid`) 16.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_avx2(
    from: &[*const f32; MP],
    (k, seg, row): (usize, usize, usize),
    (w, ws): (*const f32, usize),
    bias: &[f32],
    slope: f32,
    to: &[*mut f32; MP],
    valid: usize,
) {
    use std::arch::x86_64::*;
    const NV: usize = 2;
    const P: usize = AVX2_P;
    let mut acc = [[_mm256_setzero_ps(); NV]; P];
    let mut wp = w;
    for kh in 0..k {
        let mut p = [std::ptr::null::<f32>(); P];
        for j in 0..P {
            p[j] = from[j].add(kh * row);
        }
        for q in 0..seg {
            let mut wv = [_mm256_setzero_ps(); NV];
            for (z, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(wp.add(8 * z));
            }
            for j in 0..P {
                let a = _mm256_broadcast_ss(&*p[j].add(q));
                for z in 0..NV {
                    acc[j][z] = _mm256_fmadd_ps(wv[z], a, acc[j][z]);
                }
            }
            wp = wp.add(ws);
        }
    }
    let s = _mm256_set1_ps(slope);
    let zero = _mm256_setzero_ps();
    let mut bv = [zero; NV];
    for (z, v) in bv.iter_mut().enumerate() {
        *v = _mm256_loadu_ps(bias.as_ptr().add(8 * z));
    }
    for j in 0..valid.min(P) {
        for z in 0..NV {
            let v = _mm256_add_ps(acc[j][z], bv[z]);
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, zero);
            _mm256_storeu_ps(
                to[j].add(8 * z),
                _mm256_blendv_ps(v, _mm256_mul_ps(v, s), neg),
            );
        }
    }
}
