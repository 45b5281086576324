//! `acc[co, r] += Σ_p gy[co, p] · cols[r, p]`: a convolution's weight gradient as dot
//! products of contiguous rows, for few output channels (the decoders' RGB output conv,
//! 16 → 3) or many pixels per image.
//!
//! Both operands are contiguous along the summed pixels, so gemm packs one of them for every
//! image, and its microkernel spans 16 output rows: with 3 it ran at 13 GFLOP/s, the slowest
//! kernel of a VAE step (perf). Here each pass keeps `CO x RB` dot products (at most 4 x 3)
//! in registers and reads `CO + RB` rows once: bound by the FMA units, with no packing.

/// `acc` (`c_out x rows`, row-major) `+= gy` (`c_out x n`) `· colsᵀ` (`cols`: `rows x n` at
/// row stride `ld` ≥ `n`), any `c_out` (in groups of at most 4).
pub(super) fn nt_dots(
    gy: &[f32],
    cols: &[f32],
    ld: usize,
    c_out: usize,
    rows: usize,
    n: usize,
    acc: &mut [f32],
) {
    assert!(
        ld >= n
            && gy.len() >= c_out * n
            && (rows == 0 || cols.len() >= (rows - 1) * ld + n)
            && acc.len() >= c_out * rows
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the slices hold the asserted sizes.
        unsafe {
            match c_out {
                1 => fma::rows::<1, 8>(gy, cols, ld, rows, n, acc),
                2 => fma::rows::<2, 6>(gy, cols, ld, rows, n, acc),
                3 => fma::rows::<3, 4>(gy, cols, ld, rows, n, acc),
                4 => fma::rows::<4, 3>(gy, cols, ld, rows, n, acc),
                _ => {
                    // groups of 4 output channels, each over every row
                    let mut co = 0;
                    while co < c_out {
                        let (g, a) = (&gy[co * n..], &mut acc[co * rows..]);
                        match c_out - co {
                            1 => fma::rows::<1, 8>(g, cols, ld, rows, n, a),
                            2 => fma::rows::<2, 6>(g, cols, ld, rows, n, a),
                            3 => fma::rows::<3, 4>(g, cols, ld, rows, n, a),
                            _ => fma::rows::<4, 3>(g, cols, ld, rows, n, a),
                        }
                        co += 4;
                    }
                }
            }
        }
        return;
    }
    for co in 0..c_out {
        let g = &gy[co * n..][..n];
        for r in 0..rows {
            let c = &cols[r * ld..][..n];
            acc[co * rows + r] += g.iter().zip(c).map(|(a, b)| a * b).sum::<f32>();
        }
    }
}

/// Whether [`nt_dots`] beats gemm for `c_out` output channels over `n` pixels: with few
/// output channels, or with many pixels per image (long dot products; measured on the VAE's
/// shapes at batch 64: 64x64 → 32x32 with 32 channels 12.8 → 6.5 ms, while at 16x16 and
/// below gemm stays ahead, by up to 4.6x at 4x4).
pub(super) fn preferred(c_out: usize, n: usize) -> bool {
    c_out <= 4 || n >= 1024
}

/// `acc[a * 3 + b] += Σ_{p < n} gy[a * n + p] · x[b + p]` for `a < c_out` (1 to 4) and
/// `b < 3`: `c_out` rows against one row at the shifts 0, 1 and 2, read once per pass (a
/// stride-1 3x3 convolution's weight gradient over one band of padded rows, `direct.rs`).
/// Without AVX2 and FMA, plain loops.
pub(super) fn shifted_dots3(gy: &[f32], x: &[f32], c_out: usize, n: usize, acc: &mut [f32]) {
    assert!(
        (1..=4).contains(&c_out)
            && gy.len() >= c_out * n
            && x.len() >= n + 2
            && acc.len() >= c_out * 3
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above); row b of the shifted view (ld 1)
        // is x[b..b + n], inside x by the assert, and the gy rows and acc are too.
        unsafe {
            match c_out {
                1 => fma::block::<1, 3>(gy, x, 1, 0, 3, n, acc),
                2 => fma::block::<2, 3>(gy, x, 1, 0, 3, n, acc),
                3 => fma::block::<3, 3>(gy, x, 1, 0, 3, n, acc),
                _ => fma::block::<4, 3>(gy, x, 1, 0, 3, n, acc),
            }
        }
        return;
    }
    for a in 0..c_out {
        let g = &gy[a * n..][..n];
        for b in 0..3 {
            acc[a * 3 + b] += g.iter().zip(&x[b..b + n]).map(|(u, v)| u * v).sum::<f32>();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    /// All `rows` rows of `cols`, `RB` at a time (the remainder one by one).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows<const CO: usize, const RB: usize>(
        gy: &[f32],
        cols: &[f32],
        ld: usize,
        rows: usize,
        n: usize,
        acc: &mut [f32],
    ) {
        let mut r = 0;
        while r + RB <= rows {
            block::<CO, RB>(gy, cols, ld, r, rows, n, acc);
            r += RB;
        }
        while r < rows {
            block::<CO, 1>(gy, cols, ld, r, rows, n, acc);
            r += 1;
        }
    }

    /// `acc[a, r0 + b] += gy[a, :] · cols[r0 + b, :]` for `a < CO`, `b < RB` (row `r` of
    /// `cols` at `r · ld`: `ld` may be shorter than a row, for overlapping shifted rows).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const CO: usize, const RB: usize>(
        gy: &[f32],
        cols: &[f32],
        ld: usize,
        r0: usize,
        rows: usize,
        n: usize,
        acc: &mut [f32],
    ) {
        let full = n / 8 * 8;
        let g = gy.as_ptr();
        let c = cols.as_ptr().add(r0 * ld);
        let mut s = [[_mm256_setzero_ps(); RB]; CO];
        let mut p = 0;
        while p < full {
            let mut cv = [_mm256_setzero_ps(); RB];
            for (b, v) in cv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(c.add(b * ld + p));
            }
            for (a, sa) in s.iter_mut().enumerate() {
                let gv = _mm256_loadu_ps(g.add(a * n + p));
                for (sab, v) in sa.iter_mut().zip(&cv) {
                    *sab = _mm256_fmadd_ps(gv, *v, *sab);
                }
            }
            p += 8;
        }
        for (a, sa) in s.iter().enumerate() {
            for (b, sab) in sa.iter().enumerate() {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *sab);
                let mut t: f32 = lanes.iter().sum();
                for q in full..n {
                    t += gy[a * n + q] * cols[(r0 + b) * ld + q];
                }
                acc[a * rows + r0 + b] += t;
            }
        }
    }
}
