//! The eframe glue: [`ExplorerApp`] owns the [`Worker`], the persisted [`Settings`] and the
//! runtime [`Session`]; panels (in [`crate::ui`]) fill an [`AppCommand`] queue that
//! [`eframe::App::logic`] drains once per frame.

pub mod command;
mod export;
pub mod geometry;
mod geometry_handle;
mod handle;
pub mod latency;
pub mod scatter_data;
pub mod session;
pub mod settings;
pub mod textures;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};

use anyhow::Result;

pub use command::{AppCommand, ExportKind, OpenKind};
pub use geometry::GeometryCommand;
pub use session::{ModelEntry, Session};
pub use settings::Settings;
use textures::Textures;

use crate::ui::UiState;
use crate::worker::{Worker, WorkerConfig};

/// Where the explorer finds its models, data and caches. Passed in, never read from globals,
/// so tests can run the real app on a tiny zoo in a temporary folder.
#[derive(Clone, Debug)]
pub struct ExplorerConfig {
    /// The model zoo (subfolders with a `config.json`).
    pub zoo_dir: PathBuf,
    /// Dataset spec used when no session was saved.
    pub dataset: String,
    /// Folder of the encodings and gains caches.
    pub cache_dir: PathBuf,
    /// Device spec (`cpu`, `cuda`, `cuda:N`).
    pub device: String,
    /// Restore and save the session through eframe's storage.
    pub persist: bool,
    /// Right-panel tab to open on (None = the saved one).
    pub start_tab: Option<settings::RightTab>,
    /// Source and target models to open on (names or directories; None = the saved ones).
    pub start_pair: (Option<String>, Option<String>),
    /// Dataset spec to open on (None = the saved one).
    pub start_data: Option<String>,
}

impl ExplorerConfig {
    /// The shipped zoo, `synthfaces`, the user cache folder, CPU (CUDA with the `cuda` feature).
    pub fn from_defaults() -> Result<Self> {
        Ok(Self {
            zoo_dir: crate::zoo::zoo_dir(),
            dataset: "synthfaces".into(),
            cache_dir: crate::data::cache_dir()?,
            device: if cfg!(feature = "cuda") {
                "cuda".into()
            } else {
                "cpu".into()
            },
            persist: true,
            start_tab: None,
            start_pair: (None, None),
            start_data: None,
        })
    }
}

/// The explorer.
pub struct ExplorerApp {
    config: ExplorerConfig,
    settings: Settings,
    session: Session,
    textures: Textures,
    ui_state: UiState,
    commands: Vec<AppCommand>,
    worker: Option<Worker>,
    dialog_tx: Sender<AppCommand>,
    dialog_rx: Receiver<AppCommand>,
    gpu_scatter: bool,
    software_scatter: bool,
    restore_pending: bool,
    /// When the launch began (process start, else the app's construction).
    launched: std::time::Instant,
    /// Cold-start milestones in ms after `launched`: first frame, first full triptych.
    milestones: [Option<f64>; 2],
}

/// The process start, recorded by `main` before anything else (cold-start instrumentation).
static LAUNCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Records the launch time; call first thing in `main`.
pub fn mark_launch() {
    let _ = LAUNCH.set(std::time::Instant::now());
}

/// The models of `zoo_dir` (folders with a `config.json`), by name, plus `extra` directories.
pub fn list_models(zoo_dir: &Path, extra: &[String]) -> Vec<ModelEntry> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(zoo_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.extend(extra.iter().map(PathBuf::from));
    let mut out: Vec<ModelEntry> = Vec::new();
    for dir in dirs {
        let Ok(cfg) = crate::model::store::read_config(&dir) else {
            continue;
        };
        let dir = dir.to_string_lossy().into_owned();
        if out.iter().any(|m| m.dir == dir) {
            continue;
        }
        let usable = !matches!(
            cfg.family,
            crate::model::Family::Gan
                | crate::model::Family::Refdcgan
                | crate::model::Family::Style
                | crate::model::Family::StyleZ
        ) || cfg.recoder_trained;
        let detail = format!(
            "{}, d={}{}",
            cfg.family,
            cfg.latent_dim,
            if usable { "" } else { ", no recoder" }
        );
        out.push(ModelEntry {
            name: cfg.name,
            dir,
            detail,
        });
    }
    out
}

/// Source and target by default: `vae-a -> vae-b`, else the first two usable models.
fn default_pair(models: &[ModelEntry]) -> (String, String) {
    let find = |n: &str| models.iter().find(|m| m.name == n).map(|m| m.dir.clone());
    if let (Some(a), Some(b)) = (find("vae-a"), find("vae-b")) {
        return (a, b);
    }
    let usable: Vec<&ModelEntry> = models
        .iter()
        .filter(|m| !m.detail.contains("no recoder"))
        .collect();
    let pick = |k: usize| {
        usable
            .get(k)
            .or(usable.first())
            .map(|m| m.dir.clone())
            .unwrap_or_default()
    };
    (pick(0), pick(1))
}

impl ExplorerApp {
    /// Creates the app: restores settings, lists the zoo, starts the worker and the first sync.
    pub fn new(cc: &eframe::CreationContext<'_>, config: ExplorerConfig) -> Self {
        let ctx = cc.egui_ctx.clone();
        let mut settings: Settings = cc
            .storage
            .filter(|_| config.persist)
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_else(|| Settings {
                dataset: config.dataset.clone(),
                ..Settings::default()
            });
        if let Some(d) = &config.start_data {
            settings.dataset = d.clone();
        }
        for m in [&config.start_pair.0, &config.start_pair.1]
            .into_iter()
            .flatten()
        {
            let is_dir = Path::new(m).join("config.json").exists();
            if is_dir && !settings.extra_models.contains(m) {
                settings.extra_models.push(m.clone());
            }
        }
        let mut session = Session::default();
        session.models = list_models(&config.zoo_dir, &settings.extra_models);
        session.device_label = config.device.to_uppercase();
        let resolve = |s: &str| {
            session
                .models
                .iter()
                .find(|m| m.name == s || m.dir == s)
                .map(|m| m.dir.clone())
        };
        let (src, tgt) = default_pair(&session.models);
        let unknown: Vec<String> = [&config.start_pair.0, &config.start_pair.1]
            .into_iter()
            .flatten()
            .filter(|m| resolve(m).is_none())
            .cloned()
            .collect();
        let wanted = |start: &Option<String>, saved: &String| {
            start
                .as_ref()
                .and_then(|m| resolve(m))
                .or_else(|| resolve(saved))
        };
        settings.source = wanted(&config.start_pair.0, &settings.source).unwrap_or(src);
        settings.target = wanted(&config.start_pair.1, &settings.target).unwrap_or(tgt);
        for m in unknown {
            session.notify(
                format!(
                    "no model {m} in {} (and not a model directory)",
                    config.zoo_dir.display()
                ),
                true,
            );
        }
        if let Some(tab) = config.start_tab {
            settings.tab = tab;
        }
        let waker_ctx = ctx.clone();
        let worker = match Worker::spawn(
            WorkerConfig {
                cache_dir: config.cache_dir.clone(),
                device: config.device.clone(),
            },
            std::sync::Arc::new(move || waker_ctx.request_repaint()),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                session.notify(format!("{e:#}"), true);
                None
            }
        };
        let gpu_scatter = cc
            .wgpu_render_state
            .as_ref()
            .is_some_and(crate::render::scatter::install);
        let software_scatter = cc
            .wgpu_render_state
            .as_ref()
            .is_some_and(crate::render::scatter::is_software);
        let (dialog_tx, dialog_rx) = mpsc::channel();
        let mut app = Self {
            config,
            settings,
            session,
            textures: Textures::default(),
            ui_state: UiState::default(),
            commands: Vec::new(),
            worker,
            dialog_tx,
            dialog_rx,
            gpu_scatter,
            software_scatter,
            restore_pending: true,
            launched: LAUNCH
                .get()
                .copied()
                .unwrap_or_else(std::time::Instant::now),
            milestones: [None, None],
        };
        if app.session.models.is_empty() {
            let zoo = app.config.zoo_dir.display().to_string();
            app.session
                .notify(format!("no models found: the zoo is empty: {zoo}"), true);
        } else {
            app.send_sync();
        }
        app
    }

    /// The persisted settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The runtime state.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Queues a command as a panel would (handled at the next frame).
    pub fn push(&mut self, command: AppCommand) {
        self.commands.push(command);
    }

    /// Writes an export to `path` (the dialog-free path used by tests and scripts). Everything
    /// but the montage is written now; the montage decodes its images on the geometry thread
    /// and announces itself with a notification when written.
    pub fn export_to(&mut self, kind: ExportKind, path: &Path) -> Result<String> {
        if kind == ExportKind::Montage {
            return self.request_montage(path);
        }
        export::export(&self.session, kind, path)
    }

    /// Whether the scatter is drawn by the wgpu shader.
    pub fn gpu_scatter(&self) -> bool {
        self.gpu_scatter
    }

    /// Slider latencies (ms), oldest first: drag to both images updated.
    pub fn slider_latencies_ms(&self) -> Vec<f64> {
        self.session.latency.samples_ms()
    }

    /// Cold start in ms after launch: the first frame, and the first complete triptych
    /// (original, source reconstruction and mapped reconstruction on screen).
    pub fn launch_milestones_ms(&self) -> [Option<f64>; 2] {
        self.milestones
    }

    fn note_milestones(&mut self) {
        let ms = || self.launched.elapsed().as_secs_f64() * 1e3;
        if self.milestones[0].is_none() {
            let t = ms();
            log::info!("first frame {t:.0} ms after launch");
            self.milestones[0] = Some(t);
        }
        if self.milestones[1].is_none() && self.session.triptych.mapped_rgb.is_some() {
            let t = ms();
            log::info!("first complete triptych {t:.0} ms after launch");
            self.milestones[1] = Some(t);
        }
    }
}

impl eframe::App for ExplorerApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.process(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let mut panel = crate::ui::PanelCtx {
            settings: &self.settings,
            session: &self.session,
            textures: &mut self.textures,
            state: &mut self.ui_state,
            commands: &mut self.commands,
            gpu_scatter: self.gpu_scatter,
            software_scatter: self.software_scatter,
        };
        crate::ui::explorer_ui(ui, &mut panel);
        self.note_milestones();
        if !self.commands.is_empty() {
            ui.ctx().request_repaint();
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.config.persist {
            self.capture_settings();
            eframe::set_value(storage, eframe::APP_KEY, &self.settings);
        }
    }
}

/// Opens the explorer window (blocks until it is closed).
pub fn run_native(config: ExplorerConfig) -> Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("latent-atlas")
            .with_inner_size([1480.0, 920.0])
            .with_min_inner_size([900.0, 600.0]),
        ..Default::default()
    };
    eframe::run_native(
        "latent-atlas",
        options,
        Box::new(move |cc| Ok(Box::new(ExplorerApp::new(cc, config)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the explorer window: {e}"))
}
