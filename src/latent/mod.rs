//! The analysis engine: plain functions on latent codes, after Asperti & Tonelli (2022),
//! "Comparing the latent space of generative models", §5 (support sets) and §6 (maps).
//!
//! # Architecture
//!
//! Codes are `nalgebra::DMatrix<f32>` with **one row per sample** (`N x d`). Names say which
//! space a matrix lives in: `z_in_source` (`N x d_source`), `z_in_target` (`N x d_target`).
//!
//! The pipeline of the paper, one module per step:
//!
//! 1. `encodings` (cache of codes per model and dataset; written elsewhere).
//! 2. [`gain`]: reconstruction gain per latent variable (§5.1) and feature selection (§5.2).
//! 3. [`sectors`]: the `2^n` sign sectors of the selected variables, with two membership rules.
//! 4. [`support`]: the support set, one extreme sample per sector plus a documented fill rule
//!    (§5.3), and baselines (random, farthest-point anchors), JSON save/load, spread check.
//! 5. [`estimators`]: linear maps `z_in_target = z_in_source · W (+ b)` fitted by
//!    [`estimators::target_from_source`] (least squares, affine, ridge, Procrustes, Adam),
//!    saved as `.npy` or safetensors ([`map_io`]).
//! 6. [`metrics`]: L-MSE, per-dimension L-MSE, linear CKA, singular values, cycle error.
//! 7. [`relocation`]: L-MSE / R-MSE / M-MSE of §6 by decoding through both models.
//!
//! Numerics: the closed-form fits use the normal equations with `XᵀX`, `XᵀY` accumulated in
//! `f64` ([`linalg`]: `f32` gemm over row blocks of 4096, block sums in `f64`), solved by a
//! Cholesky factorisation. Every entry point checks shapes and finiteness first and returns a
//! [`LatentError`] instead of panicking or producing NaN. Long operations take a
//! [`crate::progress::Progress`] sink and a [`crate::progress::Cancel`] flag.
//!
//! This module never imports a GUI crate; files are written atomically (temporary file in the
//! same folder, then renamed).

pub mod encodings;
pub mod estimators;
pub mod gain;
pub mod gain_screened;
pub mod grassmann;
pub mod ground_truth;
pub mod linalg;
pub mod local_basis;
pub mod map_io;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod relocation;
mod ridge_cv;
pub mod sectors;
mod sgd;
pub mod support;
mod support_io;

use std::path::{Path, PathBuf};

use nalgebra::DMatrix;

pub use estimators::{target_from_source, Estimator, FitInfo, LinearMap};
pub use gain::{reconstruction_gain, select_features, GainReport};
pub use metrics::{cycle_error, l_mse, linear_cka, per_dim_l_mse, singular_values};
pub use relocation::{evaluate_relocation, shuffled_baseline, RelocationMetrics};
pub use sectors::SectorRule;
pub use support::{SupportMethod, SupportSet};

/// Everything that can go wrong in the analysis. Messages that concern a file name it last.
#[derive(Debug, thiserror::Error)]
pub enum LatentError {
    /// Matrices or arguments of incompatible shapes.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A NaN or infinite value in an input.
    #[error("{what} has a non-finite value at row {row}, column {col}")]
    NonFinite {
        /// Which input.
        what: String,
        /// Row of the first bad value.
        row: usize,
        /// Column of the first bad value.
        col: usize,
    },
    /// Too few points (samples, images, sectors) for the operation.
    #[error("not enough points: {0}")]
    NotEnoughPoints(String),
    /// An argument out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The data cannot determine the result (e.g. all-zero codes, zero variance).
    #[error("degenerate input: {0}")]
    Degenerate(String),
    /// The operation was cancelled through its [`crate::progress::Cancel`] flag.
    #[error("cancelled")]
    Cancelled,
    /// An estimator name that cannot be parsed.
    #[error("unknown estimator {0:?} (expected lstsq, affine, ridge:LAMBDA, ridge:auto, procrustes or sgd[:steps=N,lr=X,l2=Y])")]
    ParseEstimator(String),
    /// A support set names a sample that is not in the dataset.
    #[error("sample id {id:?} of the support set is not in dataset {dataset:?}: {}", path.display())]
    MissingSample {
        /// The missing sample id.
        id: String,
        /// The dataset searched.
        dataset: String,
        /// The support-set file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{action}: {source}: {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
        /// The file.
        path: PathBuf,
    },
    /// A file has unexpected content.
    #[error("bad file content: {msg}: {}", path.display())]
    Format {
        /// What is wrong.
        msg: String,
        /// The file.
        path: PathBuf,
    },
    /// An error from a model's encode or decode.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// An error from the dataset.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// An error inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, LatentError>;

/// Index of the first NaN or infinity in `v`. Scans chunks with a branch-free fold (which
/// vectorises, unlike a short-circuiting search) on all threads; a full-data map's codes are
/// tens of millions of values, and the plain search took a fifth of the fit.
pub fn first_non_finite(v: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let all_finite = |c: &[f32]| c.iter().fold(true, |ok, x| ok & x.is_finite());
    let chunk = if v.len() <= CHUNK {
        // one chunk (a support-set map's codes): no hand-off to the thread pool
        (!all_finite(v)).then_some(0)?
    } else {
        v.par_chunks(CHUNK).position_first(|c| !all_finite(c))?
    };
    let start = chunk * CHUNK;
    v[start..]
        .iter()
        .position(|x| !x.is_finite())
        .map(|i| start + i)
}

/// Errors unless every entry of `m` (`N x d`) is finite; `what` names it in the message.
pub fn check_finite(what: &str, m: &DMatrix<f32>) -> Result<()> {
    let nrows = m.nrows().max(1);
    match first_non_finite(m.as_slice()) {
        None => Ok(()),
        Some(pos) => Err(LatentError::NonFinite {
            what: what.to_string(),
            row: pos % nrows,
            col: pos / nrows,
        }),
    }
}

/// Errors unless `a` and `b` have the same number of rows (paired samples).
pub fn check_same_rows(
    a_name: &str,
    a: &DMatrix<f32>,
    b_name: &str,
    b: &DMatrix<f32>,
) -> Result<()> {
    if a.nrows() != b.nrows() {
        return Err(LatentError::Shape(format!(
            "{a_name} has {} rows but {b_name} has {} (rows must be paired samples)",
            a.nrows(),
            b.nrows()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source: std::io::Error| LatentError::Io {
            action,
            source,
            path,
        }
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).map_err(io("cannot create a temporary file"))?;
    tmp.write_all(bytes).map_err(io("cannot write file"))?;
    tmp.as_file().sync_all().map_err(io("cannot write file"))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(io("cannot rename temporary file to"))?;
    Ok(())
}

/// Reads a whole file, with the path in any error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| LatentError::Io {
        action: "cannot read file",
        source,
        path: path.to_path_buf(),
    })
}
