//! Training loops: VAE and Split-VAE (γ-balanced loss), GAN (non-saturating), recoders.
//!
//! Deterministic under a seed: the epoch's sample order and every noise draw come from ChaCha
//! streams keyed by (seed, epoch, step), so a run resumed from a checkpoint continues exactly as
//! an uninterrupted one. A checkpoint (all variables, Adam moments, counters) is written at the
//! end of every epoch and when the run is cancelled; the model directory (`config.json` +
//! `model.safetensors`) and a sample grid are written every epoch.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

mod stats;
mod steps;

pub use stats::median;

use super::adam::{Adam, AdamParams};
use super::store::{self, named_tensors, read_tensors, tensors_to_bytes, write_atomic};
use super::{Family, LatentModel, Model, ModelConfig, ModelError, Net, Result};
use crate::data::{Dataset, Split};
use crate::progress::{Cancel, Progress};

/// What to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TrainKind {
    /// Vanilla VAE.
    Vae,
    /// Split-VAE.
    Svae,
    /// GAN generator + discriminator.
    Gan,
    /// Style-based generator (mapping network + modulated synthesis) + discriminator.
    Style,
    /// The recoder of an existing GAN, reference DCGAN or style model (`generator` names its
    /// directory); a style model's recoder learns W = mapping(z).
    Recoder,
    /// The recoder of a style model into Z (pixel-normalised z): writes its Z view, a model of
    /// family `style-z` with the same generator.
    RecoderZ,
    /// Normalizing flow (multi-scale RealNVP/Glow), maximum likelihood in bits per dimension.
    Flow,
}

/// The training configuration, saved as JSON beside the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    /// What to train.
    pub kind: TrainKind,
    /// Model name.
    pub name: String,
    /// Latent dimension (ignored for recoders: the generator's).
    pub latent_dim: usize,
    /// Base channel width.
    pub base_channels: usize,
    /// Random seed for initialisation, order and noise.
    pub seed: u64,
    /// Number of epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Steps per epoch; default: one pass over the training split.
    pub steps_per_epoch: Option<usize>,
    /// Stop after this many steps in total (for tests and quick runs).
    pub max_steps: Option<u64>,
    /// For recoders: the model directory of the generator.
    pub generator: Option<PathBuf>,
    /// Id of the training dataset.
    pub dataset_id: String,
    /// Recoders: weight of the image-space term `mean((G(rec(x)) − x)²)` on real training
    /// images, added to the latent MSE on the generator's own samples (0: latent MSE only, the
    /// paper's recoder). The real-image term pulls the recoder towards the generator's best
    /// approximation of images outside its range instead of codes it never saw.
    #[serde(default)]
    pub image_loss: f64,
    /// Recoders: start from the recoder already in `generator` (fine-tuning) instead of fresh
    /// weights.
    #[serde(default)]
    pub keep_recoder: bool,
}

/// Counters saved in `checkpoint.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs fully done.
    pub epoch: usize,
    /// Steps done inside the current epoch.
    pub step_in_epoch: usize,
    /// Steps done in total.
    pub global_step: u64,
    /// Running estimate of the reconstruction MSE (γ² of the balanced VAE loss).
    pub gamma_sq: f64,
    /// Images processed in total.
    pub images_seen: u64,
    /// Seconds spent training (all sessions).
    pub train_secs: f64,
    /// One record per finished epoch.
    pub history: Vec<EpochRecord>,
}

/// Loss and speed of one epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number (1-based).
    pub epoch: usize,
    /// Mean main loss (VAE: per-pixel MSE; GAN: generator loss; recoder: latent MSE).
    pub loss: f64,
    /// Mean secondary loss (VAE: KL per image; GAN: discriminator loss).
    pub aux: f64,
    /// Images per second in this epoch.
    pub images_per_sec: f64,
    /// Median wall time of one training step in this epoch, seconds (0 in records written
    /// before it was kept). Unlike `images_per_sec` it ignores the odd slow step, so it is
    /// what the benchmark compares with PyTorch's median step.
    #[serde(default)]
    pub median_step_secs: f64,
}

/// The result of a training run.
#[derive(Debug)]
pub struct TrainReport {
    /// Final counters.
    pub state: TrainState,
    /// Whether the run stopped early because it was cancelled.
    pub cancelled: bool,
    /// Where the model was written.
    pub model_dir: PathBuf,
}

const CHECKPOINT_WEIGHTS: &str = "checkpoint.safetensors";
const CHECKPOINT_STATE: &str = "checkpoint.json";

fn randn(seed: u64, stream: u64, shape: (usize, usize), device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let v: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rand::Rng::sample(&mut rng, rand_distr::StandardNormal))
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

fn softplus(x: &Tensor) -> Result<Tensor> {
    // log(1 + e^x) = relu(x) + log(1 + e^-|x|)
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

fn vars_with_prefix(model: &Model, prefix: &str) -> Result<Vec<(String, Var)>> {
    let data = model
        .varmap
        .data()
        .lock()
        .map_err(|_| ModelError::BadInput("variable map lock poisoned".into()))?;
    Ok(data
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// One training run's moving parts.
struct Run<'a> {
    opts: &'a TrainOptions,
    model: Model,
    opt_main: Adam,
    opt_disc: Option<Adam>,
    state: TrainState,
    data: &'a Dataset,
    train_idx: Vec<usize>,
    out: &'a Path,
}

/// Builds the model to train, fresh, from `opts`.
fn build_model(opts: &TrainOptions, device: &Device) -> Result<Model> {
    match opts.kind {
        TrainKind::Recoder | TrainKind::RecoderZ => {
            let dir = opts.generator.as_ref().ok_or_else(|| {
                ModelError::BadInput("training a recoder needs --generator DIR".into())
            })?;
            let mut model = store::load_model(dir, device)?;
            if !matches!(
                model.config.family,
                Family::Gan | Family::Refdcgan | Family::Style | Family::StyleZ
            ) {
                return Err(ModelError::BadInput(format!(
                    "{} is a {} model, not a GAN or style model: {}",
                    model.config.name,
                    model.config.family,
                    dir.display()
                )));
            }
            if opts.keep_recoder && !model.config.recoder_trained {
                return Err(ModelError::BadInput(format!(
                    "--keep-recoder: {} has no trained recoder to start from: {}",
                    model.config.name,
                    dir.display()
                )));
            }
            if !opts.keep_recoder {
                // fresh recoder weights, deterministic in the seed
                let fresh = Model::new(model.config.clone(), device, opts.seed, false)?;
                for (name, var) in vars_with_prefix(&fresh, "rec.")? {
                    let target = vars_with_prefix(&model, &name)?;
                    if let Some((_, t)) = target.iter().find(|(n, _)| *n == name) {
                        crate::model::weights::assign(t, var.as_tensor())?;
                    }
                }
            }
            if opts.kind == TrainKind::RecoderZ {
                if !matches!(model.config.family, Family::Style | Family::StyleZ) {
                    return Err(ModelError::BadInput(format!(
                        "recoder-z needs a style model, {} is a {} model: {}",
                        model.config.name,
                        model.config.family,
                        dir.display()
                    )));
                }
                model.config.family = Family::StyleZ;
            }
            model.config.name = opts.name.clone();
            model.config.recoder_trained = false;
            Ok(model)
        }
        kind => {
            let family = match kind {
                TrainKind::Vae => Family::Vae,
                TrainKind::Svae => Family::Svae,
                TrainKind::Flow => Family::Flow,
                TrainKind::Style => Family::Style,
                _ => Family::Gan,
            };
            let mut config = ModelConfig::new(&opts.name, family, opts.latent_dim);
            config.base_channels = opts.base_channels;
            if family == Family::Flow {
                config.flow = Some(super::flow::FlowArch::for_width(opts.base_channels));
            }
            let adversarial = matches!(family, Family::Gan | Family::Style);
            Model::new(config, device, opts.seed, adversarial)
        }
    }
}

impl<'a> Run<'a> {
    fn new(
        opts: &'a TrainOptions,
        data: &'a Dataset,
        out: &'a Path,
        device: &Device,
        resume: bool,
    ) -> Result<Self> {
        let model = build_model(opts, device)?;
        let (main_prefix, lr_params) = match opts.kind {
            TrainKind::Vae | TrainKind::Svae | TrainKind::Flow => (
                "",
                AdamParams {
                    lr: opts.lr,
                    ..Default::default()
                },
            ),
            TrainKind::Gan | TrainKind::Style => (
                "gen.",
                AdamParams {
                    lr: opts.lr,
                    beta1: 0.5,
                    ..Default::default()
                },
            ),
            TrainKind::Recoder | TrainKind::RecoderZ => (
                "rec.",
                AdamParams {
                    lr: opts.lr,
                    ..Default::default()
                },
            ),
        };
        let opt_main = Adam::new(vars_with_prefix(&model, main_prefix)?, lr_params);
        let opt_disc = match opts.kind {
            TrainKind::Gan | TrainKind::Style => {
                Some(Adam::new(vars_with_prefix(&model, "disc.")?, lr_params))
            }
            _ => None,
        };
        let train_idx = data.indices(Split::Train);
        let recoder = matches!(opts.kind, TrainKind::Recoder | TrainKind::RecoderZ);
        if train_idx.len() < opts.batch_size && !recoder {
            return Err(ModelError::BadInput(format!(
                "dataset {} has {} training images, fewer than one batch of {}",
                data.id,
                train_idx.len(),
                opts.batch_size
            )));
        }
        let mut run = Run {
            opts,
            model,
            opt_main,
            opt_disc,
            state: TrainState::default(),
            data,
            train_idx,
            out,
        };
        if resume && out.join(CHECKPOINT_STATE).exists() {
            run.load_checkpoint()?;
        }
        Ok(run)
    }

    fn steps_per_epoch(&self) -> usize {
        self.opts
            .steps_per_epoch
            .unwrap_or(self.train_idx.len() / self.opts.batch_size)
            .max(1)
    }

    fn load_checkpoint(&mut self) -> Result<()> {
        let path = self.out.join(CHECKPOINT_STATE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            action: "cannot read checkpoint",
            source,
            path: path.clone(),
        })?;
        self.state = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            msg: e.to_string(),
            path,
        })?;
        let wpath = self.out.join(CHECKPOINT_WEIGHTS);
        let tensors = read_tensors(&wpath, &Device::Cpu)?;
        store::assign_checked(&self.model.varmap, &tensors, &["opt."], &wpath)?;
        self.opt_main
            .load_state(&tensors, "opt.main.", self.state.global_step)?;
        if let Some(d) = self.opt_disc.as_mut() {
            d.load_state(&tensors, "opt.disc.", self.state.global_step)?;
        }
        log::info!(
            "resumed {} at epoch {}, step {}",
            self.opts.name,
            self.state.epoch,
            self.state.step_in_epoch
        );
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<()> {
        let mut tensors = named_tensors(&self.model.varmap, true)?;
        tensors.extend(self.opt_main.state_tensors("opt.main.")?);
        if let Some(d) = &self.opt_disc {
            tensors.extend(d.state_tensors("opt.disc.")?);
        }
        write_atomic(
            &self.out.join(CHECKPOINT_WEIGHTS),
            &tensors_to_bytes(&tensors, false)?,
        )?;
        let json = serde_json::to_string_pretty(&self.state)
            .map_err(|e| ModelError::BadInput(e.to_string()))?;
        write_atomic(&self.out.join(CHECKPOINT_STATE), json.as_bytes())
    }

    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order = self.train_idx.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(self.opts.seed ^ 0x5eed_0000);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
        order
    }

    /// One optimisation step on `batch_idx`; returns (main loss, aux loss).
    fn step(&mut self, batch_idx: &[usize]) -> Result<(f64, f64)> {
        match self.opts.kind {
            TrainKind::Vae | TrainKind::Svae => self.vae_step(batch_idx),
            TrainKind::Gan | TrainKind::Style => self.gan_step(batch_idx),
            TrainKind::Recoder | TrainKind::RecoderZ => self.recoder_step(batch_idx),
            TrainKind::Flow => self.flow_step(batch_idx),
        }
    }

    fn real_batch(&self, batch_idx: &[usize]) -> Result<Tensor> {
        self.data
            .batch(batch_idx, self.model.device())
            .map_err(|e| ModelError::BadInput(e.to_string()))
    }
}

fn unreachable_net<T>() -> Result<T> {
    Err(ModelError::BadInput(
        "internal: network does not match the training kind".into(),
    ))
}

/// Trains (or resumes, when `resume` and a checkpoint exists in `out`) and writes the model to
/// `out`. Stops early, after saving a checkpoint, when `cancel` is set.
pub fn train(
    opts: &TrainOptions,
    data: &Dataset,
    out: &Path,
    device: &Device,
    resume: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<TrainReport> {
    // the whole loop on a compute pool's thread (`device::on_compute_pool`)
    super::device::on_compute_pool(|| {
        std::fs::create_dir_all(out).map_err(|source| ModelError::Io {
            action: "cannot create output directory",
            source,
            path: out.to_path_buf(),
        })?;
        let mut run = Run::new(opts, data, out, device, resume)?;
        let options_json =
            serde_json::to_value(opts).map_err(|e| ModelError::BadInput(e.to_string()))?;
        write_atomic(
            &out.join("train_config.json"),
            serde_json::to_string_pretty(&options_json)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let spe = run.steps_per_epoch();
        let total = (opts.epochs * spe) as u64;
        progress.start(&format!("training {}", opts.name), total);
        let mut cancelled = false;
        'epochs: while run.state.epoch < opts.epochs {
            let epoch = run.state.epoch;
            let order = run.epoch_order(epoch);
            let (mut sum_main, mut sum_aux, mut count) = (0.0, 0.0, 0usize);
            let t0 = Instant::now();
            let mut images = 0u64;
            let mut step_secs = Vec::with_capacity(spe);
            while run.state.step_in_epoch < spe {
                if cancel.is_cancelled()
                    || opts.max_steps.is_some_and(|m| run.state.global_step >= m)
                {
                    cancelled = cancel.is_cancelled();
                    run.state.train_secs += t0.elapsed().as_secs_f64();
                    run.save_checkpoint()?;
                    break 'epochs;
                }
                let s = run.state.step_in_epoch;
                let n = order.len().max(1);
                let batch: Vec<usize> = (0..opts.batch_size)
                    .map(|i| {
                        order
                            .get((s * opts.batch_size + i) % n)
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                let ts = Instant::now();
                let (main, aux) = run.step(&batch)?;
                step_secs.push(ts.elapsed().as_secs_f64());
                if !main.is_finite() {
                    return Err(ModelError::BadInput(format!(
                        "training diverged (loss {main}) at step {}",
                        run.state.global_step
                    )));
                }
                sum_main += main;
                sum_aux += aux;
                count += 1;
                images += opts.batch_size as u64;
                run.state.step_in_epoch += 1;
                run.state.global_step += 1;
                run.state.images_seen += opts.batch_size as u64;
                let ips = images as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                progress.update(
                    (epoch * spe + run.state.step_in_epoch) as u64,
                    &format!(
                        "epoch {}/{} loss {main:.5} aux {aux:.4} {ips:.0} img/s",
                        epoch + 1,
                        opts.epochs
                    ),
                );
            }
            let secs = t0.elapsed().as_secs_f64();
            run.state.train_secs += secs;
            run.state.history.push(EpochRecord {
                epoch: epoch + 1,
                loss: sum_main / count.max(1) as f64,
                aux: sum_aux / count.max(1) as f64,
                images_per_sec: images as f64 / secs.max(1e-9),
                median_step_secs: median(&mut step_secs),
            });
            if let Some(h) = run.state.history.last() {
                log::info!(
                    "{}: epoch {}/{} loss {:.5} aux {:.4} {:.1} img/s, {:.0} s in total",
                    opts.name,
                    h.epoch,
                    opts.epochs,
                    h.loss,
                    h.aux,
                    h.images_per_sec,
                    run.state.train_secs
                );
            }
            run.state.epoch += 1;
            run.state.step_in_epoch = 0;
            run.save_checkpoint()?;
            finish_model(&mut run, false)?;
            super::quality::write_epoch_grids(
                &run.model,
                data,
                opts.kind,
                opts.seed,
                &out.join("samples"),
                run.state.epoch,
            )?;
        }
        if !cancelled {
            finish_model(&mut run, true)?;
        }
        progress.finish(&format!(
            "{} epochs, {:.0} s",
            run.state.epoch, run.state.train_secs
        ));
        Ok(TrainReport {
            state: run.state,
            cancelled,
            model_dir: out.to_path_buf(),
        })
    })
}

/// Latent batches for re-estimating a GAN generator's batch-norm statistics: 8 x 128 draws
/// from a stream of their own (so calibration never shifts the training noise).
const BN_CALIBRATION: (usize, usize) = (8, 128);

/// Writes the model directory; when `evaluate`, measures held-out quality first. A GAN's
/// generator gets its batch-norm running statistics re-estimated first.
fn finish_model(run: &mut Run, evaluate: bool) -> Result<()> {
    if run.opts.kind == TrainKind::Gan {
        if let Net::Gan(gan) = &run.model.net {
            let d = run.model.config.latent_dim;
            let batches = (0..BN_CALIBRATION.0)
                .map(|i| {
                    randn(
                        run.opts.seed ^ 0xba7c_4000,
                        i as u64,
                        (BN_CALIBRATION.1, d),
                        run.model.device(),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            gan.generator()
                .calibrate_batch_norm(&run.model.varmap, &batches)?;
        }
    }
    let mut record =
        serde_json::to_value(run.opts).map_err(|e| ModelError::BadInput(e.to_string()))?;
    if let Some(obj) = record.as_object_mut() {
        obj.insert("epochs_done".into(), run.state.epoch.into());
        if let (true, Net::Flow(flow)) = (evaluate, &run.model.net) {
            let bpd = super::flow::heldout_bits_per_dim(flow, run.data, 512, run.opts.seed)?;
            obj.insert("heldout_bits_per_dim".into(), bpd.into());
        }
        obj.insert("images_seen".into(), run.state.images_seen.into());
        obj.insert("train_secs".into(), run.state.train_secs.into());
        let ips = run
            .state
            .history
            .last()
            .map(|h| h.images_per_sec)
            .unwrap_or(0.0);
        obj.insert("images_per_sec".into(), ips.into());
        obj.insert(
            "threads".into(),
            candle_core::utils::get_num_threads().into(),
        );
    }
    if matches!(run.opts.kind, TrainKind::Recoder | TrainKind::RecoderZ) {
        // keep the generator's own training record; the recoder's goes beside it
        let mut base = run
            .model
            .config
            .training
            .take()
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(obj) = base.as_object_mut() {
            obj.insert("recoder".into(), record);
        }
        run.model.config.training = Some(base);
        run.model.config.recoder_trained = true;
    } else {
        run.model.config.training = Some(record);
    }
    let encodes = !matches!(
        run.model.net,
        Net::Gan(_) | Net::Refdcgan(_) | Net::Style(_)
    ) || run.model.config.recoder_trained;
    if evaluate && encodes {
        run.model.config.quality = Some(super::quality::evaluate(&run.model, run.data, 1000)?);
    }
    store::save_model(&run.model, run.out, false)?;
    Ok(())
}
