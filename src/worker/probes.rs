//! Ground-truth probes of the active pair ("All Roads Lead to Rome?"), run on the geometry
//! thread with the engine's probes ([`crate::latent::ground_truth`], shared with the CLI's
//! `probe`): each model's own probe on its test codes, and the target's probe on the *mapped*
//! source codes (through the current map). Synthetic faces: ridge R² of the generating
//! latents; ORL: identity accuracy (logistic); CelebA: attribute accuracy (ridge classifier).

use std::time::Instant;

use anyhow::{Context as _, Result};

use super::progress::ChannelProgress;
use super::{ActivePair, ProbeResult};
use crate::latent::ground_truth::{mean_agreement, probe_splits, GroundTruth};
use crate::latent::LatentError;
use crate::progress::{Cancel, Progress};

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
    let truth = GroundTruth::of(ds)?;
    let (train, test) = probe_splits(ds)?;
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
    let source_own = truth.score(&src_probe, &src_test, &test)?.scores;
    step(1)?;
    let tgt_probe = truth
        .fit(&tgt.encodings.rows(&train), &train)
        .with_context(|| format!("probe on {}", tgt.name()))?;
    let own = truth.score(&tgt_probe, &tgt.encodings.rows(&test), &test)?;
    step(2)?;
    let mapped_codes = map.apply(&src_test).context("mapping the test codes")?;
    let mapped = truth
        .score(&tgt_probe, &mapped_codes, &test)
        .context("the target's probe on mapped source codes")?;
    let agreement = match (&mapped.labels, &own.labels) {
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
        target_own: own.scores,
        mapped: mapped.scores,
        agreement,
        majority_baseline: truth.majority(&test)?,
        map_estimator: map.estimator.to_string(),
        compute_secs: t0.elapsed().as_secs_f64(),
    })
}
