//! Sign sectors of the selected latent variables (paper §5.3).
//!
//! For selected variables `S = [S_0, …, S_{n-1}]` a sign **pattern** is a `u32` bitmask:
//! bit `i` set means "positive on `S_i`" (strictly `z_{S_i} > 0`; zero counts as negative).
//! There are `2^n` patterns. A point belongs to the sector `(pattern, th)` when its sign
//! pattern is `pattern` and its **measure** under a [`SectorRule`] exceeds `th` strictly:
//!
//! * [`SectorRule::Norm`] (default): measure `‖z_S‖₂`, "distance from the origin in those
//!   coordinates larger than th", as our issue words it. Sectors are orthants minus a ball.
//! * [`SectorRule::EveryCoordinate`]: measure `min_i |z_{S_i}|`, every selected coordinate
//!   beyond `th` — the paper's Fig. 7 reading, where neighbouring sectors are `2·th` apart.
//!
//! Codes are `N x d` with one row per point; functions take the variables as column indices.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use super::{check_finite, LatentError, Result};

/// Largest number of selected variables (`2^20` sectors).
pub const MAX_SELECTED: usize = 20;

/// How "far from the origin" is measured in the selected coordinates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SectorRule {
    /// `‖z_S‖₂ > th` (the default).
    #[default]
    Norm,
    /// `min_i |z_{S_i}| > th` (sectors `2·th` apart, the paper's Fig. 7).
    EveryCoordinate,
}

impl std::fmt::Display for SectorRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SectorRule::Norm => "norm",
            SectorRule::EveryCoordinate => "every-coordinate",
        })
    }
}

/// Errors unless `vars` are 1..=[`MAX_SELECTED`] distinct column indices of `z` (`N x d`) and
/// `z` is finite.
pub fn check_vars(z: &DMatrix<f32>, vars: &[usize]) -> Result<()> {
    if vars.is_empty() || vars.len() > MAX_SELECTED {
        return Err(LatentError::InvalidArgument(format!(
            "need 1 to {MAX_SELECTED} selected variables, got {}",
            vars.len()
        )));
    }
    for (i, &v) in vars.iter().enumerate() {
        if v >= z.ncols() {
            return Err(LatentError::Shape(format!(
                "selected variable {v} is out of range for codes of dimension {}",
                z.ncols()
            )));
        }
        if vars[..i].contains(&v) {
            return Err(LatentError::InvalidArgument(format!(
                "selected variable {v} appears twice"
            )));
        }
    }
    check_finite("codes", z)
}

/// Number of sectors, `2^n`, for `n` selected variables.
pub fn num_sectors(num_selected: usize) -> usize {
    1usize << num_selected.min(MAX_SELECTED)
}

/// Sign pattern of each of the `N` rows of `z` (`N x d`) on `vars` (ignores any threshold).
pub fn sector_of_points(z: &DMatrix<f32>, vars: &[usize]) -> Result<Vec<u32>> {
    check_vars(z, vars)?;
    Ok((0..z.nrows())
        .map(|r| {
            vars.iter()
                .enumerate()
                .filter(|(_, &v)| z[(r, v)] > 0.0)
                .fold(0u32, |acc, (i, _)| acc | (1 << i))
        })
        .collect())
}

/// Measure of each of the `N` rows of `z` (`N x d`) under `rule` on `vars`.
pub fn sector_measures(z: &DMatrix<f32>, vars: &[usize], rule: SectorRule) -> Result<Vec<f32>> {
    check_vars(z, vars)?;
    Ok((0..z.nrows())
        .map(|r| {
            let coords = vars.iter().map(|&v| z[(r, v)]);
            match rule {
                SectorRule::Norm => coords.map(|c| c * c).sum::<f32>().sqrt(),
                SectorRule::EveryCoordinate => coords.map(f32::abs).fold(f32::INFINITY, f32::min),
            }
        })
        .collect())
}

fn check_th(th: f32) -> Result<()> {
    if th.is_nan() {
        return Err(LatentError::InvalidArgument("threshold is NaN".into()));
    }
    Ok(())
}

/// Rows of `z` (`N x d`) in sector `(pattern, th)` under `rule`, in increasing order.
/// Errors when `pattern` has bits beyond `vars.len()` or `th` is NaN.
pub fn sector_members(
    z: &DMatrix<f32>,
    vars: &[usize],
    rule: SectorRule,
    pattern: u32,
    th: f32,
) -> Result<Vec<usize>> {
    check_th(th)?;
    let sectors = sector_of_points(z, vars)?;
    if pattern as usize >= num_sectors(vars.len()) {
        return Err(LatentError::InvalidArgument(format!(
            "pattern {pattern:#b} has bits beyond the {} selected variables",
            vars.len()
        )));
    }
    let measures = sector_measures(z, vars, rule)?;
    Ok((0..z.nrows())
        .filter(|&r| sectors[r] == pattern && measures[r] > th)
        .collect())
}

/// Number of points in each of the `2^n` sectors at threshold `th` (index = pattern). Points
/// with measure `≤ th` are in no sector, so the counts sum to at most `N`.
pub fn sector_counts(
    z: &DMatrix<f32>,
    vars: &[usize],
    rule: SectorRule,
    th: f32,
) -> Result<Vec<usize>> {
    Ok(occupancy_curve(z, vars, rule, &[th])?.remove(0))
}

/// Counts per sector (`2^n` each) for every threshold in `ths` (one vector per threshold, in
/// the order given). Counts never increase as the threshold grows.
pub fn occupancy_curve(
    z: &DMatrix<f32>,
    vars: &[usize],
    rule: SectorRule,
    ths: &[f32],
) -> Result<Vec<Vec<usize>>> {
    ths.iter().try_for_each(|&t| check_th(t))?;
    let sectors = sector_of_points(z, vars)?;
    let measures = sector_measures(z, vars, rule)?;
    let k = num_sectors(vars.len());
    Ok(ths
        .iter()
        .map(|&th| {
            let mut counts = vec![0usize; k];
            for (s, m) in sectors.iter().zip(&measures) {
                if *m > th {
                    counts[*s as usize] += 1;
                }
            }
            counts
        })
        .collect())
}

/// For each of the `2^n` sectors, the supremum of the thresholds leaving it inhabited: the
/// largest measure among its points (the sector is inhabited for every `th` strictly below
/// it); `None` for a sector with no point at all.
pub fn max_inhabited_threshold(
    z: &DMatrix<f32>,
    vars: &[usize],
    rule: SectorRule,
) -> Result<Vec<Option<f32>>> {
    let sectors = sector_of_points(z, vars)?;
    let measures = sector_measures(z, vars, rule)?;
    let mut best: Vec<Option<f32>> = vec![None; num_sectors(vars.len())];
    for (s, m) in sectors.iter().zip(&measures) {
        let slot = &mut best[*s as usize];
        if slot.is_none_or(|b| *m > b) {
            *slot = Some(*m);
        }
    }
    Ok(best)
}
