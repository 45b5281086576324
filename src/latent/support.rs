//! Support sets (paper §5.3): a small set of images whose codes define a map between spaces.
//!
//! **Sector rule** ([`sector_support_set`]), in three steps, all deterministic in the seed:
//!
//! 1. *One extreme sample per sector.* For each of the `2^n` sign sectors of the selected
//!    variables (see [`super::sectors`]) take the largest threshold on the grid
//!    `0, th_step, 2·th_step, …` that still leaves the sector inhabited (strictly below the
//!    largest measure in the sector) and pick one of the inhabitants at that threshold at
//!    random (ChaCha8 seeded with `seed`). The grid, rather than the exact supremum, leaves a
//!    few candidates to choose from; with a tiny `th_step` this tends to "the most extreme
//!    point". Empty sectors contribute nothing. Sectors are visited in pattern order.
//! 2. *Fill.* Up to the requested size, repeatedly take, from the sector with the fewest
//!    picks so far that still has unpicked points (ties: lowest pattern — a round robin), its
//!    unpicked point of largest measure (`‖z_S‖` for the `Norm` rule). No duplicates.
//! 3. Rows are mapped to dataset indices and sample ids.
//!
//! **Baselines** of the same size: [`random_support_set`] (uniform without replacement) and
//! [`farthest_point_support_set`] (greedy farthest-point sampling in the full latent space
//! from a seeded random start).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use nalgebra::DMatrix;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;

use super::sectors::{check_vars, num_sectors, sector_measures, sector_of_points, SectorRule};
use super::{check_finite, LatentError, Result};

pub use super::support_io::{spread_check, SpreadCheck};

/// The paper's support-set size.
pub const DEFAULT_SUPPORT_SIZE: usize = 150;
/// Default step of the threshold grid of the sector rule.
pub const DEFAULT_TH_STEP: f32 = 0.05;

/// Which rule built a support set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportKind {
    /// Extreme samples of the sign sectors, then the fill rule (module docs).
    Sectors,
    /// Uniformly random samples.
    Random,
    /// Greedy farthest-point sampling in the full latent space.
    FarthestPoint,
    /// Chosen or edited by hand (e.g. members added or removed in the explorer).
    Edited,
}

/// How a support set was made (stored in its JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupportMethod {
    /// The rule.
    pub kind: SupportKind,
    /// Name of the model whose codes were used (`None` for random sets).
    pub model: Option<String>,
    /// Sector membership rule (sector sets only).
    pub rule: Option<SectorRule>,
    /// Number `n` of selected variables (sector sets; 0 otherwise).
    pub num_selected: usize,
    /// The selected latent variables, most informative first (sector sets).
    pub selected_vars: Vec<usize>,
    /// Step of the threshold grid (sector sets).
    pub th_step: Option<f32>,
    /// Seed of the ChaCha8 generator.
    pub seed: u64,
    /// Requested size.
    pub requested_size: usize,
    /// How many samples came from step 1 (one per inhabited sector); the rest are fill.
    pub num_sector_picks: usize,
}

/// A support set: samples of one dataset, by id and index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupportSet {
    /// Id of the dataset the samples belong to.
    pub dataset_id: String,
    /// Sample ids, in selection order.
    pub sample_ids: Vec<String>,
    /// Dataset indices of the same samples (re-resolved from the ids on load).
    pub indices: Vec<usize>,
    /// How the set was made.
    pub method: SupportMethod,
}

/// Options of the sector rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SectorSupportOptions {
    /// Requested size (default 150).
    pub size: usize,
    /// Membership rule (default [`SectorRule::Norm`]).
    pub rule: SectorRule,
    /// Threshold grid step, `> 0` (default [`DEFAULT_TH_STEP`]).
    pub th_step: f32,
    /// Seed (default 0).
    pub seed: u64,
}

impl Default for SectorSupportOptions {
    fn default() -> Self {
        Self {
            size: DEFAULT_SUPPORT_SIZE,
            rule: SectorRule::Norm,
            th_step: DEFAULT_TH_STEP,
            seed: 0,
        }
    }
}

/// Rows chosen by the sector rule.
#[derive(Clone, Debug, PartialEq)]
pub struct SectorSelection {
    /// Chosen rows of the codes, in selection order (length = requested size).
    pub rows: Vec<usize>,
    /// Number of rows from step 1 (one per inhabited sector), at the front of `rows`.
    pub num_sector_picks: usize,
    /// Per sector (`2^n`): the grid threshold its pick was made at; `None` if empty.
    pub sector_thresholds: Vec<Option<f32>>,
}

fn check_size(size: usize, available: usize) -> Result<()> {
    if size == 0 {
        return Err(LatentError::InvalidArgument(
            "support-set size must be positive".into(),
        ));
    }
    if size > available {
        return Err(LatentError::NotEnoughPoints(format!(
            "a support set of {size} needs at least {size} points, got {available}"
        )));
    }
    Ok(())
}

/// Chooses `opts.size` distinct rows of `z` (`N x d`) by the sector rule on `vars`
/// (module docs). Errors when `2^n > size`, `size > N`, `th_step ≤ 0` or on bad codes.
pub fn select_sector_rows(
    z: &DMatrix<f32>,
    vars: &[usize],
    opts: &SectorSupportOptions,
) -> Result<SectorSelection> {
    check_vars(z, vars)?;
    check_size(opts.size, z.nrows())?;
    let k = num_sectors(vars.len());
    if k > opts.size {
        return Err(LatentError::InvalidArgument(format!(
            "{} selected variables give {k} sectors, more than the support-set size {}",
            vars.len(),
            opts.size
        )));
    }
    if !(opts.th_step.is_finite() && opts.th_step > 0.0) {
        return Err(LatentError::InvalidArgument(format!(
            "th_step must be positive, got {}",
            opts.th_step
        )));
    }
    let sectors = sector_of_points(z, vars)?;
    let measures = sector_measures(z, vars, opts.rule)?;
    // Members of each sector by decreasing measure (ties: lower row first).
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (row, s) in sectors.iter().enumerate() {
        members[*s as usize].push(row);
    }
    for m in &mut members {
        m.sort_by(|&a, &b| measures[b].total_cmp(&measures[a]).then(a.cmp(&b)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let step = f64::from(opts.th_step);
    let mut rows = Vec::with_capacity(opts.size);
    let mut sector_thresholds = vec![None; k];
    let mut picked = vec![false; z.nrows()];
    for (s, m) in members.iter().enumerate() {
        let Some(&top) = m.first() else { continue };
        let max_measure = f64::from(measures[top]);
        let th = (((max_measure / step).ceil() - 1.0).max(0.0) * step) as f32;
        // Members are sorted, so the inhabitants at `th` are a prefix (at least the top one).
        let num_candidates = m.iter().take_while(|&&r| measures[r] > th).count().max(1);
        let row = m[rng.random_range(0..num_candidates)];
        rows.push(row);
        picked[row] = true;
        sector_thresholds[s] = Some(th);
    }
    let num_sector_picks = rows.len();
    fill_round_robin(&members, &mut picked, &mut rows, opts.size);
    Ok(SectorSelection {
        rows,
        num_sector_picks,
        sector_thresholds,
    })
}

/// Step 2: from the least-represented sector with points left (ties: lowest pattern), its
/// unpicked point of largest measure (`members` are sorted that way), until `size` rows.
fn fill_round_robin(
    members: &[Vec<usize>],
    picked: &mut [bool],
    rows: &mut Vec<usize>,
    size: usize,
) {
    let mut counts: Vec<usize> = members.iter().map(|m| usize::from(!m.is_empty())).collect();
    let mut cursor = vec![0usize; members.len()];
    let mut heap: BinaryHeap<Reverse<(usize, usize)>> = (0..members.len())
        .filter(|&s| !members[s].is_empty())
        .map(|s| Reverse((counts[s], s)))
        .collect();
    while rows.len() < size {
        let Some(Reverse((_, s))) = heap.pop() else {
            break;
        };
        while cursor[s] < members[s].len() && picked[members[s][cursor[s]]] {
            cursor[s] += 1;
        }
        let Some(&row) = members[s].get(cursor[s]) else {
            continue;
        };
        picked[row] = true;
        rows.push(row);
        counts[s] += 1;
        heap.push(Reverse((counts[s], s)));
    }
}

fn check_rows_indices(ds: &Dataset, indices: &[usize], num_rows: usize) -> Result<()> {
    if indices.len() != num_rows {
        return Err(LatentError::Shape(format!(
            "{} dataset indices for {num_rows} rows of codes",
            indices.len()
        )));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= ds.len()) {
        return Err(LatentError::InvalidArgument(format!(
            "dataset index {bad} out of range for {} samples",
            ds.len()
        )));
    }
    Ok(())
}

fn make_set(ds: &Dataset, indices: &[usize], rows: &[usize], method: SupportMethod) -> SupportSet {
    let chosen: Vec<usize> = rows.iter().map(|&r| indices[r]).collect();
    SupportSet {
        dataset_id: ds.id.clone(),
        sample_ids: chosen.iter().map(|&i| ds.sample_ids[i].clone()).collect(),
        indices: chosen,
        method,
    }
}

/// Support set by the sector rule: `z` (`N x d`) are `model`'s codes of the samples
/// `indices` of `ds` (row `r` ↔ `indices[r]`), `vars` the selected variables.
pub fn sector_support_set(
    ds: &Dataset,
    indices: &[usize],
    z: &DMatrix<f32>,
    vars: &[usize],
    opts: &SectorSupportOptions,
    model: &str,
) -> Result<SupportSet> {
    check_rows_indices(ds, indices, z.nrows())?;
    let sel = select_sector_rows(z, vars, opts)?;
    let method = SupportMethod {
        kind: SupportKind::Sectors,
        model: Some(model.to_string()),
        rule: Some(opts.rule),
        num_selected: vars.len(),
        selected_vars: vars.to_vec(),
        th_step: Some(opts.th_step),
        seed: opts.seed,
        requested_size: opts.size,
        num_sector_picks: sel.num_sector_picks,
    };
    Ok(make_set(ds, indices, &sel.rows, method))
}

fn baseline_method(
    kind: SupportKind,
    model: Option<&str>,
    size: usize,
    seed: u64,
) -> SupportMethod {
    SupportMethod {
        kind,
        model: model.map(str::to_string),
        rule: None,
        num_selected: 0,
        selected_vars: Vec::new(),
        th_step: None,
        seed,
        requested_size: size,
        num_sector_picks: 0,
    }
}

/// `size` distinct samples of `indices` (dataset indices of `ds`), uniformly at random
/// (ChaCha8 seeded with `seed`), in sampling order.
pub fn random_support_set(
    ds: &Dataset,
    indices: &[usize],
    size: usize,
    seed: u64,
) -> Result<SupportSet> {
    check_rows_indices(ds, indices, indices.len())?;
    check_size(size, indices.len())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = sample(&mut rng, indices.len(), size).into_vec();
    let method = baseline_method(SupportKind::Random, None, size, seed);
    Ok(make_set(ds, indices, &rows, method))
}

/// Rows chosen by greedy farthest-point sampling of `z` (`N x d`): a seeded random first
/// row, then repeatedly the row farthest (Euclidean) from all chosen ones (ties: lowest row).
pub fn farthest_point_rows(z: &DMatrix<f32>, size: usize, seed: u64) -> Result<Vec<usize>> {
    check_size(size, z.nrows())?;
    check_finite("codes", z)?;
    let n = z.nrows();
    let d = z.ncols();
    let row_major = z.transpose();
    let data = row_major.as_slice();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = vec![rng.random_range(0..n)];
    // Squared distance to the chosen set; −1 marks chosen rows.
    let mut min_d2 = vec![f32::INFINITY; n];
    while rows.len() < size {
        let last = rows[rows.len() - 1];
        let p = &data[last * d..(last + 1) * d];
        min_d2.par_iter_mut().enumerate().for_each(|(i, m)| {
            if *m >= 0.0 {
                let q = &data[i * d..(i + 1) * d];
                let d2: f32 = p.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum();
                *m = m.min(d2);
            }
        });
        min_d2[last] = -1.0;
        let next = (0..n)
            .filter(|&i| min_d2[i] >= 0.0)
            .fold(None, |best: Option<usize>, i| match best {
                Some(b) if min_d2[b] >= min_d2[i] => Some(b),
                _ => Some(i),
            });
        match next {
            Some(i) => rows.push(i),
            None => break,
        }
    }
    Ok(rows)
}

/// `size` samples of `indices` by greedy farthest-point sampling of their codes `z`
/// (`N x d`, row `r` ↔ `indices[r]`) in the full latent space of `model`.
pub fn farthest_point_support_set(
    ds: &Dataset,
    indices: &[usize],
    z: &DMatrix<f32>,
    size: usize,
    seed: u64,
    model: &str,
) -> Result<SupportSet> {
    check_rows_indices(ds, indices, z.nrows())?;
    let rows = farthest_point_rows(z, size, seed)?;
    let method = baseline_method(SupportKind::FarthestPoint, Some(model), size, seed);
    Ok(make_set(ds, indices, &rows, method))
}
