//! `latent-atlas table`: the paper's Table 2 for every ordered pair of the zoo, with support-set,
//! random-anchor and full-data fits side by side.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::analysis::load_loaded;
use super::bar::{load_data, Bar};
use crate::data::OnBadImage;
use crate::latent::estimators::Estimator;
use crate::latent::pipeline::{
    cached_gains, eval_indices, evaluate_pair, fit_indices, fit_pair, source_support_set, FitOn,
    Loaded, PairOptions,
};
use crate::model::{Family, ModelConfig};
use crate::progress::{Cancel, NoProgress};

/// All ordered pairs of the zoo: L-MSE, R-MSE, M-MSE for each way of fitting the map.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    data: String,
    /// Models (names or directories), comma separated; default: every zoo model with an encoder.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Map estimator: lstsq (the paper's), affine, ridge:λ, ridge:auto (λ by leave-one-out
    /// error), procrustes, sgd. Pairs with a normalizing flow use ridge:auto instead of
    /// lstsq/affine.
    #[arg(long, default_value = "lstsq")]
    estimator: String,
    /// Which fits to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "support-set,random-anchors,full"
    )]
    fits: Vec<FitOn>,
    /// Held-out samples used for the metrics.
    #[arg(long, default_value_t = 1000)]
    max_eval: usize,
    /// Support-set size.
    #[arg(long, default_value_t = 150)]
    support_size: usize,
    /// Seed of support sets and random anchors.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Source model.
    pub source: String,
    /// Target model.
    pub target: String,
    /// Comparison type of the paper (1: two trainings of one model; 2: one family; 3: different objectives).
    pub pair_type: u8,
    /// How the map was fitted.
    pub fit_on: FitOn,
    /// Points the map was fitted on.
    pub fit_points: usize,
    /// Estimator actually used (`ridge:auto` replaces lstsq/affine for pairs with a flow).
    pub estimator: String,
    /// L-MSE.
    pub l_mse: f64,
    /// R-MSE (mean).
    pub r_mse: f64,
    /// M-MSE (mean).
    pub m_mse: f64,
    /// M-MSE standard deviation.
    pub m_mse_std: f64,
    /// Linear CKA between mapped and target codes.
    pub cka: f64,
    /// Fit time in milliseconds.
    pub fit_ms: f64,
}

/// Zoo models that can encode (VAEs; GANs with a trained recoder).
pub fn zoo_models() -> Result<Vec<String>> {
    let zoo = crate::zoo::zoo_dir();
    let mut names = Vec::new();
    for e in std::fs::read_dir(&zoo)?.flatten() {
        if let Ok(c) = crate::model::store::read_config(&e.path()) {
            if !matches!(
                c.family,
                Family::Gan | Family::Refdcgan | Family::Style | Family::StyleZ
            ) || c.recoder_trained
            {
                names.push(c.name);
            }
        }
    }
    names.sort();
    Ok(names)
}

fn objective(f: Family) -> &'static str {
    match f {
        Family::Vae | Family::Svae => "vae",
        Family::Flow => "flow",
        Family::Gan | Family::Refdcgan | Family::Style | Family::StyleZ => "gan",
    }
}

/// The paper's comparison type of a pair.
pub fn pair_type(a: &ModelConfig, b: &ModelConfig) -> u8 {
    if a.family == b.family && a.latent_dim == b.latent_dim && a.base_channels == b.base_channels {
        1
    } else if objective(a.family) == objective(b.family) {
        2
    } else {
        3
    }
}

/// Runs `table`.
pub fn run(a: TableArgs) -> Result<()> {
    let ds = load_data(&a.data, OnBadImage::Skip)?;
    let names = if a.models.is_empty() {
        zoo_models()?
    } else {
        a.models.clone()
    };
    anyhow::ensure!(
        names.len() >= 2,
        "the table needs at least two models with encoders, found {names:?}"
    );
    let cache = crate::data::cache_dir()?;
    let opts = PairOptions {
        estimator: a.estimator.parse::<Estimator>()?,
        support_size: a.support_size,
        seed: a.seed,
        max_eval: a.max_eval,
        ..Default::default()
    };
    let loaded: Vec<Loaded> = names
        .iter()
        .map(|n| load_loaded(n, &ds))
        .collect::<Result<_>>()?;
    let mut supports = Vec::new();
    for l in &loaded {
        let gains = cached_gains(
            l,
            &ds,
            opts.gain_images,
            &cache,
            &Bar::new(),
            &Cancel::new(),
        )?;
        supports.push(source_support_set(l, &gains, &ds, &opts)?);
    }
    let eval = eval_indices(&ds, opts.max_eval);
    let random_pair = crate::model::quality::random_pair_mse(&ds, &eval, 2000, 7);
    let bar = Bar::new();
    let total = (loaded.len() * (loaded.len() - 1) * a.fits.len()) as u64;
    crate::progress::Progress::start(&bar, "pairs", total);
    let mut rows = Vec::new();
    for (i, src) in loaded.iter().enumerate() {
        for (j, tgt) in loaded.iter().enumerate() {
            if i == j {
                continue;
            }
            for &fit_on in &a.fits {
                let idx = fit_indices(fit_on, &supports[i], &ds, &opts)?;
                let t0 = Instant::now();
                let map = fit_pair(src, tgt, &idx, &opts.estimator, &candle_core::Device::Cpu)?;
                let fit_ms = 1000.0 * t0.elapsed().as_secs_f64();
                let m = evaluate_pair(src, tgt, &map, &ds, &eval, &NoProgress, &Cancel::new())?;
                rows.push(Row {
                    source: src.name().into(),
                    target: tgt.name().into(),
                    pair_type: pair_type(&src.model.config, &tgt.model.config),
                    fit_on,
                    fit_points: map.info.num_points,
                    estimator: map.estimator.to_string(),
                    l_mse: m.l_mse,
                    r_mse: m.r_mse_mean,
                    m_mse: m.m_mse_mean,
                    m_mse_std: m.m_mse_std,
                    cka: m.cka_mapped_target,
                    fit_ms,
                });
                crate::progress::Progress::update(
                    &bar,
                    rows.len() as u64,
                    &format!("{} -> {}", src.name(), tgt.name()),
                );
            }
        }
    }
    crate::progress::Progress::finish(&bar, "done");
    print_table(&rows, &a.fits, &ds.id, eval.len(), random_pair, &opts);
    if let Some(p) = &a.json {
        let all = serde_json::json!({"dataset": ds.id, "estimator": opts.estimator.to_string(), "eval_samples": eval.len(), "random_pair_mse": random_pair, "rows": rows});
        crate::model::store::write_atomic(p, serde_json::to_string_pretty(&all)?.as_bytes())?;
    }
    if let Some(p) = &a.csv {
        let mut s = String::from(
            "source,target,type,fit_on,fit_points,estimator,l_mse,r_mse,m_mse,m_mse_std,cka,fit_ms\n",
        );
        for r in &rows {
            s += &format!(
                "{},{},{},{:?},{},{},{},{},{},{},{},{}\n",
                r.source,
                r.target,
                r.pair_type,
                r.fit_on,
                r.fit_points,
                r.estimator,
                r.l_mse,
                r.r_mse,
                r.m_mse,
                r.m_mse_std,
                r.cka,
                r.fit_ms
            );
        }
        crate::model::store::write_atomic(p, s.as_bytes())?;
    }
    Ok(())
}

fn print_table(
    rows: &[Row],
    fits: &[FitOn],
    dataset: &str,
    n_eval: usize,
    random_pair: f64,
    opts: &PairOptions,
) {
    println!("Relocation on {dataset}: {} maps, metrics on {n_eval} held-out samples (mean MSE between random images: {random_pair:.4})\n", opts.estimator);
    let requested = opts.estimator.to_string();
    if let Some(r) = rows.iter().find(|r| r.estimator != requested) {
        println!("Pairs with a normalizing flow use {} (λ by leave-one-out error: far more latent dimensions than support points).\n", r.estimator);
    }
    let mut header = vec!["source → target".to_string(), "type".into(), "R-MSE".into()];
    for f in fits {
        header.push(format!("L-MSE ({f})"));
        header.push(format!("M-MSE ({f})"));
        header.push(format!("fit ms ({f})"));
    }
    println!(
        "| {} |\n|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    let mut i = 0;
    while i < rows.len() {
        let group: Vec<&Row> = rows[i..]
            .iter()
            .take_while(|r| r.source == rows[i].source && r.target == rows[i].target)
            .collect();
        let mut cells = vec![
            format!("{} → {}", rows[i].source, rows[i].target),
            rows[i].pair_type.to_string(),
            format!("{:.4}", rows[i].r_mse),
        ];
        for f in fits {
            match group.iter().find(|r| r.fit_on == *f) {
                Some(r) => cells.extend([
                    format!("{:.4}", r.l_mse),
                    format!("{:.4}", r.m_mse),
                    format!("{:.1}", r.fit_ms),
                ]),
                None => cells.extend(["-".into(), "-".into(), "-".into()]),
            }
        }
        println!("| {} |", cells.join(" | "));
        i += group.len().max(1);
    }
}
