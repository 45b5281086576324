//! `latent-atlas bench`: our throughput against PyTorch's on the same architectures
//! (bench/torch_reference.py), printed as a table of ratios. Run it on an idle machine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use serde_json::{json, Map, Value};

use super::bench_ours::{ours, slider_latency};

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
pub(super) fn cpu_label() -> String {
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
    use crate::model::conv::InputGradientRoute;
    let winograd = if !crate::model::conv::winograd_enabled() {
        "no Winograd (LATENT_ATLAS_NO_WINOGRAD set)".to_string()
    } else if crate::model::conv::winograd_vector_transforms() {
        let gi = match crate::model::conv::winograd_input_gradient() {
            InputGradientRoute::All => "input gradients".to_string(),
            InputGradientRoute::Wide => format!(
                "input gradients from {} gradient channels or onto {} channels, others by \
                 stride phases",
                crate::model::conv::WIDE_GRADIENT,
                crate::model::conv::NARROW_INPUT
            ),
            InputGradientRoute::Off => "input gradients by stride phases".to_string(),
        };
        format!(
            "Winograd F(2x2,2x2) for 4x4 stride-2 training convs (forward, weight gradient, \
             {gi}; tile transforms vectorized)"
        )
    } else {
        "Winograd F(2x2,2x2) for 4x4 stride-2 training convs (forward, weight gradient; \
         scalar tile transforms)"
            .to_string()
    };
    #[cfg(target_arch = "x86_64")]
    let winograd3 = if crate::model::conv::winograd3_enabled() {
        "Winograd F(2x2,3x3) for 3x3 stride-1 training convs of 32+ channels"
    } else {
        "3x3 stride-1 convs by implicit gemm (no Winograd F(2x2,3x3))"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let winograd3 = "3x3 stride-1 convs by im2col + gemm";
    format!("{name}{family}, {kernels}, {stack}, {winograd}, {winograd3}")
}

/// The figures measured together, in the order the sides take turns: each training kind
/// alone, encode/decode, map fits (the slider path rides with the fits).
pub(super) const GROUPS: [(Part, &[&str]); 6] = [
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
