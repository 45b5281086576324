//! Left panel: sliders on the source model's most informative variables, Reset, Play.

use super::PanelCtx;
use crate::app::AppCommand;

/// The variables shown as sliders (gain order), with their gains.
fn slider_vars(p: &PanelCtx) -> Vec<(usize, f64)> {
    let Some(g) = &p.session.gains else {
        return Vec::new();
    };
    g.order
        .iter()
        .take(p.settings.num_sliders)
        .map(|&v| (v, g.gains.get(v).copied().unwrap_or(0.0)))
        .collect()
}

/// The variable that Play animates.
pub fn play_var(p: &PanelCtx) -> Option<usize> {
    let vars = slider_vars(p);
    vars.get(p.state.play_slot.min(vars.len().saturating_sub(1)))
        .map(|v| v.0)
}

/// The slider panel.
pub fn sliders_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    ui.heading("Latent sliders");
    let Some(src) = p.session.source.clone() else {
        ui.label("Waiting for the source model...");
        return;
    };
    ui.label(
        egui::RichText::new(format!(
            "{} (d={}), most informative first",
            src.name, src.latent_dim
        ))
        .weak(),
    );
    let vars = slider_vars(p);
    let range = p.settings.slider_range;
    egui::ScrollArea::vertical()
        .max_height(ui.available_height() - 150.0)
        .show(ui, |ui| {
            for (slot, &(var, gain)) in vars.iter().enumerate() {
                let mut value = p.session.z.get(var).copied().unwrap_or(0.0);
                let playing = p.session.playing.is_some_and(|(v, _)| v == var);
                let label = format!("{}z[{var}] gain {gain:.4}", if playing { "> " } else { "" });
                let slider = egui::Slider::new(&mut value, -range..=range)
                    .text(label)
                    .clamping(egui::SliderClamping::Never);
                let r = ui.add(slider);
                if r.changed() {
                    p.push(AppCommand::SetLatent { var, value });
                }
                if r.secondary_clicked() {
                    p.state.play_slot = slot;
                }
            }
        });
    ui.separator();
    ui.horizontal(|ui| {
        if ui
            .button("Reset")
            .on_hover_text("back to the sample's code")
            .clicked()
        {
            p.push(AppCommand::ResetSliders);
        }
        let playing = p.session.playing.is_some();
        if ui
            .button(if playing { "Stop" } else { "Play" })
            .on_hover_text("animate a traversal along the chosen variable")
            .clicked()
        {
            p.push(AppCommand::Play(if playing { None } else { play_var(p) }));
        }
    });
    let names: Vec<String> = vars.iter().map(|(v, _)| format!("z[{v}]")).collect();
    if !names.is_empty() {
        let slot = p.state.play_slot.min(names.len() - 1);
        egui::ComboBox::from_label("Play variable")
            .selected_text(&names[slot])
            .show_ui(ui, |ui| {
                for (k, n) in names.iter().enumerate() {
                    ui.selectable_value(&mut p.state.play_slot, k, n);
                }
            });
    }
    let mut range = p.settings.slider_range;
    if ui
        .add(egui::Slider::new(&mut range, 0.5..=5.0).text("range ±"))
        .changed()
    {
        p.push(AppCommand::SetSliderRange(range));
    }
    let mut n = p.settings.num_sliders;
    if ui
        .add(egui::Slider::new(&mut n, 1..=src.latent_dim.clamp(1, 64)).text("sliders"))
        .changed()
    {
        p.push(AppCommand::SetNumSliders(n));
    }
}
