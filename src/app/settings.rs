//! [`Settings`]: the small persisted part of the explorer's state (eframe storage, serde).

use serde::{Deserialize, Serialize};

use crate::latent::pipeline::FitOn;
use crate::latent::Estimator;

/// The estimator picked in the top bar (λ is kept apart so switching back keeps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EstimatorKind {
    /// Least squares.
    Lstsq,
    /// Least squares with bias.
    Affine,
    /// Ridge with λ.
    Ridge,
    /// Scaled orthogonal Procrustes.
    Procrustes,
    /// Adam on a dense layer.
    Sgd,
}

impl EstimatorKind {
    /// All kinds, in menu order.
    pub const ALL: [EstimatorKind; 5] = [
        Self::Lstsq,
        Self::Affine,
        Self::Ridge,
        Self::Procrustes,
        Self::Sgd,
    ];

    /// The engine's estimator.
    pub fn estimator(self, ridge_lambda: f64) -> Estimator {
        match self {
            Self::Lstsq => Estimator::Lstsq,
            Self::Affine => Estimator::Affine,
            Self::Ridge => Estimator::Ridge {
                lambda: ridge_lambda,
            },
            Self::Procrustes => Estimator::Procrustes,
            Self::Sgd => Estimator::sgd_default(),
        }
    }
}

impl std::fmt::Display for EstimatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Lstsq => "lstsq",
            Self::Affine => "affine",
            Self::Ridge => "ridge",
            Self::Procrustes => "Procrustes",
            Self::Sgd => "SGD (Adam)",
        })
    }
}

/// The tabs of the right panel (`--tab` picks the first one shown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum RightTab {
    /// Sector browser.
    Sectors,
    /// Support set.
    Support,
    /// Metrics and per-sample list.
    Metrics,
    /// Map anatomy.
    Map,
    /// All-pairs matrix.
    Pairs,
    /// Reconstruction gains.
    Gains,
    /// Local basis of the current sample, its transfer through the map, traversals.
    LocalBasis,
    /// Ground-truth probes before and after the map.
    Probes,
}

impl RightTab {
    /// All tabs, in display order.
    pub const ALL: [RightTab; 8] = [
        Self::Sectors,
        Self::Support,
        Self::Metrics,
        Self::Map,
        Self::Pairs,
        Self::Gains,
        Self::LocalBasis,
        Self::Probes,
    ];
}

impl std::fmt::Display for RightTab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sectors => "Sectors",
            Self::Support => "Support set",
            Self::Metrics => "Metrics",
            Self::Map => "Map",
            Self::Pairs => "Pairs",
            Self::Gains => "Gains",
            Self::LocalBasis => "Local basis",
            Self::Probes => "Probes",
        })
    }
}

/// Axes of the scatter plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScatterAxes {
    /// First two principal components of the source codes.
    Pca,
    /// Two latent variables (by index).
    Vars(usize, usize),
}

/// Everything that survives a restart. Small: no images, no codes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Dataset spec.
    pub dataset: String,
    /// Source model (zoo name or directory).
    pub source: String,
    /// Target model (zoo name or directory).
    pub target: String,
    /// Estimator kind.
    pub estimator: EstimatorKind,
    /// λ of the ridge estimator.
    pub ridge_lambda: f64,
    /// Which points the map is fitted on.
    pub fit_on: FitOn,
    /// Seed of the sector support set.
    pub support_seed: u64,
    /// Sample ids of an edited support set (None = the sector rule's set).
    pub support_members: Option<Vec<String>>,
    /// Id of the sample in the triptych.
    pub sample_id: Option<String>,
    /// Slider code of the source model (empty = the sample's code).
    pub z_in_source: Vec<f32>,
    /// Number of sliders (most informative variables).
    pub num_sliders: usize,
    /// Sliders span `±slider_range`.
    pub slider_range: f32,
    /// Number of variables spanning the sectors.
    pub num_selected: usize,
    /// Sector threshold (norm rule).
    pub sector_threshold: f32,
    /// Held-out samples for the metrics.
    pub max_eval: usize,
    /// Right panel tab.
    pub tab: RightTab,
    /// Scatter axes.
    pub scatter_axes: ScatterAxes,
    /// Extra model directories opened by the user.
    pub extra_models: Vec<String>,
    /// Local basis: number of directions.
    pub local_k: usize,
    /// Local basis traversal: the iterative curve (else a straight line).
    pub local_curve: bool,
    /// Local basis traversal: steps on each side of the base point.
    pub local_steps: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dataset: "synthfaces".into(),
            source: String::new(),
            target: String::new(),
            estimator: EstimatorKind::Lstsq,
            ridge_lambda: 0.1,
            fit_on: FitOn::SupportSet,
            support_seed: 0,
            support_members: None,
            sample_id: None,
            z_in_source: Vec::new(),
            num_sliders: 10,
            slider_range: 2.25,
            num_selected: 7,
            sector_threshold: 0.0,
            max_eval: 1000,
            tab: RightTab::Sectors,
            scatter_axes: ScatterAxes::Pca,
            extra_models: Vec::new(),
            local_k: 5,
            local_curve: false,
            local_steps: 10,
        }
    }
}
