//! A strided matrix product on the AVX-512 16 x 16 micro-kernel of [`super::micro`], for the
//! im2col + gemm and col2im routes of the convolutions: `dst (+)= lhs · rhs` where `dst` has
//! a unit stride along one side (the "strip" side, 16 contiguous floats per micro-kernel
//! column) and the other side (the "panel" side) spans at least 16.
//!
//! Per slice of [`KC`] steps of the inner dimension, the panel operand is packed into
//! `[KC][16]` panels of at most [`NC`] columns in all (≤ 256 KB, in L2), then each 16-wide
//! strip of the other operand into a `[KC][16]` buffer (16 KB, in L1) and multiplied with
//! every panel. An operand whose 16 packed rows are contiguous along the inner dimension
//! instead (a weight matrix, an output gradient) is packed through 16 x 16 register
//! transposes.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::micro::{band48, has_avx512, tile16, MR};
use super::mm::Mat;

/// Inner-dimension steps per slice.
const KC: usize = 256;
/// Panel-side columns per block of packed panels.
const NC: usize = 256;

/// One operand as seen by the kernel: element `(i, q)` (`i` along the strip or panel side,
/// `q` along the inner dimension) at `ptr + i * is + q * qs`.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    is: isize,
    qs: isize,
}

impl Operand {
    /// # Safety
    /// `(i, q)` lies inside the operand.
    unsafe fn at(self, i: usize, q: usize) -> *const f32 {
        self.ptr.offset(i as isize * self.is + q as isize * self.qs)
    }
}

thread_local! {
    /// Packed panels and strip, reused across calls on this thread.
    static BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` (dst at the strides of `layout`, uninitialised
/// allowed without `accumulate`) by the AVX-512 kernel, single-threaded. Returns `false`,
/// having done nothing, where it does not apply: no AVX-512F, no unit stride in `dst`, or
/// fewer than 16 columns on the panel side (gemm's narrower kernel wastes less there).
///
/// # Safety
/// As [`super::mm::matmul_into`]: the operands hold every element their strides reach for
/// the given sizes and `dst` every element of the `m x n` layout.
pub(super) unsafe fn matmul(
    dst: *mut f32,
    layout: Mat,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
) -> bool {
    if !has_avx512() || m == 0 || n == 0 {
        return false;
    }
    // lhs as (row i, step q) and rhs as (column i, step q); the strip side is dst's
    // unit-stride side, the panel side the other
    let a = Operand {
        ptr: lhs.ptr,
        is: lhs.rs,
        qs: lhs.cs,
    };
    let b = Operand {
        ptr: rhs.ptr,
        is: rhs.cs,
        qs: rhs.rs,
    };
    let (sn, pn, strip_op, panel_op, dst_ps) = if layout.rs == 1 {
        (m, n, a, b, layout.cs)
    } else if layout.cs == 1 {
        (n, m, b, a, layout.rs)
    } else {
        return false;
    };
    if pn < MR || dst_ps < 0 {
        return false;
    }
    if k == 0 {
        if !accumulate {
            for j in 0..pn {
                std::ptr::write_bytes(dst.offset(j as isize * dst_ps), 0, sn);
            }
        }
        return true;
    }
    BUFFERS.with_borrow_mut(|(panels, strip)| {
        panels.resize(NC * KC, 0.0);
        strip.resize(MR * KC, 0.0);
        for q0 in (0..k).step_by(KC) {
            let kc = KC.min(k - q0);
            let acc = accumulate || q0 > 0;
            for j0 in (0..pn).step_by(NC) {
                let nb = NC.min(pn - j0);
                for (pi, jj) in (0..nb).step_by(MR).enumerate() {
                    let cnt = MR.min(nb - jj);
                    pack16(
                        panel_op,
                        (j0 + jj, q0),
                        cnt,
                        kc,
                        panels.as_mut_ptr().add(pi * kc * MR),
                    );
                }
                // three in-place strips at a time on the 48 x 8 kernel, two per panel
                let mut s0 = 0;
                if strip_op.is == 1 && strip_op.qs > 0 {
                    while s0 + 3 * MR <= sn {
                        let src = (strip_op.at(s0, q0), strip_op.qs as usize);
                        let at = dst.offset(s0 as isize + j0 as isize * dst_ps);
                        let panel = |pi: usize| panels.as_ptr().add(pi * kc * MR);
                        band48(kc, (at, dst_ps as usize), src, nb, panel, acc);
                        s0 += 3 * MR;
                    }
                }
                for s0 in (s0..sn).step_by(MR) {
                    let ms = MR.min(sn - s0);
                    // a full strip already laid out as 16 floats per step is read in place
                    let src = if strip_op.is == 1 && ms == MR && strip_op.qs > 0 {
                        (strip_op.at(s0, q0), strip_op.qs as usize)
                    } else {
                        pack16(strip_op, (s0, q0), ms, kc, strip.as_mut_ptr());
                        (strip.as_ptr(), MR)
                    };
                    for (pi, jj) in (0..nb).step_by(MR).enumerate() {
                        let np = MR.min(nb - jj);
                        let at = dst.offset(s0 as isize + (j0 + jj) as isize * dst_ps);
                        tile16(
                            (ms, np, kc),
                            at,
                            dst_ps as usize,
                            src,
                            panels.as_ptr().add(pi * kc * MR),
                            acc,
                        );
                    }
                }
            }
        }
    });
    true
}

/// `out[q][i] = rows[i * ld + q]` for 16 rows of `kc` floats, `ld` apart: a `[16][kc]` block
/// as the `[kc][16]` panel or strip the kernel reads.
///
/// # Safety
/// AVX-512F; `rows` holds the 16 rows, `out` `16 kc` floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_rows(rows: *const f32, ld: usize, kc: usize, out: *mut f32) {
    let op = Operand {
        ptr: rows,
        is: ld as isize,
        qs: 1,
    };
    pack16(op, (0, 0), MR, kc, out);
}

/// Rows `i0..i0 + cnt` (`cnt ≤ 16`) of `m` at steps `q0..q0 + kc` as `out[q][16]`, zero
/// past `cnt` (the packing of [`matmul`]'s strips, for `super::packed`).
///
/// # Safety
/// AVX-512F; the elements named lie inside `m`; `out` holds `16 kc` floats.
pub(super) unsafe fn pack_strip(m: Mat, at: (usize, usize), cnt: usize, kc: usize, out: *mut f32) {
    let op = Operand {
        ptr: m.ptr,
        is: m.rs,
        qs: m.cs,
    };
    pack16(op, at, cnt, kc, out);
}

/// Packs rows `i0..i0 + cnt` (`cnt ≤ 16`) at inner steps `q0..q0 + kc` of `op` into
/// `out[q][16]` (`q < kc`), zero past `cnt`.
///
/// # Safety
/// AVX-512F; the elements named lie inside `op`; `out` holds `16 kc` floats.
#[target_feature(enable = "avx512f")]
unsafe fn pack16(op: Operand, (i0, q0): (usize, usize), cnt: usize, kc: usize, out: *mut f32) {
    let rows: __mmask16 = if cnt >= MR { !0 } else { (1 << cnt) - 1 };
    if op.is == 1 {
        for q in 0..kc {
            let v = _mm512_maskz_loadu_ps(rows, op.at(i0, q0 + q));
            _mm512_storeu_ps(out.add(q * MR), v);
        }
    } else if op.qs == 1 {
        for qb in (0..kc).step_by(MR) {
            let qn = MR.min(kc - qb);
            let steps: __mmask16 = if qn >= MR { !0 } else { (1 << qn) - 1 };
            // rows past cnt are zero (constant indices keep the rows in registers)
            let row = |i: usize| {
                if i < cnt {
                    _mm512_maskz_loadu_ps(steps, op.at(i0 + i, q0 + qb))
                } else {
                    _mm512_setzero_ps()
                }
            };
            let r = [
                row(0),
                row(1),
                row(2),
                row(3),
                row(4),
                row(5),
                row(6),
                row(7),
                row(8),
                row(9),
                row(10),
                row(11),
                row(12),
                row(13),
                row(14),
                row(15),
            ];
            let t = transpose16(r);
            // the stores written out with constant indices: as a loop over the array, LLVM
            // spilled the 16 vectors and copied them with a call to memcpy per block (2 % of
            // a Split-VAE step in `perf`)
            macro_rules! store {
                ($($q:literal)*) => {$(
                    if $q < qn {
                        _mm512_storeu_ps(out.add((qb + $q) * MR), t[$q]);
                    }
                )*};
            }
            store!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        }
    } else {
        for q in 0..kc {
            for i in 0..MR {
                *out.add(q * MR + i) = if i < cnt { *op.at(i0 + i, q0 + q) } else { 0.0 };
            }
        }
    }
}

/// The transpose of a 16 x 16 block held as 16 row vectors (inlined: as a call, its result
/// went through the stack, and the packing loops copied it out with `memcpy`).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // interleave pairs of rows (32-bit), then pairs of pairs (64-bit), then 128-bit lanes
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let b = 4 * i;
        u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    // u[4g + c] holds, per 128-bit lane l, column 4l + c of rows 4g..4g + 4
    let mut v = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        v[c] = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        v[4 + c] = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        v[8 + c] = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        v[12 + c] = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        out[c] = _mm512_shuffle_f32x4::<0x88>(v[c], v[8 + c]);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v[4 + c], v[12 + c]);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v[c], v[8 + c]);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v[4 + c], v[12 + c]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn transpose16_transposes() {
        if !has_avx512() {
            return;
        }
        let a = values(256, 3);
        let mut out = [0f32; 256];
        // SAFETY: AVX-512F checked; 16 rows of 16 floats in and out.
        unsafe {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, ri) in r.iter_mut().enumerate() {
                *ri = _mm512_loadu_ps(a.as_ptr().add(16 * i));
            }
            for (i, v) in transpose16(r).iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *v);
            }
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[j * 16 + i], a[i * 16 + j], "({i}, {j})");
            }
        }
    }

    /// Every stride combination the convolutions use (and a scalar-packed one), partial
    /// strips, panels and slices, storing into a padded layout and accumulating; elements
    /// outside the layout stay untouched.
    #[test]
    fn matmul_matches_reference() {
        if !has_avx512() {
            return;
        }
        for &(m, n, k) in &[
            (40, 35, 300),
            (16, 16, 16),
            (3, 20, 5),
            (300, 17, 1),
            (33, 290, 70),
            (97, 24, 300),
        ] {
            // (lhs row-major | column-major | strided), (rhs row-major | column-major)
            for lhs_kind in 0..3 {
                for rhs_kind in 0..2 {
                    for dst_rowmajor in [false, true] {
                        for accumulate in [false, true] {
                            check(m, n, k, lhs_kind, rhs_kind, dst_rowmajor, accumulate);
                        }
                    }
                }
            }
        }
    }

    fn check(m: usize, n: usize, k: usize, lk: u8, rk: u8, dst_rm: bool, accumulate: bool) {
        let a = values(2 * m * k + 8, 11);
        let b = values(k * n + 8, 13);
        let (a_rs, a_cs) = match lk {
            0 => (k as isize, 1),
            1 => (1, m as isize),
            _ => (2 * k as isize, 2),
        };
        let (b_rs, b_cs) = if rk == 0 {
            (n as isize, 1)
        } else {
            (1, k as isize)
        };
        let ld = if dst_rm { n + 3 } else { m + 5 };
        let (d_rs, d_cs) = if dst_rm {
            (ld as isize, 1)
        } else {
            (1, ld as isize)
        };
        let len = if dst_rm { m * ld } else { n * ld };
        let init = values(len, 17);
        let mut want = init.clone();
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|q| {
                        a[(i as isize * a_rs + q as isize * a_cs) as usize] as f64
                            * b[(q as isize * b_rs + j as isize * b_cs) as usize] as f64
                    })
                    .sum();
                let at = (i as isize * d_rs + j as isize * d_cs) as usize;
                want[at] = if accumulate {
                    want[at] + s as f32
                } else {
                    s as f32
                };
            }
        }
        let mut got = init.clone();
        let mat = |v: &[f32], rs, cs| Mat {
            ptr: v.as_ptr(),
            rs,
            cs,
        };
        // SAFETY: the operands and dst hold every element their strides reach.
        let done = unsafe {
            matmul(
                got.as_mut_ptr(),
                mat(&got, d_rs, d_cs),
                (m, n, k),
                mat(&a, a_rs, a_cs),
                mat(&b, b_rs, b_cs),
                accumulate,
            )
        };
        let panel_side = if dst_rm { m } else { n };
        assert_eq!(done, panel_side >= 16, "applies for {m}x{n}x{k}");
        if !done {
            return;
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{m}x{n}x{k} lhs {lk} rhs {rk} row-major dst {dst_rm} acc {accumulate} at {i}: {g} vs {w}"
            );
        }
    }
}
