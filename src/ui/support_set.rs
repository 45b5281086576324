//! Support set: member thumbnails with remove buttons, add the current sample, rebuild.

use super::widgets::thumbnail;
use super::PanelCtx;
use crate::app::AppCommand;

/// The support-set tab.
pub fn support_set_ui(ui: &mut egui::Ui, p: &mut PanelCtx) {
    let Some(support) = p.session.support.clone() else {
        ui.label("The support set appears once the source model is analysed.");
        return;
    };
    let Some(ds) = p.session.dataset.clone() else {
        return;
    };
    let edited = p.settings.support_members.is_some();
    ui.label(format!(
        "{} samples, {} ({} from sectors){}",
        support.indices.len(),
        support
            .method
            .model
            .as_deref()
            .map_or("random".to_string(), |m| format!("sectors of {m}")),
        support.method.num_sector_picks,
        if edited { ", edited" } else { "" }
    ));
    ui.horizontal(|ui| {
        let busy = p.session.job.is_some();
        if ui
            .add_enabled(!busy, egui::Button::new("Add current sample"))
            .clicked()
        {
            p.push(AppCommand::SupportAddCurrent);
        }
        ui.add(egui::DragValue::new(&mut p.state.rebuild_seed).prefix("seed "))
            .on_hover_text("seed of the rebuilt support set");
        if ui
            .add_enabled(!busy, egui::Button::new("Rebuild"))
            .on_hover_text("rebuild the sector support set with this seed")
            .clicked()
        {
            p.push(AppCommand::SupportRebuild(p.state.rebuild_seed));
        }
    });
    ui.add_space(4.0);
    let size = 52.0;
    let cols = ((ui.available_width() + 4.0) / (size + 4.0))
        .floor()
        .max(1.0) as usize;
    egui::Grid::new("support_grid")
        .spacing([4.0, 4.0])
        .show(ui, |ui| {
            for (k, &i) in support.indices.iter().enumerate() {
                let id = ds.sample_ids.get(i).map_or("?", String::as_str);
                ui.vertical(|ui| {
                    let tex = p.textures.thumb(ui.ctx(), &ds, i);
                    if thumbnail(
                        ui,
                        tex.as_ref(),
                        size,
                        &format!("support {id}"),
                        i == p.session.sample,
                    )
                    .on_hover_text(format!("sample {id}; click to load"))
                    .clicked()
                    {
                        p.push(AppCommand::LoadSample(i));
                    }
                    let remove =
                        ui.add_enabled(p.session.job.is_none(), egui::Button::new("x").small());
                    let id_owned = id.to_string();
                    remove.widget_info(move || {
                        egui::WidgetInfo::labeled(
                            egui::accesskit::Role::Button,
                            true,
                            format!("remove {id_owned}"),
                        )
                    });
                    if remove
                        .on_hover_text("remove from the support set (refits)")
                        .clicked()
                    {
                        p.push(AppCommand::SupportRemove(i));
                    }
                });
                if (k + 1) % cols == 0 {
                    ui.end_row();
                }
            }
        });
}
