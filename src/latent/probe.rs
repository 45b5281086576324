//! Ground-truth probes ("All Roads Lead to Rome?", Badrinath et al.): how linearly a latent
//! space exposes known factors, and whether a probe trained on a target model's codes still
//! works on *mapped* source codes.
//!
//! - [`RidgeProbe`] / [`ridge_probe`]: affine ridge regression codes → real targets (e.g. the
//!   100 generating latents of synthfaces), scored by R² per output.
//! - [`LogisticProbe`] / [`classification_probe`]: multinomial logistic regression codes →
//!   classes (ORL identities), scored by accuracy.
//! - [`attribute_probe`]: CelebA's 40 binary attributes by a ridge classifier (±1 targets,
//!   sign of the prediction), all attributes in one solve.
//! - [`agreement`]: the fraction of samples on which two label vectors agree (the paper's
//!   post-map agreement: target probe on mapped source codes vs on the target's own codes).
//!
//! Codes are `N x d` matrices (one row per sample); sums are in `f64`.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use super::linalg::{centred, column_means, cross_products, solve_normal};
use super::{check_finite, check_same_rows, LatentError, Result};
use crate::data::Dataset;

/// Default ridge grid, *relative*: the penalty on the diagonal is `λ · trace(XᵀX) / d`.
pub const DEFAULT_LAMBDAS: [f64; 7] = [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];
/// Every `VALIDATION_EVERY`-th training row (rows `i % 5 == 4`) is the validation slice.
pub const VALIDATION_EVERY: usize = 5;

/// Held-out scores of a regression probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// R² per output column on the test rows (scikit-learn convention: `1 − SSE/SST` with the
    /// test mean; a constant test column scores 1 if predicted exactly, else 0).
    pub r2_per_output: Vec<f64>,
    /// Mean of `r2_per_output`.
    pub mean_r2: f64,
    /// The relative ridge penalty chosen.
    pub lambda: f64,
}

/// An affine ridge regression `y ≈ x·W + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct RidgeProbe {
    /// `d x m` weights.
    pub weight: DMatrix<f64>,
    /// Length `m` bias (not penalised).
    pub bias: DVector<f64>,
    /// Relative ridge penalty (see [`DEFAULT_LAMBDAS`]).
    pub lambda: f64,
}

fn check_xy(x: &DMatrix<f32>, y: &DMatrix<f32>) -> Result<()> {
    check_same_rows("codes", x, "targets", y)?;
    if x.nrows() == 0 || x.ncols() == 0 || y.ncols() == 0 {
        return Err(LatentError::NotEnoughPoints(format!(
            "a probe needs rows and columns, got codes {}x{} and targets {}x{}",
            x.nrows(),
            x.ncols(),
            y.nrows(),
            y.ncols()
        )));
    }
    check_finite("codes", x)?;
    check_finite("targets", y)
}

/// Rows `indices` of `m` (`indices.len() x m.ncols()`); errors on an index out of range.
pub fn select_rows(m: &DMatrix<f32>, indices: &[usize]) -> Result<DMatrix<f32>> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= m.nrows()) {
        return Err(LatentError::InvalidArgument(format!(
            "row {bad} out of range for {} rows",
            m.nrows()
        )));
    }
    Ok(DMatrix::from_fn(indices.len(), m.ncols(), |r, c| {
        m[(indices[r], c)]
    }))
}

impl RidgeProbe {
    /// Fits with one relative penalty `lambda ≥ 0` (x: `N x d`, y: `N x m`); the intercept is
    /// fitted by centring. `λ = 0` is least squares with the documented fallback of
    /// [`solve_normal`] when `XᵀX` is singular.
    pub fn fit_fixed(x: &DMatrix<f32>, y: &DMatrix<f32>, lambda: f64) -> Result<RidgeProbe> {
        check_xy(x, y)?;
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(LatentError::InvalidArgument(format!(
                "ridge penalty must be finite and ≥ 0, got {lambda}"
            )));
        }
        let (xc, x_mean) = centred(x);
        let (yc, y_mean) = centred(y);
        let (gram, xty) = cross_products(&xc, Some(&yc));
        let xty = xty.ok_or_else(|| LatentError::Degenerate("missing cross product".into()))?;
        let penalty = lambda * gram.trace() / x.ncols() as f64;
        let ridge = (penalty > 0.0).then_some(penalty);
        let (weight, _) = solve_normal(&gram, &xty, ridge, x.nrows())?;
        let bias = y_mean - weight.transpose() * x_mean;
        Ok(RidgeProbe {
            weight,
            bias,
            lambda,
        })
    }

    /// Fits choosing λ among `lambdas` by the summed squared error on a validation slice of
    /// the training rows (every [`VALIDATION_EVERY`]-th row, so ordered data is still mixed),
    /// fitting on the others; then refits on all training rows with the chosen λ. One λ skips
    /// the selection. Needs at least `VALIDATION_EVERY` rows to select.
    pub fn fit(x_train: &DMatrix<f32>, y_train: &DMatrix<f32>, lambdas: &[f64]) -> Result<Self> {
        check_xy(x_train, y_train)?;
        match lambdas {
            [] => Err(LatentError::InvalidArgument("no ridge penalties".into())),
            [lambda] => Self::fit_fixed(x_train, y_train, *lambda),
            _ => {
                let n = x_train.nrows();
                if n < VALIDATION_EVERY {
                    return Err(LatentError::NotEnoughPoints(format!(
                        "choosing λ needs at least {VALIDATION_EVERY} training rows, got {n}"
                    )));
                }
                let (fit_rows, val_rows): (Vec<usize>, Vec<usize>) =
                    (0..n).partition(|i| i % VALIDATION_EVERY != VALIDATION_EVERY - 1);
                let (xf, yf) = (
                    select_rows(x_train, &fit_rows)?,
                    select_rows(y_train, &fit_rows)?,
                );
                let (xv, yv) = (
                    select_rows(x_train, &val_rows)?,
                    select_rows(y_train, &val_rows)?,
                );
                let mut best: Option<(f64, f64)> = None;
                let mut last_err = None;
                for &lambda in lambdas {
                    match Self::fit_fixed(&xf, &yf, lambda).and_then(|p| p.sse(&xv, &yv)) {
                        Ok(sse) if best.is_none_or(|(b, _)| sse < b) => best = Some((sse, lambda)),
                        Ok(_) => {}
                        Err(e) => last_err = Some(e),
                    }
                }
                match (best, last_err) {
                    (Some((_, lambda)), _) => Self::fit_fixed(x_train, y_train, lambda),
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(LatentError::Degenerate("no λ could be fitted".into())),
                }
            }
        }
    }

    /// Predictions `x·W + b` (`N x m`) for codes `x` (`N x d`).
    pub fn predict(&self, x: &DMatrix<f32>) -> Result<DMatrix<f64>> {
        if x.ncols() != self.weight.nrows() {
            return Err(LatentError::Shape(format!(
                "codes have {} columns, the probe expects {}",
                x.ncols(),
                self.weight.nrows()
            )));
        }
        check_finite("codes", x)?;
        let mut out = x.map(f64::from) * &self.weight;
        for mut row in out.row_iter_mut() {
            row += self.bias.transpose();
        }
        Ok(out)
    }

    fn sse(&self, x: &DMatrix<f32>, y: &DMatrix<f32>) -> Result<f64> {
        let pred = self.predict(x)?;
        Ok(pred
            .iter()
            .zip(y.iter())
            .map(|(p, t)| (p - f64::from(*t)).powi(2))
            .sum())
    }

    /// R² per output of this probe on `x` (`N x d`) against `y` (`N x m`).
    pub fn score(&self, x: &DMatrix<f32>, y: &DMatrix<f32>) -> Result<ProbeReport> {
        check_xy(x, y)?;
        if y.ncols() != self.weight.ncols() {
            return Err(LatentError::Shape(format!(
                "targets have {} columns, the probe predicts {}",
                y.ncols(),
                self.weight.ncols()
            )));
        }
        let r2 = r2_scores(&self.predict(x)?, y)?;
        let mean_r2 = r2.iter().sum::<f64>() / r2.len() as f64;
        Ok(ProbeReport {
            r2_per_output: r2,
            mean_r2,
            lambda: self.lambda,
        })
    }
}

/// R² per column of predictions `pred` against `y` (both `N x m`), scikit-learn convention
/// (see [`ProbeReport::r2_per_output`]).
pub fn r2_scores(pred: &DMatrix<f64>, y: &DMatrix<f32>) -> Result<Vec<f64>> {
    if pred.shape() != y.shape() || y.nrows() == 0 {
        return Err(LatentError::Shape(format!(
            "predictions {}x{} vs targets {}x{}",
            pred.nrows(),
            pred.ncols(),
            y.nrows(),
            y.ncols()
        )));
    }
    let means = column_means(y);
    Ok((0..y.ncols())
        .map(|c| {
            let (mut sse, mut sst) = (0.0, 0.0);
            for r in 0..y.nrows() {
                let t = f64::from(y[(r, c)]);
                sse += (pred[(r, c)] - t).powi(2);
                sst += (t - means[c]).powi(2);
            }
            if sst > 1e-12 * y.nrows() as f64 {
                1.0 - sse / sst
            } else if sse <= 1e-12 * y.nrows() as f64 {
                1.0
            } else {
                0.0
            }
        })
        .collect())
}

/// Fits a [`RidgeProbe`] on the training rows (λ chosen among `lambdas`, see
/// [`RidgeProbe::fit`]) and scores it on the test rows. `x_*`: `N x d`, `y_*`: `N x m`.
pub fn ridge_probe(
    x_train: &DMatrix<f32>,
    y_train: &DMatrix<f32>,
    x_test: &DMatrix<f32>,
    y_test: &DMatrix<f32>,
    lambdas: &[f64],
) -> Result<ProbeReport> {
    RidgeProbe::fit(x_train, y_train, lambdas)?.score(x_test, y_test)
}

/// The generating latents of a synthetic dataset as an `N x generating_latent_dim` matrix
/// (synthfaces: `N x 100`). Errors when the dataset has none.
pub fn generating_latents(ds: &Dataset) -> Result<DMatrix<f32>> {
    let dim = ds.info.generating_latent_dim;
    match &ds.info.generating_latents {
        Some(v) if dim > 0 && v.len() == ds.len() * dim => {
            Ok(DMatrix::from_row_slice(ds.len(), dim, v))
        }
        _ => Err(LatentError::InvalidArgument(format!(
            "dataset {} has no generating latents",
            ds.id
        ))),
    }
}

fn check_codes_for(codes: &DMatrix<f32>, ds: &Dataset) -> Result<()> {
    if codes.nrows() != ds.len() {
        return Err(LatentError::Shape(format!(
            "{} code rows for the {} samples of dataset {}",
            codes.nrows(),
            ds.len(),
            ds.id
        )));
    }
    Ok(())
}

/// How linearly the codes (`N x d`, row `i` = sample `i` of `ds`) expose the generating
/// latents of a synthetic dataset: a [`ridge_probe`] over [`DEFAULT_LAMBDAS`] fitted on the
/// samples `train_idx`, scored on `test_idx`.
pub fn generating_factor_probe(
    codes: &DMatrix<f32>,
    ds: &Dataset,
    train_idx: &[usize],
    test_idx: &[usize],
) -> Result<ProbeReport> {
    check_codes_for(codes, ds)?;
    let y = generating_latents(ds)?;
    ridge_probe(
        &select_rows(codes, train_idx)?,
        &select_rows(&y, train_idx)?,
        &select_rows(codes, test_idx)?,
        &select_rows(&y, test_idx)?,
        &DEFAULT_LAMBDAS,
    )
}

/// Fraction of positions where `a` and `b` (equal lengths, non-empty) hold the same label.
pub fn agreement(a: &[u32], b: &[u32]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(LatentError::Shape(format!(
            "agreement needs two equally long non-empty label lists, got {} and {}",
            a.len(),
            b.len()
        )));
    }
    Ok(a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64)
}

/// Fraction of the most frequent label in `labels` (the majority-class baseline).
pub fn majority_baseline(labels: &[u32]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for &l in labels {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    counts.values().copied().max().unwrap_or(0) as f64 / labels.len().max(1) as f64
}

/// Options of [`LogisticProbe::fit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogisticOptions {
    /// Full-batch accelerated gradient steps.
    pub steps: usize,
    /// L2 penalty on the weights (not the biases), on the mean cross-entropy.
    pub l2: f64,
}

impl Default for LogisticOptions {
    fn default() -> Self {
        Self {
            steps: 300,
            l2: 1e-3,
        }
    }
}

/// Multinomial logistic regression on standardised codes (softmax over `C ≥ 2` classes).
#[derive(Clone, Debug, PartialEq)]
pub struct LogisticProbe {
    /// Length `d`: training column means.
    pub mean: DVector<f64>,
    /// Length `d`: training column standard deviations (1 for constant columns).
    pub scale: DVector<f64>,
    /// `(d + 1) x C`: weights of the standardised codes, last row the biases.
    pub weight: DMatrix<f64>,
}

/// Gradient of the mean softmax cross-entropy plus `l2·‖W‖²/2` (biases unpenalised).
fn softmax_gradient(
    a: &DMatrix<f64>,
    w: &DMatrix<f64>,
    one_hot: &DMatrix<f64>,
    l2: f64,
) -> DMatrix<f64> {
    let mut p = a * w;
    for mut row in p.row_iter_mut() {
        let m = row.max();
        row.apply(|v| *v = (*v - m).exp());
        let s = row.sum();
        row /= s;
    }
    p -= one_hot;
    let mut g = a.transpose() * p / a.nrows() as f64;
    let d = w.nrows() - 1;
    for c in 0..w.ncols() {
        for r in 0..d {
            g[(r, c)] += l2 * w[(r, c)];
        }
    }
    g
}

impl LogisticProbe {
    /// Standardised codes with a trailing column of ones: `N x (d + 1)`.
    fn design(&self, x: &DMatrix<f32>) -> DMatrix<f64> {
        let d = self.mean.len();
        DMatrix::from_fn(x.nrows(), d + 1, |r, c| {
            if c == d {
                1.0
            } else {
                (f64::from(x[(r, c)]) - self.mean[c]) / self.scale[c]
            }
        })
    }

    /// Fits on codes `x` (`N x d`) with `labels` (length `N`, each `< num_classes`) by
    /// Nesterov-accelerated full-batch gradient descent from zero, step `1/L` with
    /// `L = λmax(AᵀA/N)/2 + l2` (a bound on the loss' curvature, so it cannot diverge).
    pub fn fit(
        x: &DMatrix<f32>,
        labels: &[u32],
        num_classes: usize,
        opts: &LogisticOptions,
    ) -> Result<LogisticProbe> {
        let (n, d) = x.shape();
        if labels.len() != n || n == 0 || d == 0 {
            return Err(LatentError::Shape(format!(
                "{} labels for {n} codes of dimension {d}",
                labels.len()
            )));
        }
        if num_classes < 2 || labels.iter().any(|&l| l as usize >= num_classes) {
            return Err(LatentError::InvalidArgument(format!(
                "labels must lie in 0..{num_classes} with at least 2 classes"
            )));
        }
        if !(opts.l2.is_finite() && opts.l2 >= 0.0) {
            return Err(LatentError::InvalidArgument(format!("bad l2 {}", opts.l2)));
        }
        check_finite("codes", x)?;
        let mean = column_means(x);
        let scale = DVector::from_fn(d, |c, _| {
            let var = x
                .column(c)
                .iter()
                .map(|&v| (f64::from(v) - mean[c]).powi(2))
                .sum::<f64>()
                / n as f64;
            if var > 1e-24 {
                var.sqrt()
            } else {
                1.0
            }
        });
        let mut probe = LogisticProbe {
            mean,
            scale,
            weight: DMatrix::zeros(d + 1, num_classes),
        };
        let a = probe.design(x);
        let one_hot = DMatrix::from_fn(n, num_classes, |r, c| {
            f64::from(u8::from(labels[r] as usize == c))
        });
        let curvature = (a.transpose() * &a / n as f64)
            .symmetric_eigenvalues()
            .iter()
            .cloned()
            .fold(0.0f64, f64::max);
        let step = 1.0 / (0.5 * curvature + opts.l2).max(1e-12);
        let mut w = DMatrix::<f64>::zeros(d + 1, num_classes);
        let mut w_prev = w.clone();
        for t in 0..opts.steps {
            let beta = t as f64 / (t as f64 + 3.0);
            let y = &w + (&w - &w_prev) * beta;
            let g = softmax_gradient(&a, &y, &one_hot, opts.l2);
            w_prev = std::mem::replace(&mut w, y - g * step);
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err(LatentError::Degenerate(
                "logistic regression diverged".into(),
            ));
        }
        probe.weight = w;
        Ok(probe)
    }

    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.weight.ncols()
    }

    /// The most probable class of each row of `x` (`N x d`).
    pub fn predict(&self, x: &DMatrix<f32>) -> Result<Vec<u32>> {
        if x.ncols() != self.mean.len() {
            return Err(LatentError::Shape(format!(
                "codes have {} columns, the probe expects {}",
                x.ncols(),
                self.mean.len()
            )));
        }
        check_finite("codes", x)?;
        let logits = self.design(x) * &self.weight;
        Ok(logits
            .row_iter()
            .map(|row| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.map_or(0, |(c, _)| c as u32)
            })
            .collect())
    }

    /// Accuracy on codes `x` (`N x d`) with true `labels` (length `N ≥ 1`).
    pub fn accuracy(&self, x: &DMatrix<f32>, labels: &[u32]) -> Result<f64> {
        agreement(&self.predict(x)?, labels)
    }
}

/// Held-out scores of a classification probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Fraction of test samples classified correctly.
    pub accuracy: f64,
    /// Fraction of the most frequent test label (what a constant guess scores).
    pub majority_baseline: f64,
    /// Number of classes.
    pub num_classes: usize,
    /// Number of test samples.
    pub num_test: usize,
}

/// Fits a [`LogisticProbe`] (default options) on `x_train` (`N x d`) / `labels_train` and
/// scores it on `x_test` / `labels_test`; labels lie in `0..num_classes`.
pub fn classification_probe(
    x_train: &DMatrix<f32>,
    labels_train: &[u32],
    x_test: &DMatrix<f32>,
    labels_test: &[u32],
    num_classes: usize,
) -> Result<ClassificationReport> {
    let probe = LogisticProbe::fit(
        x_train,
        labels_train,
        num_classes,
        &LogisticOptions::default(),
    )?;
    Ok(ClassificationReport {
        accuracy: probe.accuracy(x_test, labels_test)?,
        majority_baseline: majority_baseline(labels_test),
        num_classes,
        num_test: labels_test.len(),
    })
}

/// The identity label of every sample (ORL: subject − 1) and the number of classes
/// (largest label + 1). Errors when the dataset has no identities.
pub fn identity_labels(ds: &Dataset) -> Result<(Vec<u32>, usize)> {
    match &ds.info.identity {
        Some(ids) if !ids.is_empty() => {
            let num_classes = ids.iter().copied().max().map_or(0, |m| m as usize + 1);
            Ok((ids.clone(), num_classes.max(2)))
        }
        _ => Err(LatentError::InvalidArgument(format!(
            "dataset {} has no identity labels",
            ds.id
        ))),
    }
}

/// Per-attribute held-out accuracy of a ridge classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttributeReport {
    /// Attribute names (CelebA's 40).
    pub names: Vec<String>,
    /// Test accuracy per attribute.
    pub accuracy: Vec<f64>,
    /// Majority-class test accuracy per attribute.
    pub majority_baseline: Vec<f64>,
    /// Mean of `accuracy`.
    pub mean_accuracy: f64,
    /// The relative ridge penalty chosen (jointly for all attributes).
    pub lambda: f64,
}

/// The attributes of `ds` as an `N x A` matrix of ±1. Errors when it has none.
pub fn attribute_matrix(ds: &Dataset) -> Result<DMatrix<f32>> {
    let a = ds.info.attribute_names.len();
    match &ds.info.attributes {
        Some(v) if a > 0 && v.len() == ds.len() * a => Ok(DMatrix::from_fn(ds.len(), a, |r, c| {
            f32::from(v[r * a + c])
        })),
        _ => Err(LatentError::InvalidArgument(format!(
            "dataset {} has no attributes",
            ds.id
        ))),
    }
}

/// Class labels from ridge predictions of ±1 targets: column `c` of `pred` (`N x A`) → 1 where
/// the prediction is ≥ 0, else 0.
pub fn sign_labels(pred: &DMatrix<f64>, c: usize) -> Vec<u32> {
    if c >= pred.ncols() {
        return Vec::new();
    }
    pred.column(c)
        .iter()
        .map(|&v| u32::from(v >= 0.0))
        .collect()
}

/// Binary attribute probes (CelebA): one ridge classifier on ±1 targets for all attributes
/// (λ chosen jointly, see [`RidgeProbe::fit`]), fitted on the samples `train_idx` of the codes
/// (`N x d`, row `i` = sample `i` of `ds`) and scored by sign accuracy on `test_idx`.
pub fn attribute_probe(
    codes: &DMatrix<f32>,
    ds: &Dataset,
    train_idx: &[usize],
    test_idx: &[usize],
) -> Result<AttributeReport> {
    check_codes_for(codes, ds)?;
    let attrs = attribute_matrix(ds)?;
    let probe = RidgeProbe::fit(
        &select_rows(codes, train_idx)?,
        &select_rows(&attrs, train_idx)?,
        &DEFAULT_LAMBDAS,
    )?;
    let pred = probe.predict(&select_rows(codes, test_idx)?)?;
    let truth = select_rows(&attrs, test_idx)?.map(f64::from);
    let (mut accuracy, mut baseline) = (Vec::new(), Vec::new());
    for c in 0..attrs.ncols() {
        let t = sign_labels(&truth, c);
        accuracy.push(agreement(&sign_labels(&pred, c), &t)?);
        baseline.push(majority_baseline(&t));
    }
    Ok(AttributeReport {
        names: ds.info.attribute_names.clone(),
        mean_accuracy: accuracy.iter().sum::<f64>() / accuracy.len().max(1) as f64,
        accuracy,
        majority_baseline: baseline,
        lambda: probe.lambda,
    })
}
