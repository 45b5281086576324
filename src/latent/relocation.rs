//! Relocation errors of a map between two models (paper §6, Fig. 10): for an original image
//! `o` with codes `z_s` (source) and `z_t` (target),
//!
//! * **L-MSE** — latent error, mean of `(map(z_s) − z_t)²`;
//! * **R-MSE** — `MSE(o, decode_source(z_s))`, the source model's reconstruction error;
//! * **M-MSE** — `MSE(o, decode_target(map(z_s)))`, the error after relocation.

use candle_core::Tensor;
use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::model::LatentModel;
use crate::progress::{Cancel, Progress};

use super::estimators::{target_from_source, Estimator, LinearMap};
use super::gain::per_image_mse;
use super::metrics::{l_mse, linear_cka, per_dim_l_mse, singular_values};
use super::{check_same_rows, LatentError, Result};

/// Codes decoded per batch.
pub const RELOCATION_BATCH: usize = 64;

/// Relocation errors of one map on a set of images (serialisable for reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelocationMetrics {
    /// Source model name.
    pub source_model: String,
    /// Target model name.
    pub target_model: String,
    /// The map's estimator, e.g. `lstsq`.
    pub estimator: String,
    /// Number of images evaluated.
    pub num_samples: usize,
    /// Mean over all entries of `(map(z_s) − z_t)²`.
    pub l_mse: f64,
    /// L-MSE per target dimension (length `d_target`).
    pub per_dim_l_mse: Vec<f64>,
    /// Mean over images of `MSE(o, decode_source(z_s))`.
    pub r_mse_mean: f64,
    /// Population standard deviation of the per-image R-MSE.
    pub r_mse_std: f64,
    /// Mean over images of `MSE(o, decode_target(map(z_s)))`.
    pub m_mse_mean: f64,
    /// Population standard deviation of the per-image M-MSE.
    pub m_mse_std: f64,
    /// Per-image R-MSE, in the order of the evaluated indices.
    pub per_sample_r_mse: Vec<f64>,
    /// Per-image M-MSE, in the order of the evaluated indices.
    pub per_sample_m_mse: Vec<f64>,
    /// Linear CKA between `map(z_s)` and `z_t`.
    pub cka_mapped_target: f64,
    /// Linear CKA between `z_s` and `z_t` (no map; `None` if undefined).
    pub cka_source_target: Option<f64>,
    /// Singular values of the map's weight, descending.
    pub singular_values: Vec<f64>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.max(0.0).sqrt())
}

/// `[rows, d]` tensor of the rows `r0..r0+rows` of `m` (`N x d`) on `device`.
fn rows_tensor(
    m: &DMatrix<f32>,
    r0: usize,
    rows: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let block = m.rows(r0, rows).transpose();
    let data: Vec<f32> = block.iter().copied().collect();
    Ok(Tensor::from_vec(data, (rows, m.ncols()), device)?)
}

/// Evaluates `map` from `source` to `target` on the images `indices` of `ds`, whose codes are
/// `z_in_source` (`N x d_source`) and `z_in_target` (`N x d_target`), row `r` ↔ `indices[r]`.
///
/// Decodes in batches of [`RELOCATION_BATCH`] (one progress unit per batch); returns
/// [`LatentError::Cancelled`] when `cancel` is set. Errors on mismatched shapes, a map of the
/// wrong dimensions, non-finite codes or images, or fewer than 2 samples.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_relocation(
    source: &dyn LatentModel,
    target: &dyn LatentModel,
    map: &LinearMap,
    ds: &Dataset,
    indices: &[usize],
    z_in_source: &DMatrix<f32>,
    z_in_target: &DMatrix<f32>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RelocationMetrics> {
    check_same_rows("z_in_source", z_in_source, "z_in_target", z_in_target)?;
    let n = indices.len();
    if z_in_source.nrows() != n {
        return Err(LatentError::Shape(format!(
            "{} rows of codes for {n} indices",
            z_in_source.nrows()
        )));
    }
    if n < 2 {
        return Err(LatentError::NotEnoughPoints(format!(
            "relocation needs 2 or more samples, got {n}"
        )));
    }
    let dims = [
        (
            z_in_source.ncols(),
            source.latent_dim(),
            "source codes vs source model",
        ),
        (
            z_in_target.ncols(),
            target.latent_dim(),
            "target codes vs target model",
        ),
        (
            map.source_dim(),
            source.latent_dim(),
            "map source dimension vs source model",
        ),
        (
            map.target_dim(),
            target.latent_dim(),
            "map target dimension vs target model",
        ),
    ];
    if let Some((a, b, what)) = dims.iter().find(|(a, b, _)| a != b) {
        return Err(LatentError::Shape(format!("{what}: {a} != {b}")));
    }
    let mapped = map.apply(z_in_source)?;
    let l = l_mse(&mapped, z_in_target)?;
    let per_dim = per_dim_l_mse(&mapped, z_in_target)?;
    let cka_mapped_target = linear_cka(&mapped, z_in_target)?;
    let cka_source_target = linear_cka(z_in_source, z_in_target).ok();
    let num_batches = n.div_ceil(RELOCATION_BATCH);
    progress.start("relocation", num_batches as u64);
    let mut r_mse = Vec::with_capacity(n);
    let mut m_mse = Vec::with_capacity(n);
    for (b, chunk) in indices.chunks(RELOCATION_BATCH).enumerate() {
        if cancel.is_cancelled() {
            progress.finish("cancelled");
            return Err(LatentError::Cancelled);
        }
        let r0 = b * RELOCATION_BATCH;
        let (sd, td) = (source.device(), target.device());
        let images_s = ds.batch(chunk, sd)?;
        let recon = source.decode(&rows_tensor(z_in_source, r0, chunk.len(), sd)?)?;
        r_mse.extend(per_image_mse(&images_s, &recon)?);
        let images_t = if sd.same_device(td) {
            images_s
        } else {
            ds.batch(chunk, td)?
        };
        let relocated = target.decode(&rows_tensor(&mapped, r0, chunk.len(), td)?)?;
        m_mse.extend(per_image_mse(&images_t, &relocated)?);
        progress.update(
            (b + 1) as u64,
            &format!("{} of {n} images", r0 + chunk.len()),
        );
    }
    progress.finish("done");
    let (r_mse_mean, r_mse_std) = mean_std(&r_mse);
    let (m_mse_mean, m_mse_std) = mean_std(&m_mse);
    Ok(RelocationMetrics {
        source_model: source.name().to_string(),
        target_model: target.name().to_string(),
        estimator: map.estimator.to_string(),
        num_samples: n,
        l_mse: l,
        per_dim_l_mse: per_dim,
        r_mse_mean,
        r_mse_std,
        m_mse_mean,
        m_mse_std,
        per_sample_r_mse: r_mse,
        per_sample_m_mse: m_mse,
        cka_mapped_target,
        cka_source_target,
        singular_values: singular_values(&map.weight)?,
    })
}

/// The same fit as [`target_from_source`] but with the rows of `z_in_target` randomly
/// permuted (ChaCha8, `seed`), breaking the pairing: a sanity baseline whose L-MSE on the
/// true pairs should be much worse. Returns the map and the permutation used
/// (`permuted row r = z_in_target row perm[r]`).
pub fn shuffled_baseline(
    z_in_source: &DMatrix<f32>,
    z_in_target: &DMatrix<f32>,
    est: &Estimator,
    device: &candle_core::Device,
    seed: u64,
) -> Result<(LinearMap, Vec<usize>)> {
    check_same_rows("z_in_source", z_in_source, "z_in_target", z_in_target)?;
    let mut perm: Vec<usize> = (0..z_in_target.nrows()).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let shuffled = z_in_target.select_rows(perm.iter());
    let map = target_from_source(z_in_source, &shuffled, est, device)?;
    Ok((map, perm))
}
