//! The per-frame work of [`ExplorerApp`]: fold in worker events, handle the command queue,
//! send decodes and refits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::{AppCommand, ExportKind, OpenKind};
use super::scatter_data::ScatterData;
use super::session::Job;
use super::ExplorerApp;
use crate::worker::{Command, FitSpec, PairSpec, SupportChoice, Worker, WorkerConfig};

/// How long notifications stay.
const TOAST_SECS: f32 = 8.0;

impl ExplorerApp {
    /// Once per frame: events, commands, animation, decodes, textures.
    pub(super) fn process(&mut self, ctx: &egui::Context) {
        let events = self.worker.as_ref().map(|w| w.drain()).unwrap_or_default();
        for event in events {
            if self.session.apply(event) {
                self.on_new_pair();
            }
        }
        self.commands.extend(self.dialog_rx.try_iter());
        for cmd in std::mem::take(&mut self.commands) {
            self.handle(ctx, cmd);
        }
        if self.session.triptych.original_rgb.is_none() && self.session.dataset.is_some() {
            self.session.set_sample(self.session.sample);
        }
        self.animate(ctx);
        self.sync_geometry(ctx);
        if self.session.needs_decode && self.session.ready() {
            self.send_decode(false);
        }
        self.textures.sync(ctx, &self.session.triptych);
        if self.session.scatter.is_none() {
            if let Some(z) = &self.session.z_all {
                self.session.scatter_generation += 1;
                let data = ScatterData::new(
                    z,
                    self.settings.scatter_axes,
                    self.session.sectors.as_deref(),
                    self.session.scatter_generation,
                );
                self.session.scatter = Some(Arc::new(data));
            }
        }
        let now = Instant::now();
        self.session.toasts.retain(|t| {
            now.duration_since(t.created).as_secs_f32()
                < if t.is_error {
                    2.0 * TOAST_SECS
                } else {
                    TOAST_SECS
                }
        });
        if !self.session.toasts.is_empty() {
            ctx.request_repaint_after(Duration::from_millis(500));
        }
    }

    /// A new pair arrived: restore the saved sample and sliders once, else keep the sample.
    fn on_new_pair(&mut self) {
        self.session.refresh_sectors(self.settings.sector_threshold);
        let d = self.session.source.as_ref().map_or(0, |s| s.latent_dim);
        let mut sample = self.session.sample;
        let mut z = None;
        if self.restore_pending {
            self.restore_pending = false;
            if let Some(i) = self
                .settings
                .sample_id
                .as_deref()
                .and_then(|id| self.session.dataset.as_ref()?.index_of(id))
            {
                sample = i;
            }
            if self.settings.z_in_source.len() == d {
                z = Some(self.settings.z_in_source.clone());
            }
            if let Some(ids) = self.settings.support_members.clone() {
                if self
                    .session
                    .dataset
                    .as_ref()
                    .is_some_and(|ds| ids.iter().all(|id| ds.index_of(id).is_some()))
                {
                    self.send_sync();
                } else {
                    self.settings.support_members = None;
                }
            }
        }
        let len = self.session.dataset.as_ref().map_or(0, |d| d.len());
        if sample >= len {
            sample = 0;
        }
        self.session.set_sample(sample);
        self.session.z = z
            .or_else(|| self.session.code_of(sample))
            .unwrap_or_default();
        self.session.needs_decode = true;
    }

    fn handle(&mut self, ctx: &egui::Context, cmd: AppCommand) {
        if super::geometry_handle::interrupts_playback(&cmd) {
            self.session.geometry.stop();
        }
        match cmd {
            AppCommand::SelectDataset(spec) => {
                self.settings.dataset = spec;
                self.reset_pair_state();
                self.send_sync();
            }
            AppCommand::SelectSource(s) => {
                self.settings.source = s;
                self.reset_pair_state();
                self.send_sync();
            }
            AppCommand::SelectTarget(t) => {
                self.settings.target = t;
                self.send_sync();
            }
            AppCommand::SelectPair(s, t) => {
                let source_changed = s != self.settings.source;
                self.settings.source = s;
                self.settings.target = t;
                if source_changed {
                    self.reset_pair_state();
                }
                self.send_sync();
            }
            AppCommand::SetEstimator(k) => {
                self.settings.estimator = k;
                self.send_sync();
            }
            AppCommand::SetRidgeLambda(l) => {
                self.settings.ridge_lambda = l.max(0.0);
                self.send_sync();
            }
            AppCommand::SetFitOn(f) => {
                self.settings.fit_on = f;
                self.send_sync();
            }
            AppCommand::Refit => self.send_sync(),
            AppCommand::SetDevice(device) => self.set_device(ctx, &device),
            AppCommand::Cancel => {
                if let Some(w) = &self.worker {
                    w.cancel();
                }
            }
            AppCommand::LoadSample(i) => self.load_sample(i),
            AppCommand::StepSample(step) => {
                let n = self.session.dataset.as_ref().map_or(0, |d| d.len()) as i64;
                if n > 0 {
                    self.load_sample((self.session.sample as i64 + step).rem_euclid(n) as usize);
                }
            }
            AppCommand::LoadSampleId(id) => match self
                .session
                .dataset
                .as_ref()
                .and_then(|d| d.index_of(id.trim()))
            {
                Some(i) => self.load_sample(i),
                None => self.session.notify(
                    format!("no sample with id `{}` in this dataset", id.trim()),
                    true,
                ),
            },
            AppCommand::SetLatent { var, value } => {
                if let Some(v) = self.session.z.get_mut(var) {
                    *v = value;
                    self.send_decode(true);
                }
            }
            AppCommand::ResetSliders => {
                self.session.playing = None;
                if let Some(z) = self.session.code_of(self.session.sample) {
                    self.session.z = z;
                    self.send_decode(false);
                }
            }
            AppCommand::Play(var) => self.session.playing = var.map(|v| (v, Instant::now())),
            AppCommand::SetSliderRange(r) => self.settings.slider_range = r.clamp(0.25, 10.0),
            AppCommand::SetNumSliders(n) => self.settings.num_sliders = n.clamp(1, 64),
            AppCommand::SetSectorThreshold(th) => {
                self.settings.sector_threshold = th.max(0.0);
                self.session.refresh_sectors(self.settings.sector_threshold);
            }
            AppCommand::SelectSector(p) => {
                self.session.sector_selected = p.map(|p| (p, Vec::new()));
                self.ui_state.sector_page = 0;
                self.session.refresh_sectors(self.settings.sector_threshold);
            }
            AppCommand::SupportAddCurrent => {
                let mut idx = self.support_indices();
                if !idx.contains(&self.session.sample) {
                    idx.push(self.session.sample);
                }
                self.set_support(idx);
            }
            AppCommand::SupportRemove(i) => {
                let idx = self
                    .support_indices()
                    .into_iter()
                    .filter(|&j| j != i)
                    .collect();
                self.set_support(idx);
            }
            AppCommand::SupportRebuild(seed) => {
                self.settings.support_seed = seed;
                self.settings.support_members = None;
                self.send_sync();
            }
            AppCommand::ComputePairs => self.send_pairs(),
            AppCommand::SetTab(t) => self.settings.tab = t,
            AppCommand::SetScatterAxes(a) => {
                self.settings.scatter_axes = a;
                self.session.scatter = None;
            }
            AppCommand::ScatterPick(p) => {
                if let Some(i) = self.session.scatter.as_ref().and_then(|s| s.nearest(p)) {
                    self.load_sample(i);
                }
            }
            AppCommand::ExportDialog(kind) => self.save_dialog(ctx, kind),
            AppCommand::Export(kind, path) => match self.export_to(kind, &path) {
                Ok(msg) => self.session.notify(msg, false),
                Err(e) => self.session.notify(format!("export failed: {e:#}"), true),
            },
            AppCommand::OpenDialog(kind) => self.open_dialog(ctx, kind),
            AppCommand::Opened(kind, path) => self.opened(kind, &path),
            AppCommand::TogglePresentation => {
                self.session.presentation = !self.session.presentation;
                ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(self.session.presentation));
            }
            AppCommand::DismissToast(id) => self.session.toasts.retain(|t| t.id != id),
            AppCommand::Geometry(g) => self.handle_geometry(g),
        }
    }

    fn reset_pair_state(&mut self) {
        self.settings.support_members = None;
        self.session.pairs = None;
    }

    fn support_indices(&self) -> Vec<usize> {
        self.session
            .support
            .as_ref()
            .map(|s| s.indices.clone())
            .unwrap_or_default()
    }

    fn set_support(&mut self, indices: Vec<usize>) {
        let Some(ds) = &self.session.dataset else {
            return;
        };
        self.settings.support_members = Some(
            indices
                .iter()
                .filter_map(|&i| ds.sample_ids.get(i).cloned())
                .collect(),
        );
        self.send_sync();
    }

    fn load_sample(&mut self, i: usize) {
        if !self.session.ready() {
            return;
        }
        self.session.playing = None;
        self.session.set_sample(i);
        if let Some(z) = self.session.code_of(i) {
            self.session.z = z;
        }
        self.send_decode(false);
    }

    /// Moves the played variable along a sine of period 4 s over the slider range.
    fn animate(&mut self, ctx: &egui::Context) {
        let Some((var, t0)) = self.session.playing else {
            return;
        };
        let t = t0.elapsed().as_secs_f32();
        let value = self.settings.slider_range * (t * std::f32::consts::TAU / 4.0).sin();
        if let Some(v) = self.session.z.get_mut(var) {
            *v = value;
            self.session.needs_decode = true;
        }
        ctx.request_repaint_after(Duration::from_millis(33));
    }

    /// The dataset, models and fit as the worker wants them.
    fn pair_and_fit(&self) -> Option<(PairSpec, FitSpec)> {
        if self.settings.source.is_empty() || self.settings.target.is_empty() {
            return None;
        }
        let support = match (&self.settings.support_members, &self.session.dataset) {
            (Some(ids), Some(ds)) => {
                SupportChoice::Explicit(ids.iter().filter_map(|id| ds.index_of(id)).collect())
            }
            _ => SupportChoice::Sectors {
                seed: self.settings.support_seed,
            },
        };
        Some((
            PairSpec {
                dataset: self.settings.dataset.clone(),
                source_dir: self.settings.source.clone().into(),
                target_dir: self.settings.target.clone().into(),
            },
            FitSpec {
                estimator: self
                    .settings
                    .estimator
                    .estimator(self.settings.ridge_lambda),
                fit_on: self.settings.fit_on,
                support,
                num_selected: self.settings.num_selected,
                max_eval: self.settings.max_eval,
                gain_images: 256,
            },
        ))
    }

    /// Moves the work to `device`: a worker on that device replaces the current one (whose
    /// jobs are cancelled), and the pair is synced again. When the device cannot be used (a
    /// CPU-only build, no GPU) the current worker stays and a notification says why.
    fn set_device(&mut self, ctx: &egui::Context, device: &str) {
        let device = device.trim().to_lowercase();
        if device == self.config.device.to_lowercase() && self.worker.is_some() {
            return;
        }
        if let Err(e) = crate::model::device::parse_device(&device) {
            self.session
                .notify(format!("cannot use device {device}: {e:#}"), true);
            return;
        }
        let waker_ctx = ctx.clone();
        match Worker::spawn(
            WorkerConfig {
                cache_dir: self.config.cache_dir.clone(),
                device: device.clone(),
            },
            std::sync::Arc::new(move || waker_ctx.request_repaint()),
        ) {
            Ok(w) => {
                self.worker = Some(w);
                self.config.device = device.clone();
                self.session.device_label = device.to_uppercase();
                self.session.job = None;
                self.session.geometry = Default::default();
                self.session.needs_decode = true;
                self.session
                    .notify(format!("now running on {}", device.to_uppercase()), false);
                self.send_sync();
            }
            Err(e) => self
                .session
                .notify(format!("cannot start a worker on {device}: {e:#}"), true),
        }
    }

    /// Sends a `Sync` for the current settings, cancelling a running one.
    pub(super) fn send_sync(&mut self) {
        let Some((pair, fit)) = self.pair_and_fit() else {
            return;
        };
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        if self
            .session
            .job
            .as_ref()
            .is_some_and(|j| j.req == self.session.sync_req)
        {
            worker.cancel();
        }
        let req = worker.next_req();
        if let Err(e) = worker.send(Command::Sync { req, pair, fit }) {
            self.session.notify(format!("{e:#}"), true);
            return;
        }
        self.session.sync_req = req;
        self.session.job = Some(Job::new(req, "starting"));
    }

    fn send_pairs(&mut self) {
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        let req = worker.next_req();
        let models: Vec<_> = self
            .session
            .models
            .iter()
            .filter(|m| !m.detail.contains("no recoder"))
            .cloned()
            .collect();
        let cmd = Command::Pairs {
            req,
            dataset: self.settings.dataset.clone(),
            models: models.iter().map(|m| m.dir.clone().into()).collect(),
            max_eval: 256,
        };
        if let Err(e) = worker.send(cmd) {
            self.session.notify(format!("{e:#}"), true);
            return;
        }
        let n = models.len();
        self.session.pairs = Some(super::session::PairsMatrix {
            req,
            names: models.iter().map(|m| m.name.clone()).collect(),
            dirs: models.iter().map(|m| m.dir.clone()).collect(),
            cells: vec![vec![None; n]; n],
        });
        self.session.job = Some(Job::new(req, "all pairs"));
    }

    /// Sends the slider code to the decode thread; `drag` marks a slider change for latency.
    pub(super) fn send_decode(&mut self, drag: bool) {
        self.session.needs_decode = false;
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        let req = worker.next_req();
        let cmd = Command::Decode {
            req,
            z_in_source: self.session.z.clone(),
            sample: Some(self.session.sample),
        };
        if let Err(e) = worker.send(cmd) {
            self.session.notify(format!("{e:#}"), true);
            return;
        }
        self.session.decode_sent = req;
        if drag && self.session.pending_drag.is_none() {
            self.session.pending_drag = Some((req, Instant::now()));
        }
    }

    /// Copies the session parts that persist into the settings.
    pub(super) fn capture_settings(&mut self) {
        self.settings.sample_id = self
            .session
            .sample_id(self.session.sample)
            .map(str::to_string);
        self.settings.z_in_source = self.session.z.clone();
    }

    fn save_dialog(&mut self, ctx: &egui::Context, kind: ExportKind) {
        let tx = self.dialog_tx.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("file-dialog".into())
            .spawn(move || {
                let dialog =
                    rfd::FileDialog::new().set_file_name(super::export::default_file_name(kind));
                if let Some(path) = dialog.save_file() {
                    let _ = tx.send(AppCommand::Export(kind, path));
                    ctx.request_repaint();
                }
            });
        if let Err(e) = spawned {
            self.session
                .notify(format!("cannot open a file dialog: {e}"), true);
        }
    }

    fn open_dialog(&mut self, ctx: &egui::Context, kind: OpenKind) {
        let tx = self.dialog_tx.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("file-dialog".into())
            .spawn(move || {
                if let Some(path) = rfd::FileDialog::new().pick_folder() {
                    let _ = tx.send(AppCommand::Opened(kind, path));
                    ctx.request_repaint();
                }
            });
        if let Err(e) = spawned {
            self.session
                .notify(format!("cannot open a file dialog: {e}"), true);
        }
    }

    fn opened(&mut self, kind: OpenKind, path: &std::path::Path) {
        let p = path.display().to_string();
        match kind {
            OpenKind::ImageFolder => self
                .commands
                .push(AppCommand::SelectDataset(format!("folder:{p}"))),
            OpenKind::CelebaRoot => self
                .commands
                .push(AppCommand::SelectDataset(format!("celeba:{p}"))),
            OpenKind::ModelDir => match crate::model::store::read_config(path) {
                Ok(cfg) => {
                    if !self.settings.extra_models.contains(&p) {
                        self.settings.extra_models.push(p.clone());
                    }
                    self.session.models =
                        super::list_models(&self.config.zoo_dir, &self.settings.extra_models);
                    self.session
                        .notify(format!("added model {} ({p})", cfg.name), false);
                }
                Err(e) => self
                    .session
                    .notify(format!("not a model directory: {e}"), true),
            },
        }
    }
}
