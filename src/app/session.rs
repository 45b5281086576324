//! [`Session`]: the runtime state of the explorer (never persisted): what the worker
//! computed, the current images, the running job, notifications. `apply` folds in events.

use std::sync::Arc;
use std::time::Instant;

use nalgebra::DMatrix;

use super::latency::Latency;
use super::scatter_data::ScatterData;
use crate::data::Dataset;
use crate::latent::{GainReport, LinearMap, RelocationMetrics, SupportSet};
use crate::worker::{Event, ModelSummary, RequestId, SectorData};

/// A model of the zoo (or opened by the user).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// Model name.
    pub name: String,
    /// Its directory, as a string (what settings store).
    pub dir: String,
    /// Family and latent size, e.g. `vae, d=64`.
    pub detail: String,
}

/// A running analysis job.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its request.
    pub req: RequestId,
    /// What it does now.
    pub phase: String,
    /// Units done.
    pub done: u64,
    /// Units in all (0 = unknown).
    pub total: u64,
    /// When it was sent.
    pub started: Instant,
}

impl Job {
    /// A new job for `req`.
    pub fn new(req: RequestId, phase: &str) -> Self {
        Self {
            req,
            phase: phase.into(),
            done: 0,
            total: 0,
            started: Instant::now(),
        }
    }
    /// Fraction done, None when unknown.
    pub fn fraction(&self) -> Option<f32> {
        (self.total > 0).then(|| (self.done as f64 / self.total as f64).clamp(0.0, 1.0) as f32)
    }
}

/// A notification in the corner of the window.
#[derive(Clone, Debug)]
pub struct Toast {
    /// Id (for dismissing).
    pub id: u64,
    /// Text.
    pub text: String,
    /// Error (red) or info.
    pub is_error: bool,
    /// When it appeared.
    pub created: Instant,
}

/// The triptych's images: RGB 64x64 row-major.
#[derive(Clone, Debug, Default)]
pub struct Triptych {
    /// The dataset image.
    pub original_rgb: Option<Vec<u8>>,
    /// Source reconstruction of the slider code.
    pub source_rgb: Option<Vec<u8>>,
    /// Target decoding of the mapped slider code.
    pub mapped_rgb: Option<Vec<u8>>,
    /// MSE of the source reconstruction to the original.
    pub source_mse: Option<f64>,
    /// MSE of the mapped reconstruction to the original.
    pub mapped_mse: Option<f64>,
    /// Bumped whenever any image changes.
    pub version: u64,
    /// Bumped whenever the mapped image changes (tests read it).
    pub mapped_version: u64,
}

/// The all-pairs M-MSE matrix.
#[derive(Clone, Debug, Default)]
pub struct PairsMatrix {
    /// The request that computes it.
    pub req: RequestId,
    /// Model names (rows = source, columns = target).
    pub names: Vec<String>,
    /// Model directories.
    pub dirs: Vec<String>,
    /// Cells: None while pending.
    pub cells: Vec<Vec<Option<Result<f64, String>>>>,
}

/// Runtime state.
#[derive(Default)]
pub struct Session {
    /// Models to choose from.
    pub models: Vec<ModelEntry>,
    /// The dataset.
    pub dataset: Option<Arc<Dataset>>,
    /// Source model.
    pub source: Option<ModelSummary>,
    /// Target model.
    pub target: Option<ModelSummary>,
    /// Source codes (`N x d`).
    pub z_all: Option<Arc<DMatrix<f32>>>,
    /// Source gains.
    pub gains: Option<Arc<GainReport>>,
    /// Source sign sectors.
    pub sectors: Option<Arc<SectorData>>,
    /// Counts per sector at the current threshold.
    pub sector_counts: Vec<usize>,
    /// Selected sector and its members at the current threshold.
    pub sector_selected: Option<(u32, Vec<usize>)>,
    /// Support set.
    pub support: Option<Arc<SupportSet>>,
    /// The map.
    pub map: Option<Arc<LinearMap>>,
    /// Points the map was fitted on.
    pub fit_points: usize,
    /// Metrics and the dataset indices of their per-sample lists.
    pub metrics: Option<(Arc<RelocationMetrics>, Arc<Vec<usize>>)>,
    /// Device label.
    pub device_label: String,
    /// Current sample.
    pub sample: usize,
    /// Slider code (`d_source`).
    pub z: Vec<f32>,
    /// Images.
    pub triptych: Triptych,
    /// Running analysis job.
    pub job: Option<Job>,
    /// Current Sync request.
    pub sync_req: RequestId,
    /// Newest decode request sent, newest shown.
    pub decode_sent: RequestId,
    /// Newest decode shown.
    pub decode_shown: RequestId,
    /// First slider change not yet displayed: (request, time).
    pub pending_drag: Option<(RequestId, Instant)>,
    /// Slider latencies.
    pub latency: Latency,
    /// Pairs matrix.
    pub pairs: Option<PairsMatrix>,
    /// Notifications.
    pub toasts: Vec<Toast>,
    next_toast: u64,
    /// Whether the slider code must be decoded again.
    pub needs_decode: bool,
    /// Presentation mode.
    pub presentation: bool,
    /// Traversal animation: (variable, start time, value at start).
    pub playing: Option<(usize, Instant)>,
    /// Scatter points.
    pub scatter: Option<Arc<ScatterData>>,
    /// Bumped for every new scatter (the GPU buffer follows it).
    pub scatter_generation: u64,
    /// Number of finished refits (tests wait on it).
    pub fits_done: u64,
    /// Number of finished metric evaluations.
    pub metrics_done: u64,
    /// Local basis and probes.
    pub geometry: super::geometry::GeometryState,
}

impl Session {
    /// Adds a notification.
    pub fn notify(&mut self, text: impl Into<String>, is_error: bool) {
        let text = text.into();
        if is_error {
            log::error!("{text}");
        } else {
            log::info!("{text}");
        }
        self.next_toast += 1;
        self.toasts.push(Toast {
            id: self.next_toast,
            text,
            is_error,
            created: Instant::now(),
        });
        if self.toasts.len() > 6 {
            self.toasts.remove(0);
        }
    }

    /// Whether the pair is loaded (codes known).
    pub fn ready(&self) -> bool {
        self.z_all.is_some() && self.dataset.is_some()
    }

    /// Sample id of dataset index `i`.
    pub fn sample_id(&self, i: usize) -> Option<&str> {
        self.dataset
            .as_ref()
            .and_then(|d| d.sample_ids.get(i))
            .map(String::as_str)
    }

    /// The code of sample `i` (`d_source`).
    pub fn code_of(&self, i: usize) -> Option<Vec<f32>> {
        let z = self.z_all.as_ref()?;
        (i < z.nrows()).then(|| z.row(i).iter().copied().collect())
    }

    /// Sets the current sample and its original image (the slider code is set by the caller).
    pub fn set_sample(&mut self, i: usize) {
        let Some(ds) = &self.dataset else { return };
        if i >= ds.len() {
            return;
        }
        self.sample = i;
        self.triptych.original_rgb = Some(chw_to_rgb(&ds.image_u8(i)));
        self.triptych.version += 1;
    }

    /// Recomputes sector counts and the selected sector's members at `th`.
    pub fn refresh_sectors(&mut self, th: f32) {
        let Some(s) = &self.sectors else {
            self.sector_counts.clear();
            return;
        };
        let mut counts = vec![0usize; 1 << s.vars.len()];
        for (p, m) in s.patterns.iter().zip(&s.measures) {
            if *m > th {
                counts[*p as usize] += 1;
            }
        }
        self.sector_counts = counts;
        if let Some((pattern, members)) = &mut self.sector_selected {
            *members = s
                .patterns
                .iter()
                .zip(&s.measures)
                .enumerate()
                .filter(|(_, (p, m))| **p == *pattern && **m > th)
                .map(|(i, _)| i)
                .collect();
        }
    }

    /// Folds a worker event in. Returns true when the slider code changed because a new
    /// pair arrived (the caller then restores or resets it).
    pub fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Progress {
                req,
                phase,
                done,
                total,
            } => {
                self.geometry.progress(req, &phase, done, total);
                if let Some(job) = self.job.as_mut().filter(|j| j.req == req) {
                    job.phase = phase;
                    job.done = done;
                    job.total = total;
                }
            }
            Event::DatasetReady { req, dataset } if req == self.sync_req => {
                let changed = self
                    .dataset
                    .as_ref()
                    .is_none_or(|d| !Arc::ptr_eq(d, &dataset));
                if changed {
                    if let Some(first) = dataset.skipped.first() {
                        let more = dataset.skipped.len() - 1;
                        self.notify(
                            format!(
                                "{} unreadable image{} left out of {}: {}{}",
                                dataset.skipped.len(),
                                if more > 0 { "s" } else { "" },
                                dataset.id,
                                first.reason,
                                if more > 0 {
                                    format!(" (and {more} more)")
                                } else {
                                    String::new()
                                }
                            ),
                            true,
                        );
                    }
                    self.dataset = Some(dataset);
                    self.z_all = None;
                    self.sectors = None;
                    self.metrics = None;
                    self.support = None;
                    self.map = None;
                    self.sector_selected = None;
                }
            }
            Event::PairReady {
                req,
                source,
                target,
                z_in_source,
                gains,
                sectors,
                device,
            } if req == self.sync_req => {
                let changed = self.source.as_ref() != Some(&source)
                    || self
                        .z_all
                        .as_ref()
                        .is_none_or(|z| !Arc::ptr_eq(z, &z_in_source));
                self.source = Some(source);
                self.target = Some(target);
                self.gains = Some(gains);
                self.sectors = Some(sectors);
                self.device_label = device;
                if changed {
                    self.z_all = Some(z_in_source);
                    self.map = None;
                    self.metrics = None;
                    self.sector_selected = None;
                    self.scatter = None;
                    return true;
                }
            }
            Event::SupportReady { req, support } if req == self.sync_req => {
                self.support = Some(support)
            }
            Event::FitReady {
                req,
                map,
                num_points,
            } if req == self.sync_req => {
                self.map = Some(map);
                self.fit_points = num_points;
                self.fits_done += 1;
                self.needs_decode = true;
            }
            Event::MetricsReady {
                req,
                metrics,
                eval_indices,
            } if req == self.sync_req => {
                self.metrics = Some((metrics, eval_indices));
                self.metrics_done += 1;
            }
            Event::Decoded {
                req,
                source_rgb,
                mapped_rgb,
                source_mse,
                mapped_mse,
            } if req > self.decode_shown => {
                self.decode_shown = req;
                self.triptych.source_rgb = Some(source_rgb);
                self.triptych.source_mse = source_mse;
                if mapped_rgb.is_some() {
                    self.triptych.mapped_version += 1;
                }
                self.triptych.mapped_rgb = mapped_rgb;
                self.triptych.mapped_mse = mapped_mse;
                self.triptych.version += 1;
                if let Some((drag_req, t0)) = self.pending_drag {
                    if req >= drag_req {
                        self.latency.record(t0.elapsed().as_secs_f64() * 1e3);
                        self.pending_drag = None;
                        if self.latency.len().is_multiple_of(50) {
                            log::info!(
                                "slider -> images latency p95 {:.1} ms over the last {} drags",
                                self.latency.p95_ms().unwrap_or(0.0),
                                self.latency.len()
                            );
                        }
                    }
                }
            }
            Event::PairCell {
                req,
                source,
                target,
                m_mse,
            } => {
                if let Some(p) = self.pairs.as_mut().filter(|p| p.req == req) {
                    if let Some(cell) = p.cells.get_mut(source).and_then(|r| r.get_mut(target)) {
                        *cell = Some(m_mse);
                    }
                }
            }
            Event::Finished { req } | Event::Cancelled { req }
                if self.job.as_ref().is_some_and(|j| j.req == req) =>
            {
                if matches!(event, Event::Cancelled { .. }) {
                    self.notify("cancelled", false);
                }
                self.job = None;
            }
            Event::LocalBasisReady { .. }
            | Event::TraversalReady { .. }
            | Event::ProbesReady { .. } => self.geometry.apply(event),
            Event::Exported { message, .. } => self.notify(message, false),
            Event::Finished { req } | Event::Cancelled { req } if self.geometry.owns(req) => {
                self.geometry.ended(req, None)
            }
            Event::Failed { req, error } => {
                self.geometry.ended(req, Some(&error));
                if self.job.as_ref().is_some_and(|j| j.req == req) {
                    self.job = None;
                }
                if req == self.decode_sent && error.contains("no models are loaded") {
                    return false;
                }
                self.notify(error, true);
            }
            _ => {}
        }
        false
    }
}

/// CHW bytes (3x64x64) -> interleaved RGB bytes.
pub fn chw_to_rgb(chw: &[u8]) -> Vec<u8> {
    let plane = chw.len() / 3;
    let mut rgb = Vec::with_capacity(chw.len());
    for p in 0..plane {
        for c in 0..3 {
            rgb.push(chw[c * plane + p]);
        }
    }
    rgb
}
