//! The `latent-geometry` thread: local bases of the active pair (cached per model and code),
//! their transfer through the map, traversals along local directions, and the ground-truth
//! probes (in [`super::probes`]). Pending commands are coalesced: only the newest of each kind
//! runs, older ones are answered with [`Event::Cancelled`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use nalgebra::DMatrix;

use super::decode::to_rgb;
use super::progress::ChannelProgress;
use super::{
    ActivePair, Command, Event, LocalBasisResult, Outbox, Shared, TransferResult, TraversalResult,
};
use crate::latent::grassmann::{
    geodesic_distance, principal_angles, random_subspace, GrassmannMetric,
};
use crate::latent::local_basis::{
    decode_path, decode_rows, local_basis, traverse_local_curve, traverse_straight, LocalBasis,
    DEFAULT_JACOBIAN_EPS,
};
use crate::latent::pipeline::Loaded;
use crate::latent::LatentError;
use crate::model::LatentModel;
use crate::progress::{Cancel, Progress};

/// Directions kept per cached basis (so changing `k` up to this needs no new Jacobian).
const CACHED_DIRECTIONS: usize = 16;
/// Bases kept before the cache is emptied.
const MAX_CACHED_BASES: usize = 256;
/// Random subspace pairs averaged for the distance baseline.
const RANDOM_PAIRS: usize = 32;
/// Most steps per side of a traversal.
pub const MAX_TRAVERSAL_STEPS: usize = 200;

/// A cache key: model weights hash and the code's bits.
type BasisKey = (String, Vec<u32>);

/// What the thread keeps between commands.
#[derive(Default)]
struct Cache {
    bases: HashMap<BasisKey, Arc<LocalBasis>>,
    random_baseline: HashMap<(usize, usize), f64>,
}

/// The thread body: runs until the command channel closes.
pub(crate) fn run(rx: Receiver<Command>, out: &Outbox, shared: &Shared) {
    let mut cache = Cache::default();
    while let Ok(first) = rx.recv() {
        for cmd in newest_of_each_kind(first, &rx, out) {
            let cancel = Cancel::new();
            if let Ok(mut c) = shared.geometry_cancel.lock() {
                *c = cancel.clone();
            }
            let req = cmd.req();
            let pair = shared.pair.lock().ok().and_then(|p| p.clone());
            let result = match pair {
                None => Err(anyhow::anyhow!("no models are loaded yet")),
                Some(pair) if is_stale(&cmd, &pair) => {
                    out.send(Event::Cancelled { req });
                    continue;
                }
                Some(pair) => cache.handle(cmd, &pair, out, &cancel),
            };
            match result {
                Ok(()) => out.send(Event::Finished { req }),
                Err(_) if cancel.is_cancelled() => out.send(Event::Cancelled { req }),
                Err(e) => out.send(Event::Failed {
                    req,
                    error: format!("{e:#}"),
                }),
            }
        }
    }
}

/// Whether `cmd` was meant for another source model than the active one (the app sent it
/// before it heard of the new pair; it asks again).
fn is_stale(cmd: &Command, pair: &ActivePair) -> bool {
    match cmd {
        Command::LocalBasis {
            source,
            z_in_source,
            ..
        }
        | Command::Traverse {
            source,
            z_in_source,
            ..
        } => source != pair.source.name() || z_in_source.len() != pair.source.model.latent_dim(),
        _ => false,
    }
}

/// The pending commands in order, keeping only the newest of each kind (all exports).
fn newest_of_each_kind(first: Command, rx: &Receiver<Command>, out: &Outbox) -> Vec<Command> {
    let mut cmds = vec![first];
    cmds.extend(rx.try_iter());
    let kind = |c: &Command| std::mem::discriminant(c);
    let mut kept = Vec::with_capacity(cmds.len());
    for i in 0..cmds.len() {
        // exports are never dropped; the newest basis, traversal or probes request wins
        let superseded = !matches!(cmds[i], Command::Montage { .. })
            && cmds[i + 1..].iter().any(|c| kind(c) == kind(&cmds[i]));
        if superseded {
            out.send(Event::Cancelled { req: cmds[i].req() });
        } else {
            kept.push(cmds[i].clone());
        }
    }
    kept
}

fn code_key(model: &Loaded, z: &[f32]) -> BasisKey {
    (
        model.encodings.model_hash.clone(),
        z.iter().map(|v| v.to_bits()).collect(),
    )
}

/// Column `i` of `m` as a vector.
fn column(m: &DMatrix<f32>, i: usize) -> Vec<f32> {
    m.column(i).iter().copied().collect()
}

impl Cache {
    fn handle(
        &mut self,
        cmd: Command,
        pair: &ActivePair,
        out: &Outbox,
        cancel: &Cancel,
    ) -> Result<()> {
        match cmd {
            Command::LocalBasis {
                req,
                z_in_source,
                k,
                ..
            } => {
                let progress = ChannelProgress::new(out, req);
                let basis = self.local_basis(pair, &z_in_source, k, &progress, cancel)?;
                out.send(Event::LocalBasisReady {
                    req,
                    basis: Arc::new(basis),
                });
            }
            Command::Traverse {
                req,
                z_in_source,
                direction,
                curve,
                steps,
                range,
                strip_frames,
                ..
            } => {
                let progress = ChannelProgress::new(out, req);
                let spec = TraverseSpec {
                    direction,
                    curve,
                    steps,
                    range,
                    strip_frames,
                };
                let traversal = self.traverse(pair, &z_in_source, &spec, &progress, cancel)?;
                out.send(Event::TraversalReady {
                    req,
                    traversal: Arc::new(traversal),
                });
            }
            Command::Probes { req } => {
                let progress = ChannelProgress::new(out, req);
                let probes = super::probes::run_probes(pair, &progress, cancel)?;
                out.send(Event::ProbesReady {
                    req,
                    probes: Arc::new(probes),
                });
            }
            Command::Montage {
                req,
                indices,
                per_row,
                path,
            } => {
                let message = montage(pair, &indices, per_row, &path)?;
                out.send(Event::Exported { req, message });
            }
            Command::Sync { .. } | Command::Decode { .. } | Command::Pairs { .. } => {}
        }
        Ok(())
    }

    /// The basis of `model` at `z` with at least `k` directions (cached); true when computed.
    fn basis(&mut self, model: &Loaded, z: &[f32], k: usize) -> Result<(Arc<LocalBasis>, bool)> {
        let d = model.model.latent_dim();
        if k == 0 || k > d {
            bail!(
                "a local basis of {} needs 1 ≤ k ≤ {d} directions, got {k}",
                model.name()
            );
        }
        let key = code_key(model, z);
        if let Some(b) = self.bases.get(&key).filter(|b| b.directions.ncols() >= k) {
            return Ok((b.clone(), false));
        }
        let k_cached = k.max(CACHED_DIRECTIONS).min(d);
        let basis = local_basis(&model.model, z, k_cached, DEFAULT_JACOBIAN_EPS)
            .with_context(|| format!("local basis of {}", model.name()))?;
        if self.bases.len() >= MAX_CACHED_BASES {
            self.bases.clear();
        }
        let basis = Arc::new(basis);
        self.bases.insert(key, basis.clone());
        Ok((basis, true))
    }

    fn local_basis(
        &mut self,
        pair: &ActivePair,
        z_in_source: &[f32],
        k: usize,
        progress: &ChannelProgress,
        cancel: &Cancel,
    ) -> Result<LocalBasisResult> {
        let t0 = Instant::now();
        let (source, target) = (&pair.source, &pair.target);
        let parts = if pair.map.is_some() { 2 } else { 1 };
        progress.start(
            &format!(
                "local basis of {} ({} decodes)",
                source.name(),
                2 * source.model.latent_dim()
            ),
            parts,
        );
        let (basis, computed_source) = self.basis(source, z_in_source, k)?;
        progress.update(1, "");
        let directions = basis.directions.columns(0, k).into_owned();
        let mut computed = computed_source;
        let transfer = match &pair.map {
            None => None,
            Some(map) => {
                if cancel.is_cancelled() {
                    return Err(LatentError::Cancelled.into());
                }
                progress.start(&format!("local basis of {} (mapped)", target.name()), 2);
                progress.update(1, "");
                Some(
                    self.transfer(pair, map, z_in_source, &directions)
                        .map(|(t, c)| {
                            computed |= c;
                            t
                        })
                        .map_err(|e| format!("{e:#}")),
                )
            }
        };
        progress.finish("");
        Ok(LocalBasisResult {
            source: source.name().to_string(),
            z_in_source: z_in_source.to_vec(),
            singular_values: basis.singular_values[..k].to_vec(),
            directions,
            transfer,
            compute_secs: if computed {
                t0.elapsed().as_secs_f64()
            } else {
                0.0
            },
        })
    }

    /// The transfer of `directions` (`d_source x k`) through `map`; true when a basis was
    /// computed (not cached).
    fn transfer(
        &mut self,
        pair: &ActivePair,
        map: &crate::latent::LinearMap,
        z_in_source: &[f32],
        directions: &DMatrix<f32>,
    ) -> Result<(TransferResult, bool)> {
        let target = &pair.target;
        let (d_source, d_target) = (directions.nrows(), target.model.latent_dim());
        if map.source_dim() != d_source || map.target_dim() != d_target {
            bail!(
                "the map is {}x{} but the models have latent dimensions {d_source} and {d_target}",
                map.source_dim(),
                map.target_dim()
            );
        }
        let k_t = directions.ncols().min(d_target);
        let z_row = DMatrix::from_row_slice(1, d_source, z_in_source);
        let z_in_target: Vec<f32> = map.apply(&z_row)?.iter().copied().collect();
        let (target_basis, computed) = self.basis(target, &z_in_target, k_t)?;
        let target_directions = target_basis.directions.columns(0, k_t).into_owned();
        let pushed = map.weight.transpose() * directions.columns(0, k_t);
        let pushed_norms: Vec<f64> = (0..k_t)
            .map(|i| f64::from(pushed.column(i).norm()))
            .collect();
        let cosines = DMatrix::from_fn(k_t, k_t, |i, j| {
            let n = pushed_norms[i] as f32;
            if n > 0.0 {
                (pushed.column(i).dot(&target_directions.column(j)) / n).abs()
            } else {
                0.0
            }
        });
        let angles = principal_angles(&pushed, &target_directions)
            .context("the map collapses the source directions")?;
        Ok((
            TransferResult {
                target: target.name().to_string(),
                z_in_target,
                target_singular_values: target_basis.singular_values[..k_t].to_vec(),
                target_directions,
                pushed_norms,
                cosines,
                geodesic: GrassmannMetric::Geodesic.of_angles(&angles),
                projection: GrassmannMetric::Projection.of_angles(&angles),
                angles,
                random_geodesic: self.random_baseline(d_target, k_t)?,
                max_geodesic: GrassmannMetric::Geodesic.max_distance(k_t),
            },
            computed,
        ))
    }

    /// Mean geodesic distance of [`RANDOM_PAIRS`] pairs of random `k`-subspaces of `R^d`.
    fn random_baseline(&mut self, d: usize, k: usize) -> Result<f64> {
        if let Some(v) = self.random_baseline.get(&(d, k)) {
            return Ok(*v);
        }
        let mut sum = 0.0;
        for i in 0..RANDOM_PAIRS as u64 {
            let a = random_subspace(d, k, 2 * i)?;
            let b = random_subspace(d, k, 2 * i + 1)?;
            sum += geodesic_distance(&a, &b)?;
        }
        let mean = sum / RANDOM_PAIRS as f64;
        self.random_baseline.insert((d, k), mean);
        Ok(mean)
    }

    fn traverse(
        &mut self,
        pair: &ActivePair,
        z0: &[f32],
        spec: &TraverseSpec,
        progress: &ChannelProgress,
        cancel: &Cancel,
    ) -> Result<TraversalResult> {
        let t0 = Instant::now();
        let source = &pair.source;
        let d = source.model.latent_dim();
        if spec.direction >= d {
            bail!(
                "direction {} does not exist: {} has {d} latent dimensions",
                spec.direction,
                source.name()
            );
        }
        if !(spec.range.is_finite() && spec.range > 0.0) {
            bail!("the traversal range must be positive, got {}", spec.range);
        }
        let steps = spec.steps.clamp(1, MAX_TRAVERSAL_STEPS);
        let step = spec.range / steps as f32;
        let what = if spec.curve { "curve" } else { "straight" };
        progress.start(
            &format!("{what} traversal along direction {}", spec.direction),
            3,
        );
        let (basis, _) = self.basis(source, z0, spec.direction + 1)?;
        let v = column(&basis.directions, spec.direction);
        let walk = |sign: f32| -> Result<Vec<Vec<f32>>> {
            Ok(if spec.curve {
                traverse_local_curve(
                    &source.model,
                    z0,
                    spec.direction,
                    steps,
                    sign * step,
                    DEFAULT_JACOBIAN_EPS,
                )?
            } else {
                traverse_straight(z0, &v, steps, sign * step)?
            })
        };
        let backward = walk(-1.0)?;
        progress.update(1, "");
        if cancel.is_cancelled() {
            return Err(LatentError::Cancelled.into());
        }
        let forward = walk(1.0)?;
        progress.update(2, "");
        if cancel.is_cancelled() {
            return Err(LatentError::Cancelled.into());
        }
        let path: Vec<Vec<f32>> = backward.into_iter().skip(1).rev().chain(forward).collect();
        let offsets: Vec<f32> = (0..path.len())
            .map(|i| (i as f32 - steps as f32) * step)
            .collect();
        let end_deviation = [0, path.len() - 1]
            .iter()
            .map(|&i| {
                path[i]
                    .iter()
                    .zip(z0.iter().zip(&v))
                    .map(|(p, (z, u))| (p - (z + offsets[i] * u)).powi(2))
                    .sum::<f32>()
                    .sqrt()
            })
            .fold(0.0f32, f32::max);
        let (strip_indices, strip_source, strip_target) =
            decode_strip(pair, &path, spec.strip_frames)?;
        progress.finish("");
        Ok(TraversalResult {
            z_in_source: z0.to_vec(),
            direction: spec.direction,
            curve: spec.curve,
            path,
            offsets,
            strip_indices,
            strip_source,
            strip_target,
            end_deviation,
            compute_secs: t0.elapsed().as_secs_f64(),
        })
    }
}

/// What a traversal walks.
struct TraverseSpec {
    direction: usize,
    curve: bool,
    steps: usize,
    range: f32,
    strip_frames: usize,
}

/// Decodes `frames` evenly spaced points of `path` with the source model and, through the map,
/// with the target model: (path indices, source RGB images, target RGB images).
type Strip = (Vec<usize>, Vec<Vec<u8>>, Vec<Vec<u8>>);

fn decode_strip(pair: &ActivePair, path: &[Vec<f32>], frames: usize) -> Result<Strip> {
    let n = path.len();
    let frames = frames.clamp(2, n.max(2)).min(n);
    let indices: Vec<usize> = (0..frames)
        .map(|f| {
            if frames == 1 {
                0
            } else {
                (f * (n - 1) + (frames - 1) / 2) / (frames - 1)
            }
        })
        .collect();
    let codes: Vec<Vec<f32>> = indices.iter().map(|&i| path[i].clone()).collect();
    let images = decode_path(&pair.source.model, &codes).context("decoding the strip")?;
    let strip_source = (0..frames)
        .map(|i| to_rgb(&images.get(i)?))
        .collect::<Result<Vec<_>>>()?;
    let strip_target = match &pair.map {
        None => Vec::new(),
        Some(map) => {
            let d = pair.source.model.latent_dim();
            let rows = DMatrix::from_fn(frames, d, |r, c| codes[r][c]);
            let mapped = map.apply(&rows)?;
            let images =
                decode_rows(&pair.target.model, &mapped).context("decoding the mapped strip")?;
            (0..frames)
                .map(|i| to_rgb(&images.get(i)?))
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok((indices, strip_source, strip_target))
}

/// Writes the relocation montage of `indices` for the active pair to `path`.
fn montage(pair: &ActivePair, indices: &[usize], per_row: usize, path: &Path) -> Result<String> {
    let map = pair
        .map
        .as_deref()
        .context("no map fitted yet: the montage shows decodings after relocation")?;
    let n = pair.dataset.len();
    if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
        bail!("sample {bad} is not in the dataset ({n} samples)");
    }
    let codes = pair.source.encodings.rows(indices);
    let m = crate::grid::relocation_montage(
        &pair.dataset,
        indices,
        &pair.source.model,
        &codes,
        &pair.target.model,
        map,
        per_row,
    )?;
    crate::grid::save_png(&m.image, path)?;
    Ok(format!(
        "relocation montage of {} samples ({} -> {}: reconstruction MSE {:.4}, after relocation {:.4}) saved to {}",
        indices.len(),
        pair.source.name(),
        pair.target.name(),
        m.recon_mse,
        m.mapped_mse,
        path.display()
    ))
}
