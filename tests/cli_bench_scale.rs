//! `bench --scale N` through the real binary, at a tiny N: generates synthfaces into the
//! cache (read back from disk), encodes them, and writes scale.json / scale.md; and
//! `bench --scatter N` at a small N; `bench --only` picks figures and rejects unknown ones.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use latent_atlas::model::{save_model, Family, Model, ModelConfig};

fn run_scale(cache: &Path, out: &Path, model: &Path) -> serde_json::Value {
    let stdout = succeed(
        Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
            .args(["bench", "--scale", "40", "--scale-batch", "16"])
            .arg("--scale-model")
            .arg(model)
            .arg("--scale-out")
            .arg(out)
            .env("LATENT_ATLAS_CACHE", cache)
            .env("LATENT_ATLAS_MAX_IN_MEMORY_MB", "0"),
    );
    assert!(stdout.contains("# Scale run: 40 images"), "{stdout}");
    let md = std::fs::read_to_string(out.join("scale.md")).unwrap();
    assert_eq!(md, stdout);
    serde_json::from_slice(&std::fs::read(out.join("scale.json")).unwrap()).unwrap()
}

/// Runs `cmd`, asserts it succeeded (its stderr otherwise), returns its stdout.
fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `latent-atlas bench ARGS --json JSON`, asserts it succeeded, returns its stdout.
fn bench_ok(args: &[&str], json: &Path) -> String {
    succeed(
        Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
            .arg("bench")
            .args(args)
            .arg("--json")
            .arg(json),
    )
}

#[test]
fn scale_bench_generates_encodes_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, out, model) = (
        tmp.path().join("cache"),
        tmp.path().join("results"),
        tmp.path().join("model"),
    );
    let mut cfg = ModelConfig::new("tiny-vae", Family::Vae, 4);
    cfg.base_channels = 4;
    save_model(
        &Model::new(cfg, &Device::Cpu, 1, false).unwrap(),
        &model,
        false,
    )
    .unwrap();

    let first = run_scale(&cache, &out, &model);
    assert_eq!(first["num_images"], 40);
    assert_eq!(first["dataset"], "synthfaces:n=40:seed=0");
    assert_eq!(first["cache_built_in_this_run"], true);
    assert_eq!(first["pixels_in_memory"], false);
    assert_eq!(first["latent_dim"], 4);
    assert!(first["generate_img_per_s"].as_f64().unwrap() > 0.0);
    assert!(first["encode_img_per_s"].as_f64().unwrap() > 0.0);
    let cache_bytes = first["cache_file_bytes"].as_u64().unwrap();
    assert!(cache_bytes > 40 * latent_atlas::data::IMAGE_LEN as u64);
    if cfg!(target_os = "linux") {
        let peak = first["peak_rss_bytes"].as_u64().unwrap();
        assert!(peak > 0 && first["within_budget"] == true, "{first}");
    }
    // Only the cache file and the encodings are left in the cache folder.
    let mut names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("codes-") && names[1].starts_with("synthfaces-n-40-seed-0"));

    // A second run opens the cache instead of generating.
    let second = run_scale(&cache, &out, &model);
    assert_eq!(second["cache_built_in_this_run"], false);
    assert!(second["generate_img_per_s"].is_null());
    assert_eq!(second["cache_file_bytes"].as_u64(), Some(cache_bytes));
}

/// `bench --scatter` on a few points: the explorer's projection, pick and (when a wgpu adapter
/// exists) its scatter pipeline drawing offscreen; a JSON report either way.
#[test]
fn scatter_bench_reports_projection_pick_and_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("scatter.json");
    let stdout = bench_ok(
        &[
            "--scatter",
            "3000",
            "--scatter-frames",
            "4",
            "--scatter-size",
            "96x64",
        ],
        &json,
    );
    assert!(stdout.contains("| scatter, 3000 points |"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["points"], 3000);
    assert!(r["pick_ms"].as_f64().unwrap() >= 0.0);
    if r["adapter"].is_string() {
        assert_eq!(r["frames"], 4);
        assert!(r["frame_p95_ms"].as_f64().unwrap() > 0.0);
    } else {
        assert!(stdout.contains("egui_plot fallback"), "{stdout}");
    }
    let err = std::process::Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
        .args(["bench", "--scatter", "10", "--scatter-size", "big"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("WIDTHxHEIGHT"));
}

#[test]
fn bench_only_measures_the_named_figures_and_rejects_unknown_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("fits.json");
    let stdout = bench_ok(&["--no-torch", "--quick", "--only", "lstsq_150_ms"], &json);
    assert!(
        stdout.contains("| lstsq 150 x 64 -> 150 (ms) |"),
        "{stdout}"
    );
    assert!(!stdout.contains("train VAE"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ours = v["ours"].as_object().unwrap();
    // the group of the named figure comes along (both fits and the slider path), nothing else
    for key in ["lstsq_150_ms", "lstsq_200k_ms", "slider_p95_ms"] {
        let ms = ours[key].as_f64().unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{key} = {ms}");
    }
    assert!(
        !ours
            .keys()
            .any(|k| k.starts_with("train_") || k.starts_with("encode")),
        "{ours:?}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
        .args([
            "bench",
            "--no-torch",
            "--only",
            "train_gan_img_s,decode_b2_ms",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("unknown figure \"decode_b2_ms\"") && err.contains("decode_b1_ms"),
        "{err}"
    );
}
