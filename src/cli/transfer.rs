//! `latent-atlas transfer-montage`: direction transfer as a figure. For a few held-out samples
//! and top local directions of the source decoder, row 1 walks the source code along the local
//! direction (a straight line in the local basis at the sample), row 2 shows the target model
//! decoding the same codes carried by the fitted map — the explorer's direction-transfer view,
//! headless.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use nalgebra::DMatrix;

use super::analysis::load_loaded;
use super::bar::load_data;
use super::geometry::support_map;
use crate::data::OnBadImage;
use crate::grid::{save_png, tile, to_rgb_images};
use crate::latent::local_basis::{
    decode_path, decode_rows, local_basis, traverse_straight, DEFAULT_JACOBIAN_EPS,
};
use crate::latent::pipeline::{eval_indices, FitOn};
use crate::model::LatentModel;

/// Direction transfer: traversals along a source model's local directions, and the same codes
/// carried by the support-set map into the target model, as one PNG.
#[derive(Debug, Args)]
pub struct TransferMontageArgs {
    /// Source model (name or directory).
    #[arg(long)]
    pub source: String,
    /// Target model (name or directory).
    #[arg(long)]
    pub target: String,
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Number of held-out samples (taken in the held-out order used by the metrics).
    #[arg(long, default_value_t = 2)]
    pub samples: usize,
    /// Local directions to walk (0 = largest singular value), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub dirs: Vec<usize>,
    /// Frames per traversal (odd: the sample sits in the middle).
    #[arg(long, default_value_t = 9)]
    pub frames: usize,
    /// The traversal covers α ∈ [−range, +range] along the unit direction.
    #[arg(long, default_value_t = 3.0)]
    pub range: f32,
    /// What the map is fitted on.
    #[arg(long, value_enum, default_value_t = FitOn::SupportSet)]
    pub fit_on: FitOn,
    /// Seed of the support set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `transfer-montage`.
pub fn run_transfer_montage(a: TransferMontageArgs) -> Result<()> {
    if a.frames < 2 {
        bail!("--frames must be at least 2, got {}", a.frames);
    }
    if !(a.range.is_finite() && a.range > 0.0) {
        bail!("--range must be positive, got {}", a.range);
    }
    if a.dirs.is_empty() || a.samples == 0 {
        bail!("need at least one sample and one direction");
    }
    let ds = load_data(&a.data, OnBadImage::Skip)?;
    let src = load_loaded(&a.source, &ds)?;
    let tgt = load_loaded(&a.target, &ds)?;
    let d = src.model.latent_dim();
    let k = a.dirs.iter().copied().max().unwrap_or(0) + 1;
    if k > d {
        bail!(
            "direction {} does not exist: {} has latent dimension {d}",
            k - 1,
            src.name()
        );
    }
    let (map, fit_points) = support_map(&src, &tgt, &ds, a.fit_on, a.seed)?;
    let step = 2.0 * a.range / (a.frames - 1) as f32;
    let mut rows = Vec::new();
    for &idx in eval_indices(&ds, a.samples).iter() {
        let id = &ds.sample_ids[idx];
        let z: Vec<f32> = src.encodings.codes.row(idx).iter().copied().collect();
        let basis = local_basis(&src.model, &z, k, DEFAULT_JACOBIAN_EPS)
            .with_context(|| format!("local basis of {} at {id}", src.name()))?;
        for &i in &a.dirs {
            let v: Vec<f32> = basis.directions.column(i).iter().copied().collect();
            let start: Vec<f32> = z.iter().zip(&v).map(|(z, v)| z - a.range * v).collect();
            let path = traverse_straight(&start, &v, a.frames - 1, step)?;
            let source_images = decode_path(&src.model, &path)?;
            let codes = DMatrix::from_fn(path.len(), d, |r, c| path[r][c]);
            let target_images = decode_rows(&tgt.model, &map.apply(&codes)?)?;
            rows.extend(to_rgb_images(&source_images)?);
            rows.extend(to_rgb_images(&target_images)?);
            println!(
                "{id}: direction {i} (σ = {:.3}), α from {:.2} to {:.2}",
                basis.singular_values[i], -a.range, a.range
            );
        }
    }
    save_png(&tile(&rows, a.frames, 2), &a.out)?;
    println!(
        "rows alternate: {} along its local direction, then {} decoding the same codes through \
         the map fitted on {fit_points} points; wrote {}",
        src.name(),
        tgt.name(),
        a.out.display()
    );
    Ok(())
}
