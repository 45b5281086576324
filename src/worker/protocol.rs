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
//! app ── LocalBasis{..} | Traverse{..} | Probes{..} ──► geometry thread (newest of each kind)
//!     ◄── Progress{req, ..}* ── LocalBasisReady | TraversalReady | ProbesReady ── Finished{req}
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
    /// The local basis of the active source model at `z_in_source` and, once a map exists, its
    /// transfer: the target's local basis at the mapped point and the Grassmannian distance.
    /// Coalesced with other pending `LocalBasis` commands; answers are cached per model and code.
    LocalBasis {
        /// Request id.
        req: RequestId,
        /// Name of the source model the code belongs to (a request for a model that is no
        /// longer active is answered with `Cancelled`).
        source: String,
        /// The base point (length `d_source`).
        z_in_source: Vec<f32>,
        /// Number of directions (`1 ≤ k ≤ d_source`).
        k: usize,
    },
    /// A traversal along local direction `direction` from `z_in_source`, both ways out to
    /// `±range`, in `steps` steps per side: a straight line, or the iterative curve that
    /// re-projects on the local basis at every step. Also decodes a strip of frames.
    Traverse {
        /// Request id.
        req: RequestId,
        /// Name of the source model the code belongs to (as for `LocalBasis`).
        source: String,
        /// The base point (length `d_source`).
        z_in_source: Vec<f32>,
        /// Index of the direction (0 = largest singular value).
        direction: usize,
        /// Curve traversal (else a straight line).
        curve: bool,
        /// Steps on each side of the base point.
        steps: usize,
        /// How far to go on each side (latent units).
        range: f32,
        /// Frames of the decoded strip (at least 2).
        strip_frames: usize,
    },
    /// Ground-truth probes of the active pair: each model's own probe and the target's probe on
    /// mapped source codes.
    Probes {
        /// Request id.
        req: RequestId,
    },
    /// The paper's Fig. 2 for dataset samples `indices` of the active pair: blocks of
    /// `per_row` originals, source reconstructions and target decodings after relocation,
    /// written as a PNG (atomically) to `path`.
    Montage {
        /// Request id.
        req: RequestId,
        /// Dataset indices to show.
        indices: Vec<usize>,
        /// Samples per block of three rows.
        per_row: usize,
        /// Output PNG.
        path: PathBuf,
    },
}

impl Command {
    /// The command's request id.
    pub fn req(&self) -> RequestId {
        match self {
            Command::Sync { req, .. }
            | Command::Decode { req, .. }
            | Command::Pairs { req, .. }
            | Command::LocalBasis { req, .. }
            | Command::Traverse { req, .. }
            | Command::Probes { req }
            | Command::Montage { req, .. } => *req,
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
    /// A local basis (and its transfer) is known.
    LocalBasisReady {
        /// Request id.
        req: RequestId,
        /// The result.
        basis: Arc<LocalBasisResult>,
    },
    /// A traversal path and its strip of frames are known.
    TraversalReady {
        /// Request id.
        req: RequestId,
        /// The result.
        traversal: Arc<TraversalResult>,
    },
    /// The probes of the active pair are known.
    ProbesReady {
        /// Request id.
        req: RequestId,
        /// The result.
        probes: Arc<ProbeResult>,
    },
    /// A file was written (montage export).
    Exported {
        /// Request id.
        req: RequestId,
        /// What was written where.
        message: String,
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

/// The local basis at one code and its transfer through the map (answer to
/// [`Command::LocalBasis`]).
#[derive(Clone, Debug)]
pub struct LocalBasisResult {
    /// Source model name.
    pub source: String,
    /// The base point (length `d_source`).
    pub z_in_source: Vec<f32>,
    /// Singular values of the source decoder's Jacobian at the base point, descending (`k`).
    pub singular_values: Vec<f64>,
    /// `d_source x k`, orthonormal columns: the local directions.
    pub directions: DMatrix<f32>,
    /// The transfer through the current map (None before a map exists), or why it failed.
    pub transfer: Option<Result<TransferResult, String>>,
    /// Seconds spent computing (0 when every part came from the cache).
    pub compute_secs: f64,
}

/// How a map carries a local basis: the source directions pushed through the map against the
/// target model's own local basis at the mapped point.
#[derive(Clone, Debug)]
pub struct TransferResult {
    /// Target model name.
    pub target: String,
    /// The mapped base point (length `d_target`).
    pub z_in_target: Vec<f32>,
    /// Singular values of the target decoder's Jacobian at the mapped point, descending.
    pub target_singular_values: Vec<f64>,
    /// `d_target x k_t`: the target's local directions.
    pub target_directions: DMatrix<f32>,
    /// `‖Wᵀvᵢ‖` of each pushed source direction.
    pub pushed_norms: Vec<f64>,
    /// `k x k_t`: `|cos|` between pushed source direction `i` and target direction `j`.
    pub cosines: DMatrix<f32>,
    /// Principal angles between the two spans (radians, ascending).
    pub angles: Vec<f64>,
    /// Geodesic Grassmannian distance `√(Σ θᵢ²)`.
    pub geodesic: f64,
    /// Projection distance `√(Σ sin² θᵢ)`.
    pub projection: f64,
    /// Mean geodesic distance of two uniformly random subspaces of the same sizes (baseline).
    pub random_geodesic: f64,
    /// Largest possible geodesic distance.
    pub max_geodesic: f64,
}

/// A traversal along one local direction (answer to [`Command::Traverse`]).
#[derive(Clone, Debug)]
pub struct TraversalResult {
    /// The base point it starts from (length `d_source`).
    pub z_in_source: Vec<f32>,
    /// Direction index.
    pub direction: usize,
    /// Curve traversal (else a straight line).
    pub curve: bool,
    /// The codes from `−range` through the base point to `+range` (`2·steps + 1`).
    pub path: Vec<Vec<f32>>,
    /// Signed distance walked to each path point (latent units; 0 at the base point).
    pub offsets: Vec<f32>,
    /// Path indices of the strip frames.
    pub strip_indices: Vec<usize>,
    /// Source decodings of the strip frames (RGB 64x64 each).
    pub strip_source: Vec<Vec<u8>>,
    /// Target decodings of the mapped strip frames (empty before a map exists).
    pub strip_target: Vec<Vec<u8>>,
    /// Distance of the path's end points from the straight line's (0 for a straight line).
    pub end_deviation: f32,
    /// Seconds spent computing.
    pub compute_secs: f64,
}

pub use crate::latent::ground_truth::{ProbeScores, ProbeTask};

/// The probes of one pair (answer to [`Command::Probes`]).
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// Dataset id.
    pub dataset: String,
    /// What is predicted.
    pub task: ProbeTask,
    /// Output names (factor indices, attribute names); empty for identity.
    pub output_names: Vec<String>,
    /// Training / test samples.
    pub num_train: usize,
    /// Test samples.
    pub num_test: usize,
    /// Source model name.
    pub source: String,
    /// Target model name.
    pub target: String,
    /// Source probe on source codes (before the map).
    pub source_own: ProbeScores,
    /// Target probe on target codes.
    pub target_own: ProbeScores,
    /// Target probe on mapped source codes (after the map).
    pub mapped: ProbeScores,
    /// Classification: agreement of the target probe's labels on mapped vs own codes.
    pub agreement: Option<f64>,
    /// Classification: majority-class accuracy on the test samples (mean over outputs).
    pub majority_baseline: Option<f64>,
    /// Estimator of the map.
    pub map_estimator: String,
    /// Seconds spent computing.
    pub compute_secs: f64,
}
