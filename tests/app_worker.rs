//! The worker on its own: a sync produces every result event in order, and a burst of slider
//! decodes is coalesced so that only the newest ones are decoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use latent_atlas::latent::pipeline::FitOn;
use latent_atlas::latent::Estimator;
use latent_atlas::model::{save_model, Family, Model, ModelConfig};
use latent_atlas::worker::{
    Command, Event, FitSpec, PairSpec, SupportChoice, Worker, WorkerConfig,
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

#[test]
fn worker_syncs_a_pair_and_coalesces_decodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        tiny_model(tmp.path(), "a", 1),
        tiny_model(tmp.path(), "b", 2),
    );
    let mut worker = Worker::spawn(
        WorkerConfig {
            cache_dir: tmp.path().join("cache"),
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
