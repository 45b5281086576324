//! Right operands packed once per call for the AVX-512 kernel ([`super::micro::tile16`]):
//! the transformed weights of the Winograd forwards, which every group of tiles on every
//! thread multiplies with.
//!
//! [`super::wide::matmul`] packs its panel operand into `[kc][16]` panels on every call. For
//! a weight matrix that is one copy of the whole matrix per group of tiles: at the 128 → 256
//! layer (one 4x4 output tile per image, 32 images per thread), the Winograd forward spent
//! 14 % of its time in that copy and another 14 % in the scalar filter transform that wrote
//! the matrix before it. Here the filter transform writes the panels directly (16 output
//! channels per vector, after a 16 x 16 register transpose of the weights), and the
//! products read them in place.
//!
//! Layout: `[n / 16 blocks][points][k][16]`: column `j` of point `p`'s `k x n` matrix, step
//! `q`, at `((j / 16 · points + p) · k + q) · 16 + j % 16`. A block's panels for one point
//! are `16 k` contiguous floats, so a slice of steps `q0..q0 + kc` is the `[kc][16]` panel
//! the kernel reads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::micro::{band48, has_avx512, tile16, MR, WIDE};
use super::mm::Mat;
use super::wide::pack_strip;
use crate::model::activation::filled_vec;

/// Inner-dimension steps per slice of the products (as [`super::wide`]).
const KC: usize = 256;

/// `points` matrices `k x n`, packed as 16-column panels (module docs).
pub(super) struct Panels {
    data: Vec<f32>,
    points: usize,
    k: usize,
    n: usize,
}

impl Panels {
    /// Whether products with `n` columns run on packed panels: the AVX-512 kernel is
    /// available and `n` is a whole number of panels.
    pub(super) fn applies(n: usize) -> bool {
        n > 0 && n.is_multiple_of(WIDE) && has_avx512()
    }

    /// Fills the panels block by block in parallel: `fill(block, out)` writes all of block
    /// `block`'s `points · k · 16` values (`out[(p · k + q) · 16 + j]` for column
    /// `16 · block + j`).
    ///
    /// # Safety
    /// `fill` writes every value of its block.
    pub(super) unsafe fn build(
        points: usize,
        k: usize,
        n: usize,
        fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
    ) -> Self {
        assert!(n.is_multiple_of(WIDE) && k > 0);
        let per = points * k * WIDE;
        let run = |u: &mut [MaybeUninit<f32>]| {
            u.par_chunks_mut(per)
                .enumerate()
                .for_each(|(jb, out)| fill(jb, out))
        };
        // SAFETY: the chunks cover the buffer and the caller's fill writes each of them.
        let data = unsafe { filled_vec(points * k * n, run) };
        Panels { data, points, k, n }
    }

    pub(super) fn k(&self) -> usize {
        self.k
    }

    pub(super) fn n(&self) -> usize {
        self.n
    }

    /// The packed value of point `p`, step `q`, column `j` (for tests).
    #[cfg(test)]
    fn at(&self, p: usize, q: usize, j: usize) -> f32 {
        self.data[((j / WIDE * self.points + p) * self.k + q) * WIDE + j % WIDE]
    }

    /// `dst (+)= lhs · panels[p]` (`m x n`, inner dimension `k`): `dst` column-major with
    /// columns `ld` apart (uninitialised allowed without `accumulate`), `lhs` `m x k` at its
    /// strides, on this thread.
    ///
    /// # Safety
    /// AVX-512F ([`Self::applies`]); `lhs` holds every element its strides reach for
    /// `m x k`; `dst` holds `m` floats at each of `n` columns `ld` apart.
    pub(super) unsafe fn product(
        &self,
        p: usize,
        dst: *mut f32,
        ld: usize,
        m: usize,
        lhs: Mat,
        accumulate: bool,
    ) {
        assert!(p < self.points && (m == 0 || ld >= m));
        let (k, n) = (self.k, self.n);
        let base = self.data.as_ptr().add(p * k * WIDE);
        let block = self.points * k * WIDE;
        let mut strip = [0f32; MR * KC];
        for q0 in (0..k).step_by(KC) {
            let kc = KC.min(k - q0);
            let acc = accumulate || q0 > 0;
            // three in-place strips at a time on the 48 x 8 kernel
            let mut s0 = 0;
            if lhs.rs == 1 && lhs.cs > 0 {
                while s0 + 3 * MR <= m {
                    let src = (
                        lhs.ptr.offset(s0 as isize + q0 as isize * lhs.cs),
                        lhs.cs as usize,
                    );
                    let panel = |jb: usize| base.add(jb * block + q0 * WIDE);
                    band48(kc, (dst.add(s0), ld), src, n, panel, acc);
                    s0 += 3 * MR;
                }
            }
            for s0 in (s0..m).step_by(MR) {
                let ms = MR.min(m - s0);
                // a full strip laid out as 16 floats per step is read in place
                let src = if lhs.rs == 1 && ms == MR && lhs.cs > 0 {
                    (
                        lhs.ptr.offset(s0 as isize + q0 as isize * lhs.cs),
                        lhs.cs as usize,
                    )
                } else {
                    pack_strip(lhs, (s0, q0), ms, kc, strip.as_mut_ptr());
                    (strip.as_ptr(), MR)
                };
                for jb in 0..n / WIDE {
                    tile16(
                        (ms, WIDE, kc),
                        dst.add(s0 + jb * WIDE * ld),
                        ld,
                        src,
                        base.add(jb * block + q0 * WIDE),
                        acc,
                    );
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Products on packed panels against a plain triple loop: full and partial strips,
    /// strips read in place and packed, more steps than one slice, storing and accumulating.
    #[test]
    fn panel_products_match_reference() {
        if !Panels::applies(16) {
            return;
        }
        let mut seed = 11u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (m, n, k, points) in [
            (37, 32, 300, 3),
            (16, 16, 5, 1),
            (5, 48, 17, 2),
            (100, 32, 270, 2),
        ] {
            let w: Vec<f32> = (0..points * k * n).map(|_| next()).collect();
            // SAFETY: the fill writes every value of its block.
            let panels = unsafe {
                Panels::build(points, k, n, |jb, out| {
                    for p in 0..points {
                        for q in 0..k {
                            for j in 0..WIDE {
                                let col = jb * WIDE + j;
                                out[(p * k + q) * WIDE + j].write(w[(p * k + q) * n + col]);
                            }
                        }
                    }
                })
            };
            assert_eq!(panels.at(points - 1, k - 1, n - 1), w[points * k * n - 1]);
            let lhs: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let ld = m + 3;
            for (p, (row_major, accumulate)) in [(false, false), (true, true), (false, true)]
                .into_iter()
                .enumerate()
                .map(|(i, c)| (i % points, c))
            {
                // column-major lhs (rs 1: strips in place) or row-major (packed strips)
                let (lm, rs, cs) = if row_major {
                    (lhs.clone(), k as isize, 1)
                } else {
                    let mut t = vec![0.0; m * k];
                    for i in 0..m {
                        for q in 0..k {
                            t[q * m + i] = lhs[i * k + q];
                        }
                    }
                    (t, 1, m as isize)
                };
                let init: Vec<f32> = (0..ld * n).map(|_| next()).collect();
                let mut got = init.clone();
                let view = Mat {
                    ptr: lm.as_ptr(),
                    rs,
                    cs,
                };
                // SAFETY: AVX-512F (applies); the buffers hold the operands and the output.
                unsafe { panels.product(p, got.as_mut_ptr(), ld, m, view, accumulate) };
                for j in 0..n {
                    for i in 0..ld {
                        let at = j * ld + i;
                        if i >= m {
                            assert_eq!(got[at], init[at], "row {i} past m was written");
                            continue;
                        }
                        let s: f64 = (0..k)
                            .map(|q| lhs[i * k + q] as f64 * w[(p * k + q) * n + j] as f64)
                            .sum();
                        let want = s as f32 + if accumulate { init[at] } else { 0.0 };
                        assert!(
                            (got[at] - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "m {m} n {n} k {k} p {p} at ({i}, {j}): {} vs {want}",
                            got[at]
                        );
                    }
                }
            }
        }
    }
}
