//! `latent-atlas train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::bar::load_data;
use super::bar::Bar;
use crate::data::OnBadImage;
use crate::model::device::parse_device;
use crate::model::train::{train, TrainKind, TrainOptions};
use crate::progress::Cancel;

/// Train a model; writes `config.json`, `model.safetensors`, a checkpoint and sample grids
/// (`samples/`) to `--out` every epoch. Ctrl-C stops after saving a checkpoint; `--resume`
/// continues from it exactly.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// What to train.
    #[arg(long, value_enum)]
    pub model: TrainKind,
    /// Training data: synthfaces[:n=N:seed=S], orl, folder:PATH, celeba:ROOT[:first=N].
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Latent dimension (64 for VAE and GAN, 128 for Split-VAE by default; a flow's is the
    /// image's, 12288 = 3x64x64, and cannot be changed).
    #[arg(long)]
    pub latent_dim: Option<usize>,
    /// Base channel width of the conv stacks (for flows: the coupling nets' width at the
    /// first scale).
    #[arg(long, default_value_t = 32)]
    pub channels: usize,
    /// Random seed (initialisation, order, noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Learning rate (default 1e-3 for VAEs and recoders, 2e-4 for GANs and style models).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Steps per epoch (default: one pass over the training split).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Stop after this many steps in total.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// For `--model recoder` / `recoder-z`: the GAN, reference-DCGAN or style model (name or
    /// directory).
    #[arg(long)]
    pub generator: Option<String>,
    /// Recoders: weight of the image-space MSE on real training images (through recoder and
    /// generator) added to the latent MSE on generated samples; 0 = latent MSE only.
    #[arg(long, default_value_t = 0.0)]
    pub image_loss: f64,
    /// Recoders: fine-tune the recoder already in `--generator` instead of starting fresh.
    #[arg(long)]
    pub keep_recoder: bool,
    /// Model name (default: the output directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the checkpoint in `--out`.
    #[arg(long)]
    pub resume: bool,
    /// cpu, cuda or cuda:N (CUDA needs a `--features cuda` build).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Reject the dataset if an image cannot be read (default: skip it, with a warning).
    #[arg(long)]
    pub reject_bad_images: bool,
}

/// Runs `train`.
pub fn run(a: TrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let on_bad = if a.reject_bad_images {
        OnBadImage::Reject
    } else {
        OnBadImage::Skip
    };
    let data = load_data(&a.data, on_bad)?;
    let generator = match &a.generator {
        Some(g) => Some(crate::zoo::model_dir(g)?),
        None => None,
    };
    let name = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or("model".into())
    });
    let latent_dim = a.latent_dim.unwrap_or(match a.model {
        TrainKind::Svae => 128,
        TrainKind::Flow => crate::model::flow::FLOW_LATENT_DIM,
        _ => 64,
    });
    let lr =
        a.lr.unwrap_or(if matches!(a.model, TrainKind::Gan | TrainKind::Style) {
            2e-4
        } else {
            1e-3
        });
    let opts = TrainOptions {
        kind: a.model,
        name,
        latent_dim,
        base_channels: a.channels,
        seed: a.seed,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr,
        steps_per_epoch: a.steps_per_epoch,
        max_steps: a.max_steps,
        generator,
        dataset_id: data.id.clone(),
        image_loss: a.image_loss,
        keep_recoder: a.keep_recoder,
    };
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    ctrlc::set_handler(move || {
        eprintln!("\nstopping after this step; the checkpoint is kept (resume with --resume)");
        c2.cancel();
    })
    .context("cannot install the Ctrl-C handler")?;
    let bar = Bar::new();
    let report = train(&opts, &data, &a.out, &device, a.resume, &bar, &cancel)?;
    let s = &report.state;
    println!(
        "{} {}: {} epochs, {} steps, {} images, {:.0} s{}",
        if report.cancelled {
            "stopped"
        } else {
            "trained"
        },
        opts.name,
        s.epoch,
        s.global_step,
        s.images_seen,
        s.train_secs,
        if report.cancelled {
            " (resume with --resume)"
        } else {
            ""
        }
    );
    if let Some(h) = s.history.last() {
        println!(
            "last epoch: loss {:.5}, aux {:.4}, {:.1} images/s",
            h.loss, h.aux, h.images_per_sec
        );
    }
    if let Ok(m) = crate::model::load_model(&report.model_dir, &candle_core::Device::Cpu) {
        if let Some(q) = &m.config.quality {
            println!(
                "held-out R-MSE {:.5} = {:.3} x random-pair MSE {:.4} ({} images)",
                q.r_mse,
                q.ratio(),
                q.random_pair_mse,
                q.num_images
            );
        }
        let bpd = m
            .config
            .training
            .as_ref()
            .and_then(|t| t.get("heldout_bits_per_dim"));
        if let Some(bpd) = bpd.and_then(|v| v.as_f64()) {
            println!("held-out NLL {bpd:.3} bits/dim (loss and aux above: training bits/dim, mean ½z² per dim)");
        }
    }
    println!("model written to {}", report.model_dir.display());
    Ok(())
}
