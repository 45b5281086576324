//! Presentation mode: a full-screen triptych with large captions, keyboard navigation
//! (<-/-> samples, Space plays, Esc or F11 leaves).

use super::PanelCtx;
use crate::app::AppCommand;

/// The presentation view.
pub fn presentation_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    egui::CentralPanel::default()
        .frame(
            egui::Frame::central_panel(ui.style())
                .fill(egui::Color32::from_gray(12))
                .inner_margin(24.0),
        )
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                let title = match (&p.session.source, &p.session.target) {
                    (Some(s), Some(t)) => format!("{} -> {}", s.name, t.name),
                    _ => "latent-atlas".into(),
                };
                ui.label(egui::RichText::new(title).size(28.0).strong());
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if ui
                        .button(egui::RichText::new("Exit presentation").size(16.0))
                        .clicked()
                    {
                        p.push(AppCommand::TogglePresentation);
                    }
                    let playing = p.session.playing.is_some();
                    if ui
                        .button(
                            egui::RichText::new(if playing { "Stop" } else { "Play" }).size(16.0),
                        )
                        .clicked()
                    {
                        p.push(AppCommand::Play(if playing {
                            None
                        } else {
                            super::sliders::play_var(p)
                        }));
                    }
                    if let Some((m, _)) = &p.session.metrics {
                        ui.label(
                            egui::RichText::new(format!(
                                "M-MSE {:.4}   R-MSE {:.4}",
                                m.m_mse_mean, m.r_mse_mean
                            ))
                            .size(18.0)
                            .monospace(),
                        );
                    }
                });
            });
            ui.add_space(16.0);
            super::triptych::triptych_ui(ui, p, 1.8);
            ui.add_space(8.0);
            ui.label(
                egui::RichText::new("<- / -> samples    Space play    Esc leave")
                    .size(14.0)
                    .weak(),
            );
        });
}
