//! `latent-atlas local-basis` (the Local Basis paper's warpage test and the transfer of local
//! bases through a fitted map) and `probe` (ground-truth probes of "All Roads Lead to Rome?",
//! before and after mapping).

use std::path::PathBuf;

use super::plot::{draw_plot, Series};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use nalgebra::DMatrix;
use serde::Serialize;

use super::analysis::load_loaded;
use super::bar::{load_data, Bar};
use crate::data::{Dataset, OnBadImage};
use crate::latent::estimators::{Estimator, LinearMap};
use crate::latent::grassmann::{
    distance_curve, random_subspace, transfer_bases, warp_experiment, GrassmannMetric, WarpReport,
};
use crate::latent::ground_truth::{mean_agreement, probe_splits, GroundTruth};
use crate::latent::local_basis::{mapping_warp_experiment, DEFAULT_JACOBIAN_EPS};
use crate::latent::pipeline::{
    cached_gains, eval_indices, fit_pair, source_support_set, train_indices, FitOn, Loaded,
    PairOptions,
};
use crate::latent::support::random_support_set;
use crate::model::LatentModel;
use crate::progress::{Cancel, Progress};

/// Whose Jacobian gives the local bases of the warpage table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum JacobianOf {
    /// The decoder's, at the dataset's codes (any model; for `style` the synthesis network in
    /// W, for `style-z` the whole generator in Z).
    Decoder,
    /// A style model's mapping network Z → W at z ~ N(0, I): the paper's Local Basis of W.
    Mapping,
}

/// Local Basis warpage of one model (distances between local bases vs k) and, with --pair,
/// how well a support-set lstsq map carries one model's local basis onto the other's.
#[derive(Debug, Args)]
pub struct LocalBasisArgs {
    /// Model name (zoo) or directory for the warpage table.
    #[arg(long)]
    pub model: Option<String>,
    /// Local bases of the warpage table from the decoder's or (style models) the mapping
    /// network's Jacobian.
    #[arg(long, value_enum, default_value = "decoder")]
    pub jacobian: JacobianOf,
    /// Dataset spec whose codes give the base points.
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Number of random base points (pairs).
    #[arg(long, default_value_t = 20)]
    pub points: usize,
    /// Subspace dimensions k.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub ks: Vec<usize>,
    /// SOURCE,TARGET: also the transfer distance of local bases through their lstsq map.
    #[arg(long)]
    pub pair: Option<String>,
    /// M1,M2,...: the transfer distance for every ordered pair of these models, as one
    /// matrix per k (geodesic or projection, with the random-subspace baseline).
    #[arg(long, value_delimiter = ',')]
    pub all_pairs: Vec<String>,
    /// Distance of the "nearby" points.
    #[arg(long, default_value_t = 0.1)]
    pub eps_near: f32,
    /// Grassmannian metric of the table and plot.
    #[arg(long, value_enum, default_value = "geodesic")]
    pub metric: GrassmannMetric,
    /// Seed of points, subspaces and support sets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Draw the distance-vs-k curves into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Mean transfer distances at one k.
#[derive(Clone, Debug, Serialize)]
pub struct TransferRow {
    /// Subspace dimension.
    pub k: usize,
    /// Pushed source basis vs the target's own, geodesic.
    pub geodesic: f64,
    /// Same, projection distance.
    pub projection: f64,
    /// Two random k-subspaces of the target space, geodesic (baseline).
    pub random_geodesic: f64,
    /// Two random k-subspaces of the target space, projection distance (baseline).
    pub random_projection: f64,
}

/// The transfer experiment of one ordered pair.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    /// Source model.
    pub source: String,
    /// Target model.
    pub target: String,
    /// Support-set points the map was fitted on.
    pub fit_points: usize,
    /// Held-out points averaged over.
    pub num_points: usize,
    /// One row per k.
    pub rows: Vec<TransferRow>,
}

fn usable_ks(ks: &[usize], d: usize) -> Result<Vec<usize>> {
    let kept: Vec<usize> = ks.iter().copied().filter(|&k| k >= 1 && k <= d).collect();
    if kept.len() < ks.len() {
        log::warn!("dropping subspace dimensions outside 1..={d} from {ks:?}");
    }
    if kept.is_empty() {
        bail!("no subspace dimension of {ks:?} lies in 1..={d}");
    }
    Ok(kept)
}

pub(super) fn support_map(
    src: &Loaded,
    tgt: &Loaded,
    ds: &Dataset,
    fit_on: FitOn,
    seed: u64,
) -> Result<(LinearMap, usize)> {
    let opts = PairOptions {
        seed,
        ..Default::default()
    };
    let idx = match fit_on {
        FitOn::Full => train_indices(ds),
        FitOn::RandomAnchors => {
            random_support_set(ds, &train_indices(ds), opts.support_size, seed)?.indices
        }
        FitOn::SupportSet => {
            let cache = crate::data::cache_dir()?;
            let gains = cached_gains(
                src,
                ds,
                opts.gain_images,
                &cache,
                &Bar::new(),
                &Cancel::new(),
            )?;
            source_support_set(src, &gains, ds, &opts)?.indices
        }
    };
    let map = fit_pair(src, tgt, &idx, &Estimator::Lstsq, &Device::Cpu)?;
    Ok((map, idx.len()))
}

fn pair_transfer(spec: &str, ds: &Dataset, a: &LocalBasisArgs) -> Result<TransferReport> {
    let (s, t) = spec.split_once(',').context("--pair wants SOURCE,TARGET")?;
    let (src, tgt) = (load_loaded(s.trim(), ds)?, load_loaded(t.trim(), ds)?);
    loaded_pair_transfer(&src, &tgt, ds, a)
}

fn loaded_pair_transfer(
    src: &Loaded,
    tgt: &Loaded,
    ds: &Dataset,
    a: &LocalBasisArgs,
) -> Result<TransferReport> {
    let (map, fit_points) = support_map(src, tgt, ds, FitOn::SupportSet, a.seed)?;
    let d_target = tgt.model.latent_dim();
    let ks = usable_ks(&a.ks, src.model.latent_dim().min(d_target))?;
    let k_max = ks.iter().copied().max().unwrap_or(1);
    let points = eval_indices(ds, a.points);
    if points.is_empty() {
        bail!("dataset {} has no samples", ds.id);
    }
    let (mut pushed, mut own, mut rand_a, mut rand_b) = (vec![], vec![], vec![], vec![]);
    for (i, &idx) in points.iter().enumerate() {
        let z_in_source: Vec<f32> = src.encodings.codes.row(idx).iter().copied().collect();
        let (p, o) = transfer_bases(
            &src.model,
            &tgt.model,
            &map,
            &z_in_source,
            k_max,
            DEFAULT_JACOBIAN_EPS,
        )
        .with_context(|| format!("local bases at sample {}", ds.sample_ids[idx]))?;
        pushed.push(p);
        own.push(o);
        let seed = a.seed.wrapping_mul(1_000_003).wrapping_add(2 * i as u64);
        rand_a.push(random_subspace(d_target, k_max, seed)?);
        rand_b.push(random_subspace(d_target, k_max, seed + 1)?);
    }
    let curve = |x: &[DMatrix<f32>], y: &[DMatrix<f32>], m| distance_curve(x, y, &ks, m);
    let (g, p) = (
        curve(&pushed, &own, GrassmannMetric::Geodesic)?,
        curve(&pushed, &own, GrassmannMetric::Projection)?,
    );
    let rg = curve(&rand_a, &rand_b, GrassmannMetric::Geodesic)?;
    let rp = curve(&rand_a, &rand_b, GrassmannMetric::Projection)?;
    let rows = (0..ks.len())
        .map(|i| TransferRow {
            k: ks[i],
            geodesic: g[i],
            projection: p[i],
            random_geodesic: rg[i],
            random_projection: rp[i],
        })
        .collect();
    Ok(TransferReport {
        source: src.name().to_string(),
        target: tgt.name().to_string(),
        fit_points,
        num_points: points.len(),
        rows,
    })
}

fn print_warp(r: &WarpReport, metric: GrassmannMetric) {
    println!(
        "local-basis warpage of {} (d = {}, {} points, {metric} distance, near = {}):",
        r.model, r.latent_dim, r.num_points, r.eps_near
    );
    println!(
        "{:>4} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "k", "random", "near", "rand-subsp", "vs-PCA", "max"
    );
    for row in r.rows(metric) {
        println!(
            "{:>4} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>8.3}",
            row.k,
            row.random_pairs,
            row.near_pairs,
            row.random_subspaces,
            row.vs_global_pca,
            row.max_distance
        );
    }
}

fn print_transfer(r: &TransferReport, metric: GrassmannMetric) {
    println!(
        "transfer of local bases {} → {} (lstsq map on {} support points, {} held-out points, {metric}):",
        r.source, r.target, r.fit_points, r.num_points
    );
    println!("{:>4} {:>10} {:>10}", "k", "transfer", "random");
    for row in &r.rows {
        let (d, b) = match metric {
            GrassmannMetric::Geodesic => (row.geodesic, row.random_geodesic),
            GrassmannMetric::Projection => (row.projection, row.random_projection),
        };
        println!("{:>4} {d:>10.4} {b:>10.4}", row.k);
    }
}

/// The transfer matrices of `--all-pairs`: one markdown table per k, cells "transfer / random
/// subspaces (ratio)".
fn all_pairs_transfer(
    models: &[String],
    ds: &Dataset,
    a: &LocalBasisArgs,
) -> Result<Vec<TransferReport>> {
    if models.len() < 2 {
        bail!("--all-pairs needs at least two models");
    }
    let loaded: Vec<Loaded> = models
        .iter()
        .map(|m| load_loaded(m.trim(), ds))
        .collect::<Result<_>>()?;
    let bar = Bar::new();
    let total = loaded.len() * (loaded.len() - 1);
    bar.start("local-basis transfer, every ordered pair", total as u64);
    let mut reports = Vec::with_capacity(total);
    for src in &loaded {
        for tgt in loaded.iter().filter(|t| t.name() != src.name()) {
            let r = loaded_pair_transfer(src, tgt, ds, a)
                .with_context(|| format!("transfer {} → {}", src.name(), tgt.name()))?;
            reports.push(r);
            bar.update(reports.len() as u64, "");
        }
    }
    bar.finish("");
    Ok(reports)
}

fn print_transfer_matrix(reports: &[TransferReport], names: &[&str], metric: GrassmannMetric) {
    let Some(first) = reports.first() else {
        return;
    };
    println!(
        "transfer of local bases, every ordered pair ({metric} distance; lstsq map on the source's support set; {} held-out points; cell = transfer / random subspaces of the target (ratio)):",
        first.num_points
    );
    for (ki, row) in first.rows.iter().enumerate() {
        println!();
        println!("k = {}", row.k);
        println!();
        println!("| source \\ target | {} |", names.join(" | "));
        println!("|---|{}", "---|".repeat(names.len()));
        for s in names {
            let cells: Vec<String> = names
                .iter()
                .map(|t| {
                    reports
                        .iter()
                        .find(|r| r.source == *s && r.target == *t)
                        .and_then(|r| r.rows.get(ki))
                        .map_or("–".to_string(), |r| {
                            let (d, b) = match metric {
                                GrassmannMetric::Geodesic => (r.geodesic, r.random_geodesic),
                                GrassmannMetric::Projection => (r.projection, r.random_projection),
                            };
                            format!("{d:.2} / {b:.2} ({:.2})", d / b.max(1e-12))
                        })
                })
                .collect();
            println!("| {s} | {} |", cells.join(" | "));
        }
    }
}

/// Runs `local-basis`.
pub fn run_local_basis(a: LocalBasisArgs) -> Result<()> {
    if a.model.is_none() && a.pair.is_none() && a.all_pairs.is_empty() {
        bail!("give --model M (warpage table), --pair SOURCE,TARGET or --all-pairs M1,M2,... (transfer)");
    }
    let ds = load_data(&a.data, OnBadImage::Skip)?;
    if !a.all_pairs.is_empty() {
        let reports = all_pairs_transfer(&a.all_pairs, &ds, &a)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&reports)?);
        } else {
            let names: Vec<&str> =
                reports
                    .iter()
                    .map(|r| r.source.as_str())
                    .fold(Vec::new(), |mut v, n| {
                        if !v.contains(&n) {
                            v.push(n);
                        }
                        v
                    });
            print_transfer_matrix(&reports, &names, a.metric);
        }
        return Ok(());
    }
    let mut json = serde_json::Map::new();
    let mut series: Vec<Series> = Vec::new();
    if let Some(name) = &a.model {
        let report = if a.jacobian == JacobianOf::Mapping {
            let model = crate::zoo::load_model(name, &Device::Cpu)?;
            let ks = usable_ks(&a.ks, model.latent_dim())?;
            if !a.json {
                println!(
                    "mapping network Z → W of {name}: local bases in W at w = f(z), z ~ N(0, I)"
                );
            }
            mapping_warp_experiment(&model, a.points, &ks, a.eps_near, a.seed)?
        } else {
            let loaded = load_loaded(name, &ds)?;
            let ks = usable_ks(&a.ks, loaded.model.latent_dim())?;
            let codes = loaded.encodings.rows(&train_indices(&ds));
            warp_experiment(&loaded.model, &codes, a.points, &ks, a.eps_near, a.seed)?
        };
        if !a.json {
            print_warp(&report, a.metric);
        }
        let rows = report.rows(a.metric);
        let pts = |f: fn(&crate::latent::grassmann::WarpRow) -> f64| -> Vec<(f64, f64)> {
            rows.iter().map(|r| (r.k as f64, f(r))).collect()
        };
        series.push(("random pairs", [220, 40, 40], pts(|r| r.random_pairs)));
        series.push(("nearby pairs", [30, 160, 60], pts(|r| r.near_pairs)));
        series.push((
            "random subspaces",
            [140, 140, 140],
            pts(|r| r.random_subspaces),
        ));
        series.push(("vs global PCA", [40, 80, 220], pts(|r| r.vs_global_pca)));
        series.push(("maximum", [0, 0, 0], pts(|r| r.max_distance)));
        json.insert("warp".into(), serde_json::to_value(&report)?);
    }
    if let Some(pair) = &a.pair {
        let report = pair_transfer(pair, &ds, &a)?;
        if !a.json {
            print_transfer(&report, a.metric);
        }
        let pick = |r: &TransferRow| match a.metric {
            GrassmannMetric::Geodesic => r.geodesic,
            GrassmannMetric::Projection => r.projection,
        };
        series.push((
            "transfer",
            [160, 40, 180],
            report.rows.iter().map(|r| (r.k as f64, pick(r))).collect(),
        ));
        json.insert("transfer".into(), serde_json::to_value(&report)?);
    }
    if let Some(path) = &a.plot {
        draw_plot(&series, path)?;
        if !a.json {
            println!("plot written to {} (colours:", path.display());
            for (name, c, _) in &series {
                println!("  {name}: rgb({}, {}, {})", c[0], c[1], c[2]);
            }
            println!(")");
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

/// Ground-truth probes per model and, for each ordered pair, the target's probe applied to
/// mapped source codes: generating-factor R² (synthfaces), identity accuracy (orl) or
/// attribute accuracy (CelebA).
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Models (names or directories), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Dataset spec: synthfaces (generating latents), orl (identities) or a CelebA root
    /// (`celeba:DIR`, its 40 attributes).
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Points the pair maps (lstsq) are fitted on.
    #[arg(long, value_enum, default_value = "support-set")]
    pub fit_on: FitOn,
    /// Seed of support sets and anchors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One ordered pair's post-map probe result.
#[derive(Clone, Debug, Serialize)]
pub struct PairProbe {
    /// Source model.
    pub source: String,
    /// Target model.
    pub target: String,
    /// The target's probe on mapped source codes: mean R² or accuracy against the truth.
    pub score: f64,
    /// Per output (factor R² or attribute accuracy); empty for identity.
    pub per_output: Vec<f64>,
    /// Classification only: agreement with the target probe's labels on the target's own codes.
    pub agreement: Option<f64>,
}

/// Runs `probe`.
pub fn run_probe(a: ProbeArgs) -> Result<()> {
    let ds = load_data(&a.data, OnBadImage::Skip)?;
    let truth = GroundTruth::of(&ds)?;
    let (train, test) = probe_splits(&ds)?;
    let loaded: Vec<Loaded> = a
        .models
        .iter()
        .map(|m| load_loaded(m.trim(), &ds))
        .collect::<Result<_>>()?;
    let mut probes = Vec::new();
    let mut own = Vec::new();
    for l in &loaded {
        let probe = truth
            .fit(&l.encodings.rows(&train), &train)
            .with_context(|| format!("probe on {}", l.name()))?;
        own.push(truth.score(&probe, &l.encodings.rows(&test), &test)?);
        probes.push(probe);
    }
    let mut pairs = Vec::new();
    for (si, src) in loaded.iter().enumerate() {
        for (ti, tgt) in loaded.iter().enumerate().filter(|(ti, _)| *ti != si) {
            let (map, _) = support_map(src, tgt, &ds, a.fit_on, a.seed)?;
            let mapped = map.apply(&src.encodings.rows(&test))?;
            let scored = truth.score(&probes[ti], &mapped, &test)?;
            let agree = match (&scored.labels, &own[ti].labels) {
                (Some(m), Some(o)) => Some(mean_agreement(m, o)?),
                _ => None,
            };
            pairs.push(PairProbe {
                source: src.name().into(),
                target: tgt.name().into(),
                score: scored.scores.mean,
                per_output: scored.scores.per_output,
                agreement: agree,
            });
        }
    }
    let what = truth.task().metric();
    let majority = truth.majority(&test)?;
    if a.json {
        let models: Vec<_> = loaded
            .iter()
            .zip(&own)
            .map(|(l, o)| serde_json::json!({"model": l.name(), "score": o.scores.mean, "per_output": o.scores.per_output}))
            .collect();
        let j = serde_json::json!({
            "dataset": ds.id,
            "task": truth.task(),
            "metric": what,
            "outputs": truth.output_names(&ds),
            "majority_baseline": majority,
            "fit_on": a.fit_on,
            "models": models,
            "pairs": pairs
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "{what} on {} ({} train, {} test samples):",
        ds.id,
        train.len(),
        test.len()
    );
    if let Some(m) = majority {
        println!("  {:<20} {m:.4}", "(majority class)");
    }
    for (l, o) in loaded.iter().zip(&own) {
        println!("  {:<20} {:.4}", l.name(), o.scores.mean);
    }
    println!(
        "target's probe on mapped source codes (lstsq map fitted on {}):",
        a.fit_on
    );
    for p in &pairs {
        let agree = p
            .agreement
            .map(|g| format!("  agreement {g:.4}"))
            .unwrap_or_default();
        println!(
            "  {:<20} → {:<20} {:.4}{agree}",
            p.source, p.target, p.score
        );
    }
    Ok(())
}
