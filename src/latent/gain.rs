//! Reconstruction gain per latent variable (paper §5.1) and feature selection (§5.2).
//!
//! For images `x` and their codes `z = encode(x)`, the gain of variable `j` is the mean over
//! images of `MSE(x, decode(z with z_j := 0)) − MSE(x, decode(z))`: how much worse the
//! reconstruction gets without that variable. Large gains mark the variables that carry the
//! macroscopic factors of variation.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::model::LatentModel;
use crate::progress::{Cancel, Progress};

use super::{LatentError, Result};

/// Images per encode/decode batch.
pub const GAIN_BATCH: usize = 64;
/// The paper's number of selected variables (for a support set of 150).
pub const DEFAULT_NUM_SELECTED: usize = 7;

/// Reconstruction gains of a model on a set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GainReport {
    /// Model name.
    pub model: String,
    /// Gain of each latent variable (length `d`), in units of per-pixel MSE.
    pub gains: Vec<f64>,
    /// Variable indices by decreasing gain (a permutation of `0..d`; ties by index).
    pub order: Vec<usize>,
    /// Mean per-image MSE of `decode(encode(x))` with no variable zeroed.
    pub baseline_mse: f64,
    /// Number of images averaged over.
    pub num_images: usize,
}

impl GainReport {
    /// Share of the positive gain carried by the first `k` variables of [`GainReport::order`]:
    /// `Σ_{i<k} max(gain_{order[i]}, 0) / Σ_j max(gain_j, 0)`, in `[0, 1]` (0 when no gain is
    /// positive; `k` is clamped to `d`). "The first 20 variables carry 75% of the gain."
    pub fn cumulative_share(&self, k: usize) -> f64 {
        let total: f64 = self.gains.iter().map(|g| g.max(0.0)).sum();
        if total <= 0.0 {
            return 0.0;
        }
        let head: f64 = self
            .order
            .iter()
            .take(k)
            .filter_map(|&j| self.gains.get(j))
            .map(|g| g.max(0.0))
            .sum();
        (head / total).clamp(0.0, 1.0)
    }
}

/// Per-image MSE between two `[b, 3, 64, 64]` batches, as `f64`s (length `b`).
pub(crate) fn per_image_mse(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let mse = a
        .sub(b)?
        .sqr()?
        .flatten_from(1)?
        .mean(1)?
        .to_vec1::<f32>()?;
    if mse.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(
            "the model produced non-finite images".into(),
        ));
    }
    Ok(mse.into_iter().map(f64::from).collect())
}

/// Reconstruction gain of every latent variable of `model` over the images `indices` of `ds`
/// (encoded and decoded in batches of [`GAIN_BATCH`]; `d + 1` decodes per batch).
///
/// Reports `d + 1` units of progress per batch; returns [`LatentError::Cancelled`] when
/// `cancel` is set. Errors on an empty or out-of-range `indices`.
pub fn reconstruction_gain(
    model: &dyn LatentModel,
    ds: &Dataset,
    indices: &[usize],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<GainReport> {
    if indices.is_empty() {
        return Err(LatentError::NotEnoughPoints(
            "no images for the reconstruction gain".into(),
        ));
    }
    let d = model.latent_dim();
    let device = model.device();
    let num_batches = indices.len().div_ceil(GAIN_BATCH);
    progress.start("reconstruction gain", (num_batches * (d + 1)) as u64);
    let mut sums = vec![0f64; d];
    let mut base_sum = 0f64;
    let mut done = 0u64;
    for chunk in indices.chunks(GAIN_BATCH) {
        let images = ds.batch(chunk, device)?;
        let z = model.encode(&images)?;
        let base = per_image_mse(&images, &model.decode(&z)?)?;
        base_sum += base.iter().sum::<f64>();
        done += 1;
        for (j, sum) in sums.iter_mut().enumerate() {
            if cancel.is_cancelled() {
                progress.finish("cancelled");
                return Err(LatentError::Cancelled);
            }
            let mut mask = vec![1f32; d];
            mask[j] = 0.0;
            let mask = Tensor::from_vec(mask, (1, d), device)?;
            let zj = z.broadcast_mul(&mask)?;
            let mse = per_image_mse(&images, &model.decode(&zj)?)?;
            *sum += mse.iter().zip(&base).map(|(m, b)| m - b).sum::<f64>();
            done += 1;
            progress.update(done, &format!("variable {j} of {d}"));
        }
    }
    let n = indices.len() as f64;
    let gains: Vec<f64> = sums.iter().map(|s| s / n).collect();
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| gains[b].total_cmp(&gains[a]).then(a.cmp(&b)));
    progress.finish("done");
    Ok(GainReport {
        model: model.name().to_string(),
        gains,
        order,
        baseline_mse: base_sum / n,
        num_images: indices.len(),
    })
}

/// The first `n` variables of `order`, enforcing the paper's constraint that `2^n` must not
/// exceed the support-set size (`n ≤ log2(support_size)`: 150 → at most 7). Errors when
/// `n = 0`, `n > order.len()`, `2^n > support_size`, or `order` has a repeated variable.
pub fn select_features(order: &[usize], n: usize, support_size: usize) -> Result<Vec<usize>> {
    if n == 0 || n > order.len() {
        return Err(LatentError::InvalidArgument(format!(
            "cannot select {n} of {} variables",
            order.len()
        )));
    }
    if n > super::sectors::MAX_SELECTED || (1usize << n) > support_size {
        return Err(LatentError::InvalidArgument(format!(
            "{n} selected variables give 2^{n} sectors, more than the support-set size {support_size} (n must be at most log2 of it)"
        )));
    }
    let selected = order[..n].to_vec();
    for (i, v) in selected.iter().enumerate() {
        if selected[..i].contains(v) {
            return Err(LatentError::InvalidArgument(format!(
                "variable {v} appears twice in the order"
            )));
        }
    }
    Ok(selected)
}
