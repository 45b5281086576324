//! Latent codes of every sample of a dataset under one model, cached on disk.
//!
//! The cache key is the model's weights hash (SHA-256 over its config architecture and every
//! tensor) plus the dataset id, so retraining a model or changing a dataset never reuses stale
//! codes. Encoding streams the dataset in batches; only the codes (N x d f32) are kept.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::Dataset;
use crate::model::{LatentModel, Model};
use crate::progress::{Cancel, Progress};

const MAGIC: &[u8; 8] = b"LATLASZ1";

/// Errors of the encodings cache.
#[derive(Debug, thiserror::Error)]
pub enum EncodingsError {
    /// The model failed to encode.
    #[error("encoding with {model} failed: {source}")]
    Model {
        /// Model name.
        model: String,
        /// The model error.
        source: crate::model::ModelError,
    },
    /// The dataset failed to produce a batch.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// Reading or writing the cache file failed, or it is corrupt.
    #[error("encodings cache: {msg}: {path}")]
    Cache {
        /// What went wrong.
        msg: String,
        /// The cache file.
        path: PathBuf,
    },
    /// Two encodings do not describe the same samples in the same order.
    #[error("encodings are not aligned: {0}")]
    Misaligned(String),
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Header of a cache file (JSON), followed by N x d little-endian f32.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Header {
    model_name: String,
    model_hash: String,
    dataset_id: String,
    sample_ids: Vec<String>,
    latent_dim: usize,
}

/// The codes of all samples of `dataset_id` under one model.
#[derive(Clone, Debug)]
pub struct Encodings {
    /// Model name.
    pub model_name: String,
    /// Model weights hash (hex).
    pub model_hash: String,
    /// Dataset id.
    pub dataset_id: String,
    /// Sample ids, one per row of `codes`, in dataset order.
    pub sample_ids: Vec<String>,
    /// Codes, N x latent_dim, row i = sample i of the dataset.
    pub codes: DMatrix<f32>,
}

impl Encodings {
    /// Rows for the given dataset indices (`indices.len()` x d).
    pub fn rows(&self, indices: &[usize]) -> DMatrix<f32> {
        let d = self.codes.ncols();
        DMatrix::from_fn(indices.len(), d, |r, c| self.codes[(indices[r], c)])
    }
    /// Fails loudly unless `other` covers the same dataset with the same samples in the same order.
    pub fn check_aligned(&self, other: &Encodings) -> Result<(), EncodingsError> {
        if self.dataset_id != other.dataset_id {
            return Err(EncodingsError::Misaligned(format!(
                "{} encodes dataset {} but {} encodes {}",
                self.model_name, self.dataset_id, other.model_name, other.dataset_id
            )));
        }
        if self.sample_ids.len() != other.sample_ids.len() {
            return Err(EncodingsError::Misaligned(format!(
                "{} has {} samples, {} has {}",
                self.model_name,
                self.sample_ids.len(),
                other.model_name,
                other.sample_ids.len()
            )));
        }
        if let Some(i) =
            (0..self.sample_ids.len()).find(|&i| self.sample_ids[i] != other.sample_ids[i])
        {
            return Err(EncodingsError::Misaligned(format!(
                "row {i} is sample {} for {} but {} for {}",
                self.sample_ids[i], self.model_name, other.sample_ids[i], other.model_name
            )));
        }
        Ok(())
    }
}

/// SHA-256 over the model's family, latent size, widths and every weight tensor (sorted by name).
pub fn weights_hash(model: &Model) -> Result<String, crate::model::ModelError> {
    let mut h = Sha256::new();
    h.update(format!(
        "{}:{}:{}",
        model.config.family, model.config.latent_dim, model.config.base_channels
    ));
    let tensors = crate::model::store::named_tensors(&model.varmap, false)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        h.update(name.as_bytes());
        let v: Vec<f32> = tensors[name]
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Encodes every sample of `ds` with `model` in batches of `batch`.
pub fn encode_dataset(
    model: &dyn LatentModel,
    model_hash: &str,
    ds: &Dataset,
    batch: usize,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Encodings, EncodingsError> {
    let n = ds.len();
    let d = model.latent_dim();
    let mut data = Vec::with_capacity(n * d);
    progress.start(
        &format!("encoding {} with {}", ds.id, model.name()),
        n as u64,
    );
    let merr = |source| EncodingsError::Model {
        model: model.name().to_string(),
        source,
    };
    for start in (0..n).step_by(batch.max(1)) {
        if cancel.is_cancelled() {
            return Err(EncodingsError::Cancelled);
        }
        let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
        let x = ds.batch(&idx, model.device())?;
        let z = model.encode(&x).map_err(merr)?;
        let v: Vec<f32> = z
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| merr(e.into()))?;
        data.extend(v);
        progress.update((start + idx.len()) as u64, "");
    }
    progress.finish("encoded");
    Ok(Encodings {
        model_name: model.name().to_string(),
        model_hash: model_hash.to_string(),
        dataset_id: ds.id.clone(),
        sample_ids: ds.sample_ids.clone(),
        codes: DMatrix::from_row_slice(n, d, &data),
    })
}

/// Cache file path for (model hash, dataset id) inside `dir`.
pub fn cache_path(dir: &Path, model_hash: &str, dataset_id: &str) -> PathBuf {
    let ds_hash = format!("{:x}", Sha256::digest(dataset_id.as_bytes()));
    dir.join(format!(
        "codes-{}-{}.lacodes",
        &model_hash[..16.min(model_hash.len())],
        &ds_hash[..16]
    ))
}

/// Writes encodings to `path` atomically.
pub fn save(enc: &Encodings, path: &Path) -> Result<(), EncodingsError> {
    let cerr = |msg: String| EncodingsError::Cache {
        msg,
        path: path.to_path_buf(),
    };
    let header = Header {
        model_name: enc.model_name.clone(),
        model_hash: enc.model_hash.clone(),
        dataset_id: enc.dataset_id.clone(),
        sample_ids: enc.sample_ids.clone(),
        latent_dim: enc.codes.ncols(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| cerr(e.to_string()))?;
    let mut bytes = Vec::with_capacity(16 + json.len() + enc.codes.len() * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    for r in 0..enc.codes.nrows() {
        for c in 0..enc.codes.ncols() {
            bytes.extend_from_slice(&enc.codes[(r, c)].to_le_bytes());
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| cerr(e.to_string()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| cerr(e.to_string()))?;
    tmp.write_all(&bytes).map_err(|e| cerr(e.to_string()))?;
    tmp.persist(path).map_err(|e| cerr(e.error.to_string()))?;
    Ok(())
}

/// Reads encodings from `path`, checking the format and sizes.
pub fn load(path: &Path) -> Result<Encodings, EncodingsError> {
    let cerr = |msg: &str| EncodingsError::Cache {
        msg: msg.to_string(),
        path: path.to_path_buf(),
    };
    let mut f = std::fs::File::open(path).map_err(|e| cerr(&e.to_string()))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| cerr(&e.to_string()))?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(cerr("not an encodings cache file (bad magic)"));
    }
    let hlen = u64::from_le_bytes(
        bytes[8..16]
            .try_into()
            .map_err(|_| cerr("truncated header"))?,
    ) as usize;
    let body = 16usize
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| cerr("truncated header"))?;
    let header: Header =
        serde_json::from_slice(&bytes[16..body]).map_err(|e| cerr(&format!("bad header: {e}")))?;
    let (n, d) = (header.sample_ids.len(), header.latent_dim);
    if bytes.len() - body != n * d * 4 {
        return Err(cerr(&format!(
            "expected {n} x {d} codes, file has {} bytes of data",
            bytes.len() - body
        )));
    }
    let values: Vec<f32> = bytes[body..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(cerr("codes contain NaN or infinite values"));
    }
    Ok(Encodings {
        model_name: header.model_name,
        model_hash: header.model_hash,
        dataset_id: header.dataset_id,
        sample_ids: header.sample_ids,
        codes: DMatrix::from_row_slice(n, d, &values),
    })
}

/// Codes of every sample of `ds` under `model`: from the cache in `cache_dir` when present and
/// valid for exactly this model and dataset, else encoded and cached.
pub fn cached_encodings(
    model: &Model,
    ds: &Dataset,
    cache_dir: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Encodings, EncodingsError> {
    let hash = weights_hash(model).map_err(|source| EncodingsError::Model {
        model: model.config.name.clone(),
        source,
    })?;
    let path = cache_path(cache_dir, &hash, &ds.id);
    if path.exists() {
        match load(&path) {
            Ok(enc)
                if enc.model_hash == hash
                    && enc.dataset_id == ds.id
                    && enc.sample_ids == ds.sample_ids =>
            {
                return Ok(enc)
            }
            Ok(_) => log::warn!(
                "encodings cache does not match the model or dataset, re-encoding: {}",
                path.display()
            ),
            Err(e) => log::warn!("{e}; re-encoding"),
        }
    }
    let enc = encode_dataset(model, &hash, ds, 256, progress, cancel)?;
    if let Err(e) = save(&enc, &path) {
        log::warn!("could not cache encodings: {e}");
    }
    Ok(enc)
}
