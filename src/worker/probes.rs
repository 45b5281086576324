//! Ground-truth probes of the active pair ("All Roads Lead to Rome?"), run on the geometry
//! thread with the engine's probes ([`crate::latent::probe`]): each model's own probe on its
//! test codes, and the target's probe on the *mapped* source codes (through the current map).
//! Synthetic faces: ridge R² of the generating latents; ORL: identity accuracy (logistic);
//! CelebA: attribute accuracy (ridge classifier).

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use nalgebra::DMatrix;

use super::progress::ChannelProgress;
use super::{ActivePair, ProbeResult, ProbeScores, ProbeTask};
use crate::data::{Dataset, Split};
use crate::latent::probe::{
    agreement, attribute_matrix, generating_latents, identity_labels, majority_baseline,
    select_rows, sign_labels, LogisticOptions, LogisticProbe, RidgeProbe, DEFAULT_LAMBDAS,
};
use crate::latent::LatentError;
use crate::progress::{Cancel, Progress};

/// The ground truth of a dataset.
enum Truth {
    /// `N x m` generating latents.
    Factors(DMatrix<f32>),
    /// Labels and number of classes.
    Identity(Vec<u32>, usize),
    /// `N x A` attributes (±1).
    Attributes(DMatrix<f32>),
}

/// A fitted probe.
enum Fitted {
    Ridge(RidgeProbe),
    Logistic(LogisticProbe),
}

/// Scores and, for classification, the predicted labels per output.
type Scored = (ProbeScores, Option<Vec<Vec<u32>>>);

impl Truth {
    fn of(ds: &Dataset) -> Result<Truth> {
        if ds.info.generating_latents.is_some() {
            Ok(Truth::Factors(generating_latents(ds)?))
        } else if ds.info.identity.is_some() {
            let (labels, n) = identity_labels(ds)?;
            Ok(Truth::Identity(labels, n))
        } else if ds.info.attributes.is_some() {
            Ok(Truth::Attributes(attribute_matrix(ds)?))
        } else {
            bail!(
                "dataset {} has no ground truth to probe (generating latents, identities or attributes)",
                ds.id
            )
        }
    }

    fn task(&self) -> ProbeTask {
        match self {
            Truth::Factors(_) => ProbeTask::Factors,
            Truth::Identity(..) => ProbeTask::Identity,
            Truth::Attributes(_) => ProbeTask::Attributes,
        }
    }

    fn labels(l: &[u32], idx: &[usize]) -> Vec<u32> {
        idx.iter().map(|&i| l[i]).collect()
    }

    /// Fits a probe on `codes` (rows = samples `idx`).
    fn fit(&self, codes: &DMatrix<f32>, idx: &[usize]) -> Result<Fitted> {
        Ok(match self {
            Truth::Factors(y) | Truth::Attributes(y) => Fitted::Ridge(RidgeProbe::fit(
                codes,
                &select_rows(y, idx)?,
                &DEFAULT_LAMBDAS,
            )?),
            Truth::Identity(l, n) => Fitted::Logistic(LogisticProbe::fit(
                codes,
                &Self::labels(l, idx),
                *n,
                &LogisticOptions::default(),
            )?),
        })
    }

    /// Scores `probe` on `codes` (rows = samples `idx`).
    fn score(&self, probe: &Fitted, codes: &DMatrix<f32>, idx: &[usize]) -> Result<Scored> {
        match (self, probe) {
            (Truth::Factors(y), Fitted::Ridge(p)) => {
                let r = p.score(codes, &select_rows(y, idx)?)?;
                Ok((
                    ProbeScores {
                        mean: r.mean_r2,
                        per_output: r.r2_per_output,
                    },
                    None,
                ))
            }
            (Truth::Identity(l, _), Fitted::Logistic(p)) => {
                let pred = p.predict(codes)?;
                let accuracy = agreement(&pred, &Self::labels(l, idx))?;
                Ok((
                    ProbeScores {
                        mean: accuracy,
                        per_output: Vec::new(),
                    },
                    Some(vec![pred]),
                ))
            }
            (Truth::Attributes(a), Fitted::Ridge(p)) => {
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
                Ok((ProbeScores { mean, per_output }, Some(labels)))
            }
            _ => bail!("probe and ground truth do not match"),
        }
    }

    /// Majority-class test accuracy (mean over outputs) for classification tasks.
    fn majority(&self, idx: &[usize]) -> Result<Option<f64>> {
        Ok(match self {
            Truth::Factors(_) => None,
            Truth::Identity(l, _) => Some(majority_baseline(&Self::labels(l, idx))),
            Truth::Attributes(a) => {
                let t = select_rows(a, idx)?.map(f64::from);
                let sum: f64 = (0..a.ncols())
                    .map(|c| majority_baseline(&sign_labels(&t, c)))
                    .sum();
                Some(sum / a.ncols().max(1) as f64)
            }
        })
    }

    fn output_names(&self, ds: &Dataset) -> Vec<String> {
        match self {
            Truth::Factors(y) => (0..y.ncols()).map(|i| format!("factor {i}")).collect(),
            Truth::Identity(..) => Vec::new(),
            Truth::Attributes(_) => ds.info.attribute_names.clone(),
        }
    }
}

/// Mean agreement of two lists of label vectors (one per output).
fn mean_agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> Result<f64> {
    if a.len() != b.len() || a.is_empty() {
        bail!("label lists of different lengths");
    }
    let mut sum = 0.0;
    for (x, y) in a.iter().zip(b) {
        sum += agreement(x, y)?;
    }
    Ok(sum / a.len() as f64)
}

/// The probes of `pair`: source own, target own, target probe on mapped source test codes.
pub(crate) fn run_probes(
    pair: &ActivePair,
    progress: &ChannelProgress,
    cancel: &Cancel,
) -> Result<ProbeResult> {
    let t0 = Instant::now();
    let ds = &pair.dataset;
    let map = pair
        .map
        .as_ref()
        .context("no map fitted yet: the probes after the map need one")?;
    let truth = Truth::of(ds)?;
    let train = ds.indices(Split::Train);
    let mut test = ds.indices(Split::Test);
    if test.is_empty() {
        test = ds.indices(Split::Valid);
    }
    if train.is_empty() || test.is_empty() {
        bail!(
            "dataset {} needs a train and a test split for probes",
            ds.id
        );
    }
    let (src, tgt) = (&pair.source, &pair.target);
    let step = |done: u64| -> Result<()> {
        progress.update(done, "");
        if cancel.is_cancelled() {
            return Err(LatentError::Cancelled.into());
        }
        Ok(())
    };
    progress.start(&format!("probes of {} and {}", src.name(), tgt.name()), 3);
    let src_test = src.encodings.rows(&test);
    let src_probe = truth
        .fit(&src.encodings.rows(&train), &train)
        .with_context(|| format!("probe on {}", src.name()))?;
    let (source_own, _) = truth.score(&src_probe, &src_test, &test)?;
    step(1)?;
    let tgt_probe = truth
        .fit(&tgt.encodings.rows(&train), &train)
        .with_context(|| format!("probe on {}", tgt.name()))?;
    let (target_own, own_labels) = truth.score(&tgt_probe, &tgt.encodings.rows(&test), &test)?;
    step(2)?;
    let mapped_codes = map.apply(&src_test).context("mapping the test codes")?;
    let (mapped, mapped_labels) = truth
        .score(&tgt_probe, &mapped_codes, &test)
        .context("the target's probe on mapped source codes")?;
    let agreement = match (&mapped_labels, &own_labels) {
        (Some(m), Some(o)) => Some(mean_agreement(m, o)?),
        _ => None,
    };
    progress.finish("");
    Ok(ProbeResult {
        dataset: ds.id.clone(),
        task: truth.task(),
        output_names: truth.output_names(ds),
        num_train: train.len(),
        num_test: test.len(),
        source: src.name().to_string(),
        target: tgt.name().to_string(),
        source_own,
        target_own,
        mapped,
        agreement,
        majority_baseline: truth.majority(&test)?,
        map_estimator: map.estimator.to_string(),
        compute_secs: t0.elapsed().as_secs_f64(),
    })
}
