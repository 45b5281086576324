//! Local Basis (Choi et al., NeurIPS 2022, "Do Not Escape From the Manifold: Discovering the
//! Local Coordinates on the Latent Space of GANs"): the principal directions of a decoder's
//! local variation at one code, and traversals along them.
//!
//! For a decoder `G: R^d → R^P` (`P = 3·64·64` pixels) the *local basis* at `z` is the set of
//! right singular vectors of the Jacobian `J = ∂G(z)/∂z` (`P x d`), ordered by descending
//! singular value: the latent directions that move the image most, locally. Here `J` is built
//! by central differences in one batched decode ([`jacobian`]); [`jacobian_transpose_product_autodiff`]
//! gives `Jᵀv` by candle's reverse mode, to cross-check it.
//!
//! The SVD is taken through the symmetric eigen-decomposition of `JᵀJ` (`d x d`, accumulated
//! in `f64`): the eigenvectors are the right singular vectors and `σᵢ = √λᵢ`. That costs
//! `O(P d²)` for the product and `O(d³)` for the eigenproblem instead of a thin SVD of the tall
//! `P x d` matrix; it squares the condition number, which only blurs the *smallest* singular
//! directions, never the leading ones a local basis uses. Eigenvalues below zero (round-off)
//! are clamped to zero. Each direction's sign is fixed so that its largest-magnitude entry is
//! positive (deterministic output).
//!
//! For a style model the paper's own Local Basis lives in the intermediate space W and comes
//! from the *mapping network* `f: Z → W`: [`mapping_local_basis`] takes the left singular
//! vectors of its exact Jacobian at `z`, and [`mapping_warp_experiment`] runs the paper's
//! "W is warped globally" test on them. (The decoder-Jacobian functions above give the
//! synthesis network's local basis in W for the `style` family, and the whole generator's in
//! Z for `style-z`.)
//!
//! All codes are plain `&[f32]` of length `d` (one code) or `nalgebra` matrices with one row
//! per sample (`N x d`); directions are *columns* (`d x k`).

use candle_core::{Device, Tensor, Var};
use nalgebra::DMatrix;

use super::grassmann::{random_subspace, WarpBases, WarpReport};
use super::linalg::{centred, cross_products};
use super::{check_finite, LatentError, Result};
use crate::data::{IMAGE_CHANNELS, IMAGE_LEN, IMAGE_SIZE};
use crate::model::{LatentModel, Model, Net};

/// Default step `eps` of the central differences, for unit-scale codes.
pub const DEFAULT_JACOBIAN_EPS: f32 = 1e-2;
/// At most this many codes are decoded in one batch by [`jacobian`] (so `d ≤ 128` takes one
/// decode of `2d` codes).
pub const MAX_DECODE_BATCH: usize = 256;

/// The local basis at one code: the top `k` right singular vectors of the decoder's Jacobian.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalBasis {
    /// The top `k` singular values of `J` (`P x d`), descending, non-negative.
    pub singular_values: Vec<f64>,
    /// `d x k`, orthonormal columns: the right singular vectors of `J`, in the order of
    /// [`LocalBasis::singular_values`].
    pub directions: DMatrix<f32>,
}

/// Errors unless `z` is one finite code of `model`'s latent dimension.
fn check_code(model: &dyn LatentModel, what: &str, z: &[f32]) -> Result<()> {
    let d = model.latent_dim();
    if z.len() != d {
        return Err(LatentError::Shape(format!(
            "{what} has {} entries but model {} has latent dimension {d}",
            z.len(),
            model.name()
        )));
    }
    check_finite_slice(what, z)
}

fn check_finite_slice(what: &str, v: &[f32]) -> Result<()> {
    match super::first_non_finite(v) {
        None => Ok(()),
        Some(col) => Err(LatentError::NonFinite {
            what: what.to_string(),
            row: 0,
            col,
        }),
    }
}

fn check_positive(what: &str, v: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(LatentError::InvalidArgument(format!(
            "{what} must be positive and finite, got {v}"
        )))
    }
}

/// Decodes the codes given as the rows of `codes` (`n x d`, `n ≥ 1`) into images
/// `[n, 3, 64, 64]` in [0, 1].
pub fn decode_rows(model: &dyn LatentModel, codes: &DMatrix<f32>) -> Result<Tensor> {
    let (n, d) = codes.shape();
    if n == 0 {
        return Err(LatentError::NotEnoughPoints("no codes to decode".into()));
    }
    check_finite("codes", codes)?;
    let row_major: Vec<f32> = codes.transpose().as_slice().to_vec();
    let t = Tensor::from_vec(row_major, (n, d), model.device())?;
    Ok(model.decode(&t)?)
}

/// The Jacobian `J = ∂G(z)/∂z` of `model`'s decoder at the code `z` (length `d`): a
/// `P x d` matrix, `P = 3·64·64` pixels in CHW order (the flattened `[3, 64, 64]` image).
///
/// Central differences: column `i` is `(G(z + eps·eᵢ) − G(z − eps·eᵢ)) / h` with `h` the
/// step actually represented in `f32`; the `2d` codes are decoded in one batch (chunks of
/// [`MAX_DECODE_BATCH`] when `d > 128`). Truncation error is `O(eps²)`, round-off about
/// `1e-7 / eps`. Errors on a wrong length, non-finite `z` or a non-positive `eps`.
pub fn jacobian(model: &dyn LatentModel, z: &[f32], eps: f32) -> Result<DMatrix<f32>> {
    check_code(model, "z", z)?;
    check_positive("the finite-difference step eps", eps)?;
    let d = z.len();
    let mut jac = DMatrix::<f32>::zeros(IMAGE_LEN, d);
    let per_batch = (MAX_DECODE_BATCH / 2).max(1);
    for start in (0..d).step_by(per_batch) {
        let end = (start + per_batch).min(d);
        let mut codes = Vec::with_capacity(2 * (end - start) * d);
        for i in start..end {
            for sign in [1f32, -1.0] {
                codes.extend(
                    z.iter()
                        .enumerate()
                        .map(|(j, &v)| if j == i { v + sign * eps } else { v }),
                );
            }
        }
        let batch = Tensor::from_vec(codes, (2 * (end - start), d), model.device())?;
        let images = model
            .decode(&batch)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if images.len() != 2 * (end - start) * IMAGE_LEN {
            return Err(LatentError::Shape(format!(
                "the decoder returned {} values for {} codes (expected {} each)",
                images.len(),
                2 * (end - start),
                IMAGE_LEN
            )));
        }
        for (r, i) in (start..end).enumerate() {
            let h = (z[i] + eps) - (z[i] - eps);
            if h <= 0.0 {
                return Err(LatentError::Degenerate(format!(
                    "eps {eps} is below the f32 resolution of z[{i}] = {}",
                    z[i]
                )));
            }
            let plus = &images[2 * r * IMAGE_LEN..(2 * r + 1) * IMAGE_LEN];
            let minus = &images[(2 * r + 1) * IMAGE_LEN..(2 * r + 2) * IMAGE_LEN];
            for (out, (p, m)) in jac.column_mut(i).iter_mut().zip(plus.iter().zip(minus)) {
                *out = (p - m) / h;
            }
        }
    }
    check_finite("the Jacobian", &jac)?;
    Ok(jac)
}

/// `Jᵀv` (length `d`) by reverse-mode autodiff: the gradient of `sum(G(z) ⊙ v)` with respect
/// to a candle `Var` holding `z` (length `d`); `v_pixels` has `P = 3·64·64` entries in CHW
/// order. Used to cross-check [`jacobian`].
pub fn jacobian_transpose_product_autodiff(
    model: &dyn LatentModel,
    z: &[f32],
    v_pixels: &[f32],
) -> Result<Vec<f32>> {
    check_code(model, "z", z)?;
    if v_pixels.len() != IMAGE_LEN {
        return Err(LatentError::Shape(format!(
            "v_pixels has {} entries, expected {IMAGE_LEN}",
            v_pixels.len()
        )));
    }
    check_finite_slice("v_pixels", v_pixels)?;
    let device = model.device();
    let z_var = Var::from_slice(z, (1, z.len()), device)?;
    let v = Tensor::from_slice(
        v_pixels,
        (1, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
        device,
    )?;
    let images = model.decode(z_var.as_tensor())?;
    let loss = images.mul(&v)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads.get(z_var.as_tensor()).ok_or_else(|| {
        LatentError::Degenerate("the decoder output does not depend on z (no gradient)".into())
    })?;
    let jtv = g.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    check_finite_slice("Jᵀv", &jtv)?;
    Ok(jtv)
}

/// The top `k` eigenpairs of the symmetric `sym` (`d x d`, `f64`): eigenvalues descending and
/// eigenvectors as the columns of a `d x k` `f32` matrix, each with its largest-magnitude
/// entry positive.
pub(crate) fn top_eigenvectors(sym: DMatrix<f64>, k: usize) -> Result<(Vec<f64>, DMatrix<f32>)> {
    let d = sym.nrows();
    if sym.ncols() != d || k == 0 || k > d {
        return Err(LatentError::InvalidArgument(format!(
            "cannot take {k} eigenvectors of a {}x{} matrix",
            sym.nrows(),
            sym.ncols()
        )));
    }
    if sym.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(
            "the Gram matrix is not finite (values too large)".into(),
        ));
    }
    let eig = nalgebra::SymmetricEigen::new(sym);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut vectors = DMatrix::<f32>::zeros(d, k);
    let mut values = Vec::with_capacity(k);
    for (c, &i) in order.iter().take(k).enumerate() {
        let col = eig.eigenvectors.column(i);
        let pivot = col
            .iter()
            .fold(0.0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
        let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
        for (out, v) in vectors.column_mut(c).iter_mut().zip(col.iter()) {
            *out = (sign * v) as f32;
        }
        values.push(eig.eigenvalues[i]);
    }
    Ok((values, vectors))
}

/// Widest latent space whose local basis is computed (a normalizing flow's 12,288 are not).
pub const MAX_JACOBIAN_DIM: usize = 1024;

/// The local basis of `model` at the code `z` (length `d`): the top `k` (`1 ≤ k ≤ d`) right
/// singular vectors of [`jacobian`]`(model, z, eps)` as a `d x k` matrix, with their singular
/// values (via the eigen-decomposition of `JᵀJ`; see the module docs). Errors for latent
/// spaces wider than [`MAX_JACOBIAN_DIM`].
pub fn local_basis(model: &dyn LatentModel, z: &[f32], k: usize, eps: f32) -> Result<LocalBasis> {
    let d = model.latent_dim();
    if k == 0 || k > d {
        return Err(LatentError::InvalidArgument(format!(
            "a local basis needs 1 ≤ k ≤ d = {d}, got k = {k}"
        )));
    }
    if d > MAX_JACOBIAN_DIM {
        return Err(LatentError::InvalidArgument(format!(
            "{} has a {d}-dimensional latent space: its full Jacobian ({} decodes, a {d} x {d} \
             eigenproblem) is out of reach; local bases are computed for latent spaces of at \
             most {MAX_JACOBIAN_DIM} dimensions",
            model.name(),
            2 * d
        )));
    }
    let jac = jacobian(model, z, eps)?;
    let (gram, _) = cross_products(&jac, None);
    let (eigenvalues, directions) = top_eigenvectors(gram, k)?;
    Ok(LocalBasis {
        singular_values: eigenvalues.iter().map(|l| l.max(0.0).sqrt()).collect(),
        directions,
    })
}

/// A straight line from `z` (length `d`) along `direction` (length `d`, normalised to unit
/// length here): `steps + 1` codes `z + t·step_size·u`, `t = 0..=steps`. A negative
/// `step_size` walks the other way. Errors on mismatched lengths, non-finite input or a zero
/// direction.
pub fn traverse_straight(
    z: &[f32],
    direction: &[f32],
    steps: usize,
    step_size: f32,
) -> Result<Vec<Vec<f32>>> {
    if z.len() != direction.len() {
        return Err(LatentError::Shape(format!(
            "z has {} entries but direction has {}",
            z.len(),
            direction.len()
        )));
    }
    check_finite_slice("z", z)?;
    check_finite_slice("direction", direction)?;
    if !step_size.is_finite() {
        return Err(LatentError::InvalidArgument(format!(
            "step_size must be finite, got {step_size}"
        )));
    }
    let norm = direction
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm <= 0.0 || !norm.is_finite() {
        return Err(LatentError::Degenerate(
            "the traversal direction is zero".into(),
        ));
    }
    let unit: Vec<f32> = direction
        .iter()
        .map(|&v| (f64::from(v) / norm) as f32)
        .collect();
    Ok((0..=steps)
        .map(|t| {
            let s = t as f32 * step_size;
            z.iter().zip(&unit).map(|(a, u)| a + s * u).collect()
        })
        .collect())
}

/// The iterative curve traversal of the Local Basis paper: `steps` small steps from `z`
/// (length `d`), each of length `|step_size|` along direction `k_index` (0-based, descending
/// singular value) of the local basis *at the current point*, so the path follows the curved
/// image manifold instead of a global straight line. The direction's sign is kept continuous:
/// it is flipped whenever it points against the previous step's direction; the first step
/// uses the basis' sign convention (largest entry positive), a negative `step_size` walks the
/// other way. Returns the `steps + 1` codes visited, `z` first. Costs `steps` Jacobians.
pub fn traverse_local_curve(
    model: &dyn LatentModel,
    z: &[f32],
    k_index: usize,
    steps: usize,
    step_size: f32,
    eps: f32,
) -> Result<Vec<Vec<f32>>> {
    check_code(model, "z", z)?;
    if !step_size.is_finite() {
        return Err(LatentError::InvalidArgument(format!(
            "step_size must be finite, got {step_size}"
        )));
    }
    let mut current = z.to_vec();
    let mut path = vec![current.clone()];
    let mut previous: Option<Vec<f32>> = None;
    for _ in 0..steps {
        let basis = local_basis(model, &current, k_index + 1, eps)?;
        let mut dir: Vec<f32> = basis.directions.column(k_index).iter().copied().collect();
        if let Some(prev) = &previous {
            let dot: f32 = prev.iter().zip(&dir).map(|(a, b)| a * b).sum();
            if dot < 0.0 {
                dir.iter_mut().for_each(|v| *v = -*v);
            }
        }
        for (c, v) in current.iter_mut().zip(&dir) {
            *c += step_size * v;
        }
        check_finite_slice("the traversal", &current)?;
        path.push(current.clone());
        previous = Some(dir);
    }
    Ok(path)
}

/// Decodes a path of codes (each of length `d`, at least one) into images
/// `[path.len(), 3, 64, 64]` in [0, 1].
pub fn decode_path(model: &dyn LatentModel, path: &[Vec<f32>]) -> Result<Tensor> {
    let d = model.latent_dim();
    if let Some(bad) = path.iter().position(|z| z.len() != d) {
        return Err(LatentError::Shape(format!(
            "code {bad} of the path has {} entries, the model expects {d}",
            path[bad].len()
        )));
    }
    let codes = DMatrix::from_fn(path.len(), d, |r, c| path[r][c]);
    decode_rows(model, &codes)
}

/// Global directions, GANSpace-style: the top `k` principal axes of the codes `z_codes`
/// (`N x d`, `N ≥ 2`, `1 ≤ k ≤ d`) as a `d x k` matrix with orthonormal columns, by
/// descending variance. Errors on non-finite or constant codes.
pub fn pca_directions(z_codes: &DMatrix<f32>, k: usize) -> Result<DMatrix<f32>> {
    let (n, d) = z_codes.shape();
    if n < 2 {
        return Err(LatentError::NotEnoughPoints(format!(
            "PCA needs at least 2 codes, got {n}"
        )));
    }
    if k == 0 || k > d {
        return Err(LatentError::InvalidArgument(format!(
            "PCA directions need 1 ≤ k ≤ d = {d}, got k = {k}"
        )));
    }
    check_finite("z_codes", z_codes)?;
    let (zc, _) = centred(z_codes);
    let (cov, _) = cross_products(&zc, None);
    if cov.trace().is_nan() || cov.trace() <= 0.0 {
        return Err(LatentError::Degenerate(
            "the codes have zero variance".into(),
        ));
    }
    Ok(top_eigenvectors(cov, k)?.1)
}

/// The Local Basis of a style model's intermediate space W at `w = f(z)` (Choi et al., §3): the
/// SVD `J = U Σ Vᵀ` of the mapping network's Jacobian `J = ∂f/∂z` (`d_w x d_z`); the top `k`
/// left singular vectors span the directions in W along which `f` moves most near `w`.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingBasis {
    /// The top `k` singular values of `J`, descending.
    pub singular_values: Vec<f64>,
    /// `d_w x k`, orthonormal columns: the local basis of W (left singular vectors), each with
    /// its largest-magnitude entry positive.
    pub w_directions: DMatrix<f32>,
    /// `d_z x k`: the matching right singular vectors (`J vᵢ = σᵢ uᵢ`), directions in Z.
    pub z_directions: DMatrix<f32>,
}

fn style_net(model: &Model) -> Result<&crate::model::style::Style> {
    match &model.net {
        Net::Style(s) => Ok(s),
        _ => Err(LatentError::InvalidArgument(format!(
            "model {} is a {} model: the mapping-network Local Basis needs a style model",
            model.config.name, model.config.family
        ))),
    }
}

/// The exact Jacobian `∂w/∂z` (`d x d`, rows = W, columns = Z) of a style model's mapping
/// network at `z` (length `d`); errors for other families. See
/// [`crate::model::style::Mapping::jacobian`].
pub fn mapping_jacobian(model: &Model, z: &[f32]) -> Result<DMatrix<f64>> {
    check_code(model, "z", z)?;
    Ok(style_net(model)?.mapping().jacobian(z)?)
}

/// [`MappingBasis`] of a style model at `z` (length `d`, `1 ≤ k ≤ d`), by a full SVD of the
/// `d x d` [`mapping_jacobian`] in `f64`.
pub fn mapping_local_basis(model: &Model, z: &[f32], k: usize) -> Result<MappingBasis> {
    let d = model.latent_dim();
    if k == 0 || k > d {
        return Err(LatentError::InvalidArgument(format!(
            "a local basis needs 1 ≤ k ≤ d = {d}, got k = {k}"
        )));
    }
    let jac = mapping_jacobian(model, z)?;
    let svd = jac.svd(true, true);
    let (Some(u), Some(v_t)) = (&svd.u, &svd.v_t) else {
        return Err(LatentError::Degenerate(
            "the SVD of the mapping Jacobian failed".into(),
        ));
    };
    let sv = &svd.singular_values;
    if sv.iter().any(|s| !s.is_finite()) {
        return Err(LatentError::Degenerate(
            "the mapping Jacobian is not finite".into(),
        ));
    }
    let mut order: Vec<usize> = (0..sv.len()).collect();
    order.sort_by(|&a, &b| sv[b].total_cmp(&sv[a]));
    let mut w_directions = DMatrix::<f32>::zeros(u.nrows(), k);
    let mut z_directions = DMatrix::<f32>::zeros(v_t.ncols(), k);
    for (c, &i) in order.iter().take(k).enumerate() {
        let col = u.column(i);
        let pivot = col
            .iter()
            .fold(0.0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
        let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
        for (out, v) in w_directions.column_mut(c).iter_mut().zip(col.iter()) {
            *out = (sign * v) as f32;
        }
        for (out, v) in z_directions.column_mut(c).iter_mut().zip(v_t.row(i).iter()) {
            *out = (sign * v) as f32;
        }
    }
    Ok(MappingBasis {
        singular_values: order.iter().take(k).map(|&i| sv[i]).collect(),
        w_directions,
        z_directions,
    })
}

/// Number of prior draws whose `w = f(z)` give the global PCA directions of W in
/// [`mapping_warp_experiment`].
pub const MAPPING_PCA_SAMPLES: usize = 4096;

/// The Local Basis paper's "is W warped globally?" test (its §5, Fig. 5) on a style model's
/// mapping network: `num_points` base points `z ~ N(0, I)`, and for each the mapping Local
/// Basis in W ([`mapping_local_basis`], dimension `max(ks)`) compared by Grassmannian distances
/// with the one at another random `z`, at `z + eps_near·u` (`u` a random unit vector of Z),
/// with random subspaces of W, and with the global top-`k` PCA directions of
/// [`MAPPING_PCA_SAMPLES`] mapped draws (GANSpace). The Jacobians are exact, so the report's
/// `jacobian_eps` is 0. Deterministic in `seed`.
pub fn mapping_warp_experiment(
    model: &Model,
    num_points: usize,
    ks: &[usize],
    eps_near: f32,
    seed: u64,
) -> Result<WarpReport> {
    use rand::{Rng, SeedableRng};
    let style = style_net(model)?;
    let d = model.latent_dim();
    if num_points == 0 || !(eps_near.is_finite() && eps_near > 0.0) {
        return Err(LatentError::InvalidArgument(format!(
            "the warp test needs at least 1 point and eps_near > 0, got {num_points} and {eps_near}"
        )));
    }
    let k_max = match ks.iter().copied().max() {
        Some(k) if k <= d && !ks.contains(&0) => k,
        _ => {
            return Err(LatentError::InvalidArgument(format!(
                "subspace dimensions {ks:?} must be non-empty and each in 1..={d}"
            )))
        }
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect()
    };
    let prior = Tensor::from_vec(
        draw(MAPPING_PCA_SAMPLES * d),
        (MAPPING_PCA_SAMPLES, d),
        &Device::Cpu,
    )?;
    let w_rows: Vec<f32> = style
        .map_z_to_w(&prior.to_device(model.device())?)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let pca = pca_directions(
        &DMatrix::from_row_slice(MAPPING_PCA_SAMPLES, d, &w_rows),
        k_max,
    )?;
    let basis = |z: &[f32]| mapping_local_basis(model, z, k_max).map(|b| b.w_directions);
    let mut bases = WarpBases {
        at_a: Vec::new(),
        at_b: Vec::new(),
        at_near: Vec::new(),
        rand_a: Vec::new(),
        rand_b: Vec::new(),
        pca,
    };
    for i in 0..num_points {
        let (z_a, z_b, u) = (draw(d), draw(d), draw(d));
        let norm = u.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        let z_near: Vec<f32> = z_a
            .iter()
            .zip(&u)
            .map(|(z, u)| z + eps_near * u / norm)
            .collect();
        bases.at_a.push(basis(&z_a)?);
        bases.at_b.push(basis(&z_b)?);
        bases.at_near.push(basis(&z_near)?);
        let s = seed.wrapping_mul(1_000_003).wrapping_add(2 * i as u64 + 1);
        bases.rand_a.push(random_subspace(d, k_max, s)?);
        bases
            .rand_b
            .push(random_subspace(d, k_max, s.wrapping_add(1))?);
    }
    bases.report(&model.config.name, eps_near, 0.0, seed, ks)
}
