//! Map anatomy: singular-value spectrum, |W| heatmap, per-dimension L-MSE.

use egui::{Sense, Vec2};
use egui_plot::{Bar, BarChart, Line, Plot, PlotPoints};

use super::widgets::heat_color;
use super::PanelCtx;

/// The map tab.
pub fn map_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some(map) = p.session.map.clone() else {
        ui.label("No map fitted yet.");
        return;
    };
    ui.label(format!(
        "target_from_source: {} x {} ({}), rank {}",
        map.source_dim(),
        map.target_dim(),
        map.estimator,
        map.info.rank
    ));
    if let Some(c) = map.info.condition {
        ui.label(format!("condition number {c:.3e}"));
    }
    if let Some((m, _)) = &p.session.metrics {
        ui.strong("Singular values");
        let pts: PlotPoints = m
            .singular_values
            .iter()
            .enumerate()
            .map(|(i, s)| [i as f64, *s])
            .collect();
        Plot::new("map_sv")
            .height(140.0)
            .allow_scroll(false)
            .x_axis_label("index")
            .show(ui, |plot| {
                plot.line(Line::new("σ", pts).color(egui::Color32::from_rgb(120, 200, 120)));
            });
    }
    ui.strong("|W| (rows: source, columns: target)");
    let (rows, cols) = (map.weight.nrows(), map.weight.ncols());
    let max = map
        .weight
        .iter()
        .fold(0.0f32, |a, v| a.max(v.abs()))
        .max(1e-12);
    let side = (ui.available_width() - 8.0).min(360.0);
    let cell = Vec2::new(side / cols.max(1) as f32, side / rows.max(1) as f32);
    let (rect, resp) = ui.allocate_exact_size(Vec2::splat(side), Sense::hover());
    let painter = ui.painter_at(rect);
    for r in 0..rows {
        for c in 0..cols {
            let min = rect.min + Vec2::new(c as f32 * cell.x, r as f32 * cell.y);
            painter.rect_filled(
                egui::Rect::from_min_size(min, cell),
                0.0,
                heat_color(map.weight[(r, c)].abs() / max),
            );
        }
    }
    if let Some(pos) = resp.hover_pos() {
        let (c, r) = (
            ((pos.x - rect.min.x) / cell.x) as usize,
            ((pos.y - rect.min.y) / cell.y) as usize,
        );
        if r < rows && c < cols {
            resp.on_hover_text(format!("W[{r}, {c}] = {:.4}", map.weight[(r, c)]));
        }
    }
    if let Some((m, _)) = &p.session.metrics {
        ui.strong("Per-dimension L-MSE (target dimensions)");
        let bars: Vec<Bar> = m
            .per_dim_l_mse
            .iter()
            .enumerate()
            .map(|(i, v)| Bar::new(i as f64, *v).width(0.8))
            .collect();
        Plot::new("map_dim_lmse")
            .height(140.0)
            .allow_scroll(false)
            .show(ui, |plot| {
                plot.bar_chart(
                    BarChart::new("L-MSE", bars).color(egui::Color32::from_rgb(220, 120, 90)),
                );
            });
    }
}
