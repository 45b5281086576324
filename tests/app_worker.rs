//! The worker on its own: a sync produces every result event in order, a burst of slider
//! decodes is coalesced so that only the newest ones are decoded, and the geometry thread
//! answers local bases (cached), traversals and probes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use latent_atlas::latent::pipeline::FitOn;
use latent_atlas::latent::Estimator;
use latent_atlas::model::{save_model, Family, Model, ModelConfig};
use latent_atlas::worker::{
    Command, Event, FitSpec, PairSpec, ProbeTask, SupportChoice, Worker, WorkerConfig,
};

fn tiny_model(dir: &std::path::Path, name: &str, seed: u64) -> std::path::PathBuf {
    let mut cfg = ModelConfig::new(name, Family::Vae, 8);
    cfg.base_channels = 4;
    let model = Model::new(cfg, &candle_core::Device::Cpu, seed, false).unwrap();
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    save_model(&model, &out, false).unwrap();
    out
}

fn wait_for(worker: &Worker, events: &mut Vec<Event>, done: impl Fn(&Event) -> bool) {
    let start = Instant::now();
    loop {
        for e in worker.drain() {
            let stop = done(&e);
            events.push(e);
            if stop {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out; events so far: {}",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A worker with two tiny VAEs on ORL, synced (map fitted, metrics done); the sync's events.
fn synced_worker(tmp: &std::path::Path) -> (Worker, Vec<Event>) {
    let (a, b) = (tiny_model(tmp, "a", 1), tiny_model(tmp, "b", 2));
    let mut worker = Worker::spawn(
        WorkerConfig {
            cache_dir: tmp.join("cache"),
            device: "cpu".into(),
        },
        Arc::new(|| {}),
    )
    .unwrap();
    let req = worker.next_req();
    let fit = FitSpec {
        estimator: Estimator::Lstsq,
        fit_on: FitOn::SupportSet,
        support: SupportChoice::Sectors { seed: 0 },
        num_selected: 7,
        max_eval: 64,
        gain_images: 64,
    };
    worker
        .send(Command::Sync {
            req,
            pair: PairSpec {
                dataset: "orl".into(),
                source_dir: a,
                target_dir: b,
            },
            fit,
        })
        .unwrap();
    let mut events = Vec::new();
    wait_for(
        &worker,
        &mut events,
        |e| matches!(e, Event::Finished { req: r } | Event::Failed { req: r, .. } if *r == req),
    );
    (worker, events)
}

#[test]
fn worker_syncs_a_pair_and_coalesces_decodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut worker, events) = synced_worker(tmp.path());
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::DatasetReady { .. } => Some("dataset"),
            Event::PairReady { .. } => Some("pair"),
            Event::SupportReady { .. } => Some("support"),
            Event::FitReady { .. } => Some("fit"),
            Event::MetricsReady { .. } => Some("metrics"),
            Event::Finished { .. } => Some("finished"),
            Event::Failed { error, .. } => panic!("sync failed: {error}"),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        ["dataset", "pair", "support", "fit", "metrics", "finished"]
    );

    let burst = 200;
    let mut last = 0;
    for k in 0..burst {
        last = worker.next_req();
        let z = vec![k as f32 / burst as f32; 8];
        worker
            .send(Command::Decode {
                req: last,
                z_in_source: z,
                sample: Some(0),
            })
            .unwrap();
    }
    let mut decoded = Vec::new();
    wait_for(
        &worker,
        &mut decoded,
        |e| matches!(e, Event::Decoded { req, .. } | Event::Failed { req, .. } if *req == last),
    );
    let n = decoded
        .iter()
        .filter(|e| matches!(e, Event::Decoded { .. }))
        .count();
    assert!(
        n < burst,
        "the decode thread must skip stale requests ({n} of {burst} decoded)"
    );
    match decoded.last() {
        Some(Event::Decoded {
            mapped_rgb,
            source_mse,
            ..
        }) => {
            assert_eq!(mapped_rgb.as_ref().map(Vec::len), Some(64 * 64 * 3));
            assert!(source_mse.is_some());
        }
        other => panic!("expected the newest decode, got {other:?}"),
    }
}

/// Sends `cmd` and collects events until its request ends; panics on failure.
fn run_to_end(worker: &Worker, cmd: Command) -> Vec<Event> {
    let events = events_until_end(worker, cmd);
    if let Some(Event::Failed { req, error }) = events.last() {
        panic!("request {req} failed: {error}");
    }
    events
}

/// Sends `cmd` and collects events until its request finishes, fails or is cancelled.
fn events_until_end(worker: &Worker, cmd: Command) -> Vec<Event> {
    let req = cmd.req();
    worker.send(cmd).unwrap();
    let mut events = Vec::new();
    wait_for(
        worker,
        &mut events,
        |e| matches!(e, Event::Finished { req: r } | Event::Failed { req: r, .. } | Event::Cancelled { req: r } if *r == req),
    );
    events
}

#[test]
fn worker_computes_local_bases_traversals_and_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut worker, events) = synced_worker(tmp.path());
    let z0: Vec<f32> = events
        .iter()
        .find_map(|e| match e {
            Event::PairReady { z_in_source, .. } => {
                Some(z_in_source.row(5).iter().copied().collect())
            }
            _ => None,
        })
        .expect("the pair's codes");

    let basis_of = |events: &[Event]| {
        events
            .iter()
            .find_map(|e| match e {
                Event::LocalBasisReady { basis, .. } => Some(basis.clone()),
                _ => None,
            })
            .expect("a local basis")
    };
    let req = worker.next_req();
    let k = 4;
    let first = basis_of(&run_to_end(
        &worker,
        Command::LocalBasis {
            req,
            source: "a".into(),
            z_in_source: z0.clone(),
            k,
        },
    ));
    assert_eq!(first.directions.shape(), (8, k));
    let gram = first.directions.transpose() * &first.directions;
    for i in 0..k {
        for j in 0..k {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!(
                (gram[(i, j)] - want).abs() < 1e-4,
                "VᵀV[{i},{j}] = {}",
                gram[(i, j)]
            );
        }
    }
    assert!(first
        .singular_values
        .windows(2)
        .all(|w| w[0] >= w[1] && w[1] >= 0.0));
    assert!(first.compute_secs > 0.0);
    let t = first
        .transfer
        .clone()
        .expect("a transfer once the map is fitted")
        .expect("the transfer succeeds");
    assert_eq!(t.angles.len(), k);
    assert_eq!(t.cosines.shape(), (k, k));
    assert!(t.geodesic.is_finite() && t.geodesic >= 0.0 && t.geodesic <= t.max_geodesic + 1e-9);
    assert!(t.random_geodesic > 0.0 && t.random_geodesic <= t.max_geodesic);
    assert!(t.cosines.iter().all(|c| (0.0..=1.0 + 1e-5).contains(c)));

    // The same point again comes from the cache, fewer directions are a prefix of the basis.
    let req = worker.next_req();
    let again = basis_of(&run_to_end(
        &worker,
        Command::LocalBasis {
            req,
            source: "a".into(),
            z_in_source: z0.clone(),
            k: 2,
        },
    ));
    assert_eq!(
        again.compute_secs, 0.0,
        "the second request is served from the cache"
    );
    assert_eq!(
        again.directions,
        first.directions.columns(0, 2).into_owned()
    );
    assert_eq!(again.singular_values, first.singular_values[..2].to_vec());

    // A request for a model that is no longer active is dropped, bad input is an error.
    let req = worker.next_req();
    let stale = events_until_end(
        &worker,
        Command::LocalBasis {
            req,
            source: "b".into(),
            z_in_source: z0.clone(),
            k: 2,
        },
    );
    assert!(matches!(stale.last(), Some(Event::Cancelled { .. })));
    let req = worker.next_req();
    let bad = events_until_end(
        &worker,
        Command::LocalBasis {
            req,
            source: "a".into(),
            z_in_source: z0.clone(),
            k: 9,
        },
    );
    match bad.last() {
        Some(Event::Failed { error, .. }) => assert!(error.contains("1 ≤ k ≤ 8"), "{error}"),
        other => panic!("k = 9 > d must fail, got {other:?}"),
    }

    for curve in [false, true] {
        let req = worker.next_req();
        let steps = 3;
        let events = run_to_end(
            &worker,
            Command::Traverse {
                req,
                source: "a".into(),
                z_in_source: z0.clone(),
                direction: 1,
                curve,
                steps,
                range: 1.5,
                strip_frames: 5,
            },
        );
        let tr = events
            .iter()
            .find_map(|e| match e {
                Event::TraversalReady { traversal, .. } => Some(traversal.clone()),
                _ => None,
            })
            .expect("a traversal");
        assert_eq!(tr.path.len(), 2 * steps + 1);
        assert_eq!(tr.path[steps], z0, "the path passes through the base point");
        assert!((tr.offsets[0] + 1.5).abs() < 1e-5 && (tr.offsets[2 * steps] - 1.5).abs() < 1e-5);
        assert_eq!(tr.strip_indices, vec![0, 2, 3, 5, 6]);
        assert_eq!(tr.strip_source.len(), 5);
        assert_eq!(tr.strip_target.len(), 5);
        assert!(tr.strip_source.iter().all(|f| f.len() == 64 * 64 * 3));
        // Each step has the requested length along the path.
        for w in tr.path.windows(2) {
            let step: f32 = w[0]
                .iter()
                .zip(&w[1])
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!((step - 0.5).abs() < 1e-3, "step length {step}");
        }
        if curve {
            assert!(tr.end_deviation.is_finite());
        } else {
            assert_eq!(tr.end_deviation, 0.0);
            // The straight line runs along direction 1 of the basis.
            let v = first.directions.column(1);
            for (i, code) in tr.path.iter().enumerate() {
                for j in 0..8 {
                    let want = z0[j] + tr.offsets[i] * v[j];
                    assert!((code[j] - want).abs() < 1e-4);
                }
            }
        }
    }

    let req = worker.next_req();
    let probes = run_to_end(&worker, Command::Probes { req })
        .into_iter()
        .find_map(|e| match e {
            Event::ProbesReady { probes, .. } => Some(probes),
            _ => None,
        })
        .expect("probe results");
    assert_eq!(probes.task, ProbeTask::Identity);
    assert_eq!((probes.num_train, probes.num_test), (320, 80));
    for s in [&probes.source_own, &probes.target_own, &probes.mapped] {
        assert!((0.0..=1.0).contains(&s.mean), "accuracy {}", s.mean);
    }
    assert!((probes.majority_baseline.unwrap() - 1.0 / 40.0).abs() < 1e-9);
    assert!((0.0..=1.0).contains(&probes.agreement.unwrap()));
}
