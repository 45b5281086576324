//! Toasts in the bottom-right corner: errors (red) and confirmations.

use super::PanelCtx;
use crate::app::AppCommand;

/// Draws the notifications.
pub fn notifications_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    if p.session.toasts.is_empty() {
        return;
    }
    egui::Area::new(egui::Id::unique("toasts"))
        .anchor(egui::Align2::RIGHT_BOTTOM, [-12.0, -36.0])
        .order(egui::Order::Foreground)
        .show(ui.ctx(), |ui| {
            ui.set_max_width(420.0);
            for t in &p.session.toasts {
                let fill = if t.is_error {
                    egui::Color32::from_rgb(110, 30, 30)
                } else {
                    egui::Color32::from_rgb(30, 70, 45)
                };
                egui::Frame::popup(ui.style()).fill(fill).show(ui, |ui| {
                    ui.horizontal(|ui| {
                        ui.label(egui::RichText::new(&t.text).color(egui::Color32::WHITE));
                        if ui.small_button("x").on_hover_text("dismiss").clicked() {
                            p.commands.push(AppCommand::DismissToast(t.id));
                        }
                    });
                });
            }
        });
}
