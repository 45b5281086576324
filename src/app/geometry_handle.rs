//! The explorer's handlers of the Local basis and Probes tabs: requests to the geometry thread
//! (only when their inputs changed), local-coordinate edits of the slider code, traversal
//! playback. The state they work on is [`super::geometry::GeometryState`].

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::command::AppCommand;
use super::geometry::{bits, GeometryCommand, MAX_LOCAL_K, STRIP_FRAMES};
use super::session::Job;
use super::settings::RightTab;
use super::ExplorerApp;
use crate::worker::{Command, RequestId, TraversalResult, MAX_TRAVERSAL_STEPS};

/// Seconds of one back-and-forth sweep of the playback.
const PLAY_PERIOD_SECS: f32 = 6.0;

impl ExplorerApp {
    /// Once per frame: requests what the visible tab needs, animates the playback.
    pub(super) fn sync_geometry(&mut self, ctx: &egui::Context) {
        if !self.session.ready() || self.session.source.is_none() {
            return;
        }
        if self.session.geometry.base_sample != self.session.sample {
            self.session.geometry.base_sample = self.session.sample;
            self.session.geometry.custom_base = None;
            self.session.geometry.stop();
        }
        match self.settings.tab {
            RightTab::LocalBasis => {
                self.request_basis();
                if !self.settings.local_curve && self.session.local_basis().is_some() {
                    self.request_traversal(false);
                }
            }
            RightTab::Probes if self.session.map.is_some() => self.request_probes(false),
            _ => {}
        }
        self.animate_local(ctx);
    }

    fn send_geometry(&mut self, make: impl FnOnce(RequestId) -> Command) -> Option<RequestId> {
        let worker = self.worker.as_mut()?;
        let req = worker.next_req();
        match worker.send(make(req)) {
            Ok(()) => Some(req),
            Err(e) => {
                self.session.notify(format!("{e:#}"), true);
                None
            }
        }
    }

    fn local_k(&self) -> usize {
        let d = self.session.source.as_ref().map_or(1, |s| s.latent_dim);
        self.settings.local_k.clamp(1, MAX_LOCAL_K.min(d.max(1)))
    }

    fn request_basis(&mut self) {
        let Some(base) = self.session.local_base() else {
            return;
        };
        let Some(source) = self.session.source.as_ref().map(|s| s.name.clone()) else {
            return;
        };
        let k = self.local_k();
        let key = (bits(&base), k, self.session.fits_done, source.clone());
        if self
            .session
            .geometry
            .basis_sent
            .as_ref()
            .is_some_and(|s| s.1 == key)
        {
            return;
        }
        let Some(req) = self.send_geometry(|req| Command::LocalBasis {
            req,
            source,
            z_in_source: base,
            k,
        }) else {
            return;
        };
        let g = &mut self.session.geometry;
        g.basis_sent = Some((req, key));
        g.basis_error = None;
        g.basis_job = Some(Job::new(req, "local basis"));
    }

    /// Requests the traversal for the current choice unless it was asked for already (or
    /// `force`).
    fn request_traversal(&mut self, force: bool) {
        let Some(base) = self.session.local_base() else {
            return;
        };
        let Some(source) = self.session.source.as_ref().map(|s| s.name.clone()) else {
            return;
        };
        let g = &self.session.geometry;
        let dir = g.play_dir.min(self.local_k() - 1);
        let steps = self.settings.local_steps.clamp(1, MAX_TRAVERSAL_STEPS);
        let range = self.settings.slider_range;
        let key = (
            bits(&base),
            dir,
            self.settings.local_curve,
            steps,
            range.to_bits(),
            self.session.fits_done,
            source.clone(),
        );
        if !force && g.traversal_sent.as_ref().is_some_and(|s| s.1 == key) {
            return;
        }
        let curve = self.settings.local_curve;
        let Some(req) = self.send_geometry(|req| Command::Traverse {
            req,
            source,
            z_in_source: base,
            direction: dir,
            curve,
            steps,
            range,
            strip_frames: STRIP_FRAMES,
        }) else {
            return;
        };
        let g = &mut self.session.geometry;
        g.traversal_sent = Some((req, key));
        let what = if curve {
            "curve traversal"
        } else {
            "traversal"
        };
        g.traversal_job = Some(Job::new(req, what));
    }

    /// Asks the geometry thread for the relocation montage of the support set (originals,
    /// source reconstructions, target decodings after the map; 15 per block).
    pub(super) fn request_montage(&mut self, path: &Path) -> anyhow::Result<String> {
        let indices = self
            .session
            .support
            .as_ref()
            .map(|s| s.indices.clone())
            .filter(|i| !i.is_empty())
            .context("no support set yet")?;
        if self.session.map.is_none() {
            anyhow::bail!("no map fitted yet: the montage shows decodings after relocation");
        }
        let n = indices.len();
        let req = self
            .send_geometry(|req| Command::Montage {
                req,
                indices,
                per_row: 15,
                path: path.to_path_buf(),
            })
            .context("the worker is not running")?;
        self.session
            .geometry
            .montage_jobs
            .push(Job::new(req, "relocation montage"));
        Ok(format!(
            "writing the relocation montage of {n} support samples to {} ...",
            path.display()
        ))
    }

    fn request_probes(&mut self, force: bool) {
        let key = self.session.fits_done;
        let g = &self.session.geometry;
        if !force && g.probes_sent.as_ref().is_some_and(|s| s.1 == key) {
            return;
        }
        let Some(req) = self.send_geometry(|req| Command::Probes { req }) else {
            return;
        };
        let g = &mut self.session.geometry;
        g.probes_sent = Some((req, key));
        g.probes_error = None;
        g.probes_job = Some(Job::new(req, "probes"));
    }

    /// Whether `t` walks the current choice (base point, direction, mode, steps, range).
    fn matches_choice(&self, t: &TraversalResult) -> bool {
        let steps = self.settings.local_steps.clamp(1, MAX_TRAVERSAL_STEPS);
        self.session
            .local_base()
            .is_some_and(|b| b == t.z_in_source)
            && t.direction == self.session.geometry.play_dir
            && t.curve == self.settings.local_curve
            && t.path.len() == 2 * steps + 1
            && t.offsets
                .last()
                .is_some_and(|o| (o - self.settings.slider_range).abs() < 1e-4)
    }

    /// After the choice changed: a running playback switches to it, a paused one stops.
    fn replay_if_playing(&mut self) {
        match &self.session.geometry.playback {
            Some(pb) if pb.paused() => self.session.geometry.stop(),
            Some(_) => self.play_local(),
            None => {}
        }
    }

    /// Handles a command of the Local basis or Probes tab.
    pub(super) fn handle_geometry(&mut self, cmd: GeometryCommand) {
        match cmd {
            GeometryCommand::SetK(k) => {
                self.settings.local_k = k.clamp(1, MAX_LOCAL_K);
                let k = self.local_k();
                let g = &mut self.session.geometry;
                g.play_dir = g.play_dir.min(k - 1);
            }
            GeometryCommand::SetCoord { dir, value } => {
                let (Some(coords), Some(b)) =
                    (self.session.local_coords(), self.session.local_basis())
                else {
                    return;
                };
                let (Some(alpha), true) = (coords.get(dir), value.is_finite()) else {
                    return;
                };
                let delta = value - alpha;
                let v: Vec<f32> = b.directions.column(dir).iter().copied().collect();
                self.session.geometry.stop();
                self.session.playing = None;
                for (z, v) in self.session.z.iter_mut().zip(v) {
                    *z += delta * v;
                }
                self.send_decode(true);
            }
            GeometryCommand::Recenter => {
                self.session.geometry.stop();
                self.session.geometry.custom_base = Some(self.session.z.clone());
            }
            GeometryCommand::Reset => {
                self.session.geometry.stop();
                if let Some(base) = self.session.local_base() {
                    self.session.z = base;
                    self.send_decode(false);
                }
            }
            GeometryCommand::SetPlayDirection(d) => {
                self.session.geometry.play_dir = d.min(self.local_k() - 1);
                self.replay_if_playing();
            }
            GeometryCommand::SetCurve(c) => {
                self.settings.local_curve = c;
                self.replay_if_playing();
            }
            GeometryCommand::SetSteps(s) => {
                self.settings.local_steps = s.clamp(1, MAX_TRAVERSAL_STEPS);
                self.replay_if_playing();
            }
            GeometryCommand::Trace => self.request_traversal(true),
            GeometryCommand::Play => self.play_local(),
            GeometryCommand::Pause => {
                if let Some(pb) = &mut self.session.geometry.playback {
                    pb.paused_at = Some(pb.started.elapsed().as_secs_f32());
                }
            }
            GeometryCommand::Stop => self.session.geometry.stop(),
            GeometryCommand::RunProbes => self.request_probes(true),
            GeometryCommand::Cancel => {
                if let Some(w) = &self.worker {
                    w.cancel_geometry();
                }
            }
        }
    }

    fn play_local(&mut self) {
        self.session.playing = None;
        let playback = self.session.geometry.playback.clone();
        if let Some(pb) = playback.filter(|pb| self.matches_choice(&pb.traversal)) {
            if let (Some(t), Some(live)) = (pb.paused_at, &mut self.session.geometry.playback) {
                live.started = Instant::now() - Duration::from_secs_f32(t);
                live.paused_at = None;
            }
            return;
        }
        let ready = self
            .session
            .local_traversal()
            .filter(|t| self.matches_choice(t))
            .cloned();
        match ready {
            Some(t) => self.session.geometry.start_playback(t),
            None => {
                self.session.geometry.playback = None;
                self.request_traversal(true);
                self.session.geometry.play_when_traced = true;
            }
        }
    }

    /// Moves the slider code along the played path (a sine sweep from end to end).
    fn animate_local(&mut self, ctx: &egui::Context) {
        if self.session.playing.is_some() {
            self.session.geometry.stop();
        }
        let Some(pb) = &mut self.session.geometry.playback else {
            return;
        };
        let t = pb
            .paused_at
            .unwrap_or_else(|| pb.started.elapsed().as_secs_f32());
        let n = pb.traversal.path.len();
        let u = (t * std::f32::consts::TAU / PLAY_PERIOD_SECS).sin();
        let frame = ((((u + 1.0) / 2.0) * (n - 1) as f32).round() as usize).min(n - 1);
        let changed = frame != pb.frame || self.session.z != pb.traversal.path[frame];
        pb.frame = frame;
        if changed {
            self.session.z = pb.traversal.path[pb.frame].clone();
            self.session.needs_decode = true;
        }
        if pb.paused_at.is_none() {
            ctx.request_repaint_after(Duration::from_millis(33));
        }
    }
}

/// Whether `cmd` moves the slider code by other means (playback then stops).
pub(super) fn interrupts_playback(cmd: &AppCommand) -> bool {
    matches!(
        cmd,
        AppCommand::SetLatent { .. }
            | AppCommand::ResetSliders
            | AppCommand::Play(_)
            | AppCommand::LoadSample(_)
            | AppCommand::StepSample(_)
            | AppCommand::LoadSampleId(_)
            | AppCommand::ScatterPick(_)
            | AppCommand::SelectSource(_)
            | AppCommand::SelectPair(..)
            | AppCommand::SelectDataset(_)
    )
}
