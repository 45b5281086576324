//! Points of the scatter plot: the source codes projected on two variables or on the first two
//! principal components, coloured by sign sector.

use nalgebra::{DMatrix, SymmetricEigen};

use super::settings::ScatterAxes;
use crate::worker::SectorData;

/// Projected points, one per sample, with colours and bounds.
#[derive(Clone, Debug, Default)]
pub struct ScatterData {
    /// `[x, y]` per sample (row i = sample i).
    pub points: Vec<[f32; 2]>,
    /// Colour per sample as `[r, g, b, a]`.
    pub colors: Vec<[u8; 4]>,
    /// `[min_x, min_y, max_x, max_y]`.
    pub bounds: [f32; 4],
    /// Axis names.
    pub axis_names: [String; 2],
    /// Changes whenever the points change (the GPU buffer is re-uploaded).
    pub generation: u64,
}

impl ScatterData {
    /// Projects `z` (`N x d`) on `axes`.
    pub fn new(
        z: &DMatrix<f32>,
        axes: ScatterAxes,
        sectors: Option<&SectorData>,
        generation: u64,
    ) -> ScatterData {
        let (n, d) = z.shape();
        let (points, axis_names): (Vec<[f32; 2]>, [String; 2]) = match axes {
            ScatterAxes::Vars(a, b) if a < d && b < d => (
                (0..n).map(|r| [z[(r, a)], z[(r, b)]]).collect(),
                [format!("z[{a}]"), format!("z[{b}]")],
            ),
            _ => (principal_plane(z), ["PC 1".into(), "PC 2".into()]),
        };
        let colors = (0..n)
            .map(|r| {
                sectors
                    .and_then(|s| s.patterns.get(r))
                    .map_or([120, 160, 220, 255], |&p| sector_color(p))
            })
            .collect();
        let mut bounds = [
            f32::INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        ];
        for p in &points {
            bounds[0] = bounds[0].min(p[0]);
            bounds[1] = bounds[1].min(p[1]);
            bounds[2] = bounds[2].max(p[0]);
            bounds[3] = bounds[3].max(p[1]);
        }
        if points.is_empty() {
            bounds = [-1.0, -1.0, 1.0, 1.0];
        }
        ScatterData {
            points,
            colors,
            bounds,
            axis_names,
            generation,
        }
    }

    /// Index of the point nearest to `p`.
    pub fn nearest(&self, p: [f32; 2]) -> Option<usize> {
        self.points
            .iter()
            .enumerate()
            .map(|(i, q)| (i, (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

/// A distinct colour per sign pattern (golden-angle hues).
pub fn sector_color(pattern: u32) -> [u8; 4] {
    let h = (pattern as f32 * 0.618_034).fract();
    let c = egui_hsv(h, 0.65, 0.95);
    [c[0], c[1], c[2], 255]
}

fn egui_hsv(h: f32, s: f32, v: f32) -> [u8; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let (r, g, b) = match i as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
}

/// Rows of `z` projected on its first two principal components (zeros when `d < 2`).
/// Codes wider than this (a normalizing flow's 12,288 dimensions) get their principal plane by
/// subspace iteration on a row sample instead of the `d x d` covariance's eigendecomposition.
const WIDE_CODES: usize = 256;

fn principal_plane(z: &DMatrix<f32>) -> Vec<[f32; 2]> {
    let (n, d) = z.shape();
    if n == 0 || d == 0 {
        return Vec::new();
    }
    if d > WIDE_CODES {
        return wide_principal_plane(z);
    }
    // mean of all rows; covariance of at most COVARIANCE_ROWS evenly spaced rows (the plane of
    // 200,000 codes is the plane of 20,000 of them to plotting accuracy, at a tenth of the cost)
    // (nalgebra is column-major: walk columns)
    let mean: Vec<f64> = z
        .column_iter()
        .map(|col| col.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64)
        .collect();
    let rows: Vec<usize> = (0..n).step_by(n.div_ceil(COVARIANCE_ROWS).max(1)).collect();
    let c = DMatrix::<f64>::from_fn(rows.len(), d, |r, j| f64::from(z[(rows[r], j)]) - mean[j]);
    let cov = c.tr_mul(&c) / (rows.len().max(2) as f64 - 1.0);
    let eig = SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let axes: Vec<Vec<f64>> = order
        .iter()
        .take(2)
        .map(|&j| eig.eigenvectors.column(j).iter().copied().collect())
        .collect();
    let mut proj = vec![[0.0f64; 2]; n];
    for (j, col) in z.column_iter().enumerate() {
        let (a0, a1, m) = (axes[0][j], axes.get(1).map_or(0.0, |a| a[j]), mean[j]);
        for (p, &v) in proj.iter_mut().zip(col.iter()) {
            let c = f64::from(v) - m;
            p[0] += c * a0;
            p[1] += c * a1;
        }
    }
    proj.into_iter()
        .map(|p| [p[0] as f32, p[1] as f32])
        .collect()
}

/// Rows whose covariance gives the principal plane (all rows when there are fewer).
const COVARIANCE_ROWS: usize = 20_000;

/// The first two principal axes of wide codes without forming the `d x d` covariance: block
/// power (subspace) iteration `V ← orth(Cᵀ C V)` on at most 500 evenly spaced centred rows
/// (20 rounds from a fixed start, so the plot is deterministic), then every row projected.
fn wide_principal_plane(z: &DMatrix<f32>) -> Vec<[f32; 2]> {
    let (n, d) = z.shape();
    let mean = z.row_mean();
    let rows: Vec<usize> = (0..n).step_by((n / 500).max(1)).collect();
    let c = DMatrix::<f32>::from_fn(rows.len(), d, |r, j| z[(rows[r], j)] - mean[j]);
    let mut v = DMatrix::<f32>::from_fn(d, 2, |i, j| {
        (((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0) - 0.5
    });
    for _ in 0..20 {
        let w = c.tr_mul(&(&c * &v));
        if w.iter().any(|x| !x.is_finite()) || w.norm() == 0.0 {
            break;
        }
        v = w.qr().q();
    }
    (0..n)
        .map(|r| {
            let mut p = [0.0f32; 2];
            for (k, out) in p.iter_mut().enumerate() {
                *out = (0..d).map(|j| (z[(r, j)] - mean[j]) * v[(j, k)]).sum();
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes of width 300 with two planted directions of large variance: the subspace
    /// iteration finds the same plane as the covariance eigendecomposition (up to sign).
    #[test]
    fn wide_codes_get_the_same_principal_plane() {
        let (n, d) = (1200, 300);
        let mut state = 12345u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let z = DMatrix::<f32>::from_fn(n, d, |r, j| {
            let a = ((r * 37 % 101) as f32 - 50.0) / 10.0;
            let b = ((r * 53 % 89) as f32 - 44.0) / 20.0;
            let planted = if j == 3 {
                a
            } else if j == 250 {
                b
            } else {
                0.0
            };
            planted + 0.1 * noise()
        });
        let wide = wide_principal_plane(&z);
        assert_matches_exact_plane(&z, &wide);
    }

    /// Codes with more rows than `COVARIANCE_ROWS` (the plane comes from a row sample): the
    /// same plane as the full covariance's.
    #[test]
    fn many_codes_get_the_full_data_principal_plane() {
        let (n, d) = (3 * COVARIANCE_ROWS + 17, 8);
        let z = DMatrix::<f32>::from_fn(n, d, |r, j| {
            let a = ((r * 37 % 101) as f32 - 50.0) / 10.0;
            let b = ((r * 53 % 89) as f32 - 44.0) / 20.0;
            let noise = ((r * 7 + j * 13) % 17) as f32 / 170.0;
            match j {
                1 => a + b * 0.3,
                5 => b - a * 0.2,
                _ => noise,
            }
        });
        let plane = principal_plane(&z);
        assert_eq!(plane.len(), n);
        assert_matches_exact_plane(&z, &plane);
    }

    /// `approx` spans the same first two principal components as the exact eigendecomposition
    /// of the full covariance (each component up to sign).
    fn assert_matches_exact_plane(z: &DMatrix<f32>, approx_plane: &[[f32; 2]]) {
        let d = z.ncols();
        let wide = approx_plane;
        let mut c = z.map(f64::from);
        let mean = c.row_mean();
        for mut row in c.row_iter_mut() {
            row -= &mean;
        }
        let eig = SymmetricEigen::new(c.tr_mul(&c));
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        for k in 0..2 {
            let exact: Vec<f64> = (c.clone() * eig.eigenvectors.column(order[k]))
                .iter()
                .copied()
                .collect();
            let approx: Vec<f64> = wide.iter().map(|p| f64::from(p[k])).collect();
            let dot: f64 = exact.iter().zip(&approx).map(|(a, b)| a * b).sum();
            let na = exact.iter().map(|a| a * a).sum::<f64>().sqrt();
            let nb = approx.iter().map(|b| b * b).sum::<f64>().sqrt();
            assert!(
                (dot / (na * nb)).abs() > 0.999,
                "component {k}: |cos| = {}",
                (dot / (na * nb)).abs()
            );
        }
    }
}
