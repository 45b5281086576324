//! Our side of `latent-atlas bench`: the training loop's throughput per architecture,
//! encode / decode, the map fits and the slider path, measured in this process (the PyTorch
//! side and the table are in `bench.rs`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::bench::{cpu_label, Part, GROUPS};
use crate::data::{Dataset, SampleInfo, Split, IMAGE_LEN};
use crate::latent::estimators::{target_from_source, Estimator};
use crate::model::train::{train, TrainKind, TrainOptions};
use crate::model::{save_model, Family, LatentModel, Model, ModelConfig};
use crate::progress::{Cancel, NoProgress};

/// Median seconds of `repeats` calls of `f` after `warmup` untimed ones.
pub(super) fn time_median(
    repeats: usize,
    warmup: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(crate::model::train::median(&mut ts))
}

fn random_dataset(n: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    Dataset {
        id: format!("bench:random:{n}"),
        sample_ids: (0..n).map(|i| format!("r{i}")).collect(),
        splits: (0..n)
            .map(|i| {
                if i % 10 == 0 {
                    Split::Test
                } else {
                    Split::Train
                }
            })
            .collect(),
        pixels: (0..n * IMAGE_LEN)
            .map(|_| rng.random())
            .collect::<Vec<u8>>()
            .into(),
        info: SampleInfo::default(),
        skipped: Vec::new(),
    }
}

/// Images/s of the real training loop: batch size over the median step time of the second of
/// two short epochs (the first warms up), the statistic the PyTorch reference reports too.
fn train_throughput(
    kind: TrainKind,
    data: &Dataset,
    steps: usize,
    generator: Option<PathBuf>,
    dev: &Device,
) -> Result<f64> {
    let out = tempfile::tempdir()?;
    let opts = TrainOptions {
        kind,
        name: format!("bench-{kind:?}"),
        latent_dim: if kind == TrainKind::Svae { 128 } else { 64 },
        base_channels: 32,
        seed: 0,
        epochs: 2,
        batch_size: 64,
        lr: 1e-3,
        steps_per_epoch: Some(steps),
        max_steps: None,
        generator,
        dataset_id: data.id.clone(),
        image_loss: 0.0,
        keep_recoder: false,
    };
    let report = train(
        &opts,
        data,
        out.path(),
        dev,
        false,
        &NoProgress,
        &Cancel::new(),
    )?;
    Ok(report
        .state
        .history
        .last()
        .map(|h| {
            if h.median_step_secs > 0.0 {
                opts.batch_size as f64 / h.median_step_secs
            } else {
                h.images_per_sec
            }
        })
        .unwrap_or(0.0))
}

/// Our figures of one group (`only`: its keys), or of the whole `part` when `only` is None.
pub(super) fn ours(
    quick: bool,
    part: Option<Part>,
    only: Option<&[&str]>,
    dev: &Device,
) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    let steps = if quick { 3 } else { 8 };
    let wants = |p: Part| part.is_none_or(|q| q == p);
    if wants(Part::Train) {
        train_part(&mut m, steps, only, dev)?;
    }
    let rep = if quick { 3 } else { 7 };
    // a part runs when `only` names any figure of its groups
    let wants_any = |p: Part| {
        only.is_none_or(|o| {
            GROUPS
                .iter()
                .filter(|(q, _)| *q == p)
                .any(|(_, keys)| o.iter().any(|k| keys.contains(k)))
        })
    };
    if wants(Part::Infer) && wants_any(Part::Infer) {
        infer_part(&mut m, rep, dev)?;
    }
    if wants(Part::Fits) && wants_any(Part::Fits) {
        fits_part(&mut m, rep, quick, dev)?;
    }
    m.insert(
        "device".into(),
        json!(crate::model::device::device_label(dev)),
    );
    m.insert(
        "threads".into(),
        json!(candle_core::utils::get_num_threads()),
    );
    m.insert("candle".into(), json!("0.11"));
    m.insert("cpu".into(), json!(cpu_label()));
    Ok(m)
}

fn train_part(
    m: &mut Map<String, Value>,
    steps: usize,
    only: Option<&[&str]>,
    dev: &Device,
) -> Result<()> {
    let want = |k: &str| only.is_none_or(|o| o.contains(&k));
    let data = random_dataset(64 * steps * 2 + 64);
    eprintln!("training throughput (batch 64)...");
    for (key, kind) in [
        ("train_vae_img_s", TrainKind::Vae),
        ("train_svae_img_s", TrainKind::Svae),
        ("train_gan_img_s", TrainKind::Gan),
    ] {
        if want(key) {
            m.insert(
                key.into(),
                json!(train_throughput(kind, &data, steps, None, dev)?),
            );
        }
    }
    if !want("train_recoder_img_s") {
        return Ok(());
    }
    let gan_dir = tempfile::tempdir()?;
    save_model(
        &Model::new(
            ModelConfig::new("bench-gan", Family::Gan, 64),
            &Device::Cpu,
            0,
            false,
        )?,
        gan_dir.path(),
        false,
    )?;
    m.insert(
        "train_recoder_img_s".into(),
        json!(train_throughput(
            TrainKind::Recoder,
            &data,
            steps,
            Some(gan_dir.path().to_path_buf()),
            dev
        )?),
    );
    Ok(())
}

fn infer_part(m: &mut Map<String, Value>, rep: usize, dev: &Device) -> Result<()> {
    eprintln!("encode / decode...");
    let data = random_dataset(256);
    let vae = Model::new(
        ModelConfig::new("bench-vae", Family::Vae, 64),
        dev,
        0,
        false,
    )?;
    let idx: Vec<usize> = (0..256).collect();
    let x = data.batch(&idx, dev)?;
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let z256 = Tensor::from_vec(
        (0..256 * 64)
            .map(|_| rng.sample(rand_distr::StandardNormal))
            .collect::<Vec<f32>>(),
        (256, 64),
        dev,
    )?;
    let z1 = z256.narrow(0, 0, 1)?;
    // a GPU runs ops asynchronously: each timed call waits for its results
    let run = |f: &dyn Fn() -> crate::model::Result<()>| -> Result<()> {
        f()?;
        Ok(dev.synchronize()?)
    };
    m.insert(
        "encode_b256_img_s".into(),
        json!(256.0 / time_median(rep, 2, || run(&|| vae.encode(&x).map(drop)))?),
    );
    m.insert(
        "decode_b256_img_s".into(),
        json!(256.0 / time_median(rep, 2, || run(&|| vae.decode(&z256).map(drop)))?),
    );
    m.insert(
        "decode_b1_ms".into(),
        json!(1000.0 * time_median(5 * rep, 5, || run(&|| vae.decode(&z1).map(drop)))?),
    );
    Ok(())
}

fn fits_part(m: &mut Map<String, Value>, rep: usize, quick: bool, dev: &Device) -> Result<()> {
    eprintln!("map fits...");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (n, key) in [(150usize, "lstsq_150_ms"), (200_000, "lstsq_200k_ms")] {
        let xs = DMatrix::<f32>::from_fn(n, 64, |_, _| rng.sample(rand_distr::StandardNormal));
        let ys = DMatrix::<f32>::from_fn(n, 150, |_, _| rng.sample(rand_distr::StandardNormal));
        let t = time_median(rep, 1, || {
            Ok(target_from_source(&xs, &ys, &Estimator::Lstsq, dev).map(drop)?)
        })?;
        m.insert(key.into(), json!(1000.0 * t));
    }
    eprintln!("slider decode path...");
    let (p50, p95, pair) = slider_latency(if quick { 100 } else { 400 })?;
    m.insert("slider_p50_ms".into(), json!(p50));
    m.insert("slider_p95_ms".into(), json!(p95));
    m.insert("slider_pair".into(), json!(pair));
    Ok(())
}

/// p50 / p95 of the explorer's per-drag work (`worker::decode_slider`: source decode, map,
/// target decode) over `n` drags along a slider, on vae-a -> vae-b of the zoo with a
/// 150-point lstsq map (random-initialised VAEs and a random map when the zoo is absent).
pub(super) fn slider_latency(n: usize) -> Result<(f64, f64, String)> {
    let dev = Device::Cpu;
    let (src, tgt, label) = match (
        crate::zoo::load_model("vae-a", &dev),
        crate::zoo::load_model("vae-b", &dev),
    ) {
        (Ok(a), Ok(b)) => (a, b, "vae-a -> vae-b".to_string()),
        _ => {
            let a = Model::new(ModelConfig::new("a", Family::Vae, 64), &dev, 1, false)?;
            let b = Model::new(ModelConfig::new("b", Family::Vae, 64), &dev, 2, false)?;
            (a, b, "random VAEs (zoo absent)".to_string())
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let zs = DMatrix::<f32>::from_fn(150, 64, |_, _| rng.sample(rand_distr::StandardNormal));
    let zt = DMatrix::<f32>::from_fn(150, 64, |_, _| rng.sample(rand_distr::StandardNormal));
    let map = target_from_source(&zs, &zt, &Estimator::Lstsq, &dev)?;
    let mut z: Vec<f32> = (0..64)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 10 {
        z[i % 7] = -2.25 + 4.5 * (i % 50) as f32 / 49.0;
        let t0 = Instant::now();
        let (_s, m) = crate::worker::decode_slider(&src, &tgt, Some(&map), &z)?;
        anyhow::ensure!(m.is_some(), "no mapped image");
        if i >= 10 {
            times.push(1000.0 * t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok((q(0.5), q(0.95), label))
}
