//! Reconstruction gain for models with very many latent variables (a normalizing flow's
//! 12,288), where zeroing every variable in turn ([`super::gain::reconstruction_gain`], `d + 1`
//! decodes per batch) is far too expensive.
//!
//! **Rule.** Two passes over the same images:
//!
//! 1. *Screening, first order.* Zeroing `z_j` changes the decoded image by about
//!    `−z_j·J_j` (`J_j` the decoder's Jacobian column), so the gain is about
//!    `z_j²·‖J_j‖² / P` (`P` = values per image; the cross term with the reconstruction error
//!    vanishes for an exact flow). `‖J_j‖²` is estimated for all `j` at once by Hutchinson
//!    probes: `E_v[(Jᵀv)_j²] = ‖J_j‖²` for `v ~ N(0, I)` in image space, one backward pass per
//!    probe ([`SCREEN_PROBES`] per batch, seeded).
//! 2. *Exact gain on the candidates.* The [`SCREEN_CANDIDATES`] variables of largest estimate
//!    get the exact gain (zero, decode, compare), as for every other model.
//!
//! [`GainReport::gains`] holds the exact gain for the candidates and the first-order estimate
//! (same unit: per-pixel MSE) for every other variable; `order` sorts them all. Cost: per
//! batch one decode with [`SCREEN_PROBES`] backward passes plus `SCREEN_CANDIDATES + 1`
//! decodes, instead of `d + 1`.

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::Dataset;
use crate::model::LatentModel;
use crate::progress::{Cancel, Progress};

use super::gain::{per_image_mse, GainReport, GAIN_BATCH};
use super::{LatentError, Result};

/// Variables whose exact gain is measured after screening.
pub const SCREEN_CANDIDATES: usize = 32;
/// Hutchinson probes per batch of the first-order screening.
pub const SCREEN_PROBES: usize = 4;
/// Seed of the probes.
const PROBE_SEED: u64 = 0x9a17_5c2e;

fn probe(shape: &[usize], stream: u64, device: &candle_core::Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(PROBE_SEED);
    rng.set_stream(stream);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rand::Rng::sample(&mut rng, rand_distr::StandardNormal))
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Reconstruction gain by the screened rule of this module, on the images `indices` of `ds`.
/// The model's decoder must be differentiable in the codes (candle ops). Errors on an empty
/// or out-of-range `indices`; [`LatentError::Cancelled`] when `cancel` is set.
pub fn screened_reconstruction_gain(
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
    let k = SCREEN_CANDIDATES.min(d);
    let num_batches = indices.len().div_ceil(GAIN_BATCH);
    progress.start(
        "reconstruction gain (screened)",
        (num_batches * (SCREEN_PROBES + k + 1)) as u64,
    );
    let mut done = 0u64;
    let check = |done: u64, what: &str| -> Result<()> {
        if cancel.is_cancelled() {
            progress.finish("cancelled");
            return Err(LatentError::Cancelled);
        }
        progress.update(done, what);
        Ok(())
    };
    // Pass 1: first-order estimates z_j² ‖J_j‖² summed over images.
    let mut estimate = vec![0f64; d];
    let mut pixels = 1usize;
    for (b, chunk) in indices.chunks(GAIN_BATCH).enumerate() {
        let images = ds.batch(chunk, device)?;
        let z = model.encode(&images)?.detach();
        let z_sq: Vec<Vec<f32>> = z.sqr()?.to_vec2()?;
        let zv = Var::from_tensor(&z)?;
        let decoded = model.decode(zv.as_tensor())?;
        pixels = decoded.elem_count() / chunk.len().max(1);
        for p in 0..SCREEN_PROBES {
            check(done, "screening")?;
            let v = probe(decoded.dims(), (b * SCREEN_PROBES + p) as u64, device)?;
            let grads = (&decoded * v)?.sum_all()?.backward()?;
            let jt_v = grads.get(zv.as_tensor()).ok_or_else(|| {
                LatentError::Degenerate("the decoder is not differentiable in its codes".into())
            })?;
            for (row, zrow) in jt_v.to_vec2::<f32>()?.iter().zip(&z_sq) {
                for ((e, g), zz) in estimate.iter_mut().zip(row).zip(zrow) {
                    *e += f64::from(*g) * f64::from(*g) * f64::from(*zz);
                }
            }
            done += 1;
        }
    }
    let n = indices.len() as f64;
    let scale = 1.0 / (SCREEN_PROBES as f64 * n * pixels as f64);
    let mut gains: Vec<f64> = estimate.iter().map(|e| e * scale).collect();
    if gains.iter().any(|g| !g.is_finite()) {
        return Err(LatentError::Degenerate(
            "the first-order gain estimate is not finite".into(),
        ));
    }
    let mut candidates: Vec<usize> = (0..d).collect();
    candidates.sort_by(|&a, &b| gains[b].total_cmp(&gains[a]).then(a.cmp(&b)));
    candidates.truncate(k);
    // Pass 2: exact gains of the candidates.
    let mut exact = vec![0f64; k];
    let mut base_sum = 0f64;
    for chunk in indices.chunks(GAIN_BATCH) {
        let images = ds.batch(chunk, device)?;
        let z = model.encode(&images)?;
        let base = per_image_mse(&images, &model.decode(&z)?)?;
        base_sum += base.iter().sum::<f64>();
        done += 1;
        for (slot, &j) in exact.iter_mut().zip(&candidates) {
            check(done, &format!("variable {j}"))?;
            let mut mask = vec![1f32; d];
            mask[j] = 0.0;
            let zj = z.broadcast_mul(&Tensor::from_vec(mask, (1, d), device)?)?;
            let mse = per_image_mse(&images, &model.decode(&zj)?)?;
            *slot += mse.iter().zip(&base).map(|(m, b)| m - b).sum::<f64>();
            done += 1;
        }
    }
    for (&j, e) in candidates.iter().zip(&exact) {
        gains[j] = e / n;
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| gains[b].total_cmp(&gains[a]).then(a.cmp(&b)));
    progress.finish("done");
    log::info!(
        "screened gain of {}: exact for {k} candidates (top estimate {:.3e}, top exact {:.3e})",
        model.name(),
        candidates.first().map_or(0.0, |&j| estimate[j] * scale),
        exact.iter().cloned().fold(f64::NEG_INFINITY, f64::max) / n,
    );
    Ok(GainReport {
        model: model.name().to_string(),
        gains,
        order,
        baseline_mse: base_sum / n,
        num_images: indices.len(),
    })
}
