//! Comparisons of codes and maps on held-out data: L-MSE (the paper's latent error), its
//! per-dimension profile, linear CKA, the singular values of a map and the cycle error.
//! All sums are in `f64`; every function checks shapes and finiteness.

use nalgebra::DMatrix;

use super::estimators::LinearMap;
use super::linalg::{centred, cross_products};
use super::{check_finite, check_same_rows, LatentError, Result};

fn check_pair(mapped: &DMatrix<f32>, target: &DMatrix<f32>) -> Result<()> {
    if mapped.shape() != target.shape() {
        return Err(LatentError::Shape(format!(
            "mapped codes are {}x{} but target codes are {}x{}",
            mapped.nrows(),
            mapped.ncols(),
            target.nrows(),
            target.ncols()
        )));
    }
    if mapped.is_empty() {
        return Err(LatentError::NotEnoughPoints("no codes to compare".into()));
    }
    check_finite("mapped codes", mapped)?;
    check_finite("target codes", target)
}

/// L-MSE: mean over all `N x d` entries of `(mapped − target)²`; both `N x d`.
pub fn l_mse(mapped: &DMatrix<f32>, target: &DMatrix<f32>) -> Result<f64> {
    check_pair(mapped, target)?;
    let sum: f64 = mapped
        .as_slice()
        .iter()
        .zip(target.as_slice())
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    Ok(sum / mapped.len() as f64)
}

/// L-MSE per target dimension: for each of the `d` columns, the mean over the `N` rows of
/// `(mapped − target)²`. Both `N x d`; returns length `d`.
pub fn per_dim_l_mse(mapped: &DMatrix<f32>, target: &DMatrix<f32>) -> Result<Vec<f64>> {
    check_pair(mapped, target)?;
    let n = mapped.nrows();
    Ok(mapped
        .as_slice()
        .chunks_exact(n)
        .zip(target.as_slice().chunks_exact(n))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (f64::from(*p) - f64::from(*q)).powi(2))
                .sum::<f64>()
                / n as f64
        })
        .collect())
}

/// Linear CKA (Kornblith et al. 2019) between `x` (`N x d1`) and `y` (`N x d2`), rows paired:
/// `‖YcᵀXc‖²_F / (‖XcᵀXc‖_F · ‖YcᵀYc‖_F)` with column-centred `Xc`, `Yc`. In `[0, 1]`;
/// 1 for identical inputs; invariant to orthogonal maps and isotropic scaling. Errors on
/// `N < 2` or a constant input.
pub fn linear_cka(x: &DMatrix<f32>, y: &DMatrix<f32>) -> Result<f64> {
    check_same_rows("x", x, "y", y)?;
    if x.nrows() < 2 {
        return Err(LatentError::NotEnoughPoints(
            "CKA needs at least 2 rows".into(),
        ));
    }
    check_finite("x", x)?;
    check_finite("y", y)?;
    // Centre explicitly (no cancellation), then all products in f64 sums.
    let (xc, _) = centred(x);
    let (yc, _) = centred(y);
    let n = x.nrows();
    let (nx, ny, cross) = if x.ncols().max(y.ncols()) > n {
        // Wide codes (e.g. a flow's 12,288 dimensions): the same quantities from the `N x N`
        // Gram matrices, ‖YcᵀXc‖²_F = ⟨XcXcᵀ, YcYcᵀ⟩_F and ‖XcᵀXc‖_F = ‖XcXcᵀ‖_F.
        let (kx, _) = cross_products(&xc.transpose(), None);
        let (ky, _) = cross_products(&yc.transpose(), None);
        (kx.norm(), ky.norm(), kx.dot(&ky))
    } else {
        let (gxx, gxy) = cross_products(&xc, Some(&yc));
        let (gyy, _) = cross_products(&yc, None);
        let gxy = gxy.ok_or_else(|| LatentError::Degenerate("missing cross product".into()))?;
        (gxx.norm(), gyy.norm(), gxy.norm_squared())
    };
    if !(nx > 0.0 && ny > 0.0) {
        return Err(LatentError::Degenerate(
            "CKA of a constant (zero-variance) input is undefined".into(),
        ));
    }
    Ok((cross / (nx * ny)).clamp(0.0, 1.0))
}

/// Singular values of `w` (any shape, e.g. a map's `d_source x d_target` weight), descending,
/// `min(rows, cols)` of them. Errors on non-finite entries.
pub fn singular_values(w: &DMatrix<f32>) -> Result<Vec<f64>> {
    check_finite("weight", w)?;
    if w.is_empty() {
        return Ok(Vec::new());
    }
    let mut s: Vec<f64> = w.map(f64::from).singular_values().iter().copied().collect();
    s.sort_by(|a, b| b.total_cmp(a));
    Ok(s)
}

/// Cycle error of `map_ab` (`d_a x d_b`) followed by `map_ba` (`d_b x d_a`) on `z_a`
/// (`N x d_a`): the mean over all `N x d_a` entries of `(z_a − map_ba(map_ab(z_a)))²`.
pub fn cycle_error(map_ab: &LinearMap, map_ba: &LinearMap, z_a: &DMatrix<f32>) -> Result<f64> {
    if map_ab.target_dim() != map_ba.source_dim() || map_ba.target_dim() != map_ab.source_dim() {
        return Err(LatentError::Shape(format!(
            "maps {}x{} and {}x{} do not form a cycle",
            map_ab.source_dim(),
            map_ab.target_dim(),
            map_ba.source_dim(),
            map_ba.target_dim()
        )));
    }
    let back = map_ba.apply(&map_ab.apply(z_a)?)?;
    l_mse(&back, z_a)
}
