//! [`AppCommand`]: what panels ask for; `ExplorerApp::logic` handles them once per frame.

use std::path::PathBuf;

use super::geometry::GeometryCommand;
use super::settings::{EstimatorKind, RightTab, ScatterAxes};
use crate::latent::pipeline::FitOn;

/// What can be exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// Original | source | mapped, one PNG.
    Triptych,
    /// Originals, source and mapped reconstructions of the first held-out samples, one PNG.
    Montage,
    /// The map as safetensors (and `.npy` files in a folder beside it).
    Map,
    /// The support set as JSON.
    Support,
    /// The per-sample metrics as CSV.
    Metrics,
}

/// What a file dialog was opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenKind {
    /// A folder of images.
    ImageFolder,
    /// A CelebA root.
    CelebaRoot,
    /// A model directory.
    ModelDir,
}

/// A request from a panel.
#[derive(Clone, Debug, PartialEq)]
pub enum AppCommand {
    /// Use another dataset spec.
    SelectDataset(String),
    /// Use another source model (zoo name or directory).
    SelectSource(String),
    /// Use another target model.
    SelectTarget(String),
    /// Use this source and target.
    SelectPair(String, String),
    /// Use another estimator.
    SetEstimator(EstimatorKind),
    /// λ of the ridge estimator.
    SetRidgeLambda(f64),
    /// Which points to fit on.
    SetFitOn(FitOn),
    /// Refit now.
    Refit,
    /// Run refits and decodes on this candle device (`cpu`, `cuda`, `cuda:N`): a new worker
    /// on that device replaces the current one, then the pair is synced again.
    SetDevice(String),
    /// Cancel the running analysis.
    Cancel,
    /// Show this dataset sample in the triptych.
    LoadSample(usize),
    /// Step through samples.
    StepSample(i64),
    /// Load by sample id.
    LoadSampleId(String),
    /// Set latent variable `var` of the slider code.
    SetLatent {
        /// Variable index.
        var: usize,
        /// New value.
        value: f32,
    },
    /// Back to the sample's code.
    ResetSliders,
    /// Start (`Some(var)`) or stop a traversal animation.
    Play(Option<usize>),
    /// Slider half-range.
    SetSliderRange(f32),
    /// Number of sliders.
    SetNumSliders(usize),
    /// Sector threshold.
    SetSectorThreshold(f32),
    /// Select a sector (pattern) for the browser.
    SelectSector(Option<u32>),
    /// Add the current sample to the support set.
    SupportAddCurrent,
    /// Remove a dataset index from the support set.
    SupportRemove(usize),
    /// Rebuild the sector support set with a seed.
    SupportRebuild(u64),
    /// Compute the all-pairs matrix.
    ComputePairs,
    /// Right panel tab.
    SetTab(RightTab),
    /// Scatter axes.
    SetScatterAxes(ScatterAxes),
    /// Load the sample nearest to this point of the scatter (data coordinates).
    ScatterPick([f32; 2]),
    /// Open a save dialog for an export.
    ExportDialog(ExportKind),
    /// Export to a path.
    Export(ExportKind, PathBuf),
    /// Open a file dialog.
    OpenDialog(OpenKind),
    /// A path chosen in an open dialog.
    Opened(OpenKind, PathBuf),
    /// Toggle presentation mode.
    TogglePresentation,
    /// Hide a notification.
    DismissToast(u64),
    /// A request of the Local basis or Probes tab.
    Geometry(GeometryCommand),
}
