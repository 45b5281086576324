//! The `latent-analysis` thread: the pair workflow of [`crate::latent::pipeline`], step by step,
//! reusing every step whose inputs did not change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use candle_core::Device;

use super::progress::ChannelProgress;
use super::{
    ActivePair, Command, Event, FitSpec, ModelSummary, Outbox, PairSpec, RequestId, SectorData,
    Shared, SupportChoice, WorkerConfig,
};
use crate::data::{Dataset, OnBadImage};
use crate::latent::pipeline::{
    self, cached_gains, eval_indices, fit_indices, fit_pair, source_support_set, Loaded,
    PairOptions,
};
use crate::latent::sectors::{sector_measures, sector_of_points};
use crate::latent::support::{SupportKind, SupportMethod};
use crate::latent::{select_features, Estimator, GainReport, LatentError, SectorRule, SupportSet};
use crate::model::device::{device_label, parse_device};
use crate::model::LatentModel;
use crate::progress::Cancel;

/// Largest support set (the paper's 150), smaller on tiny datasets.
const SUPPORT_SIZE: usize = 150;

/// What the thread keeps between commands.
struct State {
    cache_dir: PathBuf,
    device: Device,
    dataset: Option<(String, Arc<Dataset>)>,
    models: HashMap<PathBuf, Arc<Loaded>>,
    gains: HashMap<PathBuf, Arc<GainReport>>,
    /// Codes shared with the app (the same `Arc` while the model is unchanged).
    codes: HashMap<PathBuf, Arc<nalgebra::DMatrix<f32>>>,
}

/// The thread body: runs until the command channel closes.
pub(crate) fn run(config: &WorkerConfig, rx: Receiver<Command>, out: &Outbox, shared: &Shared) {
    let device = match parse_device(&config.device) {
        Ok(d) => d,
        Err(e) => {
            out.send(Event::Failed {
                req: 0,
                error: format!("{e}; using the CPU"),
            });
            Device::Cpu
        }
    };
    let mut state = State {
        cache_dir: config.cache_dir.clone(),
        device,
        dataset: None,
        models: HashMap::new(),
        gains: HashMap::new(),
        codes: HashMap::new(),
    };
    while let Ok(first) = rx.recv() {
        for cmd in newest_sync_only(first, &rx, out) {
            let cancel = Cancel::new();
            if let Ok(mut c) = shared.cancel.lock() {
                *c = cancel.clone();
            }
            let req = cmd.req();
            let result = match cmd {
                Command::Sync { req, pair, fit } => {
                    state.sync(req, &pair, &fit, out, shared, &cancel)
                }
                Command::Pairs {
                    req,
                    dataset,
                    models,
                    max_eval,
                } => state.pairs(req, &dataset, &models, max_eval, out, &cancel),
                Command::Decode { .. }
                | Command::LocalBasis { .. }
                | Command::Traverse { .. }
                | Command::Probes { .. }
                | Command::Montage { .. } => Ok(()),
            };
            match result {
                Ok(()) => out.send(Event::Finished { req }),
                Err(e) if cancel.is_cancelled() || is_cancelled(&e) => {
                    out.send(Event::Cancelled { req })
                }
                Err(e) => out.send(Event::Failed {
                    req,
                    error: format!("{e:#}"),
                }),
            }
        }
    }
}

fn is_cancelled(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<LatentError>(),
            Some(LatentError::Cancelled)
        )
    })
}

/// The pending commands in order, keeping only the newest `Sync` (older ones are answered
/// with [`Event::Cancelled`]).
fn newest_sync_only(first: Command, rx: &Receiver<Command>, out: &Outbox) -> Vec<Command> {
    let mut cmds = vec![first];
    cmds.extend(rx.try_iter());
    let last_sync = cmds.iter().rposition(|c| matches!(c, Command::Sync { .. }));
    let mut kept = Vec::with_capacity(cmds.len());
    for (i, c) in cmds.into_iter().enumerate() {
        if matches!(c, Command::Sync { .. }) && Some(i) != last_sync {
            out.send(Event::Cancelled { req: c.req() });
        } else {
            kept.push(c);
        }
    }
    kept
}

fn summary(m: &dyn LatentModel) -> ModelSummary {
    ModelSummary {
        name: m.name().to_string(),
        family: m.family().to_string(),
        latent_dim: m.latent_dim(),
    }
}

/// Support size and number of selected variables that fit a training split of `n` samples.
fn sizes(n_train: usize, num_selected: usize) -> (usize, usize) {
    let size = SUPPORT_SIZE.min(n_train).max(2);
    let max_sel = (usize::BITS - 1 - size.leading_zeros()) as usize;
    (size, num_selected.clamp(1, max_sel.max(1)))
}

impl State {
    fn dataset(&mut self, spec: &str, out: &Outbox, req: RequestId) -> Result<Arc<Dataset>> {
        if let Some((s, ds)) = &self.dataset {
            if s == spec {
                return Ok(ds.clone());
            }
        }
        let progress = |done: usize, total: usize| {
            out.send(Event::Progress {
                req,
                phase: format!("loading dataset {spec}"),
                done: done as u64,
                total: total as u64,
            });
        };
        out.send(Event::Progress {
            req,
            phase: format!("loading dataset {spec}"),
            done: 0,
            total: 0,
        });
        let ds = Arc::new(
            crate::zoo::load_data_with_progress(spec, OnBadImage::Skip, &progress)
                .with_context(|| format!("loading dataset {spec}"))?,
        );
        self.models.clear();
        self.gains.clear();
        self.codes.clear();
        self.dataset = Some((spec.to_string(), ds.clone()));
        Ok(ds)
    }

    fn model(
        &mut self,
        dir: &Path,
        ds: &Dataset,
        progress: &ChannelProgress,
        cancel: &Cancel,
    ) -> Result<Arc<Loaded>> {
        if let Some(m) = self.models.get(dir) {
            return Ok(m.clone());
        }
        progress.phase(&format!("loading model {}", dir.display()));
        let model = crate::model::load_model(dir, &self.device)
            .with_context(|| format!("loading model {}", dir.display()))?;
        let name = model.name().to_string();
        let loaded = Loaded::new(model, ds, &self.cache_dir, progress, cancel)
            .with_context(|| format!("encoding the dataset with {name}"))?;
        let loaded = Arc::new(loaded);
        self.models.insert(dir.to_path_buf(), loaded.clone());
        Ok(loaded)
    }

    fn gains(
        &mut self,
        dir: &Path,
        loaded: &Loaded,
        ds: &Dataset,
        images: usize,
        progress: &ChannelProgress,
        cancel: &Cancel,
    ) -> Result<Arc<GainReport>> {
        if let Some(g) = self.gains.get(dir) {
            return Ok(g.clone());
        }
        progress.phase(&format!("reconstruction gains of {}", loaded.name()));
        let g = Arc::new(
            cached_gains(loaded, ds, images, &self.cache_dir, progress, cancel)
                .with_context(|| format!("gains of {}", loaded.name()))?,
        );
        self.gains.insert(dir.to_path_buf(), g.clone());
        Ok(g)
    }

    fn sync(
        &mut self,
        req: RequestId,
        pair: &PairSpec,
        fit: &FitSpec,
        out: &Outbox,
        shared: &Shared,
        cancel: &Cancel,
    ) -> Result<()> {
        let ds = self.dataset(&pair.dataset, out, req)?;
        out.send(Event::DatasetReady {
            req,
            dataset: ds.clone(),
        });
        let progress = ChannelProgress::new(out, req);
        let source = self.model(&pair.source_dir, &ds, &progress, cancel)?;
        let target = self.model(&pair.target_dir, &ds, &progress, cancel)?;
        let gains = self.gains(
            &pair.source_dir,
            &source,
            &ds,
            fit.gain_images,
            &progress,
            cancel,
        )?;
        let n_train = pipeline::train_indices(&ds).len();
        let (support_size, num_selected) = sizes(n_train, fit.num_selected);
        let vars = select_features(
            &gains.order,
            num_selected.min(source.model.latent_dim()),
            support_size,
        )?;
        let codes = &source.encodings.codes;
        let sectors = SectorData {
            patterns: sector_of_points(codes, &vars)?,
            measures: sector_measures(codes, &vars, SectorRule::Norm)?,
            vars: vars.clone(),
        };
        let mut active = ActivePair {
            dataset: ds.clone(),
            source: source.clone(),
            target: target.clone(),
            map: None,
        };
        set_active(shared, &active);
        out.send(Event::PairReady {
            req,
            source: summary(&source.model),
            target: summary(&target.model),
            z_in_source: self
                .codes
                .entry(pair.source_dir.clone())
                .or_insert_with(|| Arc::new(codes.clone()))
                .clone(),
            gains: gains.clone(),
            sectors: Arc::new(sectors),
            device: device_label(&self.device),
        });
        let opts = PairOptions {
            estimator: fit.estimator.clone(),
            support_size,
            num_selected: vars.len(),
            seed: 0,
            gain_images: fit.gain_images,
            max_eval: fit.max_eval,
        };
        progress.phase("support set");
        let support = match &fit.support {
            SupportChoice::Sectors { seed } => source_support_set(
                &source,
                &gains,
                &ds,
                &PairOptions {
                    seed: *seed,
                    ..opts.clone()
                },
            )?,
            SupportChoice::Explicit(indices) => {
                explicit_support(&ds, indices, source.name(), &vars)?
            }
        };
        let support = Arc::new(support);
        out.send(Event::SupportReady {
            req,
            support: support.clone(),
        });
        if cancel.is_cancelled() {
            return Err(LatentError::Cancelled.into());
        }
        progress.phase(&format!("fitting {} on {}", fit.estimator, fit.fit_on));
        let idx = fit_indices(fit.fit_on, &support, &ds, &opts)?;
        let map = Arc::new(
            fit_pair(&source, &target, &idx, &fit.estimator, &self.device)
                .context("fitting the map")?,
        );
        active.map = Some(map.clone());
        set_active(shared, &active);
        out.send(Event::FitReady {
            req,
            map: map.clone(),
            num_points: idx.len(),
        });
        let eval = eval_indices(&ds, fit.max_eval);
        progress.phase("relocation metrics");
        let metrics =
            pipeline::evaluate_pair(&source, &target, &map, &ds, &eval, &progress, cancel)
                .context("evaluating the map")?;
        out.send(Event::MetricsReady {
            req,
            metrics: Arc::new(metrics),
            eval_indices: Arc::new(eval),
        });
        Ok(())
    }

    fn pairs(
        &mut self,
        req: RequestId,
        dataset: &str,
        models: &[PathBuf],
        max_eval: usize,
        out: &Outbox,
        cancel: &Cancel,
    ) -> Result<()> {
        let ds = self.dataset(dataset, out, req)?;
        let progress = ChannelProgress::new(out, req);
        let n_train = pipeline::train_indices(&ds).len();
        let (support_size, num_selected) = sizes(n_train, 7);
        let mut loaded = Vec::new();
        for dir in models {
            let l = self.model(dir, &ds, &progress, cancel).and_then(|m| {
                let g = self.gains(dir, &m, &ds, 256, &progress, cancel)?;
                let opts = PairOptions {
                    support_size,
                    num_selected: num_selected.min(m.model.latent_dim()),
                    ..Default::default()
                };
                let s = source_support_set(&m, &g, &ds, &opts)?;
                Ok((m, s))
            });
            if cancel.is_cancelled() {
                return Err(LatentError::Cancelled.into());
            }
            loaded.push(l.map_err(|e| format!("{e:#}")));
        }
        let eval = eval_indices(&ds, max_eval);
        for (i, a) in loaded.iter().enumerate() {
            for (j, b) in loaded.iter().enumerate() {
                if i == j {
                    continue;
                }
                if cancel.is_cancelled() {
                    return Err(LatentError::Cancelled.into());
                }
                let m_mse = match (a, b) {
                    (Ok((src, support)), Ok((tgt, _))) => {
                        progress.phase(&format!("pair {} -> {}", src.name(), tgt.name()));
                        fit_pair(src, tgt, &support.indices, &Estimator::Lstsq, &self.device)
                            .and_then(|map| {
                                pipeline::evaluate_pair(
                                    src, tgt, &map, &ds, &eval, &progress, cancel,
                                )
                            })
                            .map(|m| m.m_mse_mean)
                            .map_err(|e| e.to_string())
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.clone()),
                };
                out.send(Event::PairCell {
                    req,
                    source: i,
                    target: j,
                    m_mse,
                });
            }
        }
        Ok(())
    }
}

fn set_active(shared: &Shared, active: &ActivePair) {
    let pair = ActivePair {
        dataset: active.dataset.clone(),
        source: active.source.clone(),
        target: active.target.clone(),
        map: active.map.clone(),
    };
    if let Ok(mut p) = shared.pair.lock() {
        *p = Some(Arc::new(pair));
    }
}

/// A support set of exactly `indices` (after the user edited one).
fn explicit_support(
    ds: &Dataset,
    indices: &[usize],
    model: &str,
    vars: &[usize],
) -> Result<SupportSet> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        anyhow::bail!(
            "support member {bad} is not in dataset {} ({} samples)",
            ds.id,
            ds.len()
        );
    }
    Ok(SupportSet {
        dataset_id: ds.id.clone(),
        sample_ids: indices.iter().map(|&i| ds.sample_ids[i].clone()).collect(),
        indices: indices.to_vec(),
        method: SupportMethod {
            kind: SupportKind::Edited,
            model: Some(model.to_string()),
            rule: None,
            num_selected: vars.len(),
            selected_vars: vars.to_vec(),
            th_step: None,
            seed: 0,
            requested_size: indices.len(),
            num_sector_picks: 0,
        },
    })
}
