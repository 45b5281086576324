//! Save/load round trips for every model family, and clear errors for wrong weights.

use candle_core::{Device, Tensor};
use latent_atlas::model::store::{self, CONFIG_FILE, WEIGHTS_FILE};
use latent_atlas::model::{load_model, save_model, Family, LatentModel, Model, ModelConfig};

fn tiny(family: Family) -> Model {
    let mut cfg = ModelConfig::new("tiny", family, 6);
    cfg.base_channels = 4;
    cfg.recoder_trained = true;
    Model::new(cfg, &Device::Cpu, 3, false).unwrap()
}

fn codes(n: usize, d: usize) -> Tensor {
    Tensor::arange(0f32, (n * d) as f32, &Device::Cpu)
        .unwrap()
        .affine(0.01, -0.1)
        .unwrap()
        .reshape((n, d))
        .unwrap()
}

#[test]
fn every_family_round_trips() {
    for family in [Family::Vae, Family::Svae, Family::Gan, Family::Refdcgan] {
        let model = tiny(family);
        let dir = tempfile::tempdir().unwrap();
        save_model(&model, dir.path(), false).unwrap();
        let loaded = load_model(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.family(), family);
        assert_eq!(loaded.latent_dim(), 6);
        let z = codes(2, 6);
        let a = model.decode(&z).unwrap();
        let b = loaded.decode(&z).unwrap();
        assert_eq!(a.dims(), &[2, 3, 64, 64]);
        let diff = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{family}");
        let e = loaded.encode(&b).unwrap();
        assert_eq!(e.dims(), &[2, 6]);
        let mn = b
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mx = b
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (0.0..=1.0).contains(&mn) && (0.0..=1.0).contains(&mx),
            "{family} decodes outside [0,1]"
        );
    }
}

#[test]
fn f16_weights_decode_within_one_grey_level() {
    let model = tiny(Family::Vae);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path(), true).unwrap();
    let loaded = load_model(dir.path(), &Device::Cpu).unwrap();
    let z = codes(3, 6);
    let d = (model.decode(&z).unwrap() - loaded.decode(&z).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1.0 / 255.0);
}

fn rewrite_weights(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) {
    let path = dir.join(WEIGHTS_FILE);
    let mut t = store::read_tensors(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    store::write_atomic(&path, &store::tensors_to_bytes(&t, false).unwrap()).unwrap();
}

#[test]
fn wrong_weights_name_the_tensor_and_file() {
    let model = tiny(Family::Vae);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path(), false).unwrap();

    rewrite_weights(dir.path(), |t| {
        let v = t.remove("dec.out.bias").unwrap();
        t.insert("dec.out.bias_renamed".into(), v);
    });
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing tensor `dec.out.bias`"), "{err}");
    assert!(err.contains(WEIGHTS_FILE), "{err}");

    save_model(&model, dir.path(), false).unwrap();
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "dec.out.bias".into(),
            Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`dec.out.bias` has shape [5]") && err.contains("needs [3]"),
        "{err}"
    );

    save_model(&model, dir.path(), false).unwrap();
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "extra.thing".into(),
            Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unexpected tensor `extra.thing`"), "{err}");
}

#[test]
fn mismatched_config_and_missing_files_are_clear_errors() {
    let model = tiny(Family::Vae);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path(), false).unwrap();
    // a config claiming another latent size no longer matches the weights
    let text = std::fs::read_to_string(dir.path().join(CONFIG_FILE))
        .unwrap()
        .replace("\"latent_dim\": 6", "\"latent_dim\": 7");
    std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("shape"), "{err}");

    std::fs::write(dir.path().join(CONFIG_FILE), "{ not json").unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("bad model config") && err.contains(CONFIG_FILE),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let err = load_model(empty.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(CONFIG_FILE), "{err}");

    save_model(&model, dir.path(), false).unwrap();
    std::fs::write(dir.path().join(WEIGHTS_FILE), b"garbage").unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(WEIGHTS_FILE), "{err}");
}

#[test]
fn bad_inputs_are_errors() {
    let model = tiny(Family::Vae);
    assert!(model.decode(&codes(2, 5)).is_err());
    let nan = Tensor::new(&[[f32::NAN, 0., 0., 0., 0., 0.]], &Device::Cpu).unwrap();
    let err = model.decode(&nan).err().unwrap().to_string();
    assert!(err.contains("NaN"), "{err}");
    let wrong = Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(model.encode(&wrong).is_err());
    let mut gan = tiny(Family::Gan);
    gan.config.recoder_trained = false;
    let img = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(gan
        .encode(&img)
        .err()
        .unwrap()
        .to_string()
        .contains("recoder"));
}
