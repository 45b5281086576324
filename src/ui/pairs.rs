//! All-pairs M-MSE matrix (computed in the background on request); click a cell to select
//! that pair.

use egui::{Color32, Sense, Vec2};

use super::widgets::heat_color;
use super::PanelCtx;
use crate::app::AppCommand;

/// The pairs tab.
pub fn pairs_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.horizontal(|ui| {
        if ui
            .button("Compute all pairs")
            .on_hover_text("lstsq on each source's support set; M-MSE on 256 held-out samples")
            .clicked()
        {
            p.push(AppCommand::ComputePairs);
        }
        ui.label(egui::RichText::new("rows: source, columns: target").weak());
    });
    let Some(m) = p.session.pairs.clone() else {
        ui.label("Not computed yet.");
        return;
    };
    let n = m.names.len();
    let values: Vec<f64> = m
        .cells
        .iter()
        .flatten()
        .filter_map(|c| c.as_ref().and_then(|r| r.as_ref().ok()).copied())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let label_w = 80.0;
    let cell = ((ui.available_width() - label_w) / n.max(1) as f32).clamp(24.0, 72.0);
    ui.horizontal(|ui| {
        ui.add_space(label_w);
        for name in &m.names {
            ui.add_sized(
                [cell, 16.0],
                egui::Label::new(egui::RichText::new(name).small()).truncate(),
            );
        }
    });
    for (i, row) in m.cells.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.add_sized(
                [label_w, cell],
                egui::Label::new(egui::RichText::new(&m.names[i]).small()).truncate(),
            );
            for (j, c) in row.iter().enumerate() {
                let (rect, resp) = ui.allocate_exact_size(Vec2::splat(cell), Sense::click());
                let rect = rect.shrink(1.0);
                let (color, text, hover) = match c {
                    _ if i == j => (
                        Color32::from_gray(30),
                        "-".to_string(),
                        "same model".to_string(),
                    ),
                    None => (Color32::from_gray(55), "...".into(), "pending".into()),
                    Some(Err(e)) => (Color32::from_rgb(90, 30, 30), "err".into(), e.clone()),
                    Some(Ok(v)) => {
                        let t = if hi > lo {
                            ((v - lo) / (hi - lo)) as f32
                        } else {
                            0.5
                        };
                        (
                            heat_color(1.0 - t),
                            format!("{v:.4}"),
                            format!("{} -> {}: M-MSE {v:.5}", m.names[i], m.names[j]),
                        )
                    }
                };
                ui.painter().rect_filled(rect, 2.0, color);
                ui.painter().text(
                    rect.center(),
                    egui::Align2::CENTER_CENTER,
                    text,
                    egui::FontId::monospace(10.0),
                    Color32::WHITE,
                );
                let label = format!("pair {} to {}", m.names[i], m.names[j]);
                resp.widget_info(move || {
                    egui::WidgetInfo::labeled(egui::accesskit::Role::Button, true, label.clone())
                });
                if resp.on_hover_text(hover).clicked() && i != j {
                    p.push(AppCommand::SelectPair(m.dirs[i].clone(), m.dirs[j].clone()));
                }
            }
        });
    }
}
