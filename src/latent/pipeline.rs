//! The pair workflow shared by the command line (`fit`, `table`, `montage`) and the explorer's
//! worker: models with their cached codes, cached reconstruction gains, the source model's
//! support set, a fit on a chosen set of points and its evaluation on held-out samples.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::encodings::{cached_encodings, weights_hash, Encodings, EncodingsError};
use super::estimators::{target_from_source, Estimator, LinearMap};
use super::gain::{reconstruction_gain, select_features, GainReport};
use super::gain_screened::screened_reconstruction_gain;
use super::relocation::{evaluate_relocation, RelocationMetrics};
use super::support::{random_support_set, sector_support_set, SectorSupportOptions, SupportSet};
use super::LatentError;
use crate::data::{Dataset, Split};
use crate::model::{Family, LatentModel, Model};
use crate::progress::{Cancel, Progress};

/// Errors of the pair workflow.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// From the analysis functions.
    #[error(transparent)]
    Latent(#[from] LatentError),
    /// From the encodings cache.
    #[error(transparent)]
    Encodings(#[from] EncodingsError),
    /// From a model.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A cache file could not be written or parsed.
    #[error("gains cache: {msg}: {path}")]
    Cache {
        /// What went wrong.
        msg: String,
        /// The file.
        path: PathBuf,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, PipelineError>;

/// Which points a map is fitted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FitOn {
    /// The source model's sector support set (the paper's method).
    SupportSet,
    /// Random anchors of the same size (baseline).
    RandomAnchors,
    /// The whole training split.
    Full,
}

impl std::fmt::Display for FitOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FitOn::SupportSet => "support set",
            FitOn::RandomAnchors => "random anchors",
            FitOn::Full => "full train split",
        })
    }
}

/// A model together with its codes of every sample of the dataset.
pub struct Loaded {
    /// The model.
    pub model: Model,
    /// Its codes (row i = dataset sample i).
    pub encodings: Encodings,
}

impl Loaded {
    /// Encodes `ds` with `model` (or loads the cached codes).
    pub fn new(
        model: Model,
        ds: &Dataset,
        cache_dir: &Path,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Loaded> {
        let encodings = cached_encodings(&model, ds, cache_dir, progress, cancel)?;
        Ok(Loaded { model, encodings })
    }
    /// Model name.
    pub fn name(&self) -> &str {
        self.model.name()
    }
}

/// Options of the pair workflow.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairOptions {
    /// Map estimator.
    pub estimator: Estimator,
    /// Support-set (and random-anchor) size.
    pub support_size: usize,
    /// Number of most informative variables spanning the sectors.
    pub num_selected: usize,
    /// Seed of support sets and anchors.
    pub seed: u64,
    /// Images used for the reconstruction gain.
    pub gain_images: usize,
    /// At most this many held-out samples are used for metrics.
    pub max_eval: usize,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            estimator: Estimator::Lstsq,
            support_size: 150,
            num_selected: 7,
            seed: 0,
            gain_images: 256,
            max_eval: 2000,
        }
    }
}

/// Reconstruction gain of `model` on the first `num_images` training images, cached on disk
/// per (weights hash, dataset, number of images). For a normalizing flow (12,288 variables)
/// the screened rule of [`super::gain_screened`] is used: exact gains for the 32 variables
/// of largest first-order estimate, the estimate for the others.
pub fn cached_gains(
    loaded: &Loaded,
    ds: &Dataset,
    num_images: usize,
    cache_dir: &Path,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<GainReport> {
    let hash = &loaded.encodings.model_hash;
    let flow = loaded.model.family() == Family::Flow;
    let rule = if flow { "|screened" } else { "" };
    let key = format!("{}|{}|{}{rule}", hash, ds.id, num_images);
    let key_hash = format!(
        "{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(key.as_bytes())
    );
    let path = cache_dir.join(format!("gains-{}.json", &key_hash[..16]));
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<GainReport>(&text) {
            Ok(g) if g.gains.len() == loaded.model.latent_dim() => return Ok(g),
            _ => log::warn!("ignoring a stale gains cache: {}", path.display()),
        }
    }
    let mut idx = train_indices(ds);
    idx.truncate(num_images);
    let report = if flow {
        screened_reconstruction_gain(&loaded.model, ds, &idx, progress, cancel)?
    } else {
        reconstruction_gain(&loaded.model, ds, &idx, progress, cancel)?
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| PipelineError::Cache {
        msg: e.to_string(),
        path: path.clone(),
    })?;
    if let Err(e) = super::write_atomic(&path, json.as_bytes()) {
        log::warn!("could not cache the gains: {e}");
    }
    Ok(report)
}

/// Training-split indices (all samples when the dataset has no training split).
pub fn train_indices(ds: &Dataset) -> Vec<usize> {
    let idx = ds.indices(Split::Train);
    if idx.is_empty() {
        (0..ds.len()).collect()
    } else {
        idx
    }
}

/// Held-out indices (test, else validation, else all), at most `max`.
pub fn eval_indices(ds: &Dataset, max: usize) -> Vec<usize> {
    let mut idx = crate::model::quality::held_out(ds);
    idx.truncate(max);
    idx
}

/// The source model's sector support set on the training split.
pub fn source_support_set(
    source: &Loaded,
    gains: &GainReport,
    ds: &Dataset,
    opts: &PairOptions,
) -> Result<SupportSet> {
    let idx = train_indices(ds);
    let vars = select_features(&gains.order, opts.num_selected, opts.support_size)?;
    let z = source.encodings.rows(&idx);
    let sopts = SectorSupportOptions {
        size: opts.support_size,
        seed: opts.seed,
        ..Default::default()
    };
    Ok(sector_support_set(
        ds,
        &idx,
        &z,
        &vars,
        &sopts,
        source.name(),
    )?)
}

/// The dataset indices a map is fitted on.
pub fn fit_indices(
    fit_on: FitOn,
    support: &SupportSet,
    ds: &Dataset,
    opts: &PairOptions,
) -> Result<Vec<usize>> {
    Ok(match fit_on {
        FitOn::SupportSet => support.indices.clone(),
        FitOn::RandomAnchors => {
            random_support_set(ds, &train_indices(ds), opts.support_size, opts.seed)?.indices
        }
        FitOn::Full => train_indices(ds),
    })
}

/// At most this many points are used by `ridge:auto` when the source has more dimensions
/// than that (a flow fitted on the full training split): its dual form eigen-decomposes the
/// `n x n` Gram matrix. They are evenly spaced over the given indices.
pub const MAX_DUAL_POINTS: usize = 2000;

/// The estimator a pair is actually fitted with: `lstsq` and `affine` become `ridge:auto`
/// ([`Estimator::RidgeCv`], λ by leave-one-out error) when either model is a normalizing
/// flow. A flow's 12,288 dimensions are far more than a support set's points, so least
/// squares would interpolate (flow as source) or fit 12,288 unregularised regressions (flow as
/// target). Explicit `ridge:λ`, `procrustes` and `sgd` are kept.
pub fn pair_estimator(requested: &Estimator, source: &Loaded, target: &Loaded) -> Estimator {
    let flow = [source, target]
        .iter()
        .any(|l| l.model.family() == Family::Flow);
    match requested {
        Estimator::Lstsq | Estimator::Affine if flow => Estimator::RidgeCv,
        other => other.clone(),
    }
}

/// Fits `target_from_source` on the dataset samples `indices`, with [`pair_estimator`] (the
/// map records the estimator used; `info.num_points` the points, see [`MAX_DUAL_POINTS`]).
pub fn fit_pair(
    source: &Loaded,
    target: &Loaded,
    indices: &[usize],
    estimator: &Estimator,
    device: &Device,
) -> Result<LinearMap> {
    source.encodings.check_aligned(&target.encodings)?;
    let estimator = pair_estimator(estimator, source, target);
    let thinned: Vec<usize>;
    let indices = if estimator == Estimator::RidgeCv
        && indices.len() > MAX_DUAL_POINTS
        && source.model.latent_dim() > MAX_DUAL_POINTS
    {
        thinned = (0..MAX_DUAL_POINTS)
            .map(|i| indices[i * indices.len() / MAX_DUAL_POINTS])
            .collect();
        &thinned[..]
    } else {
        indices
    };
    let zs = source.encodings.rows(indices);
    let zt = target.encodings.rows(indices);
    Ok(target_from_source(&zs, &zt, &estimator, device)?)
}

/// L-, R- and M-MSE (and the rest of [`RelocationMetrics`]) on the samples `indices`.
pub fn evaluate_pair(
    source: &Loaded,
    target: &Loaded,
    map: &LinearMap,
    ds: &Dataset,
    indices: &[usize],
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RelocationMetrics> {
    source.encodings.check_aligned(&target.encodings)?;
    let zs = source.encodings.rows(indices);
    let zt = target.encodings.rows(indices);
    Ok(evaluate_relocation(
        &source.model,
        &target.model,
        map,
        ds,
        indices,
        &zs,
        &zt,
        progress,
        cancel,
    )?)
}

/// The weights hash of a model (the encodings cache key).
pub fn model_hash(model: &Model) -> Result<String> {
    Ok(weights_hash(model)?)
}
