//! The style-based generator: save/load, its W and Z views, the mapping network's exact
//! Jacobian and Local Basis, and tiny training runs (generator, resume, recoder into W).

mod common;
use candle_core::{Device, Tensor, Var};
use common::discs;
use common::max_abs_diff;
use latent_atlas::data::Dataset;
use latent_atlas::latent::local_basis::{
    mapping_jacobian, mapping_local_basis, mapping_warp_experiment,
};
use latent_atlas::model::store::{self, WEIGHTS_FILE};
use latent_atlas::model::style::StyleView;
use latent_atlas::model::train::{train, TrainKind, TrainOptions};
use latent_atlas::model::{
    load_model, save_model, Family, LatentModel, Model, ModelConfig, ModelError, Net,
};
use latent_atlas::progress::{Cancel, NoProgress};

fn tiny(family: Family, d: usize, seed: u64) -> Model {
    let mut cfg = ModelConfig::new("tiny-style", family, d);
    cfg.base_channels = 4;
    cfg.recoder_trained = true;
    Model::new(cfg, &Device::Cpu, seed, false).unwrap()
}

fn randn(n: usize, d: usize, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * d)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
}

fn style(model: &Model) -> &latent_atlas::model::style::Style {
    match &model.net {
        Net::Style(s) => s,
        _ => panic!("not a style model"),
    }
}

#[test]
fn style_round_trips_and_decodes_deterministically() {
    let model = tiny(Family::Style, 6, 3);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path(), false).unwrap();
    let loaded = load_model(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.family(), Family::Style);
    assert_eq!(loaded.family().to_string(), "style");
    let w = randn(3, 6, 1);
    let a = model.decode(&w).unwrap();
    let b = loaded.decode(&w).unwrap();
    assert_eq!(a.dims(), &[3, 3, 64, 64]);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // no batch statistics: one code alone decodes exactly as inside a batch
    let alone = loaded.decode(&w.narrow(0, 1, 1).unwrap()).unwrap();
    assert!(max_abs_diff(&alone, &b.narrow(0, 1, 1).unwrap()) < 1e-6);
    let (lo, hi) = (
        b.flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        b.flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    );
    assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
    // different codes give different images (styles reach the output)
    let spread = max_abs_diff(&b.narrow(0, 0, 1).unwrap(), &b.narrow(0, 2, 1).unwrap());
    assert!(spread > 1e-3, "decode ignores the code ({spread})");
    assert_eq!(loaded.encode(&a).unwrap().dims(), &[3, 6]);
    // sampling through Z: prior draws go through the mapping network first
    let z = randn(2, 6, 9);
    let via_prior = loaded.decode_prior(&z).unwrap();
    let w_of_z = style(&loaded).map_z_to_w(&z).unwrap();
    assert!(max_abs_diff(&via_prior, &loaded.decode(&w_of_z).unwrap()) < 1e-6);
    // tensor names: generator under gen.map / gen.syn, recoder under rec, no discriminator
    let names = store::read_tensors(&dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    assert!(names.contains_key("gen.map.fc3.weight"));
    assert!(names.contains_key("gen.syn.const"));
    assert!(names.contains_key("gen.syn.b4.style.weight"));
    assert!(names.contains_key("rec.head.weight"));
    assert!(!names.keys().any(|k| k.starts_with("disc.")));
}

#[test]
fn wrong_weights_and_inputs_are_clear_errors() {
    let model = tiny(Family::Style, 6, 3);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path(), false).unwrap();
    let path = dir.path().join(WEIGHTS_FILE);
    let original = store::read_tensors(&path, &Device::Cpu).unwrap();
    let rewrite = |tensors: &std::collections::HashMap<String, Tensor>| {
        std::fs::write(&path, store::tensors_to_bytes(tensors, false).unwrap()).unwrap();
    };
    let mut missing = original.clone();
    missing.remove("gen.syn.b2.style.weight");
    rewrite(&missing);
    let e = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("gen.syn.b2.style.weight") && e.contains(WEIGHTS_FILE),
        "{e}"
    );
    let mut wrong = original.clone();
    wrong.insert(
        "gen.map.fc1.weight".into(),
        Tensor::zeros((6, 5), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    rewrite(&wrong);
    let e = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("gen.map.fc1.weight") && e.contains("[6, 5]"),
        "{e}"
    );
    // a GAN's weights under a style config
    let gan = tiny(Family::Gan, 6, 3);
    rewrite(&store::named_tensors(&gan.varmap, false).unwrap());
    let e = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing tensor") || e.contains("unexpected"),
        "{e}"
    );
    // bad inputs
    let bad = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(model.decode(&bad), Err(ModelError::BadInput(_))));
    assert!(matches!(
        model.decode_prior(&bad),
        Err(ModelError::BadInput(_))
    ));
    let nan = Tensor::from_vec(vec![f32::NAN; 6], (1, 6), &Device::Cpu).unwrap();
    assert!(matches!(model.decode(&nan), Err(ModelError::BadInput(_))));
    // a style model whose recoder is not trained cannot encode
    let mut cfg = ModelConfig::new("untrained", Family::Style, 6);
    cfg.base_channels = 4;
    let untrained = Model::new(cfg, &Device::Cpu, 1, false).unwrap();
    let x = untrained.decode(&randn(1, 6, 2)).unwrap();
    assert!(matches!(
        untrained.encode(&x),
        Err(ModelError::Unavailable(_))
    ));
}

#[test]
fn z_view_decodes_through_the_whole_mapping() {
    let w_model = tiny(Family::Style, 6, 5);
    let z_model = tiny(Family::StyleZ, 6, 5); // same names, same seed: same weights
    assert_eq!(z_model.family().to_string(), "style-z");
    assert_eq!(StyleView::of(Family::StyleZ), Some(StyleView::Z));
    assert_eq!(StyleView::of(Family::Style), Some(StyleView::W));
    assert_eq!(StyleView::of(Family::Gan), None);
    let s = style(&w_model);
    // decode in Z = decode of its image in W under the mapping network; only the direction
    // of z matters (pixel norm)
    let u = randn(4, 6, 3);
    let via_z = z_model.decode(&u).unwrap();
    let via_w = w_model.decode(&s.map_z_to_w(&u).unwrap()).unwrap();
    assert!(max_abs_diff(&via_z, &via_w) < 1e-6);
    let scaled = z_model.decode(&(&u * 3.0).unwrap()).unwrap();
    assert!(max_abs_diff(&via_z, &scaled) < 1e-5);
    // prior samples agree between the views; the Z view's codes of them are pixel_norm(z)
    let z = randn(3, 6, 4);
    let a = z_model.decode_prior(&z).unwrap();
    let b = w_model.decode_prior(&z).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-6);
    let u = s.recoder_target(&z, StyleView::Z).unwrap();
    let diff = max_abs_diff(&z_model.decode(&u).unwrap(), &a);
    assert!(diff < 1e-5, "{diff}");
    let rms: Vec<f32> = u.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
    assert!(rms.iter().all(|r| (r - 1.0).abs() < 1e-4), "{rms:?}");
    let w = s.recoder_target(&z, StyleView::W).unwrap();
    assert!(max_abs_diff(&w, &s.map_z_to_w(&z).unwrap()) < 1e-7);
}

#[test]
fn mapping_jacobian_matches_finite_differences_and_autodiff() {
    let d = 8;
    let model = tiny(Family::Style, d, 7);
    let s = style(&model);
    let z: Vec<f32> = randn(1, d, 4).flatten_all().unwrap().to_vec1().unwrap();
    let jac = mapping_jacobian(&model, &z).unwrap();
    assert_eq!(jac.shape(), (d, d));
    // central differences through the candle forward pass
    let eps = 1e-2f32;
    let mut rows = Vec::new();
    for i in 0..d {
        for sign in [1f32, -1.0] {
            let mut zz = z.clone();
            zz[i] += sign * eps;
            rows.extend(zz);
        }
    }
    let batch = Tensor::from_vec(rows, (2 * d, d), &Device::Cpu).unwrap();
    let w: Vec<f32> = s
        .map_z_to_w(&batch)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = jac.iter().fold(0f64, |m, v| m.max(v.abs()));
    for i in 0..d {
        for r in 0..d {
            let fd = f64::from(w[2 * i * d + r] - w[(2 * i + 1) * d + r]) / f64::from(2.0 * eps);
            assert!(
                (fd - jac[(r, i)]).abs() < 2e-2 * scale,
                "J[{r},{i}] = {} vs finite difference {fd}",
                jac[(r, i)]
            );
        }
    }
    // Jᵀv by reverse mode
    let v: Vec<f32> = randn(1, d, 6).flatten_all().unwrap().to_vec1().unwrap();
    let z_var = Var::from_slice(&z, (1, d), &Device::Cpu).unwrap();
    let out = s.map_z_to_w(z_var.as_tensor()).unwrap();
    let vt = Tensor::from_slice(&v, (1, d), &Device::Cpu).unwrap();
    let grads = out.mul(&vt).unwrap().sum_all().unwrap().backward().unwrap();
    let g: Vec<f32> = grads
        .get(z_var.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (c, gc) in g.iter().enumerate() {
        let jtv: f64 = (0..d).map(|r| jac[(r, c)] * f64::from(v[r])).sum();
        assert!(
            (jtv - f64::from(*gc)).abs() < 1e-4 * scale.max(1.0),
            "{jtv} vs {gc}"
        );
    }
}

#[test]
fn mapping_local_basis_is_an_svd() {
    let d = 8;
    let model = tiny(Family::Style, d, 7);
    let z: Vec<f32> = randn(1, d, 4).flatten_all().unwrap().to_vec1().unwrap();
    let jac = mapping_jacobian(&model, &z).unwrap();
    let basis = mapping_local_basis(&model, &z, d).unwrap();
    let sv = &basis.singular_values;
    assert!(sv.windows(2).all(|p| p[0] >= p[1]));
    // the pixel norm drops the radial direction: the last singular value vanishes and its
    // right singular vector is ±z/|z|
    assert!(sv[d - 1] < 1e-6 * sv[0], "{sv:?}");
    let zn = z.iter().map(|v| v * v).sum::<f32>().sqrt();
    let cos: f32 = (0..d)
        .map(|i| basis.z_directions[(i, d - 1)] * z[i] / zn)
        .sum();
    assert!((cos.abs() - 1.0).abs() < 1e-4, "{cos}");
    // J vᵢ = σᵢ uᵢ, orthonormal columns, largest entry of each uᵢ positive
    let wd = basis.w_directions.map(f64::from);
    let zd = basis.z_directions.map(f64::from);
    let gram = wd.transpose() * &wd;
    assert!((gram - nalgebra::DMatrix::<f64>::identity(d, d)).norm() < 1e-5);
    for i in 0..d - 1 {
        let lhs = &jac * zd.column(i);
        let rhs = wd.column(i) * sv[i];
        assert!((lhs - rhs).norm() < 1e-5 * sv[0]);
        let col = basis.w_directions.column(i);
        let pivot = col
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        assert!(pivot > 0.0);
    }
    // errors: wrong length, bad k, a model without a mapping network
    assert!(mapping_local_basis(&model, &z[..3], 2).is_err());
    assert!(mapping_local_basis(&model, &z, 0).is_err());
    let vae = tiny(Family::Vae, d, 1);
    let e = mapping_local_basis(&vae, &z, 2).err().unwrap().to_string();
    assert!(e.contains("style"), "{e}");
}

#[test]
fn mapping_warp_experiment_reports_every_k() {
    let model = tiny(Family::Style, 8, 2);
    let r = mapping_warp_experiment(&model, 4, &[1, 2, 4], 0.01, 3).unwrap();
    assert_eq!(r.geodesic.len(), 3);
    assert_eq!(r.latent_dim, 8);
    for row in r.geodesic.iter().chain(&r.projection) {
        for v in [
            row.random_pairs,
            row.near_pairs,
            row.random_subspaces,
            row.vs_global_pca,
        ] {
            assert!(v.is_finite() && (0.0..=row.max_distance + 1e-9).contains(&v));
        }
        // nearby points have nearby local bases
        assert!(row.near_pairs <= row.random_pairs, "{row:?}");
    }
    let again = mapping_warp_experiment(&model, 4, &[1, 2, 4], 0.01, 3).unwrap();
    assert_eq!(r, again);
    assert!(mapping_warp_experiment(&model, 4, &[9], 0.01, 3).is_err());
    assert!(mapping_warp_experiment(&model, 0, &[1], 0.01, 3).is_err());
}

fn opts(kind: TrainKind, epochs: usize) -> TrainOptions {
    TrainOptions {
        base_channels: 4,
        ..common::tiny_opts(kind, "tiny-style", epochs)
    }
}

fn run(o: &TrainOptions, data: &Dataset, out: &std::path::Path, resume: bool) -> f64 {
    let report = train(
        o,
        data,
        out,
        &Device::Cpu,
        resume,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    report
        .state
        .history
        .last()
        .map(|h| h.aux)
        .unwrap_or(f64::NAN)
}

#[test]
fn style_gan_trains_resumes_exactly_and_writes_samples() {
    let data = discs();
    let full = tempfile::tempdir().unwrap();
    let o = opts(TrainKind::Style, 3);
    let d_loss = run(&o, &data, full.path(), false);
    // the discriminator learns to tell the discs from the samples (chance: 2 ln 2)
    assert!(d_loss.is_finite() && d_loss < 2.0 * 2f64.ln(), "{d_loss}");
    let model = load_model(full.path(), &Device::Cpu).unwrap();
    assert_eq!(model.family(), Family::Style);
    assert!(!model.config.recoder_trained);
    assert!(full.path().join("samples/samples_003.png").exists());
    assert!(!full.path().join("samples/recon_003.png").exists());
    let x = data.batch(&[0], &Device::Cpu).unwrap();
    assert!(matches!(model.encode(&x), Err(ModelError::Unavailable(_))));

    let split = tempfile::tempdir().unwrap();
    let mut first = opts(TrainKind::Style, 3);
    first.max_steps = Some(5);
    run(&first, &data, split.path(), false);
    run(&o, &data, split.path(), true);
    let a = store::read_tensors(&full.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    let b = store::read_tensors(&split.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, ta) in &a {
        assert!(
            max_abs_diff(ta, &b[k]) < 1e-6,
            "tensor {k} differs after resume"
        );
    }
}

#[test]
fn style_recoders_learn_w_and_z() {
    let data = discs();
    let gen_dir = tempfile::tempdir().unwrap();
    let mut cfg = ModelConfig::new("fresh-style", Family::Style, 8);
    cfg.base_channels = 4;
    let fresh = Model::new(cfg, &Device::Cpu, 5, false).unwrap();
    save_model(&fresh, gen_dir.path(), false).unwrap();

    let rec_dir = tempfile::tempdir().unwrap();
    let mut r = opts(TrainKind::Recoder, 4);
    r.generator = Some(gen_dir.path().to_path_buf());
    r.steps_per_epoch = Some(25);
    let report = common::train_quiet(&r, &data, rec_dir.path());
    let h = &report.state.history;
    assert!(
        h[3].loss < 0.8 * h[0].loss,
        "recoder W MSE did not drop: {h:?}"
    );
    let model = load_model(rec_dir.path(), &Device::Cpu).unwrap();
    assert!(model.config.recoder_trained);
    assert!(rec_dir.path().join("samples/recon_004.png").exists());
    let q = model.config.quality.clone().expect("quality measured");
    assert!(q.r_mse.is_finite());

    // the Z view: the same generator, a recoder into pixel-normalised Z
    let z_dir = tempfile::tempdir().unwrap();
    let mut rz = r.clone();
    rz.kind = TrainKind::RecoderZ;
    rz.name = "fresh-style-z".into();
    let report = common::train_quiet(&rz, &data, z_dir.path());
    let h = &report.state.history;
    assert!(
        h[3].loss < 0.8 * h[0].loss,
        "recoder Z MSE did not drop: {h:?}"
    );
    let z_model = load_model(z_dir.path(), &Device::Cpu).unwrap();
    assert_eq!(z_model.family(), Family::StyleZ);
    assert_eq!(z_model.name(), "fresh-style-z");
    assert!(z_model.config.recoder_trained);
    let x = data.batch(&[0, 4, 8], &Device::Cpu).unwrap();
    assert_eq!(z_model.encode(&x).unwrap().dims(), &[3, 8]);
    // the generators are the same
    let g = randn(2, 8, 1);
    assert_eq!(
        max_abs_diff(
            &z_model.decode_prior(&g).unwrap(),
            &model.decode_prior(&g).unwrap()
        ),
        0.0
    );
    // recoder-z refuses a model that is not a style generator
    let vae_dir = tempfile::tempdir().unwrap();
    save_model(&tiny(Family::Vae, 8, 1), vae_dir.path(), false).unwrap();
    let mut bad = rz.clone();
    bad.generator = Some(vae_dir.path().to_path_buf());
    let out = tempfile::tempdir().unwrap();
    let e = train(
        &bad,
        &data,
        out.path(),
        &Device::Cpu,
        false,
        &NoProgress,
        &Cancel::new(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("vae"), "{e}");
}
