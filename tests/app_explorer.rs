//! Drives the real explorer headless (egui_kittest, no GPU) through accessibility labels, on
//! a tiny zoo of two untrained VAEs built in a temporary folder and the embedded ORL faces.

use std::path::Path;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use latent_atlas::app::{AppCommand, ExplorerApp, ExplorerConfig, ExportKind};
use latent_atlas::model::{save_model, Family, Model, ModelConfig};

fn tiny_zoo(dir: &Path) {
    for (name, seed) in [("vae-a", 1), ("vae-b", 2)] {
        let mut cfg = ModelConfig::new(name, Family::Vae, 8);
        cfg.base_channels = 4;
        let model = Model::new(cfg, &candle_core::Device::Cpu, seed, false).unwrap();
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        save_model(&model, &out, false).unwrap();
    }
}

fn harness(tmp: &Path) -> Harness<'static, ExplorerApp> {
    let zoo = tmp.join("zoo");
    tiny_zoo(&zoo);
    let config = ExplorerConfig {
        zoo_dir: zoo,
        dataset: "orl".into(),
        cache_dir: tmp.join("cache"),
        device: "cpu".into(),
        persist: false,
        start_tab: None,
        start_pair: (None, None),
        start_data: None,
    };
    let mut h = Harness::builder()
        .with_size([1500.0, 1000.0])
        .build_eframe(move |cc| ExplorerApp::new(cc, config));
    wait_until(&mut h, "the first fit and metrics", |app| {
        app.session().metrics.is_some() && app.session().job.is_none()
    });
    h
}

/// The error notifications on screen.
fn error_toasts(h: &Harness<'_, ExplorerApp>) -> Vec<String> {
    h.state()
        .session()
        .toasts
        .iter()
        .filter(|t| t.is_error)
        .map(|t| t.text.clone())
        .collect()
}

/// Steps frames until `done` holds (the worker wakes the app in between).
fn wait_until(h: &mut Harness<'_, ExplorerApp>, what: &str, done: impl Fn(&ExplorerApp) -> bool) {
    let start = Instant::now();
    loop {
        h.step();
        if done(h.state()) {
            h.step();
            return;
        }
        let toasts = error_toasts(h);
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}; errors: {toasts:?}"
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn app_opens_on_the_default_pair_and_a_slider_changes_the_mapped_image() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    let s = h.state().session();
    assert_eq!(s.source.as_ref().unwrap().name, "vae-a");
    assert_eq!(s.target.as_ref().unwrap().name, "vae-b");
    wait_until(&mut h, "the first decode", |app| {
        app.session().triptych.mapped_rgb.is_some()
    });
    let before_version = h.state().session().triptych.mapped_version;
    let before = h.state().session().triptych.mapped_rgb.clone();

    let slider = h
        .get_all_by_role(Role::Slider)
        .find(|n| {
            n.accesskit_node()
                .label()
                .is_some_and(|l| l.starts_with("z[") && l.contains("gain"))
        })
        .expect("a latent slider");
    slider.set_value_accesskit(2.0);
    wait_until(&mut h, "the mapped image after the slider moved", |app| {
        app.session().triptych.mapped_version > before_version
    });
    assert_ne!(
        h.state().session().triptych.mapped_rgb,
        before,
        "moving a slider must change the mapped image"
    );
    assert!(
        !h.state().slider_latencies_ms().is_empty(),
        "the drag latency is recorded"
    );
}

#[test]
fn app_selects_a_pair_in_the_combo_boxes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    let fits = h.state().session().fits_done;
    h.get_by_label("Source").click();
    h.run_ok();
    h.get_by_label("vae-b (vae, d=8)").click();
    wait_until(&mut h, "the refit for vae-b → vae-b", |app| {
        app.session()
            .source
            .as_ref()
            .is_some_and(|m| m.name == "vae-b")
            && app.session().fits_done > fits
    });
    assert_eq!(h.state().session().target.as_ref().unwrap().name, "vae-b");
}

#[test]
fn app_loads_a_sector_inhabitant_into_the_triptych() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    let counts = h.state().session().sector_counts.clone();
    let pattern = counts
        .iter()
        .position(|&c| c > 0)
        .expect("an inhabited sector");
    h.get_by_label(&format!("sector {pattern}")).click();
    wait_until(&mut h, "the sector members", |app| {
        app.session()
            .sector_selected
            .as_ref()
            .is_some_and(|s| !s.1.is_empty())
    });
    let members = h.state().session().sector_selected.clone().unwrap().1;
    let target = *members.last().unwrap();
    let id = h.state().session().sample_id(target).unwrap().to_string();
    h.get_by_label(&format!("inhabitant {id}")).click();
    wait_until(&mut h, "the inhabitant in the triptych", |app| {
        app.session().sample == target
    });
    h.run_ok();
    let shown = h.get_by_label("Sample id").accesskit_node().value();
    assert_eq!(
        shown.as_deref(),
        Some(id.as_str()),
        "the sample-id box follows the loaded sample"
    );
}

#[test]
fn app_refits_after_removing_a_support_member() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("Support set").click();
    h.run_ok();
    let support = h.state().session().support.clone().unwrap();
    let (metrics_before, len_before) = (h.state().session().metrics_done, support.indices.len());
    let id = support.sample_ids[0].clone();
    h.get_by_label(&format!("remove {id}")).click();
    wait_until(&mut h, "the refit without the member", |app| {
        app.session().metrics_done > metrics_before && app.session().job.is_none()
    });
    let s = h.state().session();
    let support = s.support.clone().unwrap();
    assert_eq!(support.indices.len(), len_before - 1);
    assert!(!support.sample_ids.contains(&id));
    assert_eq!(
        s.fit_points,
        len_before - 1,
        "the map is refitted on the edited support set"
    );
}

#[test]
fn app_exports_the_triptych_and_the_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.state_mut().push(AppCommand::LoadSample(3));
    wait_until(&mut h, "sample 3 decoded", |app| {
        app.session().sample == 3 && app.session().triptych.mapped_rgb.is_some()
    });
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let png = out.join("triptych.png");
    h.state_mut().export_to(ExportKind::Triptych, &png).unwrap();
    let img = image::open(&png).unwrap();
    assert!(img.width() > 3 * 64 && img.height() >= 64);
    for (kind, name) in [
        (ExportKind::Map, "map.safetensors"),
        (ExportKind::Support, "support.json"),
        (ExportKind::Metrics, "metrics.csv"),
    ] {
        let path = out.join(name);
        h.state_mut().export_to(kind, &path).unwrap();
        assert!(path.metadata().unwrap().len() > 0, "{name} is written");
    }
    let map =
        latent_atlas::latent::LinearMap::load_safetensors(&out.join("map.safetensors")).unwrap();
    assert_eq!((map.source_dim(), map.target_dim()), (8, 8));

    // the relocation montage decodes on the geometry thread and announces itself
    let montage = out.join("montage.png");
    let members = h.state().session().support.as_ref().unwrap().indices.len();
    h.state_mut()
        .export_to(ExportKind::Montage, &montage)
        .unwrap();
    wait_until(&mut h, "the montage written", |app| {
        app.session().geometry.montage_jobs.is_empty() && montage.exists()
    });
    let img = image::open(&montage).unwrap();
    let blocks = members.div_ceil(15) as u32;
    assert_eq!(
        (img.width(), img.height()),
        (15 * 66 + 2, blocks * 3 * 66 + 2),
        "{members} samples in blocks of 15: originals, reconstructions, relocations"
    );
    assert!(h
        .state()
        .session()
        .toasts
        .iter()
        .any(|t| !t.is_error && t.text.contains("relocation montage")));
}

#[test]
fn app_pairs_tab_computes_the_matrix_and_a_cell_selects_its_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("Pairs").click();
    h.run_ok();
    h.get_by_label("Compute all pairs").click();
    wait_until(&mut h, "both off-diagonal cells", |app| {
        app.session().pairs.as_ref().is_some_and(|p| {
            p.cells
                .iter()
                .enumerate()
                .all(|(i, row)| row.iter().enumerate().all(|(j, c)| i == j || c.is_some()))
        })
    });
    let pairs = h.state().session().pairs.clone().unwrap();
    assert_eq!(pairs.names, vec!["vae-a", "vae-b"]);
    let m = pairs.cells[1][0]
        .clone()
        .unwrap()
        .expect("an M-MSE for vae-b → vae-a");
    assert!(m.is_finite() && m > 0.0, "{m}");
    let fits = h.state().session().fits_done;
    h.get_by_label("pair vae-b to vae-a").click();
    wait_until(&mut h, "the refit for vae-b → vae-a", |app| {
        let s = app.session();
        s.source.as_ref().is_some_and(|m| m.name == "vae-b")
            && s.target.as_ref().is_some_and(|m| m.name == "vae-a")
            && s.fits_done > fits
    });
}

/// The local-basis slider of direction `dir` (label `dir i · σ=…`).
fn direction_slider<'a>(h: &'a Harness<'_, ExplorerApp>, dir: usize) -> egui_kittest::Node<'a> {
    let prefix = format!("dir {dir} · σ=");
    h.get_all_by_role(Role::Slider)
        .find(|n| {
            n.accesskit_node()
                .label()
                .is_some_and(|l| l.starts_with(&prefix))
        })
        .expect("a local direction slider")
}

#[test]
fn app_local_basis_moves_along_a_direction_in_both_models() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("Local basis").click();
    wait_until(&mut h, "the local basis and its transfer", |app| {
        app.session()
            .local_basis()
            .is_some_and(|b| matches!(b.transfer, Some(Ok(_))))
            && app.session().triptych.mapped_rgb.is_some()
    });
    let basis = h.state().session().local_basis().unwrap().clone();
    assert_eq!(
        basis.singular_values.len(),
        5,
        "k = 5 directions by default"
    );
    assert_eq!(basis.directions.shape(), (8, 5));
    let t = basis.transfer.clone().unwrap().unwrap();
    assert!(t.geodesic.is_finite() && t.geodesic <= t.max_geodesic + 1e-9);
    h.get_by_role_and_label(Role::Image, "Source vae-a");
    h.get_by_role_and_label(Role::Image, "Transferred vae-b");

    let s = h.state().session();
    let (source_before, mapped_before) =
        (s.triptych.source_rgb.clone(), s.triptych.mapped_rgb.clone());
    let (version, z_before) = (s.triptych.mapped_version, s.z.clone());
    direction_slider(&h, 0).set_value_accesskit(1.5);
    wait_until(
        &mut h,
        "both images after the direction slider moved",
        |app| {
            app.session().triptych.mapped_version > version && app.session().pending_drag.is_none()
        },
    );
    let s = h.state().session();
    assert_ne!(
        s.triptych.source_rgb, source_before,
        "the source image changes"
    );
    assert_ne!(
        s.triptych.mapped_rgb, mapped_before,
        "the transferred target image changes"
    );
    // The code moved by 1.5 along direction 0 and nowhere else.
    let coords = s.local_coords().unwrap();
    assert!((coords[0] - 1.5).abs() < 1e-4, "α₀ = {}", coords[0]);
    assert!(coords[1..].iter().all(|c| c.abs() < 1e-4));
    let v0 = basis.directions.column(0);
    for j in 0..8 {
        assert!((s.z[j] - z_before[j] - 1.5 * v0[j]).abs() < 1e-4);
    }

    // Playback along direction 0 walks the straight path and shows its strip.
    h.get_by_label("Play traversal").click();
    wait_until(&mut h, "the playback", |app| {
        app.session().geometry.playback.is_some()
    });
    let z_start = h.state().session().z.clone();
    wait_until(&mut h, "the playback to move the code", |app| {
        app.session().z != z_start
    });
    h.get_by_label("source frame 0");
    h.get_by_label("target frame 8");
    h.get_by_label("Pause traversal").click();
    h.run_ok();
    assert!(h
        .state()
        .session()
        .geometry
        .playback
        .as_ref()
        .unwrap()
        .paused());

    // The curve traversal re-projects at every step.
    h.get_by_label("curve").click();
    h.run_ok();
    h.get_by_label("Play traversal").click();
    wait_until(&mut h, "the curve traversal", |app| {
        app.session()
            .geometry
            .playback
            .as_ref()
            .is_some_and(|pb| pb.traversal.curve && !pb.paused())
    });
    let pb = h.state().session().geometry.playback.clone().unwrap();
    assert_eq!(pb.traversal.path.len(), 21, "10 steps on each side");
    h.get_by_label("Stop traversal").click();
    h.run_ok();
    assert!(h.state().session().geometry.playback.is_none());

    // Another source model: the basis follows it, without errors from stale requests.
    h.get_by_label("Source").click();
    h.run_ok();
    h.get_by_label("vae-b (vae, d=8)").click();
    wait_until(&mut h, "the local basis of the new source", |app| {
        app.session()
            .local_basis()
            .is_some_and(|b| b.source == "vae-b" && b.transfer.as_ref().is_some_and(|t| t.is_ok()))
            && app.session().job.is_none()
    });
    let s = h.state().session();
    assert!(
        s.toasts.iter().all(|t| !t.is_error),
        "no errors: {:?}",
        s.toasts.iter().map(|t| &t.text).collect::<Vec<_>>()
    );
    assert!(s.geometry.basis_error.is_none());
}

#[test]
fn app_probes_tab_shows_identity_accuracy_before_and_after_the_map() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    h.get_by_label("Probes").click();
    wait_until(&mut h, "the probes", |app| {
        app.session().geometry.probes.is_some() && app.session().geometry.probes_job.is_none()
    });
    let r = h.state().session().geometry.probes.clone().unwrap();
    assert_eq!((r.source.as_str(), r.target.as_str()), ("vae-a", "vae-b"));
    assert_eq!(r.num_test, 80);
    for v in [r.source_own.mean, r.target_own.mean, r.mapped.mean] {
        assert!((0.0..=1.0).contains(&v));
    }
    h.get_by_label("after: vae-b probe on mapped vae-a codes");
    h.get_by_label("majority-class baseline");
}

#[test]
fn app_device_choice_explains_a_cpu_only_build_and_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    assert_eq!(h.state().session().device_label, "CPU");
    h.state_mut().push(AppCommand::SetDevice("cuda:0".into()));
    h.step();
    let toasts = error_toasts(&h);
    if cfg!(feature = "cuda") {
        // with a GPU the switch succeeds; without one the reason is shown
        assert!(
            h.state().session().device_label.starts_with("CUDA") || !toasts.is_empty(),
            "{toasts:?}"
        );
    } else {
        assert!(
            toasts.iter().any(|t| t.contains("--features cuda")),
            "{toasts:?}"
        );
        assert_eq!(h.state().session().device_label, "CPU");
    }
    // the app still refits on the CPU
    let fits = h.state().session().fits_done;
    h.state_mut().push(AppCommand::SetDevice("cpu".into()));
    h.state_mut().push(AppCommand::Refit);
    wait_until(&mut h, "a refit after the device choice", |app| {
        app.session().fits_done > fits && app.session().job.is_none()
    });
}

#[test]
fn app_opens_an_image_folder_and_names_the_unreadable_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(tmp.path());
    let dir = tmp.path().join("faces");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..40u32 {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([
                ((x * 3 + k * 5) % 256) as u8,
                ((y * 2 + k * 11) % 256) as u8,
                ((k * 37) % 256) as u8,
            ])
        });
        img.save(dir.join(format!("face{k:02}.png"))).unwrap();
    }
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    h.state_mut().push(AppCommand::Opened(
        latent_atlas::app::OpenKind::ImageFolder,
        dir.clone(),
    ));
    wait_until(&mut h, "the folder dataset", |app| {
        app.session()
            .dataset
            .as_ref()
            .is_some_and(|d| d.id.starts_with("folder:") && d.len() == 40)
    });
    let toasts = error_toasts(&h);
    assert!(
        toasts
            .iter()
            .any(|t| t.contains("1 unreadable image") && t.contains("broken.png")),
        "{toasts:?}"
    );
    wait_until(&mut h, "the refit on the folder", |app| {
        app.session().metrics.is_some() && app.session().job.is_none()
    });
    h.run_ok();
    let shown = h.get_by_label("Sample id").accesskit_node().value();
    let expected = h
        .state()
        .session()
        .sample_id(h.state().session().sample)
        .map(str::to_string);
    assert_eq!(
        shown, expected,
        "the sample-id box shows a sample of the new dataset"
    );
    assert!(shown.is_some_and(|s| s.starts_with("face")));
}
