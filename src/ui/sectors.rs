//! Sector browser: the 2^n sign sectors of the source model's most informative variables as
//! a heat grid, a threshold slider, and paged thumbnails of a chosen sector's inhabitants.

use egui::{Color32, Sense, Vec2};

use super::widgets::{heat_color, thumbnail_grid};
use super::PanelCtx;
use crate::app::AppCommand;

const PAGE: usize = 24;

/// The sectors tab.
pub fn sectors_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some(sectors) = p.session.sectors.clone() else {
        ui.label("Sectors appear once the source model's codes and gains are known.");
        return;
    };
    let n = sectors.vars.len();
    let counts = &p.session.sector_counts;
    let inhabited = counts.iter().filter(|&&c| c > 0).count();
    let vars: Vec<String> = sectors.vars.iter().map(|v| v.to_string()).collect();
    ui.label(format!(
        "{} sectors of z[{}]; {inhabited} inhabited",
        1usize << n,
        vars.join(", ")
    ));
    let mut th = p.settings.sector_threshold;
    if ui
        .add(egui::Slider::new(&mut th, 0.0..=4.0).text("threshold |z_S| >"))
        .changed()
    {
        p.push(AppCommand::SetSectorThreshold(th));
    }
    let cols = 1usize << n.div_ceil(2);
    let rows = (1usize << n).div_ceil(cols);
    let cell = ((ui.available_width() - 4.0) / cols as f32).clamp(8.0, 40.0);
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    let selected = p.session.sector_selected.as_ref().map(|s| s.0);
    let (rect, _) = ui.allocate_exact_size(
        Vec2::new(cell * cols as f32, cell * rows as f32),
        Sense::hover(),
    );
    for pattern in 0..(1u32 << n) {
        let (r, c) = (pattern as usize / cols, pattern as usize % cols);
        let cell_rect = egui::Rect::from_min_size(
            rect.min + Vec2::new(c as f32 * cell, r as f32 * cell),
            Vec2::splat(cell),
        )
        .shrink(1.0);
        let count = counts.get(pattern as usize).copied().unwrap_or(0);
        let color = if count == 0 {
            Color32::from_gray(40)
        } else {
            heat_color((count as f32).ln_1p() / max.ln_1p())
        };
        let id = ui.scope_id().with(("sector", pattern));
        let resp = ui.interact(cell_rect, id, Sense::click());
        ui.painter().rect_filled(cell_rect, 2.0, color);
        if selected == Some(pattern) || resp.hovered() {
            ui.painter().rect_stroke(
                cell_rect,
                2.0,
                egui::Stroke::new(2.0, Color32::WHITE),
                egui::StrokeKind::Inside,
            );
        }
        let label = format!("sector {pattern}");
        resp.widget_info(move || {
            egui::WidgetInfo::labeled(egui::accesskit::Role::Button, true, label.clone())
        });
        let resp = resp.on_hover_text(format!(
            "sector {pattern:0width$b}: {count} samples",
            width = n
        ));
        if resp.clicked() {
            p.push(AppCommand::SelectSector(Some(pattern)));
        }
    }
    ui.add_space(6.0);
    let Some((pattern, members)) = p.session.sector_selected.clone() else {
        ui.label("Click a sector to see its inhabitants.");
        return;
    };
    ui.horizontal(|ui| {
        ui.strong(format!(
            "sector {pattern:0width$b}: {} samples",
            members.len(),
            width = n
        ));
        let pages = members.len().div_ceil(PAGE).max(1);
        p.state.sector_page = p.state.sector_page.min(pages - 1);
        if ui
            .add_enabled(p.state.sector_page > 0, egui::Button::new("< page"))
            .clicked()
        {
            p.state.sector_page -= 1;
        }
        ui.label(format!("{}/{pages}", p.state.sector_page + 1));
        if ui
            .add_enabled(p.state.sector_page + 1 < pages, egui::Button::new("page >"))
            .clicked()
        {
            p.state.sector_page += 1;
        }
    });
    let start = p.state.sector_page * PAGE;
    let page: Vec<usize> = members.iter().skip(start).take(PAGE).copied().collect();
    if let Some(i) = thumbnail_grid(ui, p, &page, 56.0, "inhabitant") {
        p.push(AppCommand::LoadSample(i));
    }
}
