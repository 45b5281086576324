//! Top bar: files, dataset, source and target models, estimator, fit-on, Refit, device.

use super::PanelCtx;
use crate::app::settings::EstimatorKind;
use crate::app::{AppCommand, ExportKind, OpenKind};
use crate::latent::pipeline::FitOn;

/// Dataset specs offered in the combo box (plus the current one).
const DATASETS: [&str; 2] = ["synthfaces", "orl"];

/// The top bar.
pub fn top_bar_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.horizontal_wrapped(|ui| {
        files_menu_ui(ui, p);
        ui.separator();
        dataset_ui(ui, p);
        models_ui(ui, p);
        ui.separator();
        fit_ui(ui, p);
        ui.separator();
        if ui
            .button("Present")
            .on_hover_text("Presentation mode (F11)")
            .clicked()
        {
            p.push(AppCommand::TogglePresentation);
        }
        let device = if p.session.device_label.is_empty() {
            "..."
        } else {
            p.session.device_label.as_str()
        };
        egui::ComboBox::from_label("Device")
            .selected_text(device)
            .show_ui(ui, |ui| {
                if ui.selectable_label(device == "CPU", "CPU").clicked() {
                    p.push(AppCommand::SetDevice("cpu".into()));
                }
                let cuda = cfg!(feature = "cuda");
                let resp = ui.add_enabled(
                    cuda,
                    egui::Button::selectable(device.starts_with("CUDA"), "CUDA:0"),
                );
                let resp = if cuda {
                    resp.on_hover_text("refits and decodes on the first CUDA GPU")
                } else {
                    resp.on_disabled_hover_text(
                        "this build is CPU-only: build with --features cuda",
                    )
                };
                if resp.clicked() {
                    p.push(AppCommand::SetDevice("cuda:0".into()));
                }
            });
    });
}

fn files_menu_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.menu_button("File", |ui| {
        for (label, kind) in [
            ("Open image folder...", OpenKind::ImageFolder),
            ("Open CelebA root...", OpenKind::CelebaRoot),
            ("Open model directory...", OpenKind::ModelDir),
        ] {
            if ui.button(label).clicked() {
                p.push(AppCommand::OpenDialog(kind));
                ui.close();
            }
        }
        ui.separator();
        for (label, kind) in [
            ("Export triptych (PNG)...", ExportKind::Triptych),
            (
                "Export relocation montage of the support set (PNG)...",
                ExportKind::Montage,
            ),
            ("Export map (safetensors + npy)...", ExportKind::Map),
            ("Export support set (JSON)...", ExportKind::Support),
            ("Export metrics (CSV)...", ExportKind::Metrics),
        ] {
            if ui.button(label).clicked() {
                p.push(AppCommand::ExportDialog(kind));
                ui.close();
            }
        }
    });
}

fn dataset_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let current = p.settings.dataset.clone();
    let label = ui.label("Dataset");
    let r = egui::ComboBox::from_id_salt("dataset")
        .selected_text(&current)
        .show_ui(ui, |ui| {
            let mut options: Vec<String> = DATASETS.iter().map(|s| s.to_string()).collect();
            if !options.contains(&current) {
                options.push(current.clone());
            }
            for o in options {
                if ui.selectable_label(o == current, &o).clicked() && o != current {
                    p.push(AppCommand::SelectDataset(o));
                }
            }
        });
    let _ = r.response.labelled_by(label.id);
}

fn models_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let name_of = |dir: &str| {
        p.session
            .models
            .iter()
            .find(|m| m.dir == dir)
            .map_or_else(|| dir.to_string(), |m| m.name.clone())
    };
    let (src, tgt) = (name_of(&p.settings.source), name_of(&p.settings.target));
    let models = p.session.models.clone();
    let label = ui.label("Source");
    let r = egui::ComboBox::from_id_salt("source")
        .selected_text(&src)
        .show_ui(ui, |ui| {
            for m in &models {
                if ui
                    .selectable_label(
                        m.dir == p.settings.source,
                        format!("{} ({})", m.name, m.detail),
                    )
                    .clicked()
                    && m.dir != p.settings.source
                {
                    p.push(AppCommand::SelectSource(m.dir.clone()));
                }
            }
        });
    let _ = r.response.labelled_by(label.id);
    let label = ui.label("-> Target");
    let r = egui::ComboBox::from_id_salt("target")
        .selected_text(&tgt)
        .show_ui(ui, |ui| {
            for m in &models {
                if ui
                    .selectable_label(
                        m.dir == p.settings.target,
                        format!("{} ({})", m.name, m.detail),
                    )
                    .clicked()
                    && m.dir != p.settings.target
                {
                    p.push(AppCommand::SelectTarget(m.dir.clone()));
                }
            }
        });
    let _ = r.response.labelled_by(label.id);
}

fn fit_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let est = p.settings.estimator;
    let label = ui.label("Estimator");
    let r = egui::ComboBox::from_id_salt("estimator")
        .selected_text(est.to_string())
        .show_ui(ui, |ui| {
            for k in EstimatorKind::ALL {
                if ui.selectable_label(k == est, k.to_string()).clicked() && k != est {
                    p.push(AppCommand::SetEstimator(k));
                }
            }
        });
    let _ = r.response.labelled_by(label.id);
    if est == EstimatorKind::Ridge {
        let mut lambda = p.settings.ridge_lambda;
        let r = ui.add(
            egui::DragValue::new(&mut lambda)
                .range(0.0..=1.0e6)
                .speed(0.01)
                .prefix("λ "),
        );
        let r = r.on_hover_text("ridge penalty λ");
        if r.drag_stopped() || (r.changed() && !r.dragged()) {
            p.push(AppCommand::SetRidgeLambda(lambda));
        }
    }
    let fit_on = p.settings.fit_on;
    let label = ui.label("Fit on");
    let r = egui::ComboBox::from_id_salt("fit_on")
        .selected_text(fit_on.to_string())
        .show_ui(ui, |ui| {
            for f in [FitOn::SupportSet, FitOn::Full, FitOn::RandomAnchors] {
                if ui.selectable_label(f == fit_on, f.to_string()).clicked() && f != fit_on {
                    p.push(AppCommand::SetFitOn(f));
                }
            }
        });
    let _ = r.response.labelled_by(label.id);
    let busy = p.session.job.is_some();
    if ui.add_enabled(!busy, egui::Button::new("Refit")).clicked() {
        p.push(AppCommand::Refit);
    }
}
