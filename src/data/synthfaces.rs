//! synthfaces: 64x64 colour faces sampled from the pretrained reference DCGAN
//! (`gan-face-generate` 1.1.1, see `model::refdcgan`), reproducibly from a seed.
//!
//! Sample `i` has id `synth:{i:06}` and generating latent z_i ~ N(0, I_100) drawn from its own
//! ChaCha8 stream (seed, stream i), so the first N samples are the same whatever N is, and the
//! true generating factors are known (kept in [`SampleInfo::generating_latents`]).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{hash_split, DataError, Dataset, PixelSink, PixelStorage, SampleInfo, IMAGE_LEN};
use crate::model::LatentModel;

/// Default number of images of the embedded default dataset.
pub const DEFAULT_NUM: usize = 12_000;
/// Fraction of samples held out as the test split.
pub const TEST_FRACTION: f64 = 0.1;
/// Images generated per generator call.
const BATCH: usize = 128;

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
/// reporting `(done, total)` to `progress`. Pixels are kept per [`PixelStorage::from_env`]
/// (see [`generate_with`]).
pub fn generate(
    generator: &dyn LatentModel,
    num: usize,
    seed: u64,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<Dataset, DataError> {
    generate_with(generator, num, seed, &PixelStorage::from_env(), progress)
}

/// Like [`generate`], appending each batch of images to pixel storage per `storage` (memory,
/// or a pending pixel file for a large `num`), so memory holds one batch of images plus the
/// generating latents (`num x 100` f32).
pub fn generate_with(
    generator: &dyn LatentModel,
    num: usize,
    seed: u64,
    storage: &PixelStorage,
    progress: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> Result<Dataset, DataError> {
    let id = dataset_id(num, seed);
    let dim = generator.latent_dim();
    let err = |e: crate::model::ModelError| DataError::Invalid {
        id: id.clone(),
        message: format!("generator failed: {e}"),
    };
    let mut sink = PixelSink::new(storage, num)?;
    let mut latents = Vec::with_capacity(num * dim);
    let mut bytes = Vec::with_capacity(BATCH * IMAGE_LEN);
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
        if v.len() != n * IMAGE_LEN {
            return Err(DataError::Invalid {
                id: id.clone(),
                message: format!(
                    "the generator made {} values for {n} images of {IMAGE_LEN}",
                    v.len()
                ),
            });
        }
        bytes.clear();
        bytes.extend(v.iter().map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8));
        sink.push(&bytes)?;
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
        pixels: sink.finish()?,
        info,
        skipped: Vec::new(),
    };
    ds.validate()?;
    Ok(ds)
}
