//! Distances on the Grassmannian (subspaces of `R^d`), and the Local Basis paper's warpage
//! experiment: how much the local bases of a latent space differ from point to point, from
//! nearby points, from random subspaces and from the global PCA directions; and how well a
//! linear map between two latent spaces carries one model's local basis onto the other's.
//!
//! Subspaces are given by spanning columns (`d x k`); they are orthonormalised by a QR
//! decomposition (in `f64`) first, so any basis of the same span gives the same answer.
//! Principal angles `0 ≤ θ₁ ≤ … ≤ θ_r ≤ π/2`, `r = min(k_a, k_b)`, come from the SVD
//! `QaᵀQb = U Σ Vᵀ`: `cos θᵢ = σᵢ` and `sin θᵢ = ‖Qb vᵢ − Qa uᵢ σᵢ‖` (the part of the `i`-th
//! principal vector outside `span(Qa)`), combined by `atan2`, which is accurate for small and
//! large angles alike (`acos` alone loses half the digits near 0).

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::estimators::LinearMap;
use super::local_basis::{local_basis, pca_directions, DEFAULT_JACOBIAN_EPS};
use super::{check_finite, LatentError, Result};
use crate::model::LatentModel;

/// A distance between subspaces, from their principal angles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GrassmannMetric {
    /// Geodesic (arc-length) distance `√(Σ θᵢ²)`; at most `√k · π/2`.
    Geodesic,
    /// Projection distance `√(Σ sin² θᵢ)` `= ‖P_A − P_B‖_F / √2` for equal dimensions; at most `√k`.
    Projection,
}

impl GrassmannMetric {
    /// The distance between the spans of `a` (`d x k_a`) and `b` (`d x k_b`).
    pub fn distance(self, a: &DMatrix<f32>, b: &DMatrix<f32>) -> Result<f64> {
        Ok(self.of_angles(&principal_angles(a, b)?))
    }
    /// The distance given the principal angles.
    pub fn of_angles(self, angles: &[f64]) -> f64 {
        match self {
            GrassmannMetric::Geodesic => angles.iter().map(|t| t * t).sum::<f64>().sqrt(),
            GrassmannMetric::Projection => {
                angles.iter().map(|t| t.sin().powi(2)).sum::<f64>().sqrt()
            }
        }
    }
    /// The largest possible distance between two `k`-dimensional subspaces.
    pub fn max_distance(self, k: usize) -> f64 {
        let root_k = (k as f64).sqrt();
        match self {
            GrassmannMetric::Geodesic => root_k * std::f64::consts::FRAC_PI_2,
            GrassmannMetric::Projection => root_k,
        }
    }
}

impl std::fmt::Display for GrassmannMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GrassmannMetric::Geodesic => "geodesic",
            GrassmannMetric::Projection => "projection",
        })
    }
}

/// An orthonormal basis (`d x k`, `f64`) of the span of the columns of `m` (`d x k`,
/// `1 ≤ k ≤ d`). Errors on non-finite entries or (numerically) dependent columns.
pub fn orthonormal_basis(what: &str, m: &DMatrix<f32>) -> Result<DMatrix<f64>> {
    let (d, k) = m.shape();
    if k == 0 || k > d {
        return Err(LatentError::Shape(format!(
            "{what} is {d}x{k}: a subspace needs 1 ≤ k ≤ d spanning columns"
        )));
    }
    check_finite(what, m)?;
    let qr = m.map(f64::from).qr();
    let r = qr.r();
    let diag: Vec<f64> = (0..k).map(|i| r[(i, i)].abs()).collect();
    let largest = diag.iter().cloned().fold(0.0f64, f64::max);
    if largest <= 0.0 || largest.is_nan() || diag.iter().any(|&v| v <= 1e-6 * largest) {
        return Err(LatentError::Degenerate(format!(
            "the {k} columns of {what} are linearly dependent (they span less than {k} dimensions)"
        )));
    }
    Ok(qr.q())
}

/// Principal angles (radians, ascending, each in `[0, π/2]`) between the spans of `a`
/// (`d x k_a`) and `b` (`d x k_b`): `min(k_a, k_b)` of them. See the module docs.
pub fn principal_angles(a: &DMatrix<f32>, b: &DMatrix<f32>) -> Result<Vec<f64>> {
    if a.nrows() != b.nrows() {
        return Err(LatentError::Shape(format!(
            "subspaces of different spaces: a has {} rows, b has {}",
            a.nrows(),
            b.nrows()
        )));
    }
    let qa = orthonormal_basis("a", a)?;
    let qb = orthonormal_basis("b", b)?;
    let m = qa.transpose() * &qb;
    let svd = m.svd(true, true);
    let (Some(u), Some(v_t)) = (&svd.u, &svd.v_t) else {
        return Err(LatentError::Degenerate("the SVD of AᵀB failed".into()));
    };
    let r = svd.singular_values.len();
    let mut angles = Vec::with_capacity(r);
    for i in 0..r {
        let sigma = svd.singular_values[i];
        let qb_v = &qb * v_t.row(i).transpose();
        let qa_u = &qa * u.column(i);
        let sin = (qb_v - qa_u * sigma).norm().clamp(0.0, 1.0);
        angles.push(sin.atan2(sigma.clamp(0.0, 1.0)));
    }
    if angles.iter().any(|t| !t.is_finite()) {
        return Err(LatentError::Degenerate(
            "principal angles are not finite".into(),
        ));
    }
    angles.sort_by(f64::total_cmp);
    Ok(angles)
}

/// Geodesic distance `√(Σ θᵢ²)` between the spans of `a` (`d x k_a`) and `b` (`d x k_b`).
pub fn geodesic_distance(a: &DMatrix<f32>, b: &DMatrix<f32>) -> Result<f64> {
    GrassmannMetric::Geodesic.distance(a, b)
}

/// Projection distance `√(Σ sin² θᵢ)` between the spans of `a` and `b` (both `d x k`); equals
/// `‖P_A − P_B‖_F / √2` when `k_a = k_b`.
pub fn projection_distance(a: &DMatrix<f32>, b: &DMatrix<f32>) -> Result<f64> {
    GrassmannMetric::Projection.distance(a, b)
}

/// A uniformly random `k`-dimensional subspace of `R^d` (`1 ≤ k ≤ d`): orthonormal columns
/// (`d x k`) from the QR of a Gaussian matrix, deterministic in `seed`.
pub fn random_subspace(d: usize, k: usize, seed: u64) -> Result<DMatrix<f32>> {
    if k == 0 || k > d {
        return Err(LatentError::InvalidArgument(format!(
            "a random subspace needs 1 ≤ k ≤ d, got k = {k}, d = {d}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let g = DMatrix::<f32>::from_fn(d, k, |_, _| rng.sample(rand_distr::StandardNormal));
    Ok(orthonormal_basis("a Gaussian matrix", &g)?.map(|v| v as f32))
}

/// Mean distance, for each `k` of `ks`, between the spans of the first `k` columns of
/// `bases_a[i]` and `bases_b[i]` (paired, `d x k_max` each), over all pairs `i`.
/// Returns one value per entry of `ks`.
pub fn distance_curve(
    bases_a: &[DMatrix<f32>],
    bases_b: &[DMatrix<f32>],
    ks: &[usize],
    metric: GrassmannMetric,
) -> Result<Vec<f64>> {
    if bases_a.len() != bases_b.len() || bases_a.is_empty() {
        return Err(LatentError::Shape(format!(
            "need equally many non-zero bases, got {} and {}",
            bases_a.len(),
            bases_b.len()
        )));
    }
    ks.iter()
        .map(|&k| {
            let mut sum = 0.0;
            for (a, b) in bases_a.iter().zip(bases_b) {
                if k == 0 || k > a.ncols() || k > b.ncols() {
                    return Err(LatentError::InvalidArgument(format!(
                        "k = {k} but the bases have {} and {} columns",
                        a.ncols(),
                        b.ncols()
                    )));
                }
                let (a_k, b_k) = (a.columns(0, k).into_owned(), b.columns(0, k).into_owned());
                sum += metric.distance(&a_k, &b_k)?;
            }
            Ok(sum / bases_a.len() as f64)
        })
        .collect()
}

/// One row of a [`WarpReport`]: mean distances between `k`-dimensional subspaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarpRow {
    /// Subspace dimension.
    pub k: usize,
    /// Local bases at two random codes of the data.
    pub random_pairs: f64,
    /// Local bases at a code `z` and at `z + eps_near·u`, `u` a random unit vector.
    pub near_pairs: f64,
    /// Two uniformly random subspaces (the baseline of unrelated directions).
    pub random_subspaces: f64,
    /// The local basis at a random code and the global top-`k` PCA directions of the codes.
    pub vs_global_pca: f64,
    /// The largest possible distance for this `k`.
    pub max_distance: f64,
}

/// The Local Basis paper's warpage test of one latent space (its Fig. 5 / Table 3 analogue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarpReport {
    /// Model name.
    pub model: String,
    /// Latent dimension `d`.
    pub latent_dim: usize,
    /// Number of random base points (and of pairs per row).
    pub num_points: usize,
    /// Distance of the nearby points.
    pub eps_near: f32,
    /// Finite-difference step of the Jacobians.
    pub jacobian_eps: f32,
    /// Seed of the point and subspace draws.
    pub seed: u64,
    /// Rows by `k` under the geodesic metric.
    pub geodesic: Vec<WarpRow>,
    /// Rows by `k` under the projection metric.
    pub projection: Vec<WarpRow>,
}

impl WarpReport {
    /// The rows of `metric`.
    pub fn rows(&self, metric: GrassmannMetric) -> &[WarpRow] {
        match metric {
            GrassmannMetric::Geodesic => &self.geodesic,
            GrassmannMetric::Projection => &self.projection,
        }
    }
}

fn check_ks(ks: &[usize], d: usize) -> Result<usize> {
    match ks.iter().copied().max() {
        Some(k_max) if k_max <= d && !ks.contains(&0) => Ok(k_max),
        _ => Err(LatentError::InvalidArgument(format!(
            "subspace dimensions {ks:?} must be non-empty and each in 1..={d}"
        ))),
    }
}

/// The warpage experiment on `model` with base points drawn from `codes` (`N x d`, `N ≥ 2`,
/// typically the model's codes of a dataset): `num_points` random pairs of distinct codes,
/// each first code also paired with a point at distance `eps_near` (the paper uses 0.1), and
/// `num_points` pairs of random subspaces; local bases of dimension `max(ks)` use
/// [`DEFAULT_JACOBIAN_EPS`]. Deterministic in `seed`. Costs `3·num_points` Jacobians.
pub fn warp_experiment(
    model: &dyn LatentModel,
    codes: &DMatrix<f32>,
    num_points: usize,
    ks: &[usize],
    eps_near: f32,
    seed: u64,
) -> Result<WarpReport> {
    let (n, d) = codes.shape();
    if d != model.latent_dim() {
        return Err(LatentError::Shape(format!(
            "codes have {d} columns but model {} has latent dimension {}",
            model.name(),
            model.latent_dim()
        )));
    }
    if n < 2 || num_points == 0 {
        return Err(LatentError::NotEnoughPoints(format!(
            "the warp experiment needs at least 2 codes and 1 point, got {n} codes and {num_points} points"
        )));
    }
    if !(eps_near.is_finite() && eps_near > 0.0) {
        return Err(LatentError::InvalidArgument(format!(
            "eps_near must be positive, got {eps_near}"
        )));
    }
    let k_max = check_ks(ks, d)?;
    check_finite("codes", codes)?;
    let eps = DEFAULT_JACOBIAN_EPS;
    let pca = pca_directions(codes, k_max)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut at_a, mut at_b, mut at_near) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rand_a, mut rand_b) = (Vec::new(), Vec::new());
    for _ in 0..num_points {
        let ia = rng.random_range(0..n);
        let mut ib = rng.random_range(0..n - 1);
        if ib >= ia {
            ib += 1;
        }
        let z_a: Vec<f32> = codes.row(ia).iter().copied().collect();
        let z_b: Vec<f32> = codes.row(ib).iter().copied().collect();
        let noise: Vec<f64> = (0..d)
            .map(|_| rng.sample(rand_distr::StandardNormal))
            .collect();
        let norm = noise.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        let z_near: Vec<f32> = z_a
            .iter()
            .zip(&noise)
            .map(|(z, u)| z + eps_near * (u / norm) as f32)
            .collect();
        at_a.push(local_basis(model, &z_a, k_max, eps)?.directions);
        at_b.push(local_basis(model, &z_b, k_max, eps)?.directions);
        at_near.push(local_basis(model, &z_near, k_max, eps)?.directions);
        rand_a.push(random_subspace(d, k_max, rng.random())?);
        rand_b.push(random_subspace(d, k_max, rng.random())?);
    }
    let bases = WarpBases {
        at_a,
        at_b,
        at_near,
        rand_a,
        rand_b,
        pca,
    };
    bases.report(model.name(), eps_near, eps, seed, ks)
}

/// The bases of one warpage experiment, one entry per base point: local bases at random
/// points a and b and at a point near a, two random subspaces, and the global PCA directions.
pub struct WarpBases {
    /// Local bases at the points a.
    pub at_a: Vec<DMatrix<f32>>,
    /// Local bases at the points b.
    pub at_b: Vec<DMatrix<f32>>,
    /// Local bases near a.
    pub at_near: Vec<DMatrix<f32>>,
    /// First random subspaces.
    pub rand_a: Vec<DMatrix<f32>>,
    /// Second random subspaces.
    pub rand_b: Vec<DMatrix<f32>>,
    /// Global PCA directions (`d x k_max`).
    pub pca: DMatrix<f32>,
}

impl WarpBases {
    /// The distance curves of both metrics over `ks`, as a [`WarpReport`] for `model`.
    pub fn report(
        &self,
        model: &str,
        eps_near: f32,
        jacobian_eps: f32,
        seed: u64,
        ks: &[usize],
    ) -> Result<WarpReport> {
        let pcas = vec![self.pca.clone(); self.at_a.len()];
        let rows = |metric: GrassmannMetric| -> Result<Vec<WarpRow>> {
            let random_pairs = distance_curve(&self.at_a, &self.at_b, ks, metric)?;
            let near_pairs = distance_curve(&self.at_a, &self.at_near, ks, metric)?;
            let random_subspaces = distance_curve(&self.rand_a, &self.rand_b, ks, metric)?;
            let vs_global_pca = distance_curve(&self.at_a, &pcas, ks, metric)?;
            Ok((0..ks.len())
                .map(|i| WarpRow {
                    k: ks[i],
                    random_pairs: random_pairs[i],
                    near_pairs: near_pairs[i],
                    random_subspaces: random_subspaces[i],
                    vs_global_pca: vs_global_pca[i],
                    max_distance: metric.max_distance(ks[i]),
                })
                .collect())
        };
        Ok(WarpReport {
            model: model.to_string(),
            latent_dim: self.pca.nrows(),
            num_points: self.at_a.len(),
            eps_near,
            jacobian_eps,
            seed,
            geodesic: rows(GrassmannMetric::Geodesic)?,
            projection: rows(GrassmannMetric::Projection)?,
        })
    }
}

/// How well a map carries a local basis: distances between the source's local basis pushed
/// through the map and the target's own local basis at the mapped point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferDistance {
    /// Subspace dimension.
    pub k: usize,
    /// Principal angles (radians, ascending).
    pub angles: Vec<f64>,
    /// Geodesic distance.
    pub geodesic: f64,
    /// Projection distance.
    pub projection: f64,
}

/// The pushed and the target local bases at one point, both `d_target x k`: the source's
/// local basis at `z_in_source` (length `d_source`) mapped column-wise by `v ↦ Wᵀv` (the row
/// convention `z_in_target = z_in_source·W`; the bias does not move directions; columns not
/// orthonormalised), and `target`'s local basis at `map(z_in_source)`.
pub fn transfer_bases(
    source: &dyn LatentModel,
    target: &dyn LatentModel,
    map: &LinearMap,
    z_in_source: &[f32],
    k: usize,
    eps: f32,
) -> Result<(DMatrix<f32>, DMatrix<f32>)> {
    let (d_source, d_target) = (source.latent_dim(), target.latent_dim());
    if map.source_dim() != d_source || map.target_dim() != d_target {
        return Err(LatentError::Shape(format!(
            "the map is {}x{} but the models have latent dimensions {d_source} and {d_target}",
            map.source_dim(),
            map.target_dim()
        )));
    }
    if k == 0 || k > d_source.min(d_target) {
        return Err(LatentError::InvalidArgument(format!(
            "transfer needs 1 ≤ k ≤ min(d_source, d_target) = {}, got {k}",
            d_source.min(d_target)
        )));
    }
    let basis_in_source = local_basis(source, z_in_source, k, eps)?.directions;
    let pushed_in_target = map.weight.transpose() * &basis_in_source;
    let z_row = DMatrix::from_row_slice(1, d_source, z_in_source);
    let z_in_target: Vec<f32> = map.apply(&z_row)?.iter().copied().collect();
    let basis_in_target = local_basis(target, &z_in_target, k, eps)?.directions;
    Ok((pushed_in_target, basis_in_target))
}

/// [`transfer_bases`] compared: principal angles and both distances (the pushed basis is
/// orthonormalised first; a map that collapses it errors as degenerate).
pub fn transfer_distance(
    source: &dyn LatentModel,
    target: &dyn LatentModel,
    map: &LinearMap,
    z_in_source: &[f32],
    k: usize,
    eps: f32,
) -> Result<TransferDistance> {
    let (pushed_in_target, basis_in_target) =
        transfer_bases(source, target, map, z_in_source, k, eps)?;
    let angles = principal_angles(&pushed_in_target, &basis_in_target)?;
    Ok(TransferDistance {
        k,
        geodesic: GrassmannMetric::Geodesic.of_angles(&angles),
        projection: GrassmannMetric::Projection.of_angles(&angles),
        angles,
    })
}
