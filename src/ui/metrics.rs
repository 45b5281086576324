//! Metrics: L-, R- and M-MSE of the current pair, estimator and support set, and a sortable
//! best/worst list of held-out samples by M-MSE.

use super::widgets::{fmt_opt, thumbnail};
use super::PanelCtx;
use crate::app::AppCommand;

const LIST_LEN: usize = 24;

/// The metrics tab.
pub fn metrics_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some((m, eval)) = p.session.metrics.clone() else {
        ui.label(if p.session.job.is_some() {
            "Computing metrics..."
        } else {
            "No metrics yet."
        });
        return;
    };
    egui::Grid::new("metrics_grid")
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            let rows = [
                ("pair", format!("{} -> {}", m.source_model, m.target_model)),
                ("estimator", m.estimator.clone()),
                (
                    "fitted on",
                    format!("{} ({} points)", p.settings.fit_on, p.session.fit_points),
                ),
                ("held-out samples", m.num_samples.to_string()),
                ("L-MSE (latent)", fmt_opt(Some(m.l_mse))),
                (
                    "R-MSE (source recon.)",
                    format!("{} ± {:.4}", fmt_opt(Some(m.r_mse_mean)), m.r_mse_std),
                ),
                (
                    "M-MSE (mapped recon.)",
                    format!("{} ± {:.4}", fmt_opt(Some(m.m_mse_mean)), m.m_mse_std),
                ),
                ("CKA mapped/target", fmt_opt(Some(m.cka_mapped_target))),
            ];
            for (k, v) in rows {
                ui.label(k);
                ui.label(egui::RichText::new(v).monospace());
                ui.end_row();
            }
        });
    ui.separator();
    ui.horizontal(|ui| {
        ui.strong("Per-sample M-MSE");
        ui.selectable_value(&mut p.state.worst_first, true, "worst first");
        ui.selectable_value(&mut p.state.worst_first, false, "best first");
    });
    let mut order: Vec<usize> = (0..m.per_sample_m_mse.len().min(eval.len())).collect();
    order.sort_by(|&a, &b| m.per_sample_m_mse[a].total_cmp(&m.per_sample_m_mse[b]));
    if p.state.worst_first {
        order.reverse();
    }
    let Some(ds) = p.session.dataset.clone() else {
        return;
    };
    egui::Grid::new("per_sample")
        .num_columns(3)
        .striped(true)
        .show(ui, |ui| {
            for &k in order.iter().take(LIST_LEN) {
                let i = eval[k];
                let id = ds.sample_ids.get(i).map_or("?", String::as_str);
                let tex = p.textures.thumb(ui.ctx(), &ds, i);
                if thumbnail(
                    ui,
                    tex.as_ref(),
                    32.0,
                    &format!("metric sample {id}"),
                    i == p.session.sample,
                )
                .on_hover_text("click to load")
                .clicked()
                {
                    p.push(AppCommand::LoadSample(i));
                }
                ui.label(id);
                ui.label(egui::RichText::new(format!("{:.4}", m.per_sample_m_mse[k])).monospace());
                ui.end_row();
            }
        });
}
