//! The centre triptych: Original | Source reconstruction | Mapped reconstruction, each with its
//! MSE to the original, and a strip to step through samples.

use egui::{Color32, RichText, Vec2};

use super::widgets::{fmt_opt, thumbnail};
use super::PanelCtx;
use crate::app::AppCommand;

/// The three images sized to the available width (`scale` enlarges the captions).
pub fn triptych_ui(ui: &mut egui::Ui, p: &mut PanelCtx, scale: f32) {
    let t = &p.session.triptych;
    let src = p
        .session
        .source
        .as_ref()
        .map_or("source".to_string(), |m| m.name.clone());
    let tgt = p
        .session
        .target
        .as_ref()
        .map_or("target".to_string(), |m| m.name.clone());
    let captions = [
        (
            "Original".to_string(),
            p.session
                .sample_id(p.session.sample)
                .map(|id| format!("sample {id}"))
                .unwrap_or_default(),
        ),
        (
            format!("Source reconstruction ({src})"),
            format!("MSE {}", fmt_opt(t.source_mse)),
        ),
        (
            format!("Mapped reconstruction ({src} -> {tgt})"),
            format!("MSE {}", fmt_opt(t.mapped_mse)),
        ),
    ];
    let gap = 12.0;
    let avail = ui.available_width();
    let max_h = if scale > 1.0 {
        ui.available_height() - 140.0
    } else {
        300.0
    };
    let side = ((avail - 2.0 * gap) / 3.0 - 1.0)
        .min(max_h)
        .max(64.0)
        .floor();
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        ui.add_space(((avail - 3.0 * side - 2.0 * gap) / 2.0).max(0.0));
        for (k, (title, sub)) in captions.iter().enumerate() {
            ui.vertical(|ui| {
                ui.set_width(side);
                ui.label(RichText::new(title).strong().size(13.0 * scale));
                let (rect, response) =
                    ui.allocate_exact_size(Vec2::splat(side), egui::Sense::hover());
                match &p.textures.triptych[k] {
                    Some(tex) => {
                        ui.painter().image(
                            tex.id(),
                            rect,
                            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                            Color32::WHITE,
                        );
                    }
                    None => {
                        ui.painter()
                            .rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
                        let msg = if p.session.job.is_some() {
                            "computing..."
                        } else {
                            "no image"
                        };
                        ui.painter().text(
                            rect.center(),
                            egui::Align2::CENTER_CENTER,
                            msg,
                            egui::FontId::proportional(14.0 * scale),
                            ui.visuals().weak_text_color(),
                        );
                    }
                }
                let title = title.clone();
                response.widget_info(move || {
                    egui::WidgetInfo::labeled(egui::accesskit::Role::Image, true, title.clone())
                });
                ui.label(RichText::new(sub).monospace().size(12.0 * scale));
            });
            if k < 2 {
                ui.add_space(gap);
            }
        }
    });
    sample_strip_ui(ui, p, scale);
}

/// ◀ sample-id ▶ and thumbnails of the neighbouring samples.
fn sample_strip_ui(ui: &mut egui::Ui, p: &mut PanelCtx, scale: f32) {
    let Some(ds) = p.session.dataset.clone() else {
        return;
    };
    let n = ds.len();
    if n == 0 {
        return;
    }
    ui.horizontal(|ui| {
        if ui
            .button(RichText::new("<").size(14.0 * scale))
            .on_hover_text("previous sample (<-)")
            .clicked()
        {
            p.push(AppCommand::StepSample(-1));
        }
        let label = ui.label("Sample id");
        // while the user is not typing, the box shows the sample on screen (it changes with
        // ←/→, scatter picks, sector clicks and a new dataset)
        let edit_id = ui.make_persistent_id("sample id box");
        if !ui.memory(|m| m.has_focus(edit_id)) {
            let current = p.session.sample_id(p.session.sample).unwrap_or("");
            if p.state.sample_id_text != current {
                current.clone_into(&mut p.state.sample_id_text);
            }
        }
        let edit = ui.add(
            egui::TextEdit::singleline(&mut p.state.sample_id_text)
                .id(edit_id)
                .desired_width(120.0)
                .hint_text(p.session.sample_id(p.session.sample).unwrap_or("")),
        );
        let edit = edit.labelled_by(label.id);
        if edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            p.push(AppCommand::LoadSampleId(p.state.sample_id_text.clone()));
        }
        if ui
            .button(RichText::new(">").size(14.0 * scale))
            .on_hover_text("next sample (->)")
            .clicked()
        {
            p.push(AppCommand::StepSample(1));
        }
        ui.label(RichText::new(format!("#{} of {n}", p.session.sample)).weak());
        if scale <= 1.0 {
            ui.separator();
            let size = 34.0;
            let fit = ((ui.available_width() / (size + 4.0)).floor() as usize).clamp(1, 15);
            let start = p
                .session
                .sample
                .saturating_sub(fit / 2)
                .min(n.saturating_sub(fit));
            for i in start..(start + fit).min(n) {
                let tex = p.textures.thumb(ui.ctx(), &ds, i);
                let id = ds.sample_ids.get(i).map_or("?", String::as_str);
                if thumbnail(
                    ui,
                    tex.as_ref(),
                    size,
                    &format!("strip {id}"),
                    i == p.session.sample,
                )
                .on_hover_text(id)
                .clicked()
                {
                    p.push(AppCommand::LoadSample(i));
                }
            }
        }
    });
}
