//! The app's side of the Local basis and Probes tabs: what was asked of the geometry thread,
//! what came back, local coordinates of the slider code, traversal playback.
//!
//! The local basis lives at a *base point* `z0` (the sample's code, or the slider code when the
//! user re-centres). The local sliders show the coordinates `αᵢ = vᵢᵀ(z − z0)` of the slider
//! code `z`, so moving one moves `z` along `vᵢ`, and the triptych, the latent sliders and the
//! target image (decoded from `z·W`) follow through the ordinary coalesced decode path.

use std::sync::Arc;
use std::time::Instant;

use super::session::{Job, Session};
use crate::worker::{Event, LocalBasisResult, ProbeResult, RequestId, TraversalResult};

/// Most local directions offered.
pub const MAX_LOCAL_K: usize = 16;
/// Frames of a traversal strip.
pub const STRIP_FRAMES: usize = 9;

/// A request from the Local basis or Probes tab.
#[derive(Clone, Debug, PartialEq)]
pub enum GeometryCommand {
    /// Number of local directions.
    SetK(usize),
    /// Set local coordinate `dir` of the slider code.
    SetCoord {
        /// Direction index.
        dir: usize,
        /// New coordinate.
        value: f32,
    },
    /// Compute the basis at the current slider code instead of the sample's code.
    Recenter,
    /// Back to the base point.
    Reset,
    /// Direction that playback walks along.
    SetPlayDirection(usize),
    /// Curve traversal (else a straight line).
    SetCurve(bool),
    /// Steps on each side of the base point.
    SetSteps(usize),
    /// Compute the traversal (and its strip) for the current choice.
    Trace,
    /// Play (traces first when needed) or resume.
    Play,
    /// Pause the playback (keeps the frame).
    Pause,
    /// Stop the playback.
    Stop,
    /// Run the probes again.
    RunProbes,
    /// Cancel the running geometry job.
    Cancel,
}

/// What a traversal was asked for: base point bits, direction, curve, steps, range bits, map
/// generation (`fits_done`), source model.
pub(super) type TraverseKey = (Vec<u32>, usize, bool, usize, u32, u64, String);
/// What a basis was asked for: base point bits, k, map generation, source model.
pub(super) type BasisKey = (Vec<u32>, usize, u64, String);

/// Traversal playback.
#[derive(Clone, Debug)]
pub struct Playback {
    /// The path played.
    pub traversal: Arc<TraversalResult>,
    /// When the sweep started (shifted on resume).
    pub(super) started: Instant,
    /// Seconds into the sweep when paused.
    pub(super) paused_at: Option<f32>,
    /// The path index shown.
    pub frame: usize,
}

impl Playback {
    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.paused_at.is_some()
    }
}

/// State of the Local basis and Probes tabs.
#[derive(Default)]
pub struct GeometryState {
    /// Base point chosen by [`GeometryCommand::Recenter`] (None = the sample's code).
    pub custom_base: Option<Vec<f32>>,
    /// The sample the base point belongs to.
    pub(super) base_sample: usize,
    pub(super) basis_sent: Option<(RequestId, BasisKey)>,
    /// The newest local basis.
    pub basis: Option<Arc<LocalBasisResult>>,
    /// Its running job.
    pub basis_job: Option<Job>,
    /// Its last error.
    pub basis_error: Option<String>,
    pub(super) traversal_sent: Option<(RequestId, TraverseKey)>,
    pub(super) play_when_traced: bool,
    /// The newest traversal.
    pub traversal: Option<Arc<TraversalResult>>,
    /// Its running job.
    pub traversal_job: Option<Job>,
    /// Bumped for every new traversal (strip textures follow it).
    pub traversal_generation: u64,
    /// Playback along the traversal.
    pub playback: Option<Playback>,
    /// Direction that playback walks along.
    pub play_dir: usize,
    /// Newest probes request and the map generation (`fits_done`) it was for.
    pub(super) probes_sent: Option<(RequestId, u64)>,
    /// The newest probes.
    pub probes: Option<Arc<ProbeResult>>,
    /// Their running job.
    pub probes_job: Option<Job>,
    /// Their last error.
    pub probes_error: Option<String>,
    /// Running montage exports (written by the geometry thread).
    pub montage_jobs: Vec<Job>,
}

/// Whether `sent` is request `req`.
fn sent_is<K>(sent: &Option<(RequestId, K)>, req: RequestId) -> bool {
    sent.as_ref().is_some_and(|s| s.0 == req)
}

/// The bits of a code (request keys).
pub(super) fn bits(z: &[f32]) -> Vec<u32> {
    z.iter().map(|v| v.to_bits()).collect()
}

impl GeometryState {
    /// The running geometry jobs.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        [&self.basis_job, &self.traversal_job, &self.probes_job]
            .into_iter()
            .flatten()
            .chain(self.montage_jobs.iter())
    }

    fn job_mut(&mut self, req: RequestId) -> Option<&mut Option<Job>> {
        [
            &mut self.basis_job,
            &mut self.traversal_job,
            &mut self.probes_job,
        ]
        .into_iter()
        .find(|j| j.as_ref().is_some_and(|j| j.req == req))
    }

    /// Folds in a progress event of a geometry job.
    pub fn progress(&mut self, req: RequestId, phase: &str, done: u64, total: u64) {
        if let Some(Some(job)) = self.job_mut(req) {
            phase.clone_into(&mut job.phase);
            job.done = done;
            job.total = total;
        }
    }

    /// A geometry job ended (finished, cancelled or failed with `error`).
    pub fn ended(&mut self, req: RequestId, error: Option<&str>) {
        if let Some(slot) = self.job_mut(req) {
            *slot = None;
        }
        self.montage_jobs.retain(|j| j.req != req);
        if let Some(e) = error {
            if self.basis_sent.as_ref().is_some_and(|s| s.0 == req) {
                self.basis_error = Some(e.to_string());
            }
            if self.probes_sent.as_ref().is_some_and(|s| s.0 == req) {
                self.probes_error = Some(e.to_string());
            }
        }
    }

    /// Whether `req` is a geometry request of this state.
    pub fn owns(&self, req: RequestId) -> bool {
        [
            self.basis_sent.as_ref().map(|s| s.0),
            self.traversal_sent.as_ref().map(|s| s.0),
            self.probes_sent.as_ref().map(|s| s.0),
        ]
        .contains(&Some(req))
            || self.montage_jobs.iter().any(|j| j.req == req)
    }

    /// Folds in a result event (stale answers are dropped).
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::LocalBasisReady { req, basis } if sent_is(&self.basis_sent, req) => {
                self.basis = Some(basis);
                self.basis_error = None;
            }
            Event::TraversalReady { req, traversal } if sent_is(&self.traversal_sent, req) => {
                self.traversal_generation += 1;
                self.traversal = Some(traversal.clone());
                if std::mem::take(&mut self.play_when_traced) {
                    self.start_playback(traversal);
                }
            }
            Event::ProbesReady { req, probes } if sent_is(&self.probes_sent, req) => {
                self.probes = Some(probes);
                self.probes_error = None;
            }
            _ => {}
        }
    }

    pub(super) fn start_playback(&mut self, traversal: Arc<TraversalResult>) {
        let frame = traversal.path.len() / 2;
        self.playback = Some(Playback {
            traversal,
            started: Instant::now(),
            paused_at: None,
            frame,
        });
    }

    /// Stops the playback.
    pub fn stop(&mut self) {
        self.playback = None;
        self.play_when_traced = false;
    }
}

impl Session {
    /// The base point of the local basis: the re-centred code or the current sample's code.
    pub fn local_base(&self) -> Option<Vec<f32>> {
        self.geometry
            .custom_base
            .clone()
            .or_else(|| self.code_of(self.sample))
    }

    /// The local basis when it belongs to the current base point and source model.
    pub fn local_basis(&self) -> Option<&Arc<LocalBasisResult>> {
        let base = self.local_base()?;
        let source = self.source.as_ref()?;
        self.geometry
            .basis
            .as_ref()
            .filter(|b| b.z_in_source == base && b.source == source.name)
    }

    /// Coordinates `αᵢ = vᵢᵀ(z − z0)` of the slider code in the local basis.
    pub fn local_coords(&self) -> Option<Vec<f32>> {
        let b = self.local_basis()?;
        if self.z.len() != b.directions.nrows() {
            return None;
        }
        Some(
            (0..b.directions.ncols())
                .map(|i| {
                    b.directions
                        .column(i)
                        .iter()
                        .zip(self.z.iter().zip(&b.z_in_source))
                        .map(|(v, (z, z0))| v * (z - z0))
                        .sum()
                })
                .collect(),
        )
    }

    /// The traversal when it starts at the current base point.
    pub fn local_traversal(&self) -> Option<&Arc<TraversalResult>> {
        let base = self.local_base()?;
        self.geometry
            .traversal
            .as_ref()
            .filter(|t| t.z_in_source == base)
    }
}
