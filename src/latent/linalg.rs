//! Dense kernels shared by the estimators and metrics: cross products `XᵀY` accumulated in
//! `f64`, a multi-threaded `f32` matrix product, column means, and a Cholesky solve of the
//! normal equations with condition check and ridge fallback.
//!
//! All matrices are nalgebra column-major; codes have one row per sample.

use nalgebra::{DMatrix, DVector};
use rayon::prelude::*;

use super::{LatentError, Result};

/// Rows per block of the cross products: products inside a block are summed by `f32` gemm,
/// block results are added in `f64`.
pub const BLOCK_ROWS: usize = 4096;

/// Above this condition number of `XᵀX` (i.e. cond(X) > 1e5) plain least squares falls back
/// to a small ridge term.
pub const COND_LIMIT: f64 = 1e10;

/// Relative size of the fallback ridge term: `λ = RIDGE_FALLBACK_REL · trace(XᵀX) / d`.
pub const RIDGE_FALLBACK_REL: f64 = 1e-6;

/// Multiply-adds below which gemm runs single-threaded.
const PARALLEL_WORK: usize = 8_000_000;

fn parallelism(work: usize) -> gemm::Parallelism {
    if work < PARALLEL_WORK || rayon::current_num_threads() < 2 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// `XᵀX` (`d1 x d1`) and, when `y` is given, `XᵀY` (`d1 x d2`), for `x: N x d1`,
/// `y: N x d2`, both in `f64`. Rows of `x` and `y` must be paired (caller checks `N`).
pub fn cross_products(
    x: &DMatrix<f32>,
    y: Option<&DMatrix<f32>>,
) -> (DMatrix<f64>, Option<DMatrix<f64>>) {
    let (n, d1) = x.shape();
    let d2 = y.map_or(0, |y| y.ncols());
    let num_blocks = n.div_ceil(BLOCK_ROWS);
    let threads = rayon::current_num_threads().max(1);
    // Many blocks: threads over blocks, one gemm each single-threaded. Few: threads in gemm.
    let inner = if num_blocks >= 2 * threads {
        gemm::Parallelism::None
    } else {
        parallelism(n * d1 * (d1 + d2))
    };
    let xs = x.as_slice();
    let ys = y.map(|y| y.as_slice());
    let zero = || {
        (
            vec![0f64; d1 * d1],
            vec![0f64; d1 * d2],
            vec![0f32; d1 * d1.max(d2)],
        )
    };
    let (gx, gy, _) = (0..num_blocks)
        .into_par_iter()
        .fold(zero, |(mut gx, mut gy, mut buf), b| {
            let r0 = b * BLOCK_ROWS;
            let rows = BLOCK_ROWS.min(n - r0);
            block_product(xs, n, d1, xs, d1, r0, rows, &mut buf[..d1 * d1], inner);
            add_into(&mut gx, &buf[..d1 * d1]);
            if let Some(ys) = ys {
                block_product(xs, n, d1, ys, d2, r0, rows, &mut buf[..d1 * d2], inner);
                add_into(&mut gy, &buf[..d1 * d2]);
            }
            (gx, gy, buf)
        })
        .reduce(zero, |(mut a, mut b, buf), (c, d, _)| {
            a.iter_mut().zip(&c).for_each(|(p, q)| *p += q);
            b.iter_mut().zip(&d).for_each(|(p, q)| *p += q);
            (a, b, buf)
        });
    let gram = DMatrix::from_vec(d1, d1, gx);
    // Symmetrise exactly (the two triangles are computed by different microkernel lanes).
    let gram = (&gram + gram.transpose()) * 0.5;
    let xty = y.map(|_| DMatrix::from_vec(d1, d2, gy));
    (gram, xty)
}

fn add_into(acc: &mut [f64], block: &[f32]) {
    acc.iter_mut()
        .zip(block)
        .for_each(|(a, b)| *a += f64::from(*b));
}

/// `dst (d1 x d2, column-major) = A[r0..r0+rows, :]ᵀ · B[r0..r0+rows, :]` for column-major
/// `a: n x d1`, `b: n x d2`.
#[allow(clippy::too_many_arguments)]
fn block_product(
    a: &[f32],
    n: usize,
    d1: usize,
    b: &[f32],
    d2: usize,
    r0: usize,
    rows: usize,
    dst: &mut [f32],
    par: gemm::Parallelism,
) {
    if d1 == 0 || d2 == 0 || rows == 0 {
        dst.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    debug_assert!(a.len() >= n * d1 && b.len() >= n * d2 && dst.len() >= d1 * d2);
    debug_assert!(r0 + rows <= n);
    // SAFETY: lhs(i, k) = a[r0 + k + i*n] for i < d1, k < rows, which is < n*d1 = a.len();
    // rhs(k, j) = b[r0 + k + j*n] < n*d2 = b.len(); dst(i, j) = dst[i + j*d1] < d1*d2.
    unsafe {
        gemm::gemm(
            d1,
            d2,
            rows,
            dst.as_mut_ptr(),
            d1 as isize,
            1,
            false,
            a.as_ptr().add(r0),
            1,
            n as isize,
            b.as_ptr().add(r0),
            n as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// `a · b` for `a: m x k`, `b: k x n` (both `f32`), multi-threaded through gemm when large.
/// Errors on mismatched inner dimensions.
pub fn matmul_f32(a: &DMatrix<f32>, b: &DMatrix<f32>) -> Result<DMatrix<f32>> {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    if k != k2 {
        return Err(LatentError::Shape(format!(
            "cannot multiply {m} x {k} by {k2} x {n}"
        )));
    }
    let mut out = DMatrix::<f32>::zeros(m, n);
    if m == 0 || n == 0 || k == 0 {
        return Ok(out);
    }
    // SAFETY: all three matrices are contiguous column-major with the stated shapes:
    // a(i, l) = a[i + l*m], b(l, j) = b[l + j*k], out(i, j) = out[i + j*m].
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_slice().as_mut_ptr(),
            m as isize,
            1,
            false,
            a.as_slice().as_ptr(),
            m as isize,
            1,
            b.as_slice().as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism(m * n * k),
        );
    }
    Ok(out)
}

/// Column means of `x` (`N x d`) in `f64` (length `d`; zeros when `N = 0`).
pub fn column_means(x: &DMatrix<f32>) -> DVector<f64> {
    let n = x.nrows();
    let mut means = DVector::<f64>::zeros(x.ncols());
    if n == 0 {
        return means;
    }
    for (j, col) in x.as_slice().chunks_exact(n).enumerate() {
        means[j] = col.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    }
    means
}

/// `x` (`N x d`) with its column means subtracted (in `f32`), and those means (`f64`).
pub fn centred(x: &DMatrix<f32>) -> (DMatrix<f32>, DVector<f64>) {
    let means = column_means(x);
    let mut xc = x.clone();
    for (mut col, m) in xc.column_iter_mut().zip(means.iter()) {
        col.add_scalar_mut(-(*m as f32));
    }
    (xc, means)
}

/// How a normal-equations system was solved.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveInfo {
    /// Numerical rank of the Gram matrix (eigenvalues above `λmax / COND_LIMIT`).
    pub rank: usize,
    /// `λmax / λmin` of the Gram matrix before any ridge term; `None` when `λmin ≤ 0`.
    pub condition: Option<f64>,
    /// The fallback ridge `λ`, when plain least squares was ill-posed.
    pub ridge_fallback: Option<f64>,
}

/// Rank and condition of the symmetric positive semi-definite `gram` (`d x d`).
/// Errors when it is zero or non-finite.
pub fn gram_spectrum(gram: &DMatrix<f64>) -> Result<(usize, Option<f64>)> {
    if gram.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(
            "the cross products overflowed (codes too large)".into(),
        ));
    }
    let eig = gram.clone().symmetric_eigenvalues();
    let lmax = eig.iter().cloned().fold(0.0f64, f64::max);
    if lmax <= 0.0 {
        return Err(LatentError::Degenerate(
            "the source codes are all zero (or have zero variance)".into(),
        ));
    }
    let lmin = eig.iter().cloned().fold(f64::INFINITY, f64::min);
    let rank = eig.iter().filter(|&&l| l > lmax / COND_LIMIT).count();
    let condition = (lmin > 0.0).then(|| lmax / lmin);
    Ok((rank, condition))
}

/// Solves `(gram + λI) W = rhs` for `W` (`d1 x d2`) by Cholesky.
///
/// With `ridge = Some(λ)` that λ is used (λ = 0 means plain least squares but still falls
/// back when singular). With `None` (plain least squares) and a Gram matrix that is singular,
/// of too few points (`num_points < d1`) or with condition above [`COND_LIMIT`], the fallback
/// `λ = RIDGE_FALLBACK_REL · trace / d1` is used and recorded in [`SolveInfo::ridge_fallback`].
pub fn solve_normal(
    gram: &DMatrix<f64>,
    rhs: &DMatrix<f64>,
    ridge: Option<f64>,
    num_points: usize,
) -> Result<(DMatrix<f64>, SolveInfo)> {
    let d = gram.nrows();
    let (rank, condition) = gram_spectrum(gram)?;
    let fallback = RIDGE_FALLBACK_REL * gram.trace() / d as f64;
    let ill_posed = num_points < d || condition.is_none_or(|c| c > COND_LIMIT);
    let mut lambda = match ridge {
        Some(l) if l > 0.0 => l,
        _ if ill_posed => fallback,
        _ => 0.0,
    };
    let mut used_fallback = ridge.is_none_or(|l| l <= 0.0) && lambda > 0.0;
    let w = loop {
        let mut a = gram.clone();
        for i in 0..d {
            a[(i, i)] += lambda;
        }
        match nalgebra::Cholesky::new(a) {
            Some(chol) => break chol.solve(rhs),
            None if lambda < fallback => {
                lambda = fallback;
                used_fallback = true;
            }
            None => {
                return Err(LatentError::Degenerate(format!(
                    "the normal equations are not positive definite even with ridge {lambda:e}"
                )))
            }
        }
    };
    if w.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(
            "the solution of the normal equations is not finite".into(),
        ));
    }
    let info = SolveInfo {
        rank,
        condition,
        ridge_fallback: used_fallback.then_some(lambda),
    };
    Ok((w, info))
}
