//! Scatter of all encoded samples in 2-D, coloured by sector. Drawn by the wgpu shader when
//! available (pan: drag, zoom: scroll, reset: double-click), else by egui_plot on a subsample.
//! A click loads the nearest sample.

use std::sync::Arc;

use egui::{Color32, Sense, Vec2};
use egui_plot::{Plot, Points};

use super::PanelCtx;
use crate::app::scatter_data::{sector_color, ScatterData};
use crate::app::settings::ScatterAxes;
use crate::app::AppCommand;
use crate::render::scatter::{paint_callback, ScatterCallback, ScatterUniforms, MOTION_POINTS};

/// Most points the egui_plot fallback draws.
const FALLBACK_MAX_POINTS: usize = 4000;

/// The scatter panel.
pub fn scatter_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some(data) = p.session.scatter.clone() else {
        ui.label("The scatter appears once the source codes are known.");
        return;
    };
    ui.horizontal(|ui| {
        ui.strong("Latent scatter");
        let axes = p.settings.scatter_axes;
        let text = match axes {
            ScatterAxes::Pca => "PC 1 / PC 2".to_string(),
            ScatterAxes::Vars(a, b) => format!("z[{a}] / z[{b}]"),
        };
        egui::ComboBox::from_label("Axes")
            .selected_text(text)
            .show_ui(ui, |ui| {
                if ui
                    .selectable_label(axes == ScatterAxes::Pca, "PC 1 / PC 2")
                    .clicked()
                {
                    p.push(AppCommand::SetScatterAxes(ScatterAxes::Pca));
                }
                if let Some(g) = &p.session.gains {
                    for w in g.order.windows(2).take(4) {
                        let a = ScatterAxes::Vars(w[0], w[1]);
                        if ui
                            .selectable_label(axes == a, format!("z[{}] / z[{}]", w[0], w[1]))
                            .clicked()
                        {
                            p.push(AppCommand::SetScatterAxes(a));
                        }
                    }
                }
            });
        let how = if p.gpu_scatter && p.software_scatter {
            "wgpu, software renderer: thinned while moving"
        } else if p.gpu_scatter {
            "wgpu"
        } else {
            "plot, subsampled"
        };
        ui.label(
            egui::RichText::new(format!(
                "{} points ({how}); click a point to load it",
                data.points.len()
            ))
            .weak(),
        );
    });
    if p.gpu_scatter {
        gpu_scatter_ui(ui, p, &data);
    } else {
        plot_scatter_ui(ui, p, &data);
    }
}

fn gpu_scatter_ui(ui: &mut egui::Ui, p: &mut PanelCtx, data: &Arc<ScatterData>) {
    let size = Vec2::new(ui.available_width(), ui.available_height().max(160.0));
    let (rect, resp) = ui.allocate_exact_size(size, Sense::click_and_drag());
    let [x0, y0, x1, y1] = data.bounds;
    let center = *p
        .state
        .scatter_center
        .get_or_insert([(x0 + x1) / 2.0, (y0 + y1) / 2.0]);
    let fit = 0.92 * (rect.width() / (x1 - x0).max(1e-6)).min(rect.height() / (y1 - y0).max(1e-6));
    let s = fit * p.state.scatter_zoom;
    let now = std::time::Instant::now();
    if resp.dragged() {
        p.state.scatter_moved = Some(now);
        let d = resp.drag_delta();
        p.state.scatter_center = Some([center[0] - d.x / s, center[1] + d.y / s]);
    }
    if resp.hovered() {
        let scroll = ui.input(|i| i.smooth_scroll_delta.y);
        if scroll != 0.0 {
            p.state.scatter_moved = Some(now);
            p.state.scatter_zoom =
                (p.state.scatter_zoom * (scroll * 0.003).exp()).clamp(0.2, 500.0);
        }
    }
    if resp.double_clicked() {
        p.state.scatter_center = None;
        p.state.scatter_zoom = 1.0;
    }
    let center = p.state.scatter_center.unwrap_or(center);
    let to_data = |pos: egui::Pos2| {
        [
            center[0] + (pos.x - rect.center().x) / s,
            center[1] - (pos.y - rect.center().y) / s,
        ]
    };
    if resp.clicked() {
        if let Some(pos) = resp.interact_pointer_pos() {
            p.push(AppCommand::ScatterPick(to_data(pos)));
        }
    }
    ui.painter().rect_filled(rect, 4.0, Color32::from_gray(16));
    let radius_pt = crate::render::scatter::point_radius_px(data.points.len());
    let uniforms = ScatterUniforms {
        center,
        scale: [2.0 * s / rect.width(), 2.0 * s / rect.height()],
        half_size: [
            2.0 * radius_pt / rect.width(),
            2.0 * radius_pt / rect.height(),
        ],
        opacity: [0.8, 0.0],
    };
    // on a software rasterizer, a moving view draws a fixed random subset; the full cloud
    // follows once the view has rested for a moment
    let rest = std::time::Duration::from_millis(150);
    let moving = p
        .state
        .scatter_moved
        .is_some_and(|t| now.duration_since(t) < rest);
    let max_points = if p.software_scatter && moving {
        MOTION_POINTS
    } else {
        u32::MAX
    };
    if moving {
        ui.ctx().request_repaint_after(rest);
    }
    ui.painter().with_clip_rect(rect).add(paint_callback(
        rect,
        ScatterCallback {
            data: data.clone(),
            uniforms,
            max_points,
        },
    ));
    if let Some(q) = data.points.get(p.session.sample) {
        let pos = egui::pos2(
            rect.center().x + (q[0] - center[0]) * s,
            rect.center().y - (q[1] - center[1]) * s,
        );
        if rect.contains(pos) {
            ui.painter()
                .circle_stroke(pos, 6.0, egui::Stroke::new(2.0, Color32::WHITE));
        }
    }
    ui.painter().text(
        rect.left_bottom() + Vec2::new(6.0, -6.0),
        egui::Align2::LEFT_BOTTOM,
        format!("x: {}   y: {}", data.axis_names[0], data.axis_names[1]),
        egui::FontId::proportional(11.0),
        Color32::GRAY,
    );
}

fn plot_scatter_ui(ui: &mut egui::Ui, p: &mut PanelCtx, data: &ScatterData) {
    let n = data.points.len();
    let step = n.div_ceil(FALLBACK_MAX_POINTS).max(1);
    let mut groups: Vec<Vec<[f64; 2]>> = vec![Vec::new(); 8];
    let patterns = p.session.sectors.clone();
    for i in (0..n).step_by(step) {
        let g = patterns
            .as_ref()
            .and_then(|s| s.patterns.get(i))
            .map_or(0, |&pt| (pt & 7) as usize);
        groups[g].push([f64::from(data.points[i][0]), f64::from(data.points[i][1])]);
    }
    let current = data
        .points
        .get(p.session.sample)
        .map(|q| [f64::from(q[0]), f64::from(q[1])]);
    let response = Plot::new("scatter_plot")
        .height(ui.available_height().max(160.0))
        .data_aspect(1.0)
        .x_axis_label(data.axis_names[0].clone())
        .y_axis_label(data.axis_names[1].clone())
        .show(ui, |plot| {
            for (g, pts) in groups.into_iter().enumerate() {
                if !pts.is_empty() {
                    let c = sector_color(g as u32);
                    plot.points(
                        Points::new(format!("sectors = {g} mod 8"), pts)
                            .radius(1.5)
                            .color(Color32::from_rgb(c[0], c[1], c[2])),
                    );
                }
            }
            if let Some(c) = current {
                plot.points(
                    Points::new("current", vec![c])
                        .radius(5.0)
                        .color(Color32::WHITE),
                );
            }
            plot.pointer_coordinate()
        });
    if response.response.clicked() {
        if let Some(pt) = response.inner {
            p.push(AppCommand::ScatterPick([pt.x as f32, pt.y as f32]));
        }
    }
}
