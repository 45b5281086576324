//! The Winograd kernels' transformed weights written straight into packed panels
//! ([`super::super::packed`]) where the AVX-512 kernel runs: 16 output columns at a time,
//! the weights of 16 columns and one input channel loaded as 16 rows of 16 taps and
//! transposed in registers, so that every tap is one vector over the 16 columns and the
//! filter transform is a few vector additions per phase.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::super::packed::Panels;
use super::super::wide::transpose16;
use super::Dims;

/// G g Gᵀ of 2x2 taps `(a, b; c, d)` as the 9 points, 16 columns per vector (as
/// [`super::filter_tile`]).
#[target_feature(enable = "avx512f")]
#[inline]
fn filter_tile16(a: __m512, b: __m512, c: __m512, d: __m512) -> [__m512; 9] {
    let add = _mm512_add_ps;
    let (ac, bd) = (add(a, c), add(b, d));
    [a, add(a, b), b, ac, add(ac, bd), bd, c, add(c, d), d]
}

/// The forward's transformed kernel as packed panels (9 points, `k = 4·c_in` steps,
/// `c_out` columns): step `4ci + 2by + bx`, tap `(dy, dx)` of the 2x2 kernel
/// `w[co, ci, 2dy + by, 2dx + bx]` (the layout of [`super::forward_filter`]).
pub(super) fn forward_panels(w: &[f32], d: &Dims) -> Panels {
    let (n, c_in) = (d.c_out, d.c_in);
    let k = 4 * c_in;
    assert!(Panels::applies(n) && w.len() >= n * c_in * 16);
    let fill = |jb: usize, out: &mut [MaybeUninit<f32>]| {
        assert!(out.len() >= 9 * k * 16);
        // SAFETY: AVX-512F (Panels::applies); the 16 rows of 16 taps at (co, ci) lie in w
        // (co < n, asserted above); every store lands in this block's 9·k·16 values.
        unsafe {
            transform_block(
                w,
                c_in,
                |ci, j| ((16 * jb + j) * c_in + ci) * 16,
                |ph, dy, dx| (2 * dy + ph / 2) * 4 + 2 * dx + ph % 2,
                (out.as_mut_ptr().cast::<f32>(), |ph, p, ci| {
                    (p * k + 4 * ci + ph) * 16
                }),
            )
        }
    };
    // SAFETY: transform_block writes all 9 points of every step 4ci + ph of its block.
    unsafe { Panels::build(9, k, n, fill) }
}

/// The input gradient's transformed kernels as packed panels (36 points `9·ph + p`, `c_out`
/// steps, `c_in` columns): output phase `(py, px)`'s tap `(dy, dx)` is
/// `w[co, ci, 3 - 2dy - py, 3 - 2dx - px]` (the layout of [`super::grad_input`]'s filter).
pub(super) fn grad_input_panels(w: &[f32], d: &Dims) -> Panels {
    let (n, k) = (d.c_in, d.c_out);
    assert!(Panels::applies(n) && w.len() >= n * k * 16);
    let fill = |jb: usize, out: &mut [MaybeUninit<f32>]| {
        assert!(out.len() >= 36 * k * 16);
        // SAFETY: AVX-512F (Panels::applies); the 16 columns' taps at (co, ci) lie in w
        // (ci < n, co < k, asserted above); every store lands in this block's 36·k·16 values.
        unsafe {
            transform_block(
                w,
                k,
                |co, j| (co * n + 16 * jb + j) * 16,
                |ph, dy, dx| (3 - 2 * dy - ph / 2) * 4 + 3 - 2 * dx - ph % 2,
                (out.as_mut_ptr().cast::<f32>(), |ph, p, co| {
                    ((9 * ph + p) * k + co) * 16
                }),
            )
        }
    };
    // SAFETY: transform_block writes all 36 points 9ph + p of every step of its block.
    unsafe { Panels::build(36, k, n, fill) }
}

/// One block of 16 columns of a Winograd kernel's panels: for each of `steps` steps, the 16
/// columns' 4x4 taps (16 rows of 16 floats at `w + row(step, j)` for column `j`) are
/// transposed so that each tap is one vector over the columns; each of the 4 phases takes
/// the 2x2 taps `tap(phase, dy, dx)` through G g Gᵀ and stores its 9 points at
/// `out + at(phase, point, step)`.
///
/// # Safety
/// AVX-512F; every row and every store lies in `w` / the block `out`.
#[target_feature(enable = "avx512f")]
unsafe fn transform_block(
    w: &[f32],
    steps: usize,
    row: impl Fn(usize, usize) -> usize,
    tap: impl Fn(usize, usize, usize) -> usize,
    (out, at): (*mut f32, impl Fn(usize, usize, usize) -> usize),
) {
    for q in 0..steps {
        let mut rows = [_mm512_setzero_ps(); 16];
        for (j, r) in rows.iter_mut().enumerate() {
            *r = _mm512_loadu_ps(w.as_ptr().add(row(q, j)));
        }
        // t[4·ky + kx] = that tap of the 16 columns
        let t = transpose16(rows);
        for ph in 0..4 {
            let g = |dy: usize, dx: usize| t[tap(ph, dy, dx)];
            let ut = filter_tile16(g(0, 0), g(0, 1), g(1, 0), g(1, 1));
            for (p, v) in ut.into_iter().enumerate() {
                _mm512_storeu_ps(out.add(at(ph, p, q)), v);
            }
        }
    }
}
