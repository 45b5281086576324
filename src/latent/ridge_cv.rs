//! Ridge regression with λ chosen by exact leave-one-out error ([`super::Estimator::RidgeCv`]).
//!
//! **High dimension.** A flow's codes have 12,288 dimensions while a support set has 150
//! points, so `XᵀX` (`d x d`) is singular and would cost `d³`. Everything here works on the
//! smaller side: with `n < d` on the `n x n` Gram matrix `XXᵀ = U Λ Uᵀ` (the dual, kernel
//! form `W = Xᵀ(XXᵀ + λI)⁻¹Y`), otherwise on `XᵀX = V Λ Vᵀ` (`W = V (Λ + λI)⁻¹ Vᵀ XᵀY`, with
//! `U = XVΛ^{-½}`). One eigendecomposition, of size `min(n, d)`, serves every λ of the grid.
//!
//! **Choosing λ.** For each λ of a grid the leave-one-out residuals are exact and cheap:
//! with the hat matrix `H = U diag(λ_k / (λ_k + λ)) Uᵀ`, the residual of point `i` when it is
//! left out of the fit is `(y_i − ŷ_i) / (1 − H_ii)` (`ŷ` from the fit on all points). The
//! error of λ is the mean of their squares over all points and target dimensions; the λ
//! with the smallest error is used. The grid is `mean(λ_k) · 10^e` for `e` from −6 to 3 in
//! half decades. No bias term (like `ridge:λ`).

use nalgebra::{DMatrix, DVector};

use super::linalg::{cross_products, matmul_f32};
use super::{LatentError, Result};

/// Exponents `e` of the λ grid `mean eigenvalue · 10^e`.
const GRID_EXPONENTS: (i32, i32) = (-12, 6);
/// Eigenvalues below `λmax · RANK_TOL` are dropped (they carry no signal at any λ of the grid).
const RANK_TOL: f64 = 1e-12;

/// A ridge fit with λ chosen by leave-one-out error.
pub(crate) struct RidgeCvFit {
    /// `d_source x d_target`.
    pub weight: DMatrix<f64>,
    /// The chosen λ (on the sum of squares, as in `ridge:λ`).
    pub lambda: f64,
    /// Its leave-one-out mean squared error (per entry of the target).
    pub loo_mse: f64,
    /// Number of eigen-components kept (numerical rank of `X`).
    pub rank: usize,
    /// `λmax / λmin` of `XᵀX`; `None` when it is singular (always when `n < d`).
    pub condition: Option<f64>,
}

/// Fits `Y ≈ X W` by ridge with λ chosen by exact leave-one-out error over the grid.
/// `x`: `n x d`, `y`: `n x d_t`, rows paired and finite (checked by the caller), `n ≥ 2`.
pub(crate) fn fit_ridge_cv(x: &DMatrix<f32>, y: &DMatrix<f32>) -> Result<RidgeCvFit> {
    let (n, d) = x.shape();
    let dual = n < d;
    // Eigen-decomposition of the smaller Gram matrix.
    let gram = if dual {
        cross_products(&x.transpose(), None).0
    } else {
        cross_products(x, None).0
    };
    if gram.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(
            "the cross products overflowed (codes too large)".into(),
        ));
    }
    let eig = nalgebra::SymmetricEigen::new(gram);
    let lmax = eig.eigenvalues.iter().cloned().fold(0.0f64, f64::max);
    if lmax <= 0.0 {
        return Err(LatentError::Degenerate(
            "the source codes are all zero (or have zero variance)".into(),
        ));
    }
    let lmin = eig
        .eigenvalues
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    let keep: Vec<usize> = (0..eig.eigenvalues.len())
        .filter(|&k| eig.eigenvalues[k] > lmax * RANK_TOL)
        .collect();
    let r = keep.len();
    let ev = DVector::from_iterator(r, keep.iter().map(|&k| eig.eigenvalues[k]));
    let vecs = eig.eigenvectors.select_columns(keep.iter());
    // U: n x r orthonormal columns spanning the column space of X.
    let u = if dual {
        vecs.clone()
    } else {
        let xv = x.map(f64::from) * &vecs;
        let mut u = xv;
        for (k, mut col) in u.column_iter_mut().enumerate() {
            col /= ev[k].sqrt();
        }
        u
    };
    let u32 = u.map(|v| v as f32);
    // P = UᵀY (r x d_t), C = Y Pᵀ (n x r), M = P Pᵀ (r x r).
    let p = matmul_f32(&u32.transpose(), y)?;
    let c = matmul_f32(y, &p.transpose())?.map(f64::from);
    let p64 = p.map(f64::from);
    let m = &p64 * p64.transpose();
    let yy: Vec<f64> = (0..n)
        .map(|i| y.row(i).iter().map(|&v| f64::from(v).powi(2)).sum())
        .collect();
    let mean_ev = ev.sum() / r as f64;
    let mut curve = Vec::new();
    for e in GRID_EXPONENTS.0..=GRID_EXPONENTS.1 {
        let lambda = mean_ev * 10f64.powf(e as f64 / 2.0);
        let f = ev.map(|l| l / (l + lambda));
        curve.push((lambda, loo_mse(&u, &f, &c, &m, &yy, y.ncols())));
    }
    let (lambda, loo) = curve
        .iter()
        .copied()
        .filter(|(_, e)| e.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| {
            LatentError::Degenerate("no λ of the grid gives a finite leave-one-out error".into())
        })?;
    log::debug!("ridge-cv: (λ, leave-one-out MSE) = {curve:?}");
    if curve.first().is_some_and(|c| c.0 == lambda) || curve.last().is_some_and(|c| c.0 == lambda) {
        log::warn!("ridge-cv: the chosen λ = {lambda:e} is at the edge of the grid");
    }
    // W = Xᵀ U diag(1/(λ_k + λ)) P (dual) = V diag(√λ_k/(λ_k + λ)) P (primal).
    let mut b = p64;
    for (k, mut row) in b.row_iter_mut().enumerate() {
        row *= 1.0 / (ev[k] + lambda);
    }
    let weight = if dual {
        x.transpose().map(f64::from) * (&u * b)
    } else {
        for (k, mut row) in b.row_iter_mut().enumerate() {
            row *= ev[k].sqrt();
        }
        vecs * b
    };
    if weight.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(
            "ridge-cv gave a non-finite map".into(),
        ));
    }
    let condition = (!dual && lmin > 0.0 && r == d).then(|| lmax / lmin);
    Ok(RidgeCvFit {
        weight,
        lambda,
        loo_mse: loo,
        rank: r,
        condition,
    })
}

/// Mean squared leave-one-out residual for shrink factors `f` (`r`): with `U` (`n x r`),
/// `C = Y Pᵀ` (`n x r`), `M = P Pᵀ` (`r x r`) and `yy_i = ‖y_i‖²`, the in-sample residual of
/// point `i` has squared norm `yy_i − 2 Σ_k U_ik f_k C_ik + (U_i∘f) M (U_i∘f)ᵀ` and its
/// leverage is `H_ii = Σ_k U_ik² f_k`.
fn loo_mse(
    u: &DMatrix<f64>,
    f: &DVector<f64>,
    c: &DMatrix<f64>,
    m: &DMatrix<f64>,
    yy: &[f64],
    d_t: usize,
) -> f64 {
    let (n, r) = u.shape();
    let mut uf = u.clone();
    for (k, mut col) in uf.column_iter_mut().enumerate() {
        col *= f[k];
    }
    let ufm = &uf * m;
    let mut total = 0.0;
    for i in 0..n {
        let mut cross = 0.0;
        let mut quad = 0.0;
        let mut h = 0.0;
        for k in 0..r {
            cross += uf[(i, k)] * c[(i, k)];
            quad += ufm[(i, k)] * uf[(i, k)];
            h += uf[(i, k)] * u[(i, k)];
        }
        let resid2 = (yy[i] - 2.0 * cross + quad).max(0.0);
        let denom = 1.0 - h;
        if denom <= 1e-12 {
            return f64::INFINITY;
        }
        total += resid2 / (denom * denom);
    }
    total / (n * d_t) as f64
}
