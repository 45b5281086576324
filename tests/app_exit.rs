//! Closing the explorer while the worker generates a dataset (a step with no cancellation
//! check) returns promptly: the busy thread is left to the process exit, and its pending
//! cache file never becomes a cache entry. Its own test binary: it sets the cache variable
//! before any thread exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use latent_atlas::latent::pipeline::FitOn;
use latent_atlas::latent::Estimator;
use latent_atlas::worker::{
    Command, Event, FitSpec, PairSpec, SupportChoice, Worker, WorkerConfig, SHUTDOWN_GRACE,
};

#[test]
fn dropping_the_worker_during_dataset_generation_does_not_wait_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    // SAFETY: the only test of this binary, before any thread is spawned.
    unsafe { std::env::set_var("LATENT_ATLAS_CACHE", &cache) };
    let mut worker = Worker::spawn(
        WorkerConfig {
            cache_dir: cache.clone(),
            device: "cpu".into(),
        },
        Arc::new(|| {}),
    )
    .unwrap();
    let req = worker.next_req();
    worker
        .send(Command::Sync {
            req,
            pair: PairSpec {
                // thousands of faces from the reference DCGAN: minutes on 2 cores
                dataset: "synthfaces:n=6000:seed=99".into(),
                source_dir: "vae-a".into(),
                target_dir: "vae-b".into(),
            },
            fit: FitSpec {
                estimator: Estimator::Lstsq,
                fit_on: FitOn::SupportSet,
                support: SupportChoice::Sectors { seed: 0 },
                num_selected: 7,
                max_eval: 64,
                gain_images: 64,
            },
        })
        .unwrap();
    // wait until the generation is under way
    let start = Instant::now();
    'wait: loop {
        for e in worker.drain() {
            match e {
                Event::Progress { done, total, .. } if done > 0 && total >= 6000 => break 'wait,
                Event::Failed { error, .. } => panic!("sync failed: {error}"),
                _ => {}
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no generation progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    drop(worker);
    let waited = t.elapsed();
    assert!(
        waited < SHUTDOWN_GRACE + Duration::from_secs(3),
        "closing waited {waited:?} for the dataset generation"
    );
    // no complete cache entry appeared for the unfinished dataset
    let entries: Vec<String> = std::fs::read_dir(&cache)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ladata"))
                .collect()
        })
        .unwrap_or_default();
    assert!(entries.is_empty(), "{entries:?}");
}
