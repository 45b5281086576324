//! Ground-truth probes on planted data: a linear factor, shuffled targets, class structure,
//! binary attributes, generating latents and identities of in-test datasets.

use latent_atlas::data::{Dataset, SampleInfo, Split, IMAGE_LEN};
use latent_atlas::latent::probe::{
    agreement, attribute_probe, classification_probe, generating_factor_probe, identity_labels,
    majority_baseline, ridge_probe, LogisticOptions, LogisticProbe, RidgeProbe, DEFAULT_LAMBDAS,
};
use latent_atlas::latent::LatentError;
use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gaussian(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> DMatrix<f32> {
    DMatrix::from_fn(rows, cols, |_, _| rng.sample(rand_distr::StandardNormal))
}

/// `x` (`n x 10`) and `y = x·w + 0.05·noise + 3` (`n x 3`).
fn planted(n: usize, seed: u64) -> (DMatrix<f32>, DMatrix<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = gaussian(n, 10, &mut rng);
    let w = gaussian(10, 3, &mut rng);
    let noise = gaussian(n, 3, &mut rng);
    let y = (&x * &w + noise * 0.05).add_scalar(3.0);
    (x, y)
}

fn split(x: &DMatrix<f32>, n_train: usize) -> (DMatrix<f32>, DMatrix<f32>) {
    (
        x.rows(0, n_train).into_owned(),
        x.rows(n_train, x.nrows() - n_train).into_owned(),
    )
}

#[test]
fn ridge_probe_recovers_a_planted_linear_factor() {
    let (x, y) = planted(400, 1);
    let ((xtr, xte), (ytr, yte)) = (split(&x, 300), split(&y, 300));
    let report = ridge_probe(&xtr, &ytr, &xte, &yte, &DEFAULT_LAMBDAS).unwrap();
    assert_eq!(report.r2_per_output.len(), 3);
    assert!(report.mean_r2 > 0.95, "{report:?}");
    assert!(DEFAULT_LAMBDAS.contains(&report.lambda));
}

#[test]
fn ridge_probe_on_shuffled_targets_scores_nothing() {
    let (x, y) = planted(400, 2);
    let mut order: Vec<usize> = (0..400).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(3));
    let y_shuffled = DMatrix::from_fn(400, 3, |r, c| y[(order[r], c)]);
    let ((xtr, xte), (ytr, yte)) = (split(&x, 300), split(&y_shuffled, 300));
    let report = ridge_probe(&xtr, &ytr, &xte, &yte, &DEFAULT_LAMBDAS).unwrap();
    assert!(report.mean_r2 < 0.1, "{report:?}");
}

#[test]
fn ridge_probe_rejects_bad_input() {
    let (x, y) = planted(50, 4);
    assert!(ridge_probe(&x, &y, &x, &y, &[]).is_err());
    assert!(ridge_probe(&x, &y, &x, &y, &[-1.0]).is_err());
    let mut bad = x.clone();
    bad[(3, 3)] = f32::NAN;
    assert!(matches!(
        ridge_probe(&bad, &y, &x, &y, &[0.1]),
        Err(LatentError::NonFinite { .. })
    ));
    assert!(ridge_probe(&x, &y.rows(0, 10).into_owned(), &x, &y, &[0.1]).is_err());
    let probe = RidgeProbe::fit(&x, &y, &[0.0]).unwrap();
    assert!(probe.predict(&DMatrix::zeros(2, 9)).is_err());
    // Constant codes cannot be probed.
    assert!(RidgeProbe::fit(&DMatrix::from_element(50, 10, 1.0), &y, &[0.0]).is_err());
}

/// `n` codes in 8 dimensions around `num_classes` well separated centres.
fn planted_classes(n: usize, num_classes: usize, seed: u64) -> (DMatrix<f32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres = gaussian(num_classes, 8, &mut rng) * 3.0;
    let labels: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..num_classes as u32))
        .collect();
    let noise = gaussian(n, 8, &mut rng);
    let x = DMatrix::from_fn(n, 8, |r, c| {
        centres[(labels[r] as usize, c)] + noise[(r, c)]
    });
    (x, labels)
}

#[test]
fn classification_probe_finds_planted_classes() {
    let (x, labels) = planted_classes(300, 5, 5);
    let (xtr, xte) = split(&x, 200);
    let report = classification_probe(&xtr, &labels[..200], &xte, &labels[200..], 5).unwrap();
    assert!(report.accuracy > 0.85, "{report:?}");
    assert!(report.majority_baseline < 0.5);
    assert_eq!(report.num_test, 100);

    // Shuffled labels: near chance.
    let mut shuffled = labels.clone();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(6));
    let chance = classification_probe(&xtr, &shuffled[..200], &xte, &shuffled[200..], 5).unwrap();
    assert!(chance.accuracy < 0.45, "{chance:?}");

    // Agreement of the probe with itself on identical codes, and on perturbed codes.
    let probe = LogisticProbe::fit(&xtr, &labels[..200], 5, &LogisticOptions::default()).unwrap();
    let own = probe.predict(&xte).unwrap();
    assert_eq!(agreement(&own, &own).unwrap(), 1.0);
    let mapped = probe.predict(&(&xte * 1.01)).unwrap();
    assert!(agreement(&mapped, &own).unwrap() > 0.9);
    assert!(agreement(&own, &own[..3]).is_err());
    assert!(LogisticProbe::fit(&xtr, &labels[..200], 4, &LogisticOptions::default()).is_err());
}

fn dataset(n: usize, info: SampleInfo) -> Dataset {
    Dataset {
        id: "test:planted".into(),
        sample_ids: (0..n).map(|i| format!("s{i}")).collect(),
        splits: (0..n)
            .map(|i| {
                if i % 4 == 0 {
                    Split::Test
                } else {
                    Split::Train
                }
            })
            .collect(),
        pixels: vec![0; n * IMAGE_LEN].into(),
        info,
        skipped: vec![],
    }
}

#[test]
fn dataset_probes_use_the_ground_truth() {
    let n = 240;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let latents = gaussian(n, 4, &mut rng);
    let mixing = gaussian(4, 6, &mut rng);
    let codes = &latents * &mixing + gaussian(n, 6, &mut rng) * 0.01;
    let (_, identity) = planted_classes(n, 3, 8);
    let attrs: Vec<i8> = (0..n)
        .flat_map(|r| {
            let a = if codes[(r, 0)] > 0.0 { 1 } else { -1 };
            let b = if codes[(r, 1)] - codes[(r, 2)] > 0.0 {
                1
            } else {
                -1
            };
            [a, b]
        })
        .collect();
    let info = SampleInfo {
        identity: Some(identity),
        attribute_names: vec!["A".into(), "B".into()],
        attributes: Some(attrs),
        generating_latent_dim: 4,
        generating_latents: Some(latents.transpose().as_slice().to_vec()),
    };
    let ds = dataset(n, info);
    ds.validate().unwrap();
    let (train, test) = (ds.indices(Split::Train), ds.indices(Split::Test));

    let r = generating_factor_probe(&codes, &ds, &train, &test).unwrap();
    assert!(r.mean_r2 > 0.99, "{r:?}");
    assert!(generating_factor_probe(&codes.rows(0, 10).into_owned(), &ds, &train, &test).is_err());

    let attr = attribute_probe(&codes, &ds, &train, &test).unwrap();
    assert_eq!(attr.names, vec!["A", "B"]);
    assert!(attr.accuracy.iter().all(|&a| a > 0.85), "{attr:?}");
    assert!(attr.mean_accuracy > attr.majority_baseline.iter().sum::<f64>() / 2.0 + 0.2);

    let (labels, num_classes) = identity_labels(&ds).unwrap();
    assert_eq!((labels.len(), num_classes), (n, 3));
    let no_info = dataset(10, SampleInfo::default());
    assert!(identity_labels(&no_info).is_err());
    assert!(generating_factor_probe(&DMatrix::zeros(10, 2), &no_info, &[0], &[1]).is_err());
    assert!((majority_baseline(&[1, 1, 2, 3]) - 0.5).abs() < 1e-12);
}

/// The shared ground-truth probes (CLI `probe` and the explorer's Probes tab) on CelebA-style
/// attributes: a planted attribute is recovered, a mapped copy of the codes agrees with the
/// probe's own labels, and a rotated-but-unmapped copy does not.
#[test]
fn ground_truth_probes_attributes_and_post_map_agreement() {
    use latent_atlas::latent::ground_truth::{
        mean_agreement, probe_splits, GroundTruth, ProbeTask,
    };
    let n = 400;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let codes = gaussian(n, 6, &mut rng);
    let attrs: Vec<i8> = (0..n)
        .flat_map(|r| {
            let a = if codes[(r, 0)] + 0.5 * codes[(r, 3)] > 0.0 {
                1
            } else {
                -1
            };
            let b = if codes[(r, 1)] > 0.8 { 1 } else { -1 };
            [a, b]
        })
        .collect();
    let info = SampleInfo {
        attribute_names: vec!["Smiling".into(), "Bald".into()],
        attributes: Some(attrs),
        ..SampleInfo::default()
    };
    let ds = dataset(n, info);
    ds.validate().unwrap();
    let truth = GroundTruth::of(&ds).unwrap();
    assert_eq!(truth.task(), ProbeTask::Attributes);
    assert_eq!(truth.output_names(&ds), vec!["Smiling", "Bald"]);
    let (train, test) = probe_splits(&ds).unwrap();
    let rows = |m: &DMatrix<f32>, idx: &[usize]| {
        DMatrix::from_fn(idx.len(), m.ncols(), |r, c| m[(idx[r], c)])
    };
    let probe = truth.fit(&rows(&codes, &train), &train).unwrap();
    let own = truth.score(&probe, &rows(&codes, &test), &test).unwrap();
    assert_eq!(own.scores.per_output.len(), 2);
    assert!(own.scores.per_output[0] > 0.9, "{:?}", own.scores);
    let majority = truth.majority(&test).unwrap().unwrap();
    assert!(
        own.scores.mean > majority + 0.05,
        "{} vs {majority}",
        own.scores.mean
    );

    // codes that went through an exact relocation and back: the probe's labels are unchanged
    let mapped = truth.score(&probe, &rows(&codes, &test), &test).unwrap();
    let same = mean_agreement(
        mapped.labels.as_ref().unwrap(),
        own.labels.as_ref().unwrap(),
    )
    .unwrap();
    assert!((same - 1.0).abs() < 1e-12);
    // a permutation of the code axes (a map that was never fitted) breaks the probe
    let permuted = DMatrix::from_fn(n, 6, |r, c| codes[(r, (c + 1) % 6)]);
    let wrong = truth.score(&probe, &rows(&permuted, &test), &test).unwrap();
    assert!(
        wrong.scores.per_output[0] < own.scores.per_output[0] - 0.2,
        "{:?}",
        wrong.scores
    );
    assert!(
        mean_agreement(wrong.labels.as_ref().unwrap(), own.labels.as_ref().unwrap()).unwrap()
            < same
    );

    // no ground truth, no splits: clear errors
    let bare = dataset(10, SampleInfo::default());
    let err = GroundTruth::of(&bare).err().unwrap().to_string();
    assert!(err.contains("no ground truth"), "{err}");
    let mut no_test = dataset(10, SampleInfo::default());
    no_test.splits = vec![Split::Train; 10];
    let err = probe_splits(&no_test).unwrap_err().to_string();
    assert!(err.contains("train and a test split"), "{err}");
    assert!(mean_agreement(&[], &[]).is_err());
}
