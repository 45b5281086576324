//! Exports of the current state, all written atomically through the engine's helpers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::command::ExportKind;
use super::session::Session;
use crate::data::IMAGE_SIZE;

/// The default file name of an export.
pub fn default_file_name(kind: ExportKind) -> &'static str {
    match kind {
        ExportKind::Triptych => "triptych.png",
        ExportKind::Montage => "relocation-montage.png",
        ExportKind::Map => "map.safetensors",
        ExportKind::Support => "support-set.json",
        ExportKind::Metrics => "metrics.csv",
    }
}

/// Writes `kind` to `path` now; returns a line describing what was written. The montage
/// decodes images, so the worker writes it (see `ExplorerApp::export_to`).
pub fn export(session: &Session, kind: ExportKind, path: &Path) -> Result<String> {
    match kind {
        ExportKind::Triptych => export_triptych(session, path),
        ExportKind::Montage => {
            anyhow::bail!("the montage is written by the worker (ExplorerApp::export_to)")
        }
        ExportKind::Map => export_map(session, path),
        ExportKind::Support => {
            let support = session.support.as_ref().context("no support set yet")?;
            support
                .save(path)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(format!(
                "support set ({} samples) saved to {}",
                support.indices.len(),
                path.display()
            ))
        }
        ExportKind::Metrics => export_metrics(session, path),
    }
}

fn rgb_image(rgb: &[u8]) -> Result<image::RgbImage> {
    image::RgbImage::from_raw(IMAGE_SIZE as u32, IMAGE_SIZE as u32, rgb.to_vec())
        .context("image has the wrong size")
}

fn export_triptych(session: &Session, path: &Path) -> Result<String> {
    let t = &session.triptych;
    let mut images = Vec::new();
    for rgb in [&t.original_rgb, &t.source_rgb, &t.mapped_rgb]
        .into_iter()
        .flatten()
    {
        images.push(rgb_image(rgb)?);
    }
    if images.is_empty() {
        anyhow::bail!("nothing to export yet: no images in the triptych");
    }
    let big: Vec<image::RgbImage> = images
        .iter()
        .map(|i| image::imageops::resize(i, 256, 256, image::imageops::FilterType::Nearest))
        .collect();
    crate::grid::save_png(&crate::grid::tile(&big, big.len(), 8), path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!("triptych saved to {}", path.display()))
}

fn export_map(session: &Session, path: &Path) -> Result<String> {
    let map = session.map.as_ref().context("no map fitted yet")?;
    map.save_safetensors(path)
        .with_context(|| format!("writing {}", path.display()))?;
    let npy_dir: PathBuf = path.with_extension("npy.d");
    std::fs::create_dir_all(&npy_dir).with_context(|| format!("creating {}", npy_dir.display()))?;
    map.save_npy(&npy_dir)
        .with_context(|| format!("writing {}", npy_dir.display()))?;
    Ok(format!(
        "map saved to {} and {}",
        path.display(),
        npy_dir.display()
    ))
}

fn export_metrics(session: &Session, path: &Path) -> Result<String> {
    let (m, idx) = session.metrics.as_ref().context("no metrics yet")?;
    let mut csv = String::new();
    let _ = writeln!(
        csv,
        "# source={} target={} estimator={} l_mse={} r_mse={} m_mse={}",
        m.source_model, m.target_model, m.estimator, m.l_mse, m.r_mse_mean, m.m_mse_mean
    );
    csv.push_str("index,sample_id,r_mse,m_mse\n");
    for (k, &i) in idx.iter().enumerate() {
        let id = session.sample_id(i).unwrap_or("");
        let r = m.per_sample_r_mse.get(k).copied().unwrap_or(f64::NAN);
        let mm = m.per_sample_m_mse.get(k).copied().unwrap_or(f64::NAN);
        let _ = writeln!(csv, "{i},{id},{r},{mm}");
    }
    crate::latent::write_atomic(path, csv.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "metrics of {} samples saved to {}",
        idx.len(),
        path.display()
    ))
}
