//! View functions: they draw from the [`Settings`] and [`Session`] and push [`AppCommand`]s;
//! they never touch candle, channels or files. One file per panel; the layout is here.

mod gains;
mod local_basis;
mod map_view;
mod metrics;
mod notifications;
mod pairs;
mod presentation;
mod probe;
mod scatter;
mod sectors;
mod sliders;
mod status_bar;
mod support_set;
mod top_bar;
mod triptych;
pub mod widgets;

use crate::app::settings::RightTab;
use crate::app::textures::Textures;
use crate::app::{AppCommand, Session, Settings};

/// State that only the panels use (text buffers, pages, view of the scatter).
#[derive(Clone, Debug)]
pub struct UiState {
    /// The sample-id text box.
    pub sample_id_text: String,
    /// Page of the sector browser.
    pub sector_page: usize,
    /// Metrics list: worst first (else best first).
    pub worst_first: bool,
    /// Seed typed for a support-set rebuild.
    pub rebuild_seed: u64,
    /// Variable slot chosen for playback.
    pub play_slot: usize,
    /// Scatter view: centre in data coordinates and zoom (1 = fit).
    pub scatter_center: Option<[f32; 2]>,
    /// Scatter zoom.
    pub scatter_zoom: f32,
    /// When the scatter view last moved (drag or scroll).
    pub scatter_moved: Option<std::time::Instant>,
}

impl Default for UiState {
    fn default() -> Self {
        Self {
            sample_id_text: String::new(),
            sector_page: 0,
            worst_first: true,
            rebuild_seed: 1,
            play_slot: 0,
            scatter_center: None,
            scatter_zoom: 1.0,
            scatter_moved: None,
        }
    }
}

/// What every panel function gets.
pub struct PanelCtx<'a> {
    /// Persisted settings.
    pub settings: &'a Settings,
    /// Runtime state.
    pub session: &'a Session,
    /// Textures (thumbnails are made on demand).
    pub textures: &'a mut Textures,
    /// Panel-only state.
    pub state: &'a mut UiState,
    /// The command queue.
    pub commands: &'a mut Vec<AppCommand>,
    /// Whether the scatter shader is available.
    pub gpu_scatter: bool,
    /// The scatter's renderer is a software rasterizer (thin out while moving).
    pub software_scatter: bool,
}

impl PanelCtx<'_> {
    /// Queues a command.
    pub fn push(&mut self, cmd: AppCommand) {
        self.commands.push(cmd);
    }
}

/// The whole window.
pub fn explorer_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    keyboard_ui(ui, p);
    if p.session.presentation {
        presentation::presentation_ui(ui, p);
        notifications::notifications_ui(ui, p);
        return;
    }
    egui::Panel::top("top_bar").show(ui, |ui| top_bar::top_bar_ui(ui, p));
    egui::Panel::bottom("status_bar").show(ui, |ui| status_bar::status_bar_ui(ui, p));
    egui::Panel::left("sliders")
        .resizable(true)
        .default_size(270.0)
        .show(ui, |ui| sliders::sliders_ui(ui, p));
    egui::Panel::right("analysis")
        .resizable(true)
        .default_size(430.0)
        .show(ui, |ui| right_panel_ui(ui, p));
    egui::CentralPanel::default().show(ui, |ui| {
        triptych::triptych_ui(ui, p, 1.0);
        ui.separator();
        scatter::scatter_ui(ui, p);
    });
    notifications::notifications_ui(ui, p);
}

fn right_panel_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.horizontal_wrapped(|ui| {
        for tab in RightTab::ALL {
            if ui
                .selectable_label(p.settings.tab == tab, tab.to_string())
                .clicked()
            {
                p.push(AppCommand::SetTab(tab));
            }
        }
    });
    ui.separator();
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| match p.settings.tab {
            RightTab::Sectors => sectors::sectors_ui(ui, p),
            RightTab::Support => support_set::support_set_ui(ui, p),
            RightTab::Metrics => metrics::metrics_ui(ui, p),
            RightTab::Map => map_view::map_ui(ui, p),
            RightTab::Pairs => pairs::pairs_ui(ui, p),
            RightTab::Gains => gains::gains_ui(ui, p),
            RightTab::LocalBasis => local_basis::local_basis_ui(ui, p),
            RightTab::Probes => probe::probe_ui(ui, p),
        });
}

/// <-/-> step samples, F11 toggles presentation, Esc leaves it, Space plays.
fn keyboard_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    if ui.ctx().egui_wants_keyboard_input() {
        return;
    }
    let (left, right, f11, esc, space) = ui.input(|i| {
        (
            i.key_pressed(egui::Key::ArrowLeft),
            i.key_pressed(egui::Key::ArrowRight),
            i.key_pressed(egui::Key::F11),
            i.key_pressed(egui::Key::Escape),
            i.key_pressed(egui::Key::Space),
        )
    });
    if left {
        p.push(AppCommand::StepSample(-1));
    }
    if right {
        p.push(AppCommand::StepSample(1));
    }
    if f11 || (esc && p.session.presentation) {
        p.push(AppCommand::TogglePresentation);
    }
    if space && p.session.presentation {
        p.push(AppCommand::Play(if p.session.playing.is_some() {
            None
        } else {
            sliders::play_var(p)
        }));
    }
}
