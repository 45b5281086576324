//! Reconstruction gains of the source model: bars in gain order and the cumulative share.

use egui_plot::{Bar, BarChart, Line, Plot, PlotPoints};

use super::PanelCtx;

/// The gains tab.
pub fn gains_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some(g) = p.session.gains.clone() else {
        ui.label("Gains appear once the source model is analysed.");
        return;
    };
    ui.label(format!(
        "{}: gain of each variable (MSE increase when zeroed), {} images; baseline MSE {:.4}",
        g.model, g.num_images, g.baseline_mse
    ));
    let bars: Vec<Bar> = g
        .order
        .iter()
        .enumerate()
        .map(|(rank, &v)| {
            Bar::new(rank as f64, g.gains.get(v).copied().unwrap_or(0.0))
                .name(format!("z[{v}]"))
                .width(0.8)
        })
        .collect();
    Plot::new("gains_bars")
        .height(180.0)
        .allow_scroll(false)
        .x_axis_label("rank")
        .y_axis_label("gain")
        .show(ui, |plot| {
            plot.bar_chart(
                BarChart::new("gain", bars).color(egui::Color32::from_rgb(90, 160, 230)),
            );
        });
    let d = g.gains.len();
    let points: PlotPoints = (0..=d).map(|k| [k as f64, g.cumulative_share(k)]).collect();
    Plot::new("gains_cumulative")
        .height(160.0)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(1.0)
        .x_axis_label("first k variables")
        .y_axis_label("share of gain")
        .show(ui, |plot| {
            plot.line(
                Line::new("cumulative share", points).color(egui::Color32::from_rgb(240, 160, 60)),
            );
        });
    for k in [7usize, 10, 20] {
        if k <= d {
            ui.label(format!(
                "first {k} variables carry {:.0}% of the gain",
                100.0 * g.cumulative_share(k)
            ));
        }
    }
}
