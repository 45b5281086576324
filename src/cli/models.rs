//! `latent-atlas models`, `sample`, `eval`, `recon`, `data`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};

use super::bar::load_data;
use crate::data::OnBadImage;
use crate::model::device::parse_device;
use crate::model::{quality, LatentModel};
use crate::zoo::{load_model, zoo_dir};

/// List the zoo.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Zoo directory (default: the shipped assets/models).
    #[arg(long)]
    pub zoo: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print a Markdown table (for READMEs).
    #[arg(long)]
    pub markdown: bool,
}

fn training_field(c: &crate::model::ModelConfig, key: &str) -> Option<f64> {
    let t = c.training.as_ref()?;
    t.get(key).and_then(|v| v.as_f64()).or_else(|| {
        t.get("recoder")
            .and_then(|r| r.get(key))
            .and_then(|v| v.as_f64())
    })
}

fn recoder_secs(c: &crate::model::ModelConfig) -> Option<f64> {
    c.training
        .as_ref()?
        .get("recoder")?
        .get("train_secs")?
        .as_f64()
}

/// Runs `models`.
pub fn run_models(a: ModelsArgs) -> Result<()> {
    let zoo = a.zoo.unwrap_or_else(zoo_dir);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&zoo)
        .with_context(|| format!("cannot list the zoo: {}", zoo.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(crate::model::store::CONFIG_FILE).exists())
        .collect();
    dirs.sort();
    let rows = dirs
        .iter()
        .map(|d| crate::model::store::read_config(d))
        .collect::<Result<Vec<_>, _>>()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let header = [
        "model",
        "family",
        "latent",
        "R-MSE",
        "ratio",
        "train s",
        "recoder s",
        "img/s",
    ];
    let print_row = |cells: &[String]| {
        if a.markdown {
            println!("| {} |", cells.join(" | "));
        } else {
            let w = [12, 9, 6, 9, 7, 8, 9, 7];
            let line: Vec<String> = cells
                .iter()
                .zip(w)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i < 2 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            println!("{}", line.join(" "));
        }
    };
    print_row(&header.map(String::from));
    if a.markdown {
        println!("|{}", "---|".repeat(header.len()));
    }
    let fmt = |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or("-".into());
    for c in rows {
        let own_secs = c
            .training
            .as_ref()
            .and_then(|t| t.get("train_secs"))
            .and_then(|v| v.as_f64());
        print_row(&[
            c.name.clone(),
            c.family.to_string(),
            c.latent_dim.to_string(),
            fmt(c.quality.as_ref().map(|q| q.r_mse), 5),
            fmt(c.quality.as_ref().map(|q| q.ratio()), 3),
            fmt(own_secs, 0),
            fmt(recoder_secs(&c), 0),
            fmt(training_field(&c, "images_per_sec"), 1),
        ]);
    }
    Ok(())
}

/// Decode random prior draws z ~ N(0, I) into a grid (style models: through the mapping network).
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Model name (zoo) or directory.
    #[arg(long)]
    pub model: String,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Seed of the codes z ~ N(0, I).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `sample`.
pub fn run_sample(a: SampleArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let model = load_model(&a.model, &device)?;
    let d = model.latent_dim();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let z: Vec<f32> = (0..a.n * d)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    // prior draws: through the mapping network first for style models
    let x = model.decode_prior(&candle_core::Tensor::from_vec(z, (a.n, d), &device)?)?;
    let cols = (a.n as f64).sqrt().ceil() as usize;
    crate::grid::save_grid(&x, cols, &a.out)?;
    println!(
        "wrote {} samples of {} to {}",
        a.n,
        model.name(),
        a.out.display()
    );
    Ok(())
}

/// Measure and store held-out quality.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model name (zoo) or directory.
    #[arg(long)]
    pub model: String,
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// At most this many held-out images.
    #[arg(long, default_value_t = 1000)]
    pub max_images: usize,
    /// Store the result in the model's config.json.
    #[arg(long)]
    pub write: bool,
}

/// Runs `eval`.
pub fn run_eval(a: EvalArgs) -> Result<()> {
    let dir = crate::zoo::model_dir(&a.model)?;
    let mut model = crate::model::load_model(&dir, &candle_core::Device::Cpu)?;
    let data = load_data(&a.data, OnBadImage::Skip)?;
    let q = quality::evaluate(&model, &data, a.max_images)?;
    println!(
        "{} on {}: R-MSE {:.5}, random-pair MSE {:.4}, ratio {:.3} ({} images)",
        model.name(),
        q.dataset,
        q.r_mse,
        q.random_pair_mse,
        q.ratio(),
        q.num_images
    );
    if a.write {
        model.config.quality = Some(q);
        let json = serde_json::to_string_pretty(&model.config)?;
        crate::model::store::write_atomic(
            &dir.join(crate::model::store::CONFIG_FILE),
            json.as_bytes(),
        )?;
    }
    Ok(())
}

/// Reconstruction grid.
#[derive(Debug, Args)]
pub struct ReconArgs {
    /// Model name (zoo) or directory.
    #[arg(long)]
    pub model: String,
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Number of held-out images.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `recon`.
pub fn run_recon(a: ReconArgs) -> Result<()> {
    let model = load_model(&a.model, &candle_core::Device::Cpu)?;
    let data = load_data(&a.data, OnBadImage::Skip)?;
    let mut idx = quality::held_out(&data);
    idx.truncate(a.n);
    let x = data.batch(&idx, model.device())?;
    let xr = model.decode(&model.encode(&x)?)?;
    crate::grid::save_grid(&quality::interleave_rows(&x, &xr, 8)?, 8, &a.out)?;
    println!(
        "wrote {} originals above their {} reconstructions to {}",
        idx.len(),
        model.name(),
        a.out.display()
    );
    Ok(())
}

/// Dataset summary.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Reject the dataset if an image cannot be read.
    #[arg(long)]
    pub reject_bad_images: bool,
    /// Also write a grid of the first 64 images.
    #[arg(long)]
    pub grid: Option<PathBuf>,
}

/// Runs `data`.
pub fn run_data(a: DataArgs) -> Result<()> {
    let on_bad = if a.reject_bad_images {
        OnBadImage::Reject
    } else {
        OnBadImage::Skip
    };
    let data = load_data(&a.data, on_bad)?;
    println!("dataset {}", data.id);
    println!("images: {}", data.len());
    for s in [
        crate::data::Split::Train,
        crate::data::Split::Valid,
        crate::data::Split::Test,
    ] {
        println!("  {s:?}: {}", data.indices(s).len());
    }
    for s in &data.skipped {
        println!("skipped {}: {}", s.path.display(), s.reason);
    }
    if let Some(path) = a.grid {
        let idx: Vec<usize> = (0..data.len().min(64)).collect();
        crate::grid::save_grid(&data.batch(&idx, &candle_core::Device::Cpu)?, 8, &path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
