//! `cargo bench --bench explorer_loop`: the explorer's own instrumentation, driven headless
//! (egui_kittest, no GPU) on the embedded default (synthfaces, shipped vae-a → vae-b):
//!
//! - cold start: `ExplorerApp::new` → first frame, → pair ready (codes and gains, cached after
//!   the first launch), → first map fitted and evaluated;
//! - slider drag latency as the app records it (drag event → source and mapped images both
//!   decoded and in the triptych's textures), over many drags at a human pace, p50 / p95 / max.
//!
//! What it does not include: presenting the frame on a GPU surface (kittest has none).
//! Options (environment): `EXPLORER_BENCH_DRAGS` (default 300).

use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use latent_atlas::app::{ExplorerApp, ExplorerConfig};

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

fn wait(h: &mut Harness<'_, ExplorerApp>, what: &str, done: impl Fn(&ExplorerApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        h.step();
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn main() {
    latent_atlas::model::device::keep_freed_memory();
    latent_atlas::model::device::pin_thread_count();
    let drags: usize = std::env::var("EXPLORER_BENCH_DRAGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut config = ExplorerConfig::from_defaults().expect("default configuration");
    config.persist = false;
    config.start_tab = None;
    println!(
        "explorer loop bench: {} with {}, device {}, {} drags, {} threads available",
        config.dataset,
        config.zoo_dir.display(),
        config.device,
        drags,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t0 = Instant::now();
    let mut h = Harness::builder()
        .with_size([1600.0, 1000.0])
        .build_eframe(move |cc| ExplorerApp::new(cc, config));
    h.step();
    let first_frame = t0.elapsed().as_secs_f64() * 1e3;
    wait(&mut h, "the pair", |app| {
        app.session().source.is_some() && app.session().z_all.is_some()
    });
    let pair_ready = t0.elapsed().as_secs_f64() * 1e3;
    wait(&mut h, "the first fit", |app| {
        app.session().metrics.is_some() && app.session().job.is_none()
    });
    let fitted = t0.elapsed().as_secs_f64() * 1e3;
    let [_, first_triptych] = h.state().launch_milestones_ms();
    let first_triptych = first_triptych.expect("the triptych is complete once a map exists");

    let mut frame_ms = Vec::new();
    for i in 0..drags {
        let value = 2.0 * ((i as f64) * 0.37).sin();
        let before = h.state().session().triptych.mapped_version;
        {
            let slider = h
                .get_all_by_role(Role::Slider)
                .find(|n| {
                    n.accesskit_node()
                        .label()
                        .is_some_and(|l| l.starts_with("z[") && l.contains("gain"))
                })
                .expect("a latent slider");
            slider.set_value_accesskit(value);
        }
        let start = Instant::now();
        while h.state().session().triptych.mapped_version == before {
            let t = Instant::now();
            h.step();
            frame_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no decode after drag {i}"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        // a human drag delivers an event every few frames, not back to back
        std::thread::sleep(Duration::from_millis(20));
    }
    let lat = h.state().slider_latencies_ms();
    println!();
    println!("| explorer (headless, kittest) | value |");
    println!("|---|---|");
    println!("| first frame after launch | {first_frame:.0} ms |");
    println!("| pair ready (codes, gains) | {pair_ready:.0} ms |");
    println!("| first map fitted and evaluated | {fitted:.0} ms |");
    println!("| first complete triptych (app milestone) | {first_triptych:.0} ms |");
    if lat.is_empty() {
        println!("| slider latency | no drags recorded |");
    } else {
        println!(
            "| slider drag → both images updated, {} drags | p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms |",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            percentile(&lat, 1.0)
        );
    }
    if !frame_ms.is_empty() {
        println!(
            "| UI frame (layout + logic, no GPU) while dragging | p50 {:.2} ms, p95 {:.2} ms |",
            percentile(&frame_ms, 0.5),
            percentile(&frame_ms, 0.95)
        );
    }
}
