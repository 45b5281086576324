//! synthfaces: 64x64 colour faces sampled from the pretrained reference DCGAN
//! (`gan-face-generate` 1.1.1, see `model::refdcgan`), reproducibly from a seed.
//!
//! Sample `i` has id `synth:{i:06}` and generating latent z_i ~ N(0, I_100) drawn from its own
//! ChaCha8 stream (seed, stream i), so the first N samples are the same whatever N is, and the
//! true generating factors are known (kept in [`SampleInfo::generating_latents`]).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{hash_split, DataError, Dataset, SampleInfo, IMAGE_LEN};
use crate::model::LatentModel;

/// Default number of images of the embedded default dataset.
pub const DEFAULT_NUM: usize = 12_000;
/// Fraction of samples held out as the test split.
pub const TEST_FRACTION: f64 = 0.1;

/// The dataset id for `num` images from `seed`.
pub fn dataset_id(num: usize, seed: u64) -> String {
    format!("synthfaces:n={num}:seed={seed}")
}

/// The generating latent of sample `index` (length `dim`).
pub fn generating_latent(seed: u64, index: usize, dim: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    (0..dim)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect()
}

/// Generates `num` images with `generator` (the reference DCGAN) from `seed`, in batches,
/// reporting `(done, total)` to `progress`.
pub fn generate(
    generator: &dyn LatentModel,
    num: usize,
    seed: u64,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<Dataset, DataError> {
    let id = dataset_id(num, seed);
    let dim = generator.latent_dim();
    let err = |e: crate::model::ModelError| DataError::Invalid {
        id: id.clone(),
        message: format!("generator failed: {e}"),
    };
    let mut pixels = Vec::with_capacity(num * IMAGE_LEN);
    let mut latents = Vec::with_capacity(num * dim);
    const BATCH: usize = 128;
    for start in (0..num).step_by(BATCH) {
        let n = BATCH.min(num - start);
        let z: Vec<f32> = (start..start + n)
            .flat_map(|i| generating_latent(seed, i, dim))
            .collect();
        let zt = Tensor::from_slice(&z, (n, dim), generator.device()).map_err(|e| err(e.into()))?;
        let x = generator.decode(&zt).map_err(err)?;
        let v: Vec<f32> = x
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| err(e.into()))?;
        pixels.extend(v.iter().map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8));
        latents.extend(z);
        if let Some(p) = progress {
            p(start + n, num);
        }
    }
    let sample_ids: Vec<String> = (0..num).map(|i| format!("synth:{i:06}")).collect();
    let splits = sample_ids
        .iter()
        .map(|s| hash_split(s, TEST_FRACTION))
        .collect();
    let info = SampleInfo {
        generating_latent_dim: dim,
        generating_latents: Some(latents),
        ..Default::default()
    };
    let ds = Dataset {
        id,
        sample_ids,
        splits,
        pixels,
        info,
        skipped: Vec::new(),
    };
    ds.validate()?;
    Ok(ds)
}
