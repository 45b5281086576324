//! The analysis commands through the real binary: raw-code fits recover a known map, and
//! `table` / `support-set` / `montage` run end to end on tiny models and the ORL faces.

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use latent_atlas::model::{save_model, Family, Model, ModelConfig};

fn la(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
        .args(args)
        .env("LATENT_ATLAS_CACHE", cache)
        .output()
        .unwrap()
}

/// An untrained model with an 8-dim latent and 4 base channels, saved as `dir/name`.
fn tiny_model(dir: &Path, name: &str, family: Family, seed: u64) -> std::path::PathBuf {
    let mut cfg = ModelConfig::new(name, family, 8);
    cfg.base_channels = 4;
    let out = dir.join(name);
    save_model(
        &Model::new(cfg, &Device::Cpu, seed, false).unwrap(),
        &out,
        false,
    )
    .unwrap();
    out
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fit_on_raw_codes_recovers_a_known_map() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, d1, d2) = (300usize, 5usize, 3usize);
    let a: Vec<f32> = (0..n * d1)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let w: Vec<f32> = (0..d1 * d2).map(|i| (i as f32 - 7.0) / 5.0).collect();
    let at = Tensor::from_vec(a, (n, d1), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w.clone(), (d1, d2), &Device::Cpu).unwrap();
    let bt = at.matmul(&wt).unwrap();
    at.write_npy(tmp.path().join("a.npy")).unwrap();
    bt.write_npy(tmp.path().join("b.npy")).unwrap();
    let out_dir = tmp.path().join("map");
    let p = |f: &str| tmp.path().join(f).to_str().unwrap().to_string();
    ok(&la(
        &[
            "fit",
            "--source-codes",
            &p("a.npy"),
            "--target-codes",
            &p("b.npy"),
            "--estimator",
            "lstsq",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    let got: Vec<f32> = Tensor::read_npy(out_dir.join("W.npy"))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), d1 * d2);
    for (g, e) in got.iter().zip(&w) {
        assert!((g - e).abs() < 1e-3, "W differs: {g} vs {e}");
    }
    assert!(out_dir.join("map.safetensors").exists());
    // mismatched row counts are a clear error
    Tensor::zeros((10, d2), candle_core::DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(tmp.path().join("c.npy"))
        .unwrap();
    let out = la(
        &[
            "fit",
            "--source-codes",
            &p("a.npy"),
            "--target-codes",
            &p("c.npy"),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("300 rows"));
}

#[test]
fn table_support_set_and_montage_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<String> = [(Family::Vae, 1u64, "va"), (Family::Svae, 2, "sv")]
        .iter()
        .map(|&(f, seed, name)| {
            tiny_model(tmp.path(), name, f, seed)
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let json = tmp.path().join("table.json");
    let out = ok(&la(
        &[
            "table",
            "--data",
            "orl",
            "--models",
            &format!("{},{}", dirs[0], dirs[1]),
            "--max-eval",
            "40",
            "--json",
            json.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    assert!(out.contains("va → sv") && out.contains("sv → va"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 3, "two ordered pairs x three fits");
    for r in rows {
        for k in ["l_mse", "r_mse", "m_mse"] {
            let x = r[k].as_f64().unwrap();
            assert!(x.is_finite() && x >= 0.0, "{k} = {x}");
        }
        assert_eq!(
            r["pair_type"].as_u64().unwrap(),
            2,
            "VAE vs Split-VAE is Type 2"
        );
    }

    let set = tmp.path().join("set.json");
    let out = ok(&la(
        &[
            "support-set",
            "--model",
            &dirs[0],
            "--data",
            "orl",
            "--out",
            set.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    assert!(out.contains("spread check"), "{out}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&set).unwrap()).unwrap();
    assert_eq!(s["sample_ids"].as_array().unwrap().len(), 150);

    let png = tmp.path().join("m.png");
    ok(&la(
        &[
            "montage",
            "--source",
            &dirs[0],
            "--target",
            &dirs[1],
            "--data",
            "orl",
            "--n",
            "4",
            "--out",
            png.to_str().unwrap(),
        ],
        tmp.path(),
    ));
    let img = image::open(&png).unwrap();
    assert!(img.height() > 3 * 64 && img.width() > 4 * 64);
}

/// `local-basis --all-pairs`: every ordered pair of three tiny models (one of them a copy of
/// another, whose local bases transfer exactly), as JSON and as markdown matrices.
#[test]
fn local_basis_transfer_for_every_ordered_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs: Vec<_> = [("la", 1u64), ("lb", 2)]
        .iter()
        .map(|&(name, seed)| tiny_model(tmp.path(), name, Family::Vae, seed))
        .collect();
    // a copy of `la` under another name: the map between them is the identity
    let copy = tmp.path().join("lc");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        dirs[0].join("model.safetensors"),
        copy.join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(dirs[0].join("config.json"))
        .unwrap()
        .replace("\"la\"", "\"lc\"");
    std::fs::write(copy.join("config.json"), cfg).unwrap();
    dirs.push(copy);
    let models = dirs
        .iter()
        .map(|d| d.to_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let base = [
        "local-basis",
        "--data",
        "orl",
        "--points",
        "3",
        "--ks",
        "1,2",
    ];
    let out = ok(&la(
        &[&base[..], &["--all-pairs", &models, "--json"]].concat(),
        tmp.path(),
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reports = v.as_array().unwrap();
    assert_eq!(reports.len(), 6, "3 models, 6 ordered pairs");
    for r in reports {
        let rows = r["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            let (g, rg) = (
                row["geodesic"].as_f64().unwrap(),
                row["random_geodesic"].as_f64().unwrap(),
            );
            assert!(g.is_finite() && g >= 0.0 && rg > 0.0, "{row}");
        }
        if (r["source"] == "la" && r["target"] == "lc")
            || (r["source"] == "lc" && r["target"] == "la")
        {
            let g = rows[0]["geodesic"].as_f64().unwrap();
            assert!(
                g < 0.05,
                "identical models: the basis transfers exactly, got {g}"
            );
        }
    }
    let md = ok(&la(
        &[&base[..], &["--all-pairs", &models]].concat(),
        tmp.path(),
    ));
    assert!(md.contains("k = 1") && md.contains("k = 2"), "{md}");
    assert!(md.contains("| la | – |"), "{md}");
    let err = la(
        &[&base[..], &["--all-pairs", dirs[0].to_str().unwrap()]].concat(),
        tmp.path(),
    );
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("at least two models"));
}
