//! The Probes tab: ground-truth probes of the current pair ("All Roads Lead to Rome?"): how
//! linearly each model exposes the known factors (generating latents, identities, attributes),
//! and whether the target's probe still works on source codes carried over by the map.

use egui::{Color32, RichText};
use egui_plot::{Bar, BarChart, HLine, Legend, Line, Plot, PlotPoints};

use super::local_basis::job_ui;
use super::PanelCtx;
use crate::app::geometry::GeometryCommand;
use crate::app::AppCommand;
use crate::worker::{ProbeResult, ProbeTask};

const COLORS: [Color32; 3] = [
    Color32::from_rgb(90, 160, 230),
    Color32::from_rgb(240, 150, 60),
    Color32::from_rgb(120, 200, 120),
];

/// The Probes tab.
pub fn probe_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Ground-truth probes").strong());
        let busy = p.session.geometry.probes_job.is_some();
        if ui
            .add_enabled(
                !busy && p.session.map.is_some(),
                egui::Button::new("Run again"),
            )
            .clicked()
        {
            p.push(AppCommand::Geometry(GeometryCommand::RunProbes));
        }
    });
    if p.session.map.is_none() {
        ui.label("The probes run once the map is fitted.");
        return;
    }
    if let Some(job) = p.session.geometry.probes_job.clone() {
        job_ui(ui, p, &job);
    }
    if let Some(e) = p.session.geometry.probes_error.clone() {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    let Some(r) = p.session.geometry.probes.clone() else {
        return;
    };
    ui.label(
        RichText::new(format!(
            "{} on {} ({} train, {} test samples); map: {}; {:.1} s",
            r.task.metric(),
            r.dataset,
            r.num_train,
            r.num_test,
            r.map_estimator,
            r.compute_secs
        ))
        .small()
        .weak(),
    );
    table_ui(ui, &r);
    summary_plot_ui(ui, &r);
    if !r.output_names.is_empty() {
        per_output_ui(ui, &r);
    }
}

fn table_ui(ui: &mut egui::Ui, r: &ProbeResult) {
    let score = if r.task == ProbeTask::Factors {
        "mean R²"
    } else {
        "accuracy"
    };
    egui::Grid::new("probe_table")
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            ui.strong("probe");
            ui.strong(score);
            ui.end_row();
            let rows = [
                (
                    format!("before: {} probe on its own codes", r.source),
                    r.source_own.mean,
                ),
                (
                    format!("{} probe on its own codes", r.target),
                    r.target_own.mean,
                ),
                (
                    format!("after: {} probe on mapped {} codes", r.target, r.source),
                    r.mapped.mean,
                ),
            ];
            for (name, v) in rows {
                ui.label(name);
                ui.label(RichText::new(format!("{v:.4}")).monospace());
                ui.end_row();
            }
            if let Some(a) = r.agreement {
                ui.label("agreement: mapped vs own labels");
                ui.label(RichText::new(format!("{a:.4}")).monospace());
                ui.end_row();
            }
            if let Some(b) = r.majority_baseline {
                ui.label("majority-class baseline");
                ui.label(RichText::new(format!("{b:.4}")).monospace());
                ui.end_row();
            }
        });
    if r.task == ProbeTask::Factors {
        let over = |v: &[f64]| v.iter().filter(|&&x| x > 0.5).count();
        ui.label(format!(
            "factors with R² > 0.5: {} before, {} target, {} after (of {})",
            over(&r.source_own.per_output),
            over(&r.target_own.per_output),
            over(&r.mapped.per_output),
            r.output_names.len()
        ));
    }
}

/// Three bars: before, the target's own, after; the baseline as a line.
fn summary_plot_ui(ui: &mut egui::Ui, r: &ProbeResult) {
    let values = [r.source_own.mean, r.target_own.mean, r.mapped.mean];
    let names = ["before (source)", "target", "after (mapped)"];
    Plot::new("probe_summary")
        .height(140.0)
        .allow_scroll(false)
        .allow_drag(false)
        .allow_zoom(false)
        .include_y(0.0)
        .include_y(1.0)
        .legend(Legend::default())
        .x_axis_formatter(move |m, _| {
            let i = m.value.round();
            if (m.value - i).abs() < 1e-6 && (0.0..3.0).contains(&i) {
                names[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .show(ui, |plot| {
            for (i, v) in values.iter().enumerate() {
                plot.bar_chart(
                    BarChart::new(names[i], vec![Bar::new(i as f64, *v).width(0.6)])
                        .color(COLORS[i]),
                );
            }
            if let Some(b) = r.majority_baseline {
                plot.hline(HLine::new("majority baseline", b).color(Color32::GRAY));
            }
        });
}

/// Per factor (or attribute), sorted by the target's own score: before, target, after.
fn per_output_ui(ui: &mut egui::Ui, r: &ProbeResult) {
    let what = if r.task == ProbeTask::Factors {
        "R² per factor"
    } else {
        "accuracy per attribute"
    };
    ui.label(RichText::new(format!("{what}, sorted by the target's own score")).small());
    let mut order: Vec<usize> = (0..r.target_own.per_output.len()).collect();
    order.sort_by(|&a, &b| r.target_own.per_output[b].total_cmp(&r.target_own.per_output[a]));
    let series = [
        ("before (source)", &r.source_own.per_output),
        ("target", &r.target_own.per_output),
        ("after (mapped)", &r.mapped.per_output),
    ];
    Plot::new("probe_per_output")
        .height(160.0)
        .allow_scroll(false)
        .include_y(0.0)
        .include_y(1.0)
        .legend(Legend::default())
        .x_axis_label("rank")
        .show(ui, |plot| {
            for (i, (name, v)) in series.iter().enumerate() {
                let pts: PlotPoints = order
                    .iter()
                    .enumerate()
                    .filter_map(|(rank, &o)| v.get(o).map(|s| [rank as f64, *s]))
                    .collect();
                plot.line(Line::new(*name, pts).color(COLORS[i]));
            }
        });
}
