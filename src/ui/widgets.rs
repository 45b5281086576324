//! Small drawing helpers shared by the panels.

use egui::{Color32, Response, Sense, TextureHandle, Vec2};

/// A heat colour for `t` in [0, 1] (dark blue -> red -> yellow).
pub fn heat_color(t: f32) -> Color32 {
    let t = t.clamp(0.0, 1.0);
    let stops: [(f32, [f32; 3]); 5] = [
        (0.0, [20.0, 24.0, 60.0]),
        (0.3, [70.0, 40.0, 140.0]),
        (0.6, [200.0, 60.0, 80.0]),
        (0.85, [250.0, 160.0, 40.0]),
        (1.0, [255.0, 240.0, 150.0]),
    ];
    for w in stops.windows(2) {
        let ((t0, c0), (t1, c1)) = (w[0], w[1]);
        if t <= t1 {
            let f = (t - t0) / (t1 - t0);
            let mix = |k: usize| (c0[k] + f * (c1[k] - c0[k])) as u8;
            return Color32::from_rgb(mix(0), mix(1), mix(2));
        }
    }
    Color32::from_rgb(255, 240, 150)
}

/// A clickable thumbnail with an accessible label; `selected` draws a frame.
pub fn thumbnail(
    ui: &mut egui::Ui,
    tex: Option<&TextureHandle>,
    size: f32,
    label: &str,
    selected: bool,
) -> Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(size), Sense::click());
    if let Some(t) = tex {
        ui.painter().image(
            t.id(),
            rect,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
            Color32::WHITE,
        );
    } else {
        ui.painter()
            .rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
    }
    let stroke = if selected {
        egui::Stroke::new(2.5, ui.visuals().selection.stroke.color)
    } else if response.hovered() {
        egui::Stroke::new(1.5, ui.visuals().widgets.hovered.fg_stroke.color)
    } else {
        egui::Stroke::NONE
    };
    ui.painter()
        .rect_stroke(rect, 2.0, stroke, egui::StrokeKind::Outside);
    let label = label.to_string();
    response.widget_info(move || {
        egui::WidgetInfo::labeled(egui::accesskit::Role::Button, true, label.clone())
    });
    response
}

/// A grid of sample thumbnails; returns the clicked dataset index.
pub fn thumbnail_grid(
    ui: &mut egui::Ui,
    p: &mut super::PanelCtx,
    indices: &[usize],
    size: f32,
    prefix: &str,
) -> Option<usize> {
    let ds = p.session.dataset.clone()?;
    let mut clicked = None;
    let cols = ((ui.available_width() + 4.0) / (size + 4.0))
        .floor()
        .max(1.0) as usize;
    egui::Grid::new(ui.next_auto_id())
        .spacing([4.0, 4.0])
        .show(ui, |ui| {
            for (k, &i) in indices.iter().enumerate() {
                let tex = p.textures.thumb(ui.ctx(), &ds, i);
                let id = ds.sample_ids.get(i).map_or("?", String::as_str);
                let r = thumbnail(
                    ui,
                    tex.as_ref(),
                    size,
                    &format!("{prefix} {id}"),
                    i == p.session.sample,
                )
                .on_hover_text(format!("sample {id} (#{i})"));
                if r.clicked() {
                    clicked = Some(i);
                }
                if (k + 1) % cols == 0 {
                    ui.end_row();
                }
            }
        });
    clicked
}

/// A number with 4 significant digits, or a dash.
pub fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}
