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

/// Header of a cache file (JSON), followed by N x d little-endian f32 (f16 when `f16`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Header {
    model_name: String,
    model_hash: String,
    dataset_id: String,
    sample_ids: Vec<String>,
    latent_dim: usize,
    /// Codes stored as f16 (wide codes, see [`F16_ABOVE_DIM`]); f32 otherwise.
    #[serde(default)]
    f16: bool,
}

/// Codes wider than this (a flow's 12,288 dimensions) are cached as f16: half the disk and
/// load time (12,000 flow codes: 295 MB instead of 590 MB), relative rounding ≤ 2⁻¹¹ (unless
/// a value is beyond f16's range); they are f32 again in memory.
pub const F16_ABOVE_DIM: usize = 4096;

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

/// Encodes every sample of `ds` with `model` in batches of `batch` (consecutive samples, so
/// a dataset read from disk is read sequentially). Memory: the model, one batch of images and
/// the N x d codes, which are written straight into the result matrix.
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
    let mut codes = DMatrix::<f32>::zeros(n, d);
    progress.start(
        &format!("encoding {} with {}", ds.id, model.name()),
        n as u64,
    );
    let merr = |source| EncodingsError::Model {
        model: model.name().to_string(),
        source,
    };
    let batch = batch.max(1);
    let mut idx = Vec::with_capacity(batch);
    for start in (0..n).step_by(batch) {
        if cancel.is_cancelled() {
            return Err(EncodingsError::Cancelled);
        }
        idx.clear();
        idx.extend(start..(start + batch).min(n));
        let x = ds.batch(&idx, model.device())?;
        let z = model.encode(&x).map_err(merr)?;
        drop(x);
        let v: Vec<f32> = z
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| merr(e.into()))?;
        if v.len() != idx.len() * d {
            return Err(merr(crate::model::ModelError::Unavailable(format!(
                "encode returned {} values for {} images of latent size {d}",
                v.len(),
                idx.len()
            ))));
        }
        for (row, z_row) in v.chunks_exact(d.max(1)).enumerate() {
            for (col, &value) in z_row.iter().enumerate() {
                codes[(start + row, col)] = value;
            }
        }
        progress.update((start + idx.len()) as u64, "");
    }
    progress.finish("encoded");
    Ok(Encodings {
        model_name: model.name().to_string(),
        model_hash: model_hash.to_string(),
        dataset_id: ds.id.clone(),
        sample_ids: ds.sample_ids.clone(),
        codes,
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

/// Writes encodings to `path` atomically (streamed: no second copy of the codes).
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
        f16: enc.codes.ncols() > F16_ABOVE_DIM && enc.codes.iter().all(|v| v.abs() < 6e4),
    };
    let json = serde_json::to_vec(&header).map_err(|e| cerr(e.to_string()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| cerr(e.to_string()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| cerr(e.to_string()))?;
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let write = |out: &mut std::io::BufWriter<&mut std::fs::File>| -> std::io::Result<()> {
            out.write_all(MAGIC)?;
            out.write_all(&(json.len() as u64).to_le_bytes())?;
            out.write_all(&json)?;
            for r in 0..enc.codes.nrows() {
                for c in 0..enc.codes.ncols() {
                    let v = enc.codes[(r, c)];
                    if header.f16 {
                        out.write_all(&half::f16::from_f32(v).to_le_bytes())?;
                    } else {
                        out.write_all(&v.to_le_bytes())?;
                    }
                }
            }
            out.flush()
        };
        write(&mut out).map_err(|e| cerr(e.to_string()))?;
    }
    tmp.as_file().sync_all().map_err(|e| cerr(e.to_string()))?;
    tmp.persist(path).map_err(|e| cerr(e.error.to_string()))?;
    Ok(())
}

/// Reads encodings from `path`, checking the format, sizes and finiteness (streamed into the
/// code matrix).
pub fn load(path: &Path) -> Result<Encodings, EncodingsError> {
    let cerr = |msg: &str| EncodingsError::Cache {
        msg: msg.to_string(),
        path: path.to_path_buf(),
    };
    let f = std::fs::File::open(path).map_err(|e| cerr(&e.to_string()))?;
    let file_len = f.metadata().map_err(|e| cerr(&e.to_string()))?.len();
    let mut f = std::io::BufReader::with_capacity(1 << 20, f);
    let mut prefix = [0u8; 16];
    if file_len < 16 || f.read_exact(&mut prefix).is_err() || &prefix[..8] != MAGIC {
        return Err(cerr("not an encodings cache file (bad magic)"));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&prefix[8..16]);
    let hlen = u64::from_le_bytes(word);
    if hlen > file_len - 16 {
        return Err(cerr("truncated header"));
    }
    let mut json = vec![0u8; hlen as usize];
    f.read_exact(&mut json)
        .map_err(|_| cerr("truncated header"))?;
    let header: Header =
        serde_json::from_slice(&json).map_err(|e| cerr(&format!("bad header: {e}")))?;
    drop(json);
    let (n, d) = (header.sample_ids.len(), header.latent_dim);
    let width = if header.f16 { 2 } else { 4 };
    let data_len = file_len - 16 - hlen;
    if Some(data_len)
        != (n as u64)
            .checked_mul(d as u64)
            .and_then(|v| v.checked_mul(width as u64))
    {
        return Err(cerr(&format!(
            "expected {n} x {d} codes, file has {data_len} bytes of data"
        )));
    }
    let mut codes = DMatrix::<f32>::zeros(n, d);
    let mut row = vec![0u8; width * d];
    for r in 0..n {
        f.read_exact(&mut row).map_err(|e| cerr(&e.to_string()))?;
        for (c, w) in row.chunks_exact(width).enumerate() {
            let v = match w {
                [a, b] => half::f16::from_le_bytes([*a, *b]).to_f32(),
                _ => f32::from_le_bytes([w[0], w[1], w[2], w[3]]),
            };
            if !v.is_finite() {
                return Err(cerr("codes contain NaN or infinite values"));
            }
            codes[(r, c)] = v;
        }
    }
    Ok(Encodings {
        model_name: header.model_name,
        model_hash: header.model_hash,
        dataset_id: header.dataset_id,
        sample_ids: header.sample_ids,
        codes,
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
