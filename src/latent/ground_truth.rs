//! The ground truth a dataset carries, and the probes on it that the CLI (`probe`) and the
//! explorer's Probes tab share: synthfaces' generating latents (ridge, R² per factor), ORL
//! identities (multinomial logistic regression, accuracy) and CelebA's binary attributes
//! (ridge classifier on ±1 targets, accuracy per attribute). Built on [`super::probe`].

use nalgebra::DMatrix;
use serde::Serialize;

use super::probe::{
    agreement, attribute_matrix, generating_latents, identity_labels, majority_baseline,
    select_rows, sign_labels, LogisticOptions, LogisticProbe, RidgeProbe, DEFAULT_LAMBDAS,
};
use super::{LatentError, Result};
use crate::data::{Dataset, Split};

/// What the probes predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeTask {
    /// The generating latents of a synthetic dataset (ridge, R² per factor).
    Factors,
    /// Identity labels (logistic regression, accuracy).
    Identity,
    /// Binary attributes (ridge classifier, accuracy per attribute).
    Attributes,
}

impl ProbeTask {
    /// What the score measures, in words.
    pub fn metric(self) -> &'static str {
        match self {
            ProbeTask::Factors => "mean R² of the generating factors (ridge)",
            ProbeTask::Identity => "identity accuracy (logistic regression)",
            ProbeTask::Attributes => "mean attribute accuracy (ridge classifier)",
        }
    }
}

/// One probe's held-out scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeScores {
    /// Mean R² (factors) or accuracy (identity, attributes).
    pub mean: f64,
    /// Per output (factor R² or attribute accuracy); empty for identity.
    pub per_output: Vec<f64>,
}

/// The ground truth of a dataset.
pub enum GroundTruth {
    /// `N x m` generating latents.
    Factors(DMatrix<f32>),
    /// Labels and number of classes.
    Identity(Vec<u32>, usize),
    /// `N x A` attributes (±1).
    Attributes(DMatrix<f32>),
}

/// A probe fitted on one model's codes.
pub enum FittedProbe {
    /// Ridge regression (factors) or ridge classifier (attributes).
    Ridge(RidgeProbe),
    /// Multinomial logistic regression (identities).
    Logistic(LogisticProbe),
}

/// Held-out scores and, for classification, the predicted labels per output.
pub struct Scored {
    /// The scores.
    pub scores: ProbeScores,
    /// Classification: predicted labels, one vector per output.
    pub labels: Option<Vec<Vec<u32>>>,
}

fn pick(l: &[u32], idx: &[usize]) -> Vec<u32> {
    idx.iter().map(|&i| l[i]).collect()
}

impl GroundTruth {
    /// The ground truth of `ds`: generating latents first, then identities, then attributes.
    pub fn of(ds: &Dataset) -> Result<GroundTruth> {
        if ds.info.generating_latents.is_some() {
            Ok(GroundTruth::Factors(generating_latents(ds)?))
        } else if ds.info.identity.is_some() {
            let (labels, n) = identity_labels(ds)?;
            Ok(GroundTruth::Identity(labels, n))
        } else if ds.info.attributes.is_some() {
            Ok(GroundTruth::Attributes(attribute_matrix(ds)?))
        } else {
            Err(LatentError::InvalidArgument(format!(
                "dataset {} has no ground truth to probe (generating latents, identities or attributes)",
                ds.id
            )))
        }
    }

    /// What is predicted.
    pub fn task(&self) -> ProbeTask {
        match self {
            GroundTruth::Factors(_) => ProbeTask::Factors,
            GroundTruth::Identity(..) => ProbeTask::Identity,
            GroundTruth::Attributes(_) => ProbeTask::Attributes,
        }
    }

    /// Fits a probe on `codes` (row `r` = sample `idx[r]`).
    pub fn fit(&self, codes: &DMatrix<f32>, idx: &[usize]) -> Result<FittedProbe> {
        Ok(match self {
            GroundTruth::Factors(y) | GroundTruth::Attributes(y) => FittedProbe::Ridge(
                RidgeProbe::fit(codes, &select_rows(y, idx)?, &DEFAULT_LAMBDAS)?,
            ),
            GroundTruth::Identity(l, n) => FittedProbe::Logistic(LogisticProbe::fit(
                codes,
                &pick(l, idx),
                *n,
                &LogisticOptions::default(),
            )?),
        })
    }

    /// Scores `probe` on `codes` (row `r` = sample `idx[r]`).
    pub fn score(
        &self,
        probe: &FittedProbe,
        codes: &DMatrix<f32>,
        idx: &[usize],
    ) -> Result<Scored> {
        match (self, probe) {
            (GroundTruth::Factors(y), FittedProbe::Ridge(p)) => {
                let r = p.score(codes, &select_rows(y, idx)?)?;
                Ok(Scored {
                    scores: ProbeScores {
                        mean: r.mean_r2,
                        per_output: r.r2_per_output,
                    },
                    labels: None,
                })
            }
            (GroundTruth::Identity(l, _), FittedProbe::Logistic(p)) => {
                let pred = p.predict(codes)?;
                let accuracy = agreement(&pred, &pick(l, idx))?;
                Ok(Scored {
                    scores: ProbeScores {
                        mean: accuracy,
                        per_output: Vec::new(),
                    },
                    labels: Some(vec![pred]),
                })
            }
            (GroundTruth::Attributes(a), FittedProbe::Ridge(p)) => {
                let pred = p.predict(codes)?;
                let truth = select_rows(a, idx)?.map(f64::from);
                let mut per_output = Vec::with_capacity(a.ncols());
                let mut labels = Vec::with_capacity(a.ncols());
                for c in 0..a.ncols() {
                    let l = sign_labels(&pred, c);
                    per_output.push(agreement(&l, &sign_labels(&truth, c))?);
                    labels.push(l);
                }
                let mean = per_output.iter().sum::<f64>() / per_output.len().max(1) as f64;
                Ok(Scored {
                    scores: ProbeScores { mean, per_output },
                    labels: Some(labels),
                })
            }
            _ => Err(LatentError::InvalidArgument(
                "the probe does not fit this kind of ground truth".into(),
            )),
        }
    }

    /// Majority-class test accuracy (mean over outputs) for classification tasks.
    pub fn majority(&self, idx: &[usize]) -> Result<Option<f64>> {
        Ok(match self {
            GroundTruth::Factors(_) => None,
            GroundTruth::Identity(l, _) => Some(majority_baseline(&pick(l, idx))),
            GroundTruth::Attributes(a) => {
                let t = select_rows(a, idx)?.map(f64::from);
                let sum: f64 = (0..a.ncols())
                    .map(|c| majority_baseline(&sign_labels(&t, c)))
                    .sum();
                Some(sum / a.ncols().max(1) as f64)
            }
        })
    }

    /// Names of the outputs (factor indices, attribute names); empty for identity.
    pub fn output_names(&self, ds: &Dataset) -> Vec<String> {
        match self {
            GroundTruth::Factors(y) => (0..y.ncols()).map(|i| format!("factor {i}")).collect(),
            GroundTruth::Identity(..) => Vec::new(),
            GroundTruth::Attributes(_) => ds.info.attribute_names.clone(),
        }
    }
}

/// Mean agreement of two lists of label vectors (one per output): the paper's post-map
/// agreement when `a` are the target probe's labels on mapped codes and `b` on its own codes.
pub fn mean_agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        return Err(LatentError::Shape(format!(
            "label lists for {} and {} outputs",
            a.len(),
            b.len()
        )));
    }
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        sum += agreement(x, y)?;
    }
    Ok(sum / a.len() as f64)
}

/// The probes' train and test samples of `ds` (the validation split stands in for a missing
/// test split). Errors when either is empty.
pub fn probe_splits(ds: &Dataset) -> Result<(Vec<usize>, Vec<usize>)> {
    let train = ds.indices(Split::Train);
    let mut test = ds.indices(Split::Test);
    if test.is_empty() {
        test = ds.indices(Split::Valid);
    }
    if train.is_empty() || test.is_empty() {
        return Err(LatentError::NotEnoughPoints(format!(
            "dataset {} needs a train and a test split for probes ({} train, {} test samples)",
            ds.id,
            train.len(),
            test.len()
        )));
    }
    Ok((train, test))
}
