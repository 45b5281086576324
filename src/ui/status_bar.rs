//! Bottom bar: the running job with a progress bar and Cancel, fit facts, slider latency.

use super::widgets::fmt_opt;
use super::PanelCtx;
use crate::app::AppCommand;

/// The status bar.
pub fn status_bar_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.horizontal(|ui| {
        if let Some(job) = &p.session.job {
            ui.spinner();
            let text = format!(
                "{} {}",
                job.phase,
                if job.total > 0 {
                    format!("{}/{}", job.done, job.total)
                } else {
                    String::new()
                }
            );
            let bar = egui::ProgressBar::new(job.fraction().unwrap_or(0.0))
                .desired_width(520.0)
                .text(text);
            ui.add(if job.fraction().is_none() {
                bar.animate(true)
            } else {
                bar
            });
            if ui.button("Cancel").clicked() {
                p.push(AppCommand::Cancel);
            }
        } else if p.session.ready() {
            ui.label("ready");
        } else {
            ui.label("idle");
        }
        ui.separator();
        if let Some(map) = &p.session.map {
            ui.label(format!(
                "{} fit on {} points in {:.1} ms",
                map.estimator,
                p.session.fit_points,
                map.info.fit_secs * 1e3
            ));
        }
        if let Some((m, _)) = &p.session.metrics {
            ui.separator();
            ui.label(format!("M-MSE {}", fmt_opt(Some(m.m_mse_mean))));
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            let lat = &p.session.latency;
            let text = match lat.p95_ms() {
                Some(p95) => format!("slider -> images p95 {p95:.0} ms (n={})", lat.len()),
                None => "slider -> images: drag a slider".into(),
            };
            ui.label(egui::RichText::new(text).small().weak());
        });
    });
}
