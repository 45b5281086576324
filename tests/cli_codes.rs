//! `encode` / `decode` through the real binary: numpy-compatible files and clear errors.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use latent_atlas::model::{save_model, Family, Model, ModelConfig};

fn tiny_model(dir: &Path) {
    let mut cfg = ModelConfig::new("tiny-vae", Family::Vae, 6);
    cfg.base_channels = 4;
    save_model(
        &Model::new(cfg, &Device::Cpu, 1, false).unwrap(),
        dir,
        false,
    )
    .unwrap();
}

fn la(args: &[&str], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
        .args(args)
        .env("LATENT_ATLAS_CACHE", cache)
        .output()
        .unwrap()
}

#[test]
fn encode_then_decode_round_trip_with_npy_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model);
    let codes = tmp.path().join("codes.npy");
    let out = la(
        &[
            "encode",
            "--model",
            model.to_str().unwrap(),
            "--data",
            "orl",
            "--ids",
            "s1/1.pgm,s2/3.pgm,s40/10.pgm",
            "--out",
            codes.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let z = Tensor::read_npy(&codes).unwrap();
    assert_eq!(z.dims(), &[3, 6]);
    assert_eq!(z.dtype(), DType::F32);
    let ids = std::fs::read_to_string(tmp.path().join("codes.ids.txt")).unwrap();
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        ["s1/1.pgm", "s2/3.pgm", "s40/10.pgm"]
    );

    let dec = tmp.path().join("decoded");
    let out = la(
        &[
            "decode",
            "--model",
            model.to_str().unwrap(),
            "--codes",
            codes.to_str().unwrap(),
            "--out",
            dec.to_str().unwrap(),
            "--npy",
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..3 {
        let img = image::open(dec.join(format!("{i:06}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    let imgs = Tensor::read_npy(dec.join("images.npy")).unwrap();
    assert_eq!(imgs.dims(), &[3, 3, 64, 64]);
    let max = imgs
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((0.0..=1.0).contains(&max));
}

#[test]
fn bad_code_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model);
    let m = model.to_str().unwrap();
    let decode = |file: &Path| {
        let out = la(
            &[
                "decode",
                "--model",
                m,
                "--codes",
                file.to_str().unwrap(),
                "--out",
                tmp.path().join("o").to_str().unwrap(),
            ],
            tmp.path(),
        );
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let nan = tmp.path().join("nan.npy");
    Tensor::new(&[[0f32, 1., f32::NAN, 0., 0., 0.]], &Device::Cpu)
        .unwrap()
        .write_npy(&nan)
        .unwrap();
    let err = decode(&nan);
    assert!(
        err.contains("non-finite") && err.contains("nan.npy"),
        "{err}"
    );

    let wrong = tmp.path().join("wrong.npy");
    Tensor::zeros((2, 5), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&wrong)
        .unwrap();
    let err = decode(&wrong);
    assert!(err.contains("N x 6") && err.contains("[2, 5]"), "{err}");

    let f64s = tmp.path().join("f64.npy");
    Tensor::zeros((2, 6), DType::F64, &Device::Cpu)
        .unwrap()
        .write_npy(&f64s)
        .unwrap();
    let err = decode(&f64s);
    assert!(err.contains("float32"), "{err}");

    let err = decode(&tmp.path().join("missing.npy"));
    assert!(
        err.contains("no such file") && err.contains("missing.npy"),
        "{err}"
    );

    let garbage = tmp.path().join("garbage.npy");
    std::fs::write(&garbage, b"not numpy at all").unwrap();
    let err = decode(&garbage);
    assert!(err.contains("garbage.npy"), "{err}");

    let out = la(
        &[
            "encode",
            "--model",
            m,
            "--data",
            "orl",
            "--ids",
            "nobody",
            "--out",
            tmp.path().join("c.npy").to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sample `nobody`"));
}
