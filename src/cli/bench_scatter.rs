//! `latent-atlas bench --scatter [N]`: the explorer's scatter at scale. N 64-dimensional codes
//! (default 200,000) with sign-sector colours are projected as the explorer does (principal
//! plane, and two variables), the click pick is timed, and the scatter's own wgpu pipeline
//! (`shaders/scatter.wgsl`, the same `ScatterPipeline` the explorer uses) draws all N points
//! offscreen through a pan-and-zoom sequence, one frame per view, each submitted and waited
//! for. Reports the adapter and frame times (p50 / p95). Without a wgpu adapter the explorer
//! draws a subsample with egui_plot; the bench says so.

use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Args;
use eframe::wgpu;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::app::scatter_data::ScatterData;
use crate::app::settings::ScatterAxes;
use crate::render::scatter::{ScatterPipeline, ScatterUniforms, MOTION_POINTS};
use crate::worker::SectorData;

/// Options of the scatter benchmark (`bench --scatter`).
#[derive(Debug, Args)]
pub struct ScatterArgs {
    /// Run the scatter benchmark instead: N points (default 200000) projected, picked and
    /// drawn through a pan/zoom sequence by the explorer's wgpu pipeline, offscreen.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "200000")]
    pub scatter: Option<usize>,
    /// Scatter run: frames of the pan/zoom sequence.
    #[arg(long, default_value_t = 120)]
    pub scatter_frames: usize,
    /// Scatter run: render target width x height in pixels.
    #[arg(long, default_value = "1280x800")]
    pub scatter_size: String,
}

/// What the scatter benchmark measured.
#[derive(Debug, Serialize)]
pub struct ScatterReport {
    /// Points.
    pub points: usize,
    /// Building the points on the principal plane (explorer default), ms.
    pub project_pca_ms: f64,
    /// Building the points on two variables, ms.
    pub project_vars_ms: f64,
    /// Click pick (nearest point), median ms.
    pub pick_ms: f64,
    /// wgpu adapter, e.g. "llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan)"; None without one.
    pub adapter: Option<String>,
    /// Uploading the instance buffer, ms.
    pub upload_ms: Option<f64>,
    /// Frame time (draw all points, submit, wait), p50 ms.
    pub frame_p50_ms: Option<f64>,
    /// Frame time p95 ms.
    pub frame_p95_ms: Option<f64>,
    /// Points the explorer draws while the view moves on a software rasterizer.
    pub motion_points: u32,
    /// Whether the adapter is a software rasterizer (the explorer thins out while moving).
    pub software: Option<bool>,
    /// Frame time drawing `motion_points`, p50 ms.
    pub motion_frame_p50_ms: Option<f64>,
    /// Same, p95 ms.
    pub motion_frame_p95_ms: Option<f64>,
    /// Frames drawn.
    pub frames: usize,
    /// Render target size.
    pub size: [u32; 2],
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// `n x 64` codes: a few correlated Gaussian clusters, like encoded faces.
fn codes(n: usize) -> DMatrix<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let centres: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..64).map(|_| rng.random_range(-1.5..1.5)).collect())
        .collect();
    let mut z = DMatrix::zeros(n, 64);
    for r in 0..n {
        let c = &centres[r % centres.len()];
        for k in 0..64 {
            let g: f32 = rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0);
            z[(r, k)] = c[k] + g * (1.0 + k as f32 * 0.02);
        }
    }
    z
}

fn parse_size(s: &str) -> Result<[u32; 2]> {
    let (w, h) = s
        .split_once('x')
        .with_context(|| format!("--scatter-size {s}: expected WIDTHxHEIGHT"))?;
    let w: u32 = w.parse().with_context(|| format!("--scatter-size {s}"))?;
    let h: u32 = h.parse().with_context(|| format!("--scatter-size {s}"))?;
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        anyhow::bail!("--scatter-size {s}: 1..8192 pixels per side");
    }
    Ok([w, h])
}

/// Runs the benchmark; prints a table.
pub fn run(a: &ScatterArgs) -> Result<ScatterReport> {
    let n = a.scatter.unwrap_or(200_000).max(1);
    let size = parse_size(&a.scatter_size)?;
    eprintln!(
        "scatter bench: {n} points, {} frames at {}x{}",
        a.scatter_frames, size[0], size[1]
    );
    let z = codes(n);
    let vars: Vec<usize> = (0..7).collect();
    let patterns: Vec<u32> = (0..n)
        .map(|r| {
            vars.iter()
                .enumerate()
                .fold(0u32, |p, (bit, &v)| p | (u32::from(z[(r, v)] > 0.0) << bit))
        })
        .collect();
    let sectors = SectorData {
        vars,
        patterns,
        measures: vec![1.0; n],
    };
    let t = Instant::now();
    let data = ScatterData::new(&z, ScatterAxes::Pca, Some(&sectors), 1);
    let project_pca_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let _vars = ScatterData::new(&z, ScatterAxes::Vars(0, 1), Some(&sectors), 2);
    let project_vars_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut picks = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let [x0, y0, x1, y1] = data.bounds;
    for _ in 0..21 {
        let p = [rng.random_range(x0..=x1), rng.random_range(y0..=y1)];
        let t = Instant::now();
        std::hint::black_box(data.nearest(p));
        picks.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut report = ScatterReport {
        points: n,
        project_pca_ms,
        project_vars_ms,
        pick_ms: percentile(&picks, 0.5),
        adapter: None,
        upload_ms: None,
        frame_p50_ms: None,
        frame_p95_ms: None,
        motion_points: MOTION_POINTS,
        software: None,
        motion_frame_p50_ms: None,
        motion_frame_p95_ms: None,
        frames: 0,
        size,
    };
    match gpu_frames(&data, a.scatter_frames.max(1), size) {
        Ok(g) => {
            report.adapter = Some(g.adapter);
            report.software = Some(g.software);
            report.upload_ms = Some(g.upload_ms);
            report.frame_p50_ms = Some(percentile(&g.all, 0.5));
            report.frame_p95_ms = Some(percentile(&g.all, 0.95));
            report.motion_frame_p50_ms = Some(percentile(&g.motion, 0.5));
            report.motion_frame_p95_ms = Some(percentile(&g.motion, 0.95));
            report.frames = g.all.len();
        }
        Err(e) => eprintln!(
            "no wgpu drawing ({e:#}): the explorer would fall back to egui_plot on a subsample"
        ),
    }
    print_report(&report);
    Ok(report)
}

fn print_report(r: &ScatterReport) {
    println!("| scatter, {} points | value |", r.points);
    println!("|---|---|");
    println!("| project on PC 1 / PC 2 | {:.1} ms |", r.project_pca_ms);
    println!("| project on two variables | {:.1} ms |", r.project_vars_ms);
    println!(
        "| click pick (nearest point), median | {:.2} ms |",
        r.pick_ms
    );
    match (&r.adapter, r.upload_ms, r.frame_p50_ms, r.frame_p95_ms) {
        (Some(adapter), Some(up), Some(p50), Some(p95)) => {
            println!("| adapter | {adapter} |");
            println!("| upload instance buffer | {up:.1} ms |");
            println!(
                "| frame ({}x{}, all points, pan/zoom), p50 / p95 | {p50:.2} / {p95:.2} ms ({:.0} fps at p95, {} frames) |",
                r.size[0],
                r.size[1],
                1000.0 / p95.max(1e-6),
                r.frames
            );
            if let (Some(m50), Some(m95)) = (r.motion_frame_p50_ms, r.motion_frame_p95_ms) {
                let when = if r.software == Some(true) {
                    "what the explorer draws while the view moves on this software renderer"
                } else {
                    "hardware GPU: the explorer always draws all points"
                };
                println!(
                    "| frame with {} points ({when}), p50 / p95 | {m50:.2} / {m95:.2} ms ({:.0} fps at p95) |",
                    r.motion_points,
                    1000.0 / m95.max(1e-6)
                );
            }
        }
        _ => println!("| wgpu | no adapter: egui_plot fallback |"),
    }
}

/// What the GPU part measured.
struct GpuFrames {
    adapter: String,
    software: bool,
    upload_ms: f64,
    /// Per-frame ms, all points.
    all: Vec<f64>,
    /// Per-frame ms, the first `MOTION_POINTS` of the scrambled buffer.
    motion: Vec<f64>,
}

/// Draws `data` in `frames` views, all points and then the moving-view subset.
fn gpu_frames(data: &ScatterData, frames: usize, size: [u32; 2]) -> Result<GpuFrames> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
    .context("no wgpu adapter")?;
    let info = adapter.get_info();
    let adapter_name = format!("{} ({:?})", info.name, info.backend);
    let software = info.device_type == wgpu::DeviceType::Cpu;
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .context("no wgpu device")?;
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("scatter bench target"),
        size: wgpu::Extent3d {
            width: size[0],
            height: size[1],
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
        view_formats: &[],
    });
    let view = target.create_view(&wgpu::TextureViewDescriptor::default());
    let pipeline = ScatterPipeline::new(&device, format);
    let wait = |device: &wgpu::Device| -> Result<()> {
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("waiting for the GPU: {e}"))
    };
    let t = Instant::now();
    let (buffer, count) = ScatterPipeline::instances(&device, data).context("no points")?;
    wait(&device)?;
    let upload_ms = t.elapsed().as_secs_f64() * 1e3;
    let [x0, y0, x1, y1] = data.bounds;
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let base = [1.8 / (x1 - x0).max(1e-6), 1.8 / (y1 - y0).max(1e-6)];
    // the explorer's point size: radius r px is 2r/width in NDC
    let r = crate::render::scatter::point_radius_px(data.points.len());
    let half = [2.0 * r / size[0] as f32, 2.0 * r / size[1] as f32];
    let run = |max_points: u32| -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(frames);
        for f in 0..frames + 5 {
            // pan in a circle while zooming in and out (1x .. 4x)
            let phase = f as f32 / frames.max(1) as f32 * std::f32::consts::TAU;
            let zoom = 1.0 + 1.5 * (1.0 - phase.cos());
            let uniforms = ScatterUniforms {
                center: [
                    cx + 0.25 * (x1 - x0) * phase.sin(),
                    cy + 0.25 * (y1 - y0) * (2.0 * phase).sin(),
                ],
                scale: [base[0] * zoom, base[1] * zoom],
                half_size: half,
                opacity: [0.8, 0.0],
            };
            let t = Instant::now();
            pipeline.set_view(&queue, &uniforms);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("scatter bench"),
            });
            {
                let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                    label: Some("scatter bench"),
                    color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                        view: &view,
                        depth_slice: None,
                        resolve_target: None,
                        ops: wgpu::Operations {
                            load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                            store: wgpu::StoreOp::Store,
                        },
                    })],
                    depth_stencil_attachment: None,
                    timestamp_writes: None,
                    occlusion_query_set: None,
                    multiview_mask: None,
                });
                pipeline.draw(&mut pass, &buffer, count.min(max_points));
            }
            queue.submit([encoder.finish()]);
            wait(&device)?;
            if f >= 5 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(times)
    };
    let all = run(u32::MAX)?;
    let motion = run(MOTION_POINTS)?;
    Ok(GpuFrames {
        adapter: adapter_name,
        software,
        upload_ms,
        all,
        motion,
    })
}
