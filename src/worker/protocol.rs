//! The messages between the explorer and its worker threads.
//!
//! # Message sequence
//!
//! ```text
//! app ── Sync{req, pair, fit} ──► analysis thread
//!     ◄── Progress{req, ..}* ── DatasetReady ── PairReady ── SupportReady ── FitReady
//!     ◄── MetricsReady ── Finished{req}            (or Failed{req, ..} / Cancelled{req})
//! app ── Decode{req, z_in_source, sample} ──► decode thread (only the newest pending one runs)
//!     ◄── Decoded{req, ..}                         (or Failed{req, ..})
//! ```
//!
//! Every command carries a [`RequestId`]; every event names the request it answers, so the app
//! can drop answers to requests it has since replaced.

use std::path::PathBuf;
use std::sync::Arc;

use nalgebra::DMatrix;

use crate::data::Dataset;
use crate::latent::pipeline::FitOn;
use crate::latent::{Estimator, GainReport, LinearMap, RelocationMetrics, SupportSet};

/// Identifies one command; answers carry the same id.
pub type RequestId = u64;

/// Which dataset and models to compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSpec {
    /// Dataset spec (`synthfaces`, `orl`, `folder:PATH`, `celeba:ROOT[:first=N]`).
    pub dataset: String,
    /// Source model directory.
    pub source_dir: PathBuf,
    /// Target model directory.
    pub target_dir: PathBuf,
}

/// Which support set the map is fitted on.
#[derive(Clone, Debug, PartialEq)]
pub enum SupportChoice {
    /// The source model's sector support set with this seed.
    Sectors {
        /// Seed of the fill rule.
        seed: u64,
    },
    /// Exactly these dataset indices (after the user added or removed members).
    Explicit(Vec<usize>),
}

/// How the map is fitted.
#[derive(Clone, Debug, PartialEq)]
pub struct FitSpec {
    /// The estimator.
    pub estimator: Estimator,
    /// Which points the map is fitted on.
    pub fit_on: FitOn,
    /// The support set (also used for random anchors' size).
    pub support: SupportChoice,
    /// Number of most informative variables spanning the sectors.
    pub num_selected: usize,
    /// At most this many held-out samples are used for metrics.
    pub max_eval: usize,
    /// Images used for the reconstruction gain.
    pub gain_images: usize,
}

/// A command to the worker.
#[derive(Clone, Debug)]
pub enum Command {
    /// Load (or reuse) the dataset and both models, then build the support set, fit the map and
    /// evaluate it. Steps whose inputs did not change are reused.
    Sync {
        /// Request id.
        req: RequestId,
        /// Dataset and models.
        pair: PairSpec,
        /// The fit.
        fit: FitSpec,
    },
    /// Decode `z_in_source` with the source model and, through the current map, with the target
    /// model. Coalesced: only the newest pending decode runs.
    Decode {
        /// Request id.
        req: RequestId,
        /// A source code (length `d_source`).
        z_in_source: Vec<f32>,
        /// Dataset sample to measure the MSE against.
        sample: Option<usize>,
    },
    /// The all-pairs M-MSE matrix of `models` on the current dataset (lstsq on support sets).
    Pairs {
        /// Request id.
        req: RequestId,
        /// Dataset spec.
        dataset: String,
        /// Model directories.
        models: Vec<PathBuf>,
        /// Held-out samples per pair.
        max_eval: usize,
    },
}

impl Command {
    /// The command's request id.
    pub fn req(&self) -> RequestId {
        match self {
            Command::Sync { req, .. }
            | Command::Decode { req, .. }
            | Command::Pairs { req, .. } => *req,
        }
    }
}

/// What the app needs to know about a loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    /// Model name.
    pub name: String,
    /// Family (`vae`, `gan`, ...).
    pub family: String,
    /// Latent dimension.
    pub latent_dim: usize,
}

/// The source model's sign sectors of every sample.
#[derive(Clone, Debug)]
pub struct SectorData {
    /// The selected variables (most informative first).
    pub vars: Vec<usize>,
    /// Sign pattern of each sample (bit i set = positive on `vars[i]`).
    pub patterns: Vec<u32>,
    /// Norm of each sample's code on `vars` (the default sector rule's measure).
    pub measures: Vec<f32>,
}

/// An event from the worker.
#[derive(Clone, Debug)]
pub enum Event {
    /// Progress of a long step.
    Progress {
        /// Request id.
        req: RequestId,
        /// What is being done.
        phase: String,
        /// Units done.
        done: u64,
        /// Units in all (0 = unknown).
        total: u64,
    },
    /// The dataset is loaded.
    DatasetReady {
        /// Request id.
        req: RequestId,
        /// The dataset (shared, read-only).
        dataset: Arc<Dataset>,
    },
    /// Both models are loaded and the source model's codes and gains are known.
    PairReady {
        /// Request id.
        req: RequestId,
        /// Source model.
        source: ModelSummary,
        /// Target model.
        target: ModelSummary,
        /// Source codes, row i = sample i (`N x d_source`).
        z_in_source: Arc<DMatrix<f32>>,
        /// Reconstruction gains of the source model.
        gains: Arc<GainReport>,
        /// Sign sectors of the source codes.
        sectors: Arc<SectorData>,
        /// Device label (`CPU`, `CUDA:0`).
        device: String,
    },
    /// The support set is known.
    SupportReady {
        /// Request id.
        req: RequestId,
        /// The support set.
        support: Arc<SupportSet>,
    },
    /// The map is fitted.
    FitReady {
        /// Request id.
        req: RequestId,
        /// `target_from_source`.
        map: Arc<LinearMap>,
        /// Number of points fitted on.
        num_points: usize,
    },
    /// The map is evaluated on held-out samples.
    MetricsReady {
        /// Request id.
        req: RequestId,
        /// The metrics (per-sample lists follow `eval_indices`).
        metrics: Arc<RelocationMetrics>,
        /// Dataset indices the per-sample lists refer to.
        eval_indices: Arc<Vec<usize>>,
    },
    /// A decode finished.
    Decoded {
        /// Request id.
        req: RequestId,
        /// Source reconstruction, RGB 64x64 row-major.
        source_rgb: Vec<u8>,
        /// Target decoding of the mapped code (None before a map exists).
        mapped_rgb: Option<Vec<u8>>,
        /// MSE of the source reconstruction to the sample (when a sample was given).
        source_mse: Option<f64>,
        /// MSE of the mapped reconstruction to the sample.
        mapped_mse: Option<f64>,
    },
    /// One cell of the all-pairs matrix.
    PairCell {
        /// Request id.
        req: RequestId,
        /// Row (source model index).
        source: usize,
        /// Column (target model index).
        target: usize,
        /// M-MSE, or the error text.
        m_mse: Result<f64, String>,
    },
    /// A request finished (after its last result event).
    Finished {
        /// Request id.
        req: RequestId,
    },
    /// A request was cancelled.
    Cancelled {
        /// Request id.
        req: RequestId,
    },
    /// A request failed.
    Failed {
        /// Request id.
        req: RequestId,
        /// The error with its context chain.
        error: String,
    },
}
