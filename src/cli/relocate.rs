//! `latent-atlas fit` (a map between two models, or between two raw code files) and `montage`
//! (the paper's Fig. 2: originals, source reconstructions, target decodings after relocation).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use nalgebra::DMatrix;

use super::analysis::load_loaded;
use super::bar::{load_data, Bar};
use crate::data::{Dataset, OnBadImage};
use crate::latent::estimators::{target_from_source, Estimator, LinearMap};
use crate::latent::pipeline::{
    cached_gains, eval_indices, evaluate_pair, fit_indices, fit_pair, source_support_set, FitOn,
    Loaded, PairOptions,
};
use crate::latent::support::SupportSet;
use crate::progress::Cancel;

/// The pair, data and fit options shared by `fit` and `montage`.
#[derive(Debug, Args)]
pub struct PairArgs {
    /// Source model (name or directory).
    #[arg(long)]
    source: Option<String>,
    /// Target model (name or directory).
    #[arg(long)]
    target: Option<String>,
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    data: String,
    /// Estimator: lstsq (the paper's, no bias), affine, ridge:λ, procrustes, sgd.
    #[arg(long, default_value = "lstsq")]
    estimator: String,
    /// Points to fit on.
    #[arg(long, value_enum, default_value = "support-set")]
    fit_on: FitOn,
    /// Fit on this saved support set (JSON) instead.
    #[arg(long)]
    support: Option<PathBuf>,
    /// Support-set / anchor size.
    #[arg(long, default_value_t = 150)]
    support_size: usize,
    /// Seed of support sets and anchors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

struct Pair {
    ds: Dataset,
    src: Loaded,
    tgt: Loaded,
    map: LinearMap,
    fit_points: usize,
    opts: PairOptions,
}

fn fit_models(p: &PairArgs) -> Result<Pair> {
    let (Some(s), Some(t)) = (&p.source, &p.target) else {
        bail!("give --source and --target models (or --source-codes and --target-codes)")
    };
    let ds = load_data(&p.data, OnBadImage::Skip)?;
    let src = load_loaded(s, &ds)?;
    let tgt = load_loaded(t, &ds)?;
    let opts = PairOptions {
        estimator: p.estimator.parse::<Estimator>()?,
        support_size: p.support_size,
        seed: p.seed,
        ..Default::default()
    };
    let idx = match &p.support {
        Some(path) => SupportSet::load(path, &ds)?.indices,
        None => {
            let gains = cached_gains(
                &src,
                &ds,
                opts.gain_images,
                &crate::data::cache_dir()?,
                &Bar::new(),
                &Cancel::new(),
            )?;
            let support = source_support_set(&src, &gains, &ds, &opts)?;
            fit_indices(p.fit_on, &support, &ds, &opts)?
        }
    };
    let map = fit_pair(&src, &tgt, &idx, &opts.estimator, &Device::Cpu)?;
    Ok(Pair {
        ds,
        src,
        tgt,
        map,
        fit_points: idx.len(),
        opts,
    })
}

/// Fit a map `z_in_target = z_in_source · W (+ b)`.
#[derive(Debug, Args)]
pub struct FitArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Raw source codes (float32 .npy, N x d1) instead of models.
    #[arg(long)]
    source_codes: Option<PathBuf>,
    /// Raw target codes (float32 .npy, N x d2).
    #[arg(long)]
    target_codes: Option<PathBuf>,
    /// Output directory: W.npy (d1 x d2), b.npy (affine), map.safetensors, metrics.json.
    #[arg(long)]
    out: PathBuf,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
}

fn read_matrix(path: &std::path::Path) -> Result<DMatrix<f32>> {
    let t = super::codes::read_codes_any(path)?;
    let (n, d) = t.dims2()?;
    Ok(DMatrix::from_row_slice(
        n,
        d,
        &t.flatten_all()?.to_vec1::<f32>()?,
    ))
}

/// Runs `fit`.
pub fn run_fit(a: FitArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    if let (Some(sc), Some(tc)) = (&a.source_codes, &a.target_codes) {
        let (zs, zt) = (read_matrix(sc)?, read_matrix(tc)?);
        if zs.nrows() != zt.nrows() {
            bail!(
                "{} has {} rows but {} has {}",
                sc.display(),
                zs.nrows(),
                tc.display(),
                zt.nrows()
            );
        }
        let est: Estimator = a.pair.estimator.parse()?;
        let map = target_from_source(&zs, &zt, &est, &Device::Cpu)?;
        let mapped = map.apply(&zs)?;
        let l = crate::latent::metrics::l_mse(&mapped, &zt)?;
        map.save_npy(&a.out)?;
        map.save_safetensors(&a.out.join("map.safetensors"))?;
        println!(
            "{est} map {} x {} fitted on {} pairs of codes; training L-MSE {l:.5}; written to {}",
            zs.ncols(),
            zt.ncols(),
            zs.nrows(),
            a.out.display()
        );
        return Ok(());
    }
    let p = fit_models(&a.pair)?;
    let eval = eval_indices(&p.ds, p.opts.max_eval);
    let m = evaluate_pair(
        &p.src,
        &p.tgt,
        &p.map,
        &p.ds,
        &eval,
        &Bar::new(),
        &Cancel::new(),
    )?;
    p.map.save_npy(&a.out)?;
    p.map.save_safetensors(&a.out.join("map.safetensors"))?;
    let json = serde_json::to_string_pretty(
        &serde_json::json!({"fit_points": p.fit_points, "fit_info": p.map.info, "metrics": m}),
    )?;
    crate::model::store::write_atomic(&a.out.join("metrics.json"), json.as_bytes())?;
    if a.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "{} → {}: {} map fitted on {} points ({}) in {:.2} ms",
        p.src.name(),
        p.tgt.name(),
        p.opts.estimator,
        p.fit_points,
        a.pair.fit_on,
        1000.0 * p.map.info.fit_secs
    );
    println!(
        "held-out ({} samples): L-MSE {:.4}  R-MSE {:.4} ± {:.4}  M-MSE {:.4} ± {:.4}  CKA {:.3}",
        eval.len(),
        m.l_mse,
        m.r_mse_mean,
        m.r_mse_std,
        m.m_mse_mean,
        m.m_mse_std,
        m.cka_mapped_target
    );
    println!(
        "map written to {} (W.npy, map.safetensors, metrics.json)",
        a.out.display()
    );
    Ok(())
}

/// The paper's Fig. 2 as a PNG: originals, source reconstructions, target decodings after relocation.
#[derive(Debug, Args)]
pub struct MontageArgs {
    #[command(flatten)]
    pair: PairArgs,
    /// Sample ids to show (default: the first --n held-out samples).
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    /// Show these support-set members (JSON) instead.
    #[arg(long)]
    show_support: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, default_value_t = 10)]
    n: usize,
    /// Samples per block of three rows (default: all, at most 15).
    #[arg(long)]
    per_row: Option<usize>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `montage`.
pub fn run_montage(a: MontageArgs) -> Result<()> {
    let p = fit_models(&a.pair)?;
    let idx: Vec<usize> = if !a.ids.is_empty() {
        a.ids
            .iter()
            .map(|id| {
                p.ds.index_of(id)
                    .with_context(|| format!("no sample `{id}` in {}", p.ds.id))
            })
            .collect::<Result<_>>()?
    } else if let Some(path) = &a.show_support {
        SupportSet::load(path, &p.ds)?
            .indices
            .into_iter()
            .take(a.n)
            .collect()
    } else {
        eval_indices(&p.ds, a.n)
    };
    let zs = p.src.encodings.rows(&idx);
    let per_row = a.per_row.unwrap_or(idx.len().min(15));
    let m = crate::grid::relocation_montage(
        &p.ds,
        &idx,
        &p.src.model,
        &zs,
        &p.tgt.model,
        &p.map,
        per_row,
    )?;
    crate::grid::save_png(&m.image, &a.out)?;
    println!(
        "{} → {} ({} fit): rows = originals, {} reconstructions (MSE {:.4}), {} decodings after relocation (MSE {:.4}); written to {}",
        p.src.name(),
        p.tgt.name(),
        a.pair.fit_on,
        p.src.name(),
        m.recon_mse,
        p.tgt.name(),
        m.mapped_mse,
        a.out.display()
    );
    Ok(())
}
