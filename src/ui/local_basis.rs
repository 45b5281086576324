//! The Local basis tab: sliders along the top-k local directions of the source decoder at the
//! current sample (labelled with singular values), the source image and the target image of
//! the mapped code side by side (direction transfer), traversal playback along one direction
//! (straight line or the re-projected curve), and how well the map carries the basis: the
//! target's own local basis at the mapped point and the Grassmannian distance between the two.

use egui::{Color32, RichText, Sense, TextureHandle, Vec2};
use egui_plot::{Bar, BarChart, Legend, Plot};

use super::widgets::heat_color;
use super::PanelCtx;
use crate::app::geometry::{GeometryCommand, MAX_LOCAL_K};
use crate::app::session::Job;
use crate::app::AppCommand;
use crate::worker::{LocalBasisResult, TransferResult, MAX_TRAVERSAL_STEPS};

const SOURCE_COLOR: Color32 = Color32::from_rgb(90, 160, 230);
const TARGET_COLOR: Color32 = Color32::from_rgb(240, 150, 60);

fn push(p: &mut PanelCtx, cmd: GeometryCommand) {
    p.push(AppCommand::Geometry(cmd));
}

/// A progress line for a geometry job, with Cancel.
pub fn job_ui(ui: &mut egui::Ui, p: &mut PanelCtx, job: &Job) {
    ui.horizontal(|ui| {
        ui.spinner();
        let text = if job.total > 0 {
            format!("{} {}/{}", job.phase, job.done, job.total)
        } else {
            job.phase.clone()
        };
        let bar = egui::ProgressBar::new(job.fraction().unwrap_or(0.0))
            .desired_width((ui.available_width() - 70.0).max(80.0))
            .text(text);
        ui.add(if job.fraction().is_none() {
            bar.animate(true)
        } else {
            bar
        });
        if ui.button("Cancel").clicked() {
            push(p, GeometryCommand::Cancel);
        }
    });
}

/// An image square with a caption above; an accessible image labelled `title`.
fn image_ui(ui: &mut egui::Ui, tex: Option<&TextureHandle>, side: f32, title: &str, sub: &str) {
    ui.vertical(|ui| {
        ui.set_width(side);
        ui.label(RichText::new(title).strong());
        let (rect, response) = ui.allocate_exact_size(Vec2::splat(side), Sense::hover());
        match tex {
            Some(t) => {
                ui.painter().image(
                    t.id(),
                    rect,
                    egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                    Color32::WHITE,
                );
            }
            None => {
                ui.painter()
                    .rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
            }
        }
        let title = title.to_string();
        response.widget_info(move || {
            egui::WidgetInfo::labeled(egui::accesskit::Role::Image, true, title.clone())
        });
        ui.label(RichText::new(sub).small().weak());
    });
}

/// The Local basis tab.
pub fn local_basis_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let (Some(src), Some(tgt)) = (p.session.source.clone(), p.session.target.clone()) else {
        ui.label("The local basis appears once the models are loaded.");
        return;
    };
    let sample = p
        .session
        .sample_id(p.session.sample)
        .unwrap_or("?")
        .to_string();
    let base = if p.session.geometry.custom_base.is_some() {
        format!("a re-centred code near sample {sample}")
    } else {
        format!("sample {sample}")
    };
    ui.label(RichText::new(format!("Local basis of {} at {base}", src.name)).strong())
        .on_hover_text(
            "Right singular vectors of the decoder Jacobian (central differences): \
             the latent directions that change the image most, here.",
        );
    let mut k = p.settings.local_k;
    ui.horizontal(|ui| {
        let max_k = MAX_LOCAL_K.min(src.latent_dim).max(1);
        if ui
            .add(egui::Slider::new(&mut k, 1..=max_k).text("directions k"))
            .changed()
        {
            push(p, GeometryCommand::SetK(k));
        }
    });
    if let Some(job) = p.session.geometry.basis_job.clone() {
        job_ui(ui, p, &job);
    }
    if let Some(e) = p.session.geometry.basis_error.clone() {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    let Some(basis) = p.session.local_basis().cloned() else {
        if p.session.geometry.basis_job.is_none() && p.session.geometry.basis_error.is_none() {
            ui.label("Waiting for the local basis...");
        }
        return;
    };
    images_ui(ui, p, &src.name, &tgt.name);
    sliders_ui(ui, p, &basis);
    ui.separator();
    traversal_ui(ui, p, &basis);
    ui.separator();
    transfer_ui(ui, &basis, &tgt.name);
}

fn images_ui(ui: &mut egui::Ui, p: &mut PanelCtx, src: &str, tgt: &str) {
    let gap = 10.0;
    let side = ((ui.available_width() - gap) / 2.0)
        .clamp(64.0, 150.0)
        .floor();
    ui.horizontal(|ui| {
        image_ui(
            ui,
            p.textures.triptych[1].as_ref(),
            side,
            &format!("Source {src}"),
            "decoded at z + Σ α_i v_i",
        );
        ui.add_space(gap);
        let target_title = format!("Transferred {tgt}");
        if p.session.map.is_some() {
            image_ui(
                ui,
                p.textures.triptych[2].as_ref(),
                side,
                &target_title,
                "decoded at (z + Σ α_i v_i)·W",
            );
        } else {
            image_ui(ui, None, side, &target_title, "waiting for the map...");
        }
    });
}

fn sliders_ui(ui: &mut egui::Ui, p: &mut PanelCtx, basis: &LocalBasisResult) {
    let coords = p.session.local_coords().unwrap_or_default();
    let range = p.settings.slider_range;
    let playing_dir = p
        .session
        .geometry
        .playback
        .as_ref()
        .map(|pb| pb.traversal.direction);
    for (i, sigma) in basis.singular_values.iter().enumerate() {
        let mut value = coords.get(i).copied().unwrap_or(0.0);
        if value.abs() < 5e-4 {
            value = 0.0; // round-off of the projection, not a "-0.00"
        }
        let mark = if playing_dir == Some(i) { "> " } else { "" };
        let slider = egui::Slider::new(&mut value, -range..=range)
            .text(format!("{mark}dir {i} · σ={sigma:.3}"))
            .clamping(egui::SliderClamping::Never);
        if ui.add(slider).changed() {
            push(p, GeometryCommand::SetCoord { dir: i, value });
        }
    }
    ui.horizontal(|ui| {
        if ui
            .button("Reset")
            .on_hover_text("back to the base point (all α = 0)")
            .clicked()
        {
            push(p, GeometryCommand::Reset);
        }
        if ui
            .button("Basis at current code")
            .on_hover_text("re-compute the local basis at the slider code")
            .clicked()
        {
            push(p, GeometryCommand::Recenter);
        }
        let secs = basis.compute_secs;
        let when = if secs > 0.0 {
            format!("computed in {:.0} ms", secs * 1e3)
        } else {
            "cached".into()
        };
        ui.label(RichText::new(when).small().weak());
    });
}

fn traversal_ui(ui: &mut egui::Ui, p: &mut PanelCtx, basis: &LocalBasisResult) {
    let k = basis.singular_values.len();
    let dir = p.session.geometry.play_dir.min(k.saturating_sub(1));
    ui.horizontal(|ui| {
        ui.label(RichText::new("Traversal").strong());
        egui::ComboBox::from_label("direction")
            .selected_text(format!("dir {dir}"))
            .show_ui(ui, |ui| {
                for i in 0..k {
                    if ui.selectable_label(i == dir, format!("dir {i}")).clicked() {
                        push(p, GeometryCommand::SetPlayDirection(i));
                    }
                }
            });
        let mut steps = p.settings.local_steps;
        if ui
            .add(egui::DragValue::new(&mut steps).range(1..=MAX_TRAVERSAL_STEPS))
            .on_hover_text("steps on each side of the base point")
            .changed()
        {
            push(p, GeometryCommand::SetSteps(steps));
        }
        ui.label("steps");
    });
    ui.horizontal(|ui| {
        let curve = p.settings.local_curve;
        if ui.radio(!curve, "straight line").clicked() {
            push(p, GeometryCommand::SetCurve(false));
        }
        if ui
            .radio(curve, "curve")
            .on_hover_text("re-projects on the local basis at every step (one Jacobian per step)")
            .clicked()
        {
            push(p, GeometryCommand::SetCurve(true));
        }
    });
    ui.horizontal(|ui| {
        let pb = p.session.geometry.playback.as_ref();
        let running = pb.is_some_and(|pb| !pb.paused());
        if running {
            if ui.button("Pause traversal").clicked() {
                push(p, GeometryCommand::Pause);
            }
        } else if ui.button("Play traversal").clicked() {
            push(p, GeometryCommand::Play);
        }
        if ui.button("Stop traversal").clicked() {
            push(p, GeometryCommand::Stop);
        }
        if p.settings.local_curve && ui.button("Trace").clicked() {
            push(p, GeometryCommand::Trace);
        }
    });
    if let Some(job) = p.session.geometry.traversal_job.clone() {
        job_ui(ui, p, &job);
    }
    strip_ui(ui, p);
}

/// The decoded frames of the traversal: source above, transferred target below.
fn strip_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some(t) = p.session.local_traversal().cloned() else {
        return;
    };
    let generation = p.session.geometry.traversal_generation;
    let frame = p.session.geometry.playback.as_ref().map(|pb| pb.frame);
    let n = t.strip_source.len();
    let size = ((ui.available_width() - 4.0 * n as f32) / n.max(1) as f32).clamp(20.0, 48.0);
    let current = frame.and_then(|f| {
        t.strip_indices
            .iter()
            .enumerate()
            .min_by_key(|(_, &i)| i.abs_diff(f))
            .map(|(s, _)| s)
    });
    let rows = [("source", &t.strip_source), ("target", &t.strip_target)];
    for (name, images) in rows {
        if images.is_empty() {
            continue;
        }
        ui.horizontal(|ui| {
            ui.spacing_mut().item_spacing.x = 4.0;
            for (s, rgb) in images.iter().enumerate() {
                let key = format!("strip-{name}-{s}");
                let tex = p.textures.frame(ui.ctx(), &key, generation, rgb);
                let label = format!("{name} frame {s}");
                let r = super::widgets::thumbnail(ui, Some(&tex), size, &label, current == Some(s));
                let offset = t.strip_indices.get(s).and_then(|&i| t.offsets.get(i));
                if let Some(o) = offset {
                    r.on_hover_text(format!("α = {o:+.2}"));
                }
            }
        });
    }
    let kind = if t.curve { "curve" } else { "straight line" };
    let mut line = format!(
        "{kind} along dir {}, α from {:+.2} to {:+.2}",
        t.direction,
        t.offsets.first().copied().unwrap_or(0.0),
        t.offsets.last().copied().unwrap_or(0.0)
    );
    if t.curve {
        line += &format!("; ends {:.3} off the straight line", t.end_deviation);
    }
    ui.label(RichText::new(line).small().weak());
}

fn transfer_ui(ui: &mut egui::Ui, basis: &LocalBasisResult, tgt: &str) {
    ui.label(RichText::new(format!("Transfer to {tgt}")).strong());
    let t = match &basis.transfer {
        None => {
            ui.label("Waiting for the map...");
            return;
        }
        Some(Err(e)) => {
            ui.colored_label(ui.visuals().error_fg_color, e);
            return;
        }
        Some(Ok(t)) => t,
    };
    let k = t.angles.len();
    ui.label(format!(
        "Grassmann distance, span(v_i·W) vs {tgt}'s basis at z·W (k = {k}):"
    ))
    .on_hover_text(
        "the source directions pushed through the map against the target model's own \
             local basis at the mapped base point; 0 = the same subspace",
    );
    egui::Grid::new("transfer_distance")
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            ui.label("geodesic");
            ui.label(
                RichText::new(format!(
                    "{:.3}  (random subspaces {:.3}, max {:.3})",
                    t.geodesic, t.random_geodesic, t.max_geodesic
                ))
                .monospace(),
            );
            ui.end_row();
            ui.label("projection");
            ui.label(RichText::new(format!("{:.3}", t.projection)).monospace());
            ui.end_row();
            ui.label("principal angles");
            let deg: Vec<String> = t
                .angles
                .iter()
                .map(|a| format!("{:.0}°", a.to_degrees()))
                .collect();
            ui.label(RichText::new(deg.join(" ")).monospace());
            ui.end_row();
        });
    ui.horizontal_top(|ui| {
        let heat_side = (0.4 * ui.available_width()).min(22.0 * t.cosines.ncols() as f32);
        ui.vertical(|ui| {
            ui.set_width(heat_side);
            cosine_ui(ui, t, heat_side);
        });
        sigma_plot_ui(ui, basis, t);
    });
}

/// Source and target singular values side by side.
fn sigma_plot_ui(ui: &mut egui::Ui, basis: &LocalBasisResult, t: &TransferResult) {
    let bars = |values: &[f64], shift: f64| -> Vec<Bar> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Bar::new(i as f64 + shift, *v)
                    .width(0.38)
                    .name(format!("dir {i}"))
            })
            .collect()
    };
    let top = basis
        .singular_values
        .iter()
        .chain(&t.target_singular_values)
        .fold(0.0f64, |m, v| m.max(*v));
    Plot::new("local_sigma")
        .width(ui.available_width())
        .height(135.0)
        .include_y(0.0)
        .include_y(1.6 * top)
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .legend(Legend::default())
        .show_axes([false, true])
        .y_axis_label("σ")
        .show(ui, |plot| {
            plot.bar_chart(
                BarChart::new(
                    format!("σ source ({})", basis.source),
                    bars(&basis.singular_values, -0.2),
                )
                .color(SOURCE_COLOR),
            );
            plot.bar_chart(
                BarChart::new(
                    format!("σ target ({})", t.target),
                    bars(&t.target_singular_values, 0.2),
                )
                .color(TARGET_COLOR),
            );
        });
}

/// `|cos|` between pushed source directions (rows) and target directions (columns).
fn cosine_ui(ui: &mut egui::Ui, t: &TransferResult, side: f32) {
    let (rows, cols) = t.cosines.shape();
    if rows == 0 || cols == 0 {
        return;
    }
    ui.label(RichText::new("|cos| v_i·W vs target").small())
        .on_hover_text("rows: source directions pushed through the map; columns: the target's own local directions");
    let cell = Vec2::new(side / cols as f32, side / cols as f32);
    let (rect, resp) =
        ui.allocate_exact_size(Vec2::new(side, cell.y * rows as f32), Sense::hover());
    let painter = ui.painter_at(rect);
    for r in 0..rows {
        for c in 0..cols {
            let min = rect.min + Vec2::new(c as f32 * cell.x, r as f32 * cell.y);
            let v = t.cosines[(r, c)];
            let cell_rect = egui::Rect::from_min_size(min, cell).shrink(0.5);
            painter.rect_filled(cell_rect, 0.0, heat_color(v));
            if cell.x >= 20.0 {
                painter.text(
                    cell_rect.center(),
                    egui::Align2::CENTER_CENTER,
                    format!("{v:.1}"),
                    egui::FontId::monospace(9.0),
                    if v > 0.6 {
                        Color32::BLACK
                    } else {
                        Color32::WHITE
                    },
                );
            }
        }
    }
    if let Some(pos) = resp.hover_pos() {
        let (c, r) = (
            ((pos.x - rect.min.x) / cell.x) as usize,
            ((pos.y - rect.min.y) / cell.y) as usize,
        );
        if r < rows && c < cols {
            resp.on_hover_text(format!(
                "|cos(v{r}·W, target dir {c})| = {:.3}; |v{r}·W| = {:.3}",
                t.cosines[(r, c)],
                t.pushed_norms.get(r).copied().unwrap_or(0.0)
            ));
        }
    }
}
