//! `latent-atlas bench`: our throughput against PyTorch's on the same architectures
//! (bench/torch_reference.py), printed as a table of ratios. Run it on an idle machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::data::{Dataset, SampleInfo, Split, IMAGE_LEN};
use crate::latent::estimators::{target_from_source, Estimator};
use crate::model::train::{train, TrainKind, TrainOptions};
use crate::model::{save_model, Family, LatentModel, Model, ModelConfig};
use crate::progress::{Cancel, NoProgress};

/// Benchmark training, encoding, decoding and map fits against PyTorch.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Python interpreter with torch and numpy for the reference side (skipped when absent).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Fewer repeats (a rough figure in a minute or two).
    #[arg(long)]
    pub quick: bool,
    /// Do not run the PyTorch side.
    #[arg(long)]
    pub no_torch: bool,
    /// Also write all figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The scale benchmark (`--scale [N]` and its options).
    #[command(flatten)]
    pub scale: super::bench_scale::ScaleArgs,
    /// Only the slider decode path (vae-a -> vae-b), 400 drags: p50 / p95.
    #[arg(long)]
    pub slider: bool,
    /// The scatter benchmark (`--scatter [N]` and its options).
    #[command(flatten)]
    pub scatter: super::bench_scatter::ScatterArgs,
    /// The per-layer convolution benchmark (`--layers` and its options).
    #[command(flatten)]
    pub layers: super::bench_layers::LayerArgs,
    /// Only one part of the table (both sides): training, encode/decode, or map fits.
    #[arg(long, value_enum)]
    pub part: Option<Part>,
    /// Only these figures (comma-separated JSON keys, e.g. `train_gan_img_s,decode_b1_ms`),
    /// both sides; the figures measured together with one of them come along.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Run the comparison this many times and report medians with the per-round ratios. The
    /// sides take turns figure by figure (each training kind, encode/decode, map fits: ours,
    /// PyTorch NCHW, PyTorch channels_last, seconds apart; odd rounds start with PyTorch): on a
    /// shared machine whose speed drifts by tens of percent within minutes, a whole part of
    /// the table run by one side after the other can favour either.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Device of our side of the table (cpu, cuda, cuda:N; CUDA needs a `--features cuda`
    /// build): training and encode/decode run there, and the PyTorch reference gets
    /// `--device cuda` too. The lstsq map fits and the slider path stay on the CPU on both
    /// sides, as in the explorer.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A part of the comparison table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Training throughput of the four architectures.
    Train,
    /// Encode / decode throughput and batch-1 decode latency.
    Infer,
    /// Map fits and the slider decode path.
    Fits,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Infer => "infer",
            Part::Fits => "fits",
        }
    }
}

/// The CPU's model name and family/model numbers (`/proc/cpuinfo`) and whether our AVX-512
/// kernels run on it: the table's figures depend on both (Zen 3 and Zen 4 machines both
/// report "AMD EPYC").
fn cpu_label() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let family = match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!(" (family {f}, model {m})"),
        _ => String::new(),
    };
    let kernels = if crate::model::conv::avx512_kernels_enabled() {
        "our AVX-512 kernels"
    } else {
        "no AVX-512 (or LATENT_ATLAS_NO_AVX512 set): gemm's AVX2 kernels"
    };
    let stack = match crate::model::conv::channels_last_stack_kernel() {
        Some(k) => format!("channels-last inference stacks on {k}"),
        None => "NCHW inference paths".to_string(),
    };
    format!("{name}{family}, {kernels}, {stack}")
}

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

/// The figures measured together, in the order the sides take turns: each training kind
/// alone, encode/decode, map fits (the slider path rides with the fits).
const GROUPS: [(Part, &[&str]); 6] = [
    (Part::Train, &["train_vae_img_s"]),
    (Part::Train, &["train_svae_img_s"]),
    (Part::Train, &["train_gan_img_s"]),
    (Part::Train, &["train_recoder_img_s"]),
    (
        Part::Infer,
        &["encode_b256_img_s", "decode_b256_img_s", "decode_b1_ms"],
    ),
    (Part::Fits, &["lstsq_150_ms", "lstsq_200k_ms"]),
];

/// Our figures of one group (`only`: its keys), or of the whole `part` when `only` is None.
fn ours(
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
    let wants_any = |keys: &[&str]| only.is_none_or(|o| o.iter().any(|k| keys.contains(k)));
    if wants(Part::Infer) && wants_any(GROUPS[4].1) {
        infer_part(&mut m, rep, dev)?;
    }
    if wants(Part::Fits) && wants_any(GROUPS[5].1) {
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
fn slider_latency(n: usize) -> Result<(f64, f64, String)> {
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

fn torch(
    python: &str,
    quick: bool,
    channels_last: bool,
    part: Option<Part>,
    only: Option<&[&str]>,
    dev: &Device,
) -> Option<Map<String, Value>> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_reference.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script)
        .arg("--threads")
        .arg(candle_core::utils::get_num_threads().to_string());
    if quick {
        cmd.arg("--quick");
    }
    if channels_last {
        cmd.arg("--channels-last");
    }
    if let Some(p) = part {
        cmd.arg("--part").arg(p.name());
    }
    if let Some(keys) = only {
        cmd.arg("--only").arg(keys.join(","));
    }
    if let candle_core::DeviceLocation::Cuda { gpu_id } = dev.location() {
        cmd.arg("--device").arg(format!("cuda:{gpu_id}"));
    }
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "PyTorch reference failed (skipped): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return None;
        }
        Err(e) => {
            eprintln!("cannot run {python} (skipped): {e}");
            return None;
        }
    };
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()?
        .as_object()
        .cloned()
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    if a.scale.scale.is_some() {
        return super::bench_scale::run(&a.scale);
    }
    if a.layers.layers {
        return super::bench_layers::run(&a.layers);
    }
    if a.slider {
        let (p50, p95, pair) = slider_latency(400)?;
        println!("slider decode path ({pair}, 400 drags): p50 {p50:.2} ms, p95 {p95:.2} ms");
        return Ok(());
    }
    if a.scatter.scatter.is_some() {
        let report = super::bench_scatter::run(&a.scatter)?;
        if let Some(path) = &a.json {
            let text = serde_json::to_string_pretty(&report)?;
            crate::model::store::write_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let known: Vec<&str> = GROUPS.iter().flat_map(|(_, k)| k.iter().copied()).collect();
    if let Some(bad) = a.only.iter().find(|o| !known.contains(&o.as_str())) {
        anyhow::bail!(
            "bench --only: unknown figure {bad:?}; known figures: {}",
            known.join(", ")
        );
    }
    let dev = crate::model::device::parse_device(&a.device)?;
    let rounds = a.rounds.max(1);
    let mut all_rounds = Vec::with_capacity(rounds);
    for r in 0..rounds {
        if rounds > 1 {
            eprintln!("round {}/{rounds}", r + 1);
        }
        let (mut ours_r, mut nchw_r, mut cl_r) = (Map::new(), None, None);
        // the sides take turns figure by figure (a few seconds to a minute apart), and odd
        // rounds start with PyTorch, so that neither side keeps the machine's better minutes
        for (gpart, keys) in GROUPS {
            if a.part.is_some_and(|p| p != gpart)
                || !(a.only.is_empty() || keys.iter().any(|k| a.only.iter().any(|o| o == k)))
            {
                continue;
            }
            let torch_first = r % 2 == 1;
            let run_torch = |nchw: &mut Option<Map<String, Value>>,
                             cl: &mut Option<Map<String, Value>>| {
                if a.no_torch {
                    return;
                }
                eprintln!(
                    "PyTorch reference ({}): NCHW, then channels_last...",
                    keys.join(", ")
                );
                for (layout, slot) in [(false, nchw), (true, cl)] {
                    if let Some(t) =
                        torch(&a.python, a.quick, layout, Some(gpart), Some(keys), &dev)
                    {
                        slot.get_or_insert_with(Map::new).extend(t);
                    }
                }
            };
            if torch_first {
                run_torch(&mut nchw_r, &mut cl_r);
            }
            ours_r.extend(ours(a.quick, Some(gpart), Some(keys), &dev)?);
            if !torch_first {
                run_torch(&mut nchw_r, &mut cl_r);
            }
        }
        all_rounds.push((ours_r, nchw_r, cl_r));
    }
    let (ours, t_nchw, t_cl) = all_rounds[0].clone();
    let rows = [
        ("train_vae_img_s", "train VAE, batch 64 (img/s)", true),
        (
            "train_svae_img_s",
            "train Split-VAE, batch 64 (img/s)",
            true,
        ),
        ("train_gan_img_s", "train GAN step, batch 64 (img/s)", true),
        (
            "train_recoder_img_s",
            "train recoder, batch 64 (img/s)",
            true,
        ),
        ("encode_b256_img_s", "encode, batch 256 (img/s)", true),
        ("decode_b256_img_s", "decode, batch 256 (img/s)", true),
        ("decode_b1_ms", "decode, batch 1 (ms)", false),
        ("lstsq_150_ms", "lstsq 150 x 64 -> 150 (ms)", false),
        ("lstsq_200k_ms", "lstsq 200,000 x 64 -> 150 (ms)", false),
    ];
    let get = |m: &Option<Map<String, Value>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).and_then(|v| v.as_f64())
    };
    let multi = rounds > 1;
    if multi {
        println!("medians of {rounds} rounds, the sides taking turns");
        println!("| metric | latent-atlas | PyTorch NCHW | PyTorch channels_last | ratio vs best PyTorch (median) | per-round ratios |");
        println!("|---|---|---|---|---|---|");
    } else {
        println!(
            "| metric | latent-atlas | PyTorch NCHW | PyTorch channels_last | ratio vs best PyTorch |"
        );
        println!("|---|---|---|---|---|");
    }
    let median_of = |v: Vec<f64>| -> Option<f64> {
        (!v.is_empty()).then(|| crate::model::train::median(&mut v.clone()))
    };
    for (key, label, higher_better) in rows {
        let per = |which: usize| -> Vec<f64> {
            all_rounds
                .iter()
                .filter_map(|r| {
                    let m = match which {
                        0 => Some(r.0.clone()),
                        1 => r.1.clone(),
                        _ => r.2.clone(),
                    };
                    get(&m, key)
                })
                .collect()
        };
        let o = median_of(per(0));
        if o.is_none() {
            continue;
        }
        let (tn, tc) = (median_of(per(1)), median_of(per(2)));
        // per-round ratio: ours against that round's better PyTorch layout
        let ratios: Vec<f64> = all_rounds
            .iter()
            .filter_map(|r| {
                let o = get(&Some(r.0.clone()), key)?;
                let best = match (get(&r.1, key), get(&r.2, key)) {
                    (Some(a), Some(b)) => {
                        if higher_better {
                            a.max(b)
                        } else {
                            a.min(b)
                        }
                    }
                    (a, b) => a.or(b)?,
                };
                (o > 0.0 && best > 0.0).then(|| if higher_better { o / best } else { best / o })
            })
            .collect();
        let ratio = median_of(ratios.clone())
            .map(|r| format!("{r:.2}x"))
            .unwrap_or("-".into());
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("-".into());
        if multi {
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "| {label} | {} | {} | {} | {ratio} | {} |",
                f(o),
                f(tn),
                f(tc),
                each.join(", ")
            );
        } else {
            println!("| {label} | {} | {} | {} | {ratio} |", f(o), f(tn), f(tc));
        }
    }
    let ours_opt = Some(ours.clone());
    if let (Some(p50), Some(p95)) = (
        get(&ours_opt, "slider_p50_ms"),
        get(&ours_opt, "slider_p95_ms"),
    ) {
        let pair = ours
            .get("slider_pair")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let extra = if multi { " - |" } else { "" };
        println!("| slider drag -> source and mapped images decoded ({pair}; target <= 16 ms p95) | p50 {p50:.2} ms, p95 {p95:.2} ms | - | - | - |{extra}");
    }
    let versions = get(&t_nchw, "threads").map(|t| {
        format!(
            ", torch {} with {t} threads",
            t_nchw
                .as_ref()
                .and_then(|m| m.get("torch"))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
        )
    });
    let on = if dev.is_cpu() {
        String::new()
    } else {
        format!(
            " on {} (both sides; the map fits on the CPU)",
            crate::model::device::device_label(&dev)
        )
    };
    println!(
        "\ncandle 0.11 with {} threads{}{on}; ratio > 1 means latent-atlas is faster.\nCPU: {}.",
        candle_core::utils::get_num_threads(),
        versions.unwrap_or_default(),
        cpu_label()
    );
    if let Some(path) = a.json {
        let all = if multi {
            let each: Vec<Value> = all_rounds
                .iter()
                .map(|(o, n, c)| json!({ "ours": o, "torch_nchw": n, "torch_channels_last": c }))
                .collect();
            json!({ "rounds": each })
        } else {
            json!({ "ours": ours, "torch_nchw": t_nchw, "torch_channels_last": t_cl })
        };
        crate::model::store::write_atomic(&path, serde_json::to_string_pretty(&all)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
