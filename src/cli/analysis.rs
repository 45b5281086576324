//! `latent-atlas gain`, `sectors`, `support-set`, `ood`: the per-model analyses of §5 and §7.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::bar::{load_data, Bar};
use crate::data::{Dataset, OnBadImage};
use crate::latent::pipeline::{cached_gains, train_indices, Loaded, PairOptions};
use crate::latent::sectors::{occupancy_curve, SectorRule};
use crate::latent::support::{
    farthest_point_support_set, random_support_set, sector_support_set, SectorSupportOptions,
    SupportSet,
};
use crate::model::LatentModel;
use crate::progress::Cancel;
use crate::zoo::load_model;

/// Options shared by the analysis commands: model, dataset, cache.
#[derive(Debug, Args, Clone)]
pub struct ModelData {
    /// Model name (zoo) or directory.
    #[arg(long)]
    pub model: String,
    /// Dataset spec: synthfaces[:n=N:seed=S], orl, folder:PATH, celeba:ROOT[:first=N].
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
}

/// Loads the dataset, the model and its cached codes.
pub fn load_model_with_codes(spec: &ModelData) -> Result<(Dataset, Loaded)> {
    let ds = load_data(&spec.data, OnBadImage::Skip)?;
    let loaded = load_loaded(&spec.model, &ds)?;
    Ok((ds, loaded))
}

/// Loads a model and its codes of `ds` (cached).
pub fn load_loaded(model: &str, ds: &Dataset) -> Result<Loaded> {
    let m = load_model(model, &candle_core::Device::Cpu)?;
    let cache = crate::data::cache_dir()?;
    Ok(Loaded::new(m, ds, &cache, &Bar::new(), &Cancel::new())?)
}

/// Reconstruction gain per latent variable (§5.1).
#[derive(Debug, Args)]
pub struct GainArgs {
    #[command(flatten)]
    md: ModelData,
    /// Number of training images averaged over.
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// Rows to print (all with --json).
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also write all variables as CSV (rank, variable, gain, cumulative share).
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// Runs `gain`.
pub fn run_gain(a: GainArgs) -> Result<()> {
    let (ds, loaded) = load_model_with_codes(&a.md)?;
    let g = cached_gains(
        &loaded,
        &ds,
        a.images,
        &crate::data::cache_dir()?,
        &Bar::new(),
        &Cancel::new(),
    )?;
    if let Some(path) = &a.csv {
        let mut s = String::from("rank,variable,gain,cumulative_share\n");
        for (r, &v) in g.order.iter().enumerate() {
            s += &format!(
                "{},{},{},{}\n",
                r + 1,
                v,
                g.gains[v],
                g.cumulative_share(r + 1)
            );
        }
        crate::model::store::write_atomic(path, s.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&g)?);
        return Ok(());
    }
    println!(
        "reconstruction gain of {} on {} ({} images, baseline MSE {:.5})",
        g.model, ds.id, g.num_images, g.baseline_mse
    );
    println!(
        "{:>4} {:>8} {:>10} {:>8}",
        "rank", "variable", "gain", "cum %"
    );
    for (r, &v) in g.order.iter().enumerate().take(a.top) {
        println!(
            "{:>4} {:>8} {:>10.5} {:>7.1}%",
            r + 1,
            v,
            g.gains[v],
            100.0 * g.cumulative_share(r + 1)
        );
    }
    for k in [7, 20] {
        println!(
            "the first {k} variables carry {:.1}% of the gain",
            100.0 * g.cumulative_share(k)
        );
    }
    Ok(())
}

/// Sector occupancy as the threshold grows (§5.3).
#[derive(Debug, Args)]
pub struct SectorsArgs {
    #[command(flatten)]
    md: ModelData,
    /// Number of most informative variables (2^n sectors).
    #[arg(long, default_value_t = 7)]
    n: usize,
    /// Thresholds.
    #[arg(long, value_delimiter = ',', default_value = "0,0.5,1,1.5,2,2.5,3")]
    th: Vec<f32>,
    /// `norm`: ‖z_S‖ > th (default); `every`: every selected |z_i| > th (the paper's Fig. 7).
    #[arg(long, default_value = "norm")]
    rule: String,
    /// Write the full sector x threshold count matrix as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Parses a sector rule name.
pub fn parse_rule(s: &str) -> Result<SectorRule> {
    match s {
        "norm" => Ok(SectorRule::Norm),
        "every" | "every-coordinate" => Ok(SectorRule::EveryCoordinate),
        _ => anyhow::bail!("unknown sector rule `{s}` (norm or every)"),
    }
}

/// Runs `sectors`.
pub fn run_sectors(a: SectorsArgs) -> Result<()> {
    let (ds, loaded) = load_model_with_codes(&a.md)?;
    let g = cached_gains(
        &loaded,
        &ds,
        256,
        &crate::data::cache_dir()?,
        &Bar::new(),
        &Cancel::new(),
    )?;
    let vars: Vec<usize> = g.order.iter().copied().take(a.n).collect();
    let idx = train_indices(&ds);
    let z = loaded.encodings.rows(&idx);
    let rule = parse_rule(&a.rule)?;
    let curve = occupancy_curve(&z, &vars, rule, &a.th)?;
    if let Some(path) = &a.csv {
        let mut s = format!(
            "sector,{}\n",
            a.th.iter()
                .map(|t| format!("th={t}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for sector in 0..(1usize << vars.len()) {
            s += &format!(
                "{sector},{}\n",
                curve
                    .iter()
                    .map(|c| c[sector].to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        crate::model::store::write_atomic(path, s.as_bytes())?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"model": loaded.name(), "variables": vars, "thresholds": a.th, "counts": curve})
            )?
        );
        return Ok(());
    }
    println!(
        "{} sectors of {} on variables {:?} ({} training points, rule {:?})",
        1usize << vars.len(),
        loaded.name(),
        vars,
        idx.len(),
        rule
    );
    println!(
        "{:>6} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "th", "inhabited", "min", "median", "max", "points"
    );
    for (t, counts) in a.th.iter().zip(&curve) {
        let mut c = counts.clone();
        c.sort_unstable();
        let inhabited = c.iter().filter(|&&x| x > 0).count();
        println!(
            "{:>6.2} {:>10} {:>8} {:>8} {:>8} {:>10}",
            t,
            inhabited,
            c[0],
            c[c.len() / 2],
            c[c.len() - 1],
            c.iter().sum::<usize>()
        );
    }
    Ok(())
}

/// Build a support set (§5.3) or a baseline anchor set and save it as JSON.
#[derive(Debug, Args)]
pub struct SupportArgs {
    #[command(flatten)]
    md: ModelData,
    /// sectors (the paper's), random or farthest.
    #[arg(long, default_value = "sectors")]
    method: String,
    /// Number of samples.
    #[arg(long, default_value_t = 150)]
    size: usize,
    /// Number of most informative variables.
    #[arg(long, default_value_t = 7)]
    n: usize,
    /// Sector rule: norm or every.
    #[arg(long, default_value = "norm")]
    rule: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output JSON.
    #[arg(long)]
    out: PathBuf,
    /// Also write a grid of the members.
    #[arg(long)]
    grid: Option<PathBuf>,
}

/// Builds a support set of `method` for the model.
pub fn build_support(
    method: &str,
    ds: &Dataset,
    loaded: &Loaded,
    size: usize,
    n: usize,
    rule: SectorRule,
    seed: u64,
) -> Result<SupportSet> {
    let idx = train_indices(ds);
    let z = loaded.encodings.rows(&idx);
    Ok(match method {
        "sectors" => {
            let g = cached_gains(
                loaded,
                ds,
                PairOptions::default().gain_images,
                &crate::data::cache_dir()?,
                &Bar::new(),
                &Cancel::new(),
            )?;
            let vars = crate::latent::gain::select_features(&g.order, n, size)?;
            sector_support_set(
                ds,
                &idx,
                &z,
                &vars,
                &SectorSupportOptions {
                    size,
                    rule,
                    seed,
                    ..Default::default()
                },
                loaded.name(),
            )?
        }
        "random" => random_support_set(ds, &idx, size, seed)?,
        "farthest" => farthest_point_support_set(ds, &idx, &z, size, seed, loaded.name())?,
        m => anyhow::bail!("unknown support-set method `{m}` (sectors, random, farthest)"),
    })
}

/// Runs `support-set`.
pub fn run_support(a: SupportArgs) -> Result<()> {
    let (ds, loaded) = load_model_with_codes(&a.md)?;
    let set = build_support(
        &a.method,
        &ds,
        &loaded,
        a.size,
        a.n,
        parse_rule(&a.rule)?,
        a.seed,
    )?;
    set.save(&a.out)?;
    let spread = crate::latent::support::spread_check(&ds, &set.indices, a.seed)?;
    println!(
        "{} support set of {} samples ({} from sector extremes) written to {}",
        a.method,
        set.indices.len(),
        set.method.num_sector_picks,
        a.out.display()
    );
    println!(
        "spread check: mean MSE between support-set images {:.4} vs random pairs {:.4} (paper on CelebA: 0.183 vs 0.116)",
        spread.support_mean_pair_mse, spread.random_mean_pair_mse
    );
    if let Some(g) = &a.grid {
        crate::grid::save_grid(&ds.batch(&set.indices, &candle_core::Device::Cpu)?, 15, g)?;
        println!("members written to {}", g.display());
    }
    Ok(())
}

/// Does a generator's range contain real faces? R-MSE on the training distribution vs others (§7).
#[derive(Debug, Args)]
pub struct OodArgs {
    /// Models (names or directories), comma separated; default: the whole zoo.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// The training distribution.
    #[arg(long, default_value = "synthfaces")]
    data: String,
    /// Other datasets to compare with.
    #[arg(long, value_delimiter = ',', default_value = "orl")]
    other: Vec<String>,
    /// Held-out images per dataset.
    #[arg(long, default_value_t = 400)]
    max_images: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ood`.
pub fn run_ood(a: OodArgs) -> Result<()> {
    let models = if a.models.is_empty() {
        super::table::zoo_models()?
    } else {
        a.models.clone()
    };
    let train = load_data(&a.data, OnBadImage::Skip)?;
    let others: Vec<Dataset> = a
        .other
        .iter()
        .map(|s| load_data(s, OnBadImage::Skip))
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for name in &models {
        let model = load_model(name, &candle_core::Device::Cpu)?;
        if model.encode(&train.batch(&[0], model.device())?).is_err() {
            log::warn!("{name} has no encoder yet; skipped");
            continue;
        }
        let loaded = load_loaded(name, &train)?;
        let support = build_support("sectors", &train, &loaded, 150, 7, SectorRule::Norm, 0)?;
        let mut row = serde_json::json!({"model": name});
        let q = crate::model::quality::evaluate(&model, &train, a.max_images)?;
        row["train_held_out"] = serde_json::json!(q.r_mse);
        let per = crate::model::quality::per_image_rmse(&model, &train, &support.indices, 64)?;
        row["train_support_set"] =
            serde_json::json!(per.iter().sum::<f64>() / per.len().max(1) as f64);
        for o in &others {
            let mut idx: Vec<usize> = (0..o.len()).collect();
            idx.truncate(a.max_images);
            let per = crate::model::quality::per_image_rmse(&model, o, &idx, 64)
                .with_context(|| format!("{name} on {}", o.id))?;
            row[&o.id] = serde_json::json!(per.iter().sum::<f64>() / per.len().max(1) as f64);
        }
        rows.push(row);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut header = vec![
        "model".to_string(),
        format!("{} held-out", train.id),
        "support set".into(),
    ];
    header.extend(others.iter().map(|o| o.id.clone()));
    println!("R-MSE (original vs decode(encode(x))) per dataset");
    println!(
        "| {} |\n|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        let mut cells = vec![r["model"].as_str().unwrap_or("?").to_string()];
        cells.push(format!(
            "{:.4}",
            r["train_held_out"].as_f64().unwrap_or(f64::NAN)
        ));
        cells.push(format!(
            "{:.4}",
            r["train_support_set"].as_f64().unwrap_or(f64::NAN)
        ));
        for o in &others {
            cells.push(format!("{:.4}", r[&o.id].as_f64().unwrap_or(f64::NAN)));
        }
        println!("| {} |", cells.join(" | "));
    }
    Ok(())
}
