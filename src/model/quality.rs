//! Held-out reconstruction quality (R-MSE against the random-pair MSE) and the per-epoch
//! sample and reconstruction grids written while training.

use std::path::Path;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::train::TrainKind;
use super::{LatentModel, Model, ModelError, Net, Quality, Result};
use crate::data::{Dataset, Split};

/// Held-out indices: the test split, else validation, else everything.
pub fn held_out(data: &Dataset) -> Vec<usize> {
    for split in [Split::Test, Split::Valid] {
        let idx = data.indices(split);
        if !idx.is_empty() {
            return idx;
        }
    }
    (0..data.len()).collect()
}

/// Mean MSE between `num_pairs` random pairs of distinct images among `indices` (seeded).
pub fn random_pair_mse(data: &Dataset, indices: &[usize], num_pairs: usize, seed: u64) -> f64 {
    if indices.len() < 2 {
        return 0.0;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut total = 0.0;
    for _ in 0..num_pairs {
        let a = indices[rng.random_range(0..indices.len())];
        let mut b = a;
        while b == a {
            b = indices[rng.random_range(0..indices.len())];
        }
        total += data.image_mse(a, b);
    }
    total / num_pairs as f64
}

/// Encode then decode, batch by batch: per-image MSE to the originals.
pub fn per_image_rmse(
    model: &dyn LatentModel,
    data: &Dataset,
    indices: &[usize],
    batch: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(batch.max(1)) {
        let x = data
            .batch(chunk, model.device())
            .map_err(|e| ModelError::BadInput(e.to_string()))?;
        let xr = model.decode(&model.encode(&x)?)?;
        let mse: Vec<f32> = (xr - &x)?.sqr()?.flatten_from(1)?.mean(1)?.to_vec1()?;
        out.extend(mse.into_iter().map(f64::from));
    }
    Ok(out)
}

/// R-MSE on up to `max_images` held-out images and the random-pair MSE of the same images.
pub fn evaluate(model: &dyn LatentModel, data: &Dataset, max_images: usize) -> Result<Quality> {
    let mut idx = held_out(data);
    idx.truncate(max_images);
    let per = per_image_rmse(model, data, &idx, 64)?;
    let r_mse = per.iter().sum::<f64>() / per.len().max(1) as f64;
    Ok(Quality {
        dataset: data.id.clone(),
        num_images: idx.len(),
        r_mse,
        random_pair_mse: random_pair_mse(data, &idx, 2000, 7),
    })
}

fn fixed_codes(
    latent_dim: usize,
    seed: u64,
    n: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6121d);
    let v: Vec<f32> = (0..n * latent_dim)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    Ok(Tensor::from_vec(v, (n, latent_dim), device)?)
}

/// Encodes with whatever encoder the network has (also a recoder still being trained).
fn encode_any(model: &Model, x: &Tensor) -> Result<Tensor> {
    Ok(match &model.net {
        Net::Vae(m) => m.encode_mean(x)?,
        Net::Svae(m) => m.encode(x)?.0,
        Net::Gan(m) => m.recode_inference(x)?,
        Net::Refdcgan(m) => m.recode_inference(x)?,
        Net::Flow(m) => m.encode(x)?,
        Net::Style(m) => m.recode_inference(x)?,
    })
}

/// Interleaves rows of originals and reconstructions: `[2n, 3, 64, 64]` for a grid of `cols`.
pub fn interleave_rows(orig: &Tensor, recon: &Tensor, cols: usize) -> Result<Tensor> {
    let n = orig.dim(0)?;
    let mut parts = Vec::new();
    for start in (0..n).step_by(cols.max(1)) {
        let len = cols.min(n - start);
        parts.push(orig.narrow(0, start, len)?);
        parts.push(recon.narrow(0, start, len)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Writes `samples_EEE.png` (64 samples from fixed prior draws, [`Model::decode_prior`]) and, for models with an encoder,
/// `recon_EEE.png` (held-out originals above their reconstructions) into `dir`.
pub fn write_epoch_grids(
    model: &Model,
    data: &Dataset,
    kind: TrainKind,
    seed: u64,
    dir: &Path,
    epoch: usize,
) -> Result<()> {
    let werr = |e: crate::grid::GridError| ModelError::BadInput(e.to_string());
    let dev = model.device();
    if !matches!(kind, TrainKind::Recoder | TrainKind::RecoderZ) {
        let z = fixed_codes(model.config.latent_dim, seed, 64, dev)?;
        // flows are sampled at a reduced temperature, as in Glow
        let z = if model.config.family == super::Family::Flow {
            z.affine(super::flow::SAMPLE_TEMPERATURE, 0.0)?
        } else {
            z
        };
        let x = model.decode_prior(&z)?;
        crate::grid::save_grid(&x, 8, &dir.join(format!("samples_{epoch:03}.png")))
            .map_err(werr)?;
    }
    if !matches!(kind, TrainKind::Gan | TrainKind::Style) {
        let mut idx = held_out(data);
        idx.truncate(32);
        let x = data
            .batch(&idx, dev)
            .map_err(|e| ModelError::BadInput(e.to_string()))?;
        let xr = model.decode(&encode_any(model, &x)?)?;
        crate::grid::save_grid(
            &interleave_rows(&x, &xr, 8)?,
            8,
            &dir.join(format!("recon_{epoch:03}.png")),
        )
        .map_err(werr)?;
    }
    Ok(())
}
