//! `latent-atlas bench --scale [N]`: the scale benchmark. Builds (or opens) the synthfaces
//! dataset of N images (default 202,599, CelebA's size) through the dataset cache, re-opens
//! the cache, and encodes every image with a zoo model, with a progress bar. Reports wall time
//! and images/s per phase and the peak resident memory (VmHWM from `/proc/self/status`) of the
//! cache-building phase and of the encoding phase, printed and written atomically to
//! `scale.json` and `scale.md` in `--scale-out`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::data::cache::{cache_dir, cache_file_name};
use crate::data::{synthfaces, Dataset, OnBadImage, PixelStorage};
use crate::latent::encodings::{cache_path, encode_dataset, load, save, weights_hash};
use crate::model::device::parse_device;
use crate::model::LatentModel;
use crate::progress::{Cancel, Progress};

/// The memory budget the scale run is checked against (the requirement: peak ≤ 2 GB).
pub const PEAK_RSS_BUDGET_BYTES: u64 = 2_000_000_000;

/// Options of the scale benchmark (`bench --scale`).
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Run the scale benchmark instead: build or open synthfaces of N images (N defaults to
    /// 202599, CelebA's size), encode them all, report wall times, images/s and peak memory.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "202599")]
    pub scale: Option<usize>,
    /// Scale run: model name (zoo) or directory used to encode.
    #[arg(long, default_value = "vae-a")]
    pub scale_model: String,
    /// Scale run: seed of the synthetic faces.
    #[arg(long, default_value_t = 0)]
    pub scale_seed: u64,
    /// Scale run: encoding batch size.
    #[arg(long, default_value_t = 256)]
    pub scale_batch: usize,
    /// Scale run: cpu, cuda or cuda:N for encoding (generation runs on the CPU).
    #[arg(long, default_value = "cpu")]
    pub scale_device: String,
    /// Scale run: delete this dataset's cache file first, so that generation is measured.
    #[arg(long)]
    pub scale_fresh: bool,
    /// Scale run: also read every pixel of the re-opened cache and check its checksum.
    #[arg(long)]
    pub scale_verify: bool,
    /// Scale run: folder for scale.json and scale.md.
    #[arg(long, default_value = "results")]
    pub scale_out: PathBuf,
}

/// A `/proc/self/status` field in bytes (`VmHWM`, `VmRSS`), on Linux.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident set size so far (VmHWM).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM")
}

/// Resets the peak resident set size to the current one (Linux `clear_refs` 5); whether it
/// worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "n/a".to_string(),
        |b| format!("{:.0} MiB", b as f64 / 1048576.0),
    )
}

/// A progress display: an indicatif bar on a terminal, else a line every 5 % (for logs).
struct ScaleProgress {
    bar: Option<super::bar::Bar>,
    state: Mutex<(String, u64, u64, Instant)>,
}

impl ScaleProgress {
    fn new() -> Self {
        ScaleProgress {
            bar: std::io::stderr().is_terminal().then(super::bar::Bar::new),
            state: Mutex::new((String::new(), 0, 0, Instant::now())),
        }
    }

    fn line(&self, done: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (phase, total, last, started) = &mut *state;
        let step = (*total / 20).max(1);
        if done < *last + step && done != *total {
            return;
        }
        *last = done;
        let secs = started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = (*total).saturating_sub(done) as f64 / rate.max(1e-9);
        eprintln!(
            "{phase}: {done}/{total} ({:.0} %) {secs:.0} s, {rate:.1} img/s, ETA {eta:.0} s, \
             peak RSS {}",
            100.0 * done as f64 / (*total).max(1) as f64,
            mib(peak_rss_bytes())
        );
    }
}

impl Progress for ScaleProgress {
    fn start(&self, phase: &str, total: u64) {
        if let Some(bar) = &self.bar {
            bar.start(phase, total);
        } else if let Ok(mut state) = self.state.lock() {
            *state = (phase.to_string(), total, 0, Instant::now());
        }
    }
    fn update(&self, done: u64, message: &str) {
        match &self.bar {
            Some(bar) => bar.update(done, message),
            None => self.line(done),
        }
    }
    fn finish(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.finish(message);
        }
    }
}

/// What a scale run measured (written as `scale.json`; byte counts are `None` where
/// `/proc/self/status` is unavailable).
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// Dataset spec, e.g. `synthfaces:n=202599:seed=0`.
    pub dataset: String,
    /// Dataset id (the cache key).
    pub dataset_id: String,
    /// Number of images.
    pub num_images: usize,
    /// Model used to encode.
    pub model: String,
    /// Its latent size.
    pub latent_dim: usize,
    /// Encoding device.
    pub device: String,
    /// Encoding batch size.
    pub encode_batch: usize,
    /// Compute threads.
    pub threads: usize,
    /// Whether the dataset was generated in this run (else its cache was opened).
    pub cache_built_in_this_run: bool,
    /// Wall time of generating and caching (or of opening) the dataset.
    pub build_or_open_secs: f64,
    /// Images generated per second (when generated).
    pub generate_img_per_s: Option<f64>,
    /// Size of the dataset cache file.
    pub cache_file_bytes: Option<u64>,
    /// Wall time of re-opening the cache.
    pub reopen_secs: f64,
    /// Wall time of reading every pixel and checking the checksum (with `--scale-verify`).
    pub verify_secs: Option<f64>,
    /// Whether the re-opened dataset holds its pixels in memory (else read on demand).
    pub pixels_in_memory: bool,
    /// The in-memory threshold in force.
    pub max_in_memory_bytes: u64,
    /// Wall time of encoding every image.
    pub encode_secs: f64,
    /// Images encoded per second.
    pub encode_img_per_s: f64,
    /// Size of the codes (N x d f32).
    pub codes_bytes: usize,
    /// Wall time of writing the encodings cache.
    pub codes_cache_save_secs: f64,
    /// Wall time of reading it back.
    pub codes_cache_load_secs: f64,
    /// Wall time of the whole run.
    pub total_secs: f64,
    /// VmHWM when the run started.
    pub peak_rss_start_bytes: Option<u64>,
    /// VmHWM after generating/opening the dataset.
    pub peak_rss_build_bytes: Option<u64>,
    /// VmRSS after re-opening, before encoding.
    pub rss_before_encode_bytes: Option<u64>,
    /// VmHWM of the encoding phase alone (the peak is reset before it; `None` if it could not
    /// be reset).
    pub peak_rss_encode_bytes: Option<u64>,
    /// Peak resident memory of the whole run.
    pub peak_rss_bytes: Option<u64>,
    /// The budget checked against.
    pub peak_rss_budget_bytes: u64,
    /// Whether the peak stayed within the budget.
    pub within_budget: Option<bool>,
    /// When the run ended (seconds since the Unix epoch).
    pub unix_time: u64,
}

impl ScaleReport {
    /// The report as a Markdown table.
    pub fn markdown(&self) -> String {
        let n = self.num_images;
        let rate = |secs: f64| format!("{:.1}", n as f64 / secs);
        let (phase, build_rate) = if self.cache_built_in_this_run {
            ("generate + write cache", rate(self.build_or_open_secs))
        } else {
            ("open cache", "-".to_string())
        };
        let store = if self.pixels_in_memory {
            "pixels loaded into memory"
        } else {
            "pixels read on demand"
        };
        let peak_encode = match self.peak_rss_encode_bytes {
            Some(bytes) => mib(Some(bytes)),
            None => "n/a (peak could not be reset)".to_string(),
        };
        let verdict = match self.within_budget {
            Some(true) => "within",
            Some(false) => "EXCEEDED",
            None => "not measured (no /proc/self/status)",
        };
        format!(
            "# Scale run: {n} images\n\n\
             `latent-atlas bench --scale {n}` — dataset `{dataset}`, model `{model}` (latent \
             {d}), encode batch {batch} on {device}, {threads} threads.\n\n\
             | phase | wall time | images/s | peak RSS |\n|---|---|---|---|\n\
             | {phase} | {build:.1} s | {build_rate} | {peak_build} |\n\
             | re-open cache ({store}) | {reopen:.3} s | - | - |\n\
             {verify}\
             | encode all | {encode:.1} s | {encode_rate} | {peak_encode} |\n\
             | write / read encodings cache | {save:.3} s / {load:.3} s | - | - |\n\
             | whole run | {total:.1} s | - | {peak} |\n\n\
             Cache file: {cache_size}. Peak RSS budget {budget:.1} GB: {verdict}.\n",
            dataset = self.dataset,
            model = self.model,
            d = self.latent_dim,
            batch = self.encode_batch,
            device = self.device,
            threads = self.threads,
            build = self.build_or_open_secs,
            peak_build = mib(self.peak_rss_build_bytes),
            reopen = self.reopen_secs,
            verify = self.verify_secs.map_or_else(String::new, |secs| {
                format!(
                    "| verify every pixel's checksum | {secs:.1} s | {} | - |\n",
                    rate(secs)
                )
            }),
            encode = self.encode_secs,
            encode_rate = rate(self.encode_secs),
            save = self.codes_cache_save_secs,
            load = self.codes_cache_load_secs,
            total = self.total_secs,
            peak = mib(self.peak_rss_bytes),
            cache_size = mib(self.cache_file_bytes),
            budget = self.peak_rss_budget_bytes as f64 / 1e9,
        )
    }
}

/// Runs the scale benchmark with N = `a.scale` (which must be set): prints the report and
/// writes `scale.json` and `scale.md` to `a.scale_out`.
pub fn run(a: &ScaleArgs) -> Result<()> {
    let report = measure(a)?;
    let md = report.markdown();
    print!("{md}");
    let json_path = a.scale_out.join("scale.json");
    crate::model::store::write_atomic(
        &json_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = a.scale_out.join("scale.md");
    crate::model::store::write_atomic(&md_path, md.as_bytes())
        .with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

/// Runs the three phases (build or open, re-open, encode) and measures them.
fn measure(a: &ScaleArgs) -> Result<ScaleReport> {
    let n = a.scale.context("bench --scale needs a number of images")?;
    anyhow::ensure!(n > 0, "bench --scale needs at least one image");
    let started = Instant::now();
    let id = synthfaces::dataset_id(n, a.scale_seed);
    let spec = format!("synthfaces:n={n}:seed={}", a.scale_seed);
    let cache = cache_dir()?;
    let ds_path = cache.join(cache_file_name(&id));
    if a.scale_fresh && ds_path.exists() {
        std::fs::remove_file(&ds_path)
            .with_context(|| format!("cannot remove {}", ds_path.display()))?;
    }
    let built = !ds_path.exists();
    let rss_start = peak_rss_bytes();
    eprintln!(
        "scale run: {spec} ({}), cache {}",
        if built { "generating" } else { "cached" },
        ds_path.display()
    );

    // Phase 1: build (generate + write the cache) or open the dataset.
    let progress = ScaleProgress::new();
    progress.start(if built { "generating" } else { "opening" }, n as u64);
    let report = |done: usize, _total: usize| progress.update(done as u64, "");
    let t0 = Instant::now();
    let ds = crate::zoo::load_data_with_progress(&spec, OnBadImage::Reject, &report)?;
    let build_secs = t0.elapsed().as_secs_f64();
    progress.finish("done");
    anyhow::ensure!(ds.len() == n, "{spec} has {} images, not {n}", ds.len());
    let peak_build = peak_rss_bytes();
    let cache_bytes = std::fs::metadata(&ds_path).map(|m| m.len()).ok();
    drop(ds);

    // Phase 2: re-open the cache (must not read the pixels of a large dataset).
    let t0 = Instant::now();
    let ds = Dataset::load_cache(&ds_path)
        .with_context(|| format!("re-opening {}", ds_path.display()))?;
    let reopen_secs = t0.elapsed().as_secs_f64();
    let verify_secs = if a.scale_verify {
        let t0 = Instant::now();
        ds.verify_pixels()?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("pixel checksum verified in {secs:.1} s");
        Some(secs)
    } else {
        None
    };
    let peak_reset = reset_peak_rss();
    let rss_before_encode = proc_status_bytes("VmRSS");

    // Phase 3: encode every image, then write and re-read the encodings cache.
    let device = parse_device(&a.scale_device)?;
    let model = crate::zoo::load_model(&a.scale_model, &device)?;
    let hash = weights_hash(&model)?;
    let t0 = Instant::now();
    let enc = encode_dataset(&model, &hash, &ds, a.scale_batch, &progress, &Cancel::new())?;
    let encode_secs = t0.elapsed().as_secs_f64();
    let codes_path = cache_path(&cache, &hash, &ds.id);
    let t0 = Instant::now();
    save(&enc, &codes_path)?;
    let codes_save_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let again = load(&codes_path)?;
    let codes_load_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        again.codes == enc.codes && again.sample_ids == enc.sample_ids,
        "the encodings cache did not read back identically: {}",
        codes_path.display()
    );
    let peak_encode = peak_rss_bytes();
    let peak_overall = if peak_reset {
        peak_build.max(peak_encode)
    } else {
        peak_encode
    };
    Ok(ScaleReport {
        dataset: spec,
        dataset_id: id,
        num_images: n,
        model: a.scale_model.clone(),
        latent_dim: model.latent_dim(),
        device: a.scale_device.clone(),
        encode_batch: a.scale_batch,
        threads: candle_core::utils::get_num_threads(),
        cache_built_in_this_run: built,
        build_or_open_secs: build_secs,
        generate_img_per_s: built.then(|| n as f64 / build_secs),
        cache_file_bytes: cache_bytes,
        reopen_secs,
        verify_secs,
        pixels_in_memory: ds.pixels.is_in_memory(),
        max_in_memory_bytes: PixelStorage::from_env().max_in_memory_bytes,
        encode_secs,
        encode_img_per_s: n as f64 / encode_secs,
        codes_bytes: n * model.latent_dim() * 4,
        codes_cache_save_secs: codes_save_secs,
        codes_cache_load_secs: codes_load_secs,
        total_secs: started.elapsed().as_secs_f64(),
        peak_rss_start_bytes: rss_start,
        peak_rss_build_bytes: peak_build,
        rss_before_encode_bytes: rss_before_encode,
        peak_rss_encode_bytes: if peak_reset { peak_encode } else { None },
        peak_rss_bytes: peak_overall,
        peak_rss_budget_bytes: PEAK_RSS_BUDGET_BYTES,
        within_budget: peak_overall.map(|p| p <= PEAK_RSS_BUDGET_BYTES),
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}
