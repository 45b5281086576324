//! A normalizing flow in the pair workflow: screened reconstruction gains, the support set,
//! maps into and out of the flow with `ridge:auto`, relocation metrics, and the f16 codes
//! cache.

mod common;

use candle_core::{Device, Tensor};
use latent_atlas::latent::encodings::{load, save, Encodings, F16_ABOVE_DIM};
use latent_atlas::latent::gain_screened::{screened_reconstruction_gain, SCREEN_CANDIDATES};
use latent_atlas::latent::pipeline::{
    cached_gains, evaluate_pair, fit_pair, pair_estimator, source_support_set, Loaded, PairOptions,
};
use latent_atlas::latent::Estimator;
use latent_atlas::model::flow::{FlowArch, FLOW_LATENT_DIM};
use latent_atlas::model::{store, Family, LatentModel, Model, ModelConfig};
use latent_atlas::progress::{Cancel, NoProgress};
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 64 images: a soft disc whose position, size and colour vary.
fn discs() -> latent_atlas::data::Dataset {
    common::random_discs(64, 3)
}

/// A tiny flow moved away from the identity (random coupling outputs and 1x1 convs).
fn flow() -> Model {
    let mut cfg = ModelConfig::new("flow", Family::Flow, FLOW_LATENT_DIM);
    cfg.base_channels = 4;
    cfg.flow = Some(FlowArch::for_width(4));
    let model = Model::new(cfg, &Device::Cpu, 1, false).unwrap();
    store::init_weights(&model.varmap, 2).unwrap();
    let data = model.varmap.data().lock().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let scale: f32 = if name.ends_with(".mix.l") || name.ends_with(".mix.u") {
            0.05
        } else if name.ends_with(".c3.weight") {
            0.02
        } else {
            continue;
        };
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        latent_atlas::model::weights::assign(
            var,
            &Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap(),
        )
        .unwrap();
    }
    drop(data);
    model
}

fn vae() -> Model {
    let mut cfg = ModelConfig::new("vae", Family::Vae, 8);
    cfg.base_channels = 4;
    Model::new(cfg, &Device::Cpu, 5, false).unwrap()
}

#[test]
fn screened_gains_are_exact_for_the_candidates() {
    let ds = discs();
    let model = flow();
    let idx: Vec<usize> = (0..10).collect();
    let g = screened_reconstruction_gain(&model, &ds, &idx, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(g.gains.len(), FLOW_LATENT_DIM);
    let mut sorted = g.order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..FLOW_LATENT_DIM).collect::<Vec<_>>());
    assert!(g.gains.iter().all(|v| v.is_finite()));
    assert!(
        g.baseline_mse < 1e-8,
        "a flow reconstructs exactly: {}",
        g.baseline_mse
    );
    // the top variable's gain is the exact one (zero it, decode, compare); a variable past
    // the candidates carries the first-order estimate, close to its exact gain
    let x = ds.batch(&idx, &Device::Cpu).unwrap();
    let z = model.encode(&x).unwrap();
    let base = mse(&model.decode(&z).unwrap(), &x);
    let direct = |j: usize| {
        let mut mask = vec![1f32; FLOW_LATENT_DIM];
        mask[j] = 0.0;
        let mask = Tensor::from_vec(mask, (1, FLOW_LATENT_DIM), &Device::Cpu).unwrap();
        mse(&model.decode(&z.broadcast_mul(&mask).unwrap()).unwrap(), &x) - base
    };
    let top = g.order[0];
    let exact = direct(top);
    assert!(exact > 0.0);
    assert!(
        (g.gains[top] - exact).abs() < 1e-3 * exact + 1e-9,
        "gain of {top}: report {} vs direct {exact}",
        g.gains[top]
    );
    let screened = g.order[SCREEN_CANDIDATES + 3];
    let ratio = g.gains[screened] / direct(screened);
    assert!(
        (0.4..2.5).contains(&ratio),
        "first-order estimate of {screened} off by a factor {ratio}"
    );
}

fn mse(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

#[test]
fn maps_into_and_out_of_a_flow_use_ridge_cv() {
    let ds = discs();
    let cache = tempfile::tempdir().unwrap();
    let (none, cancel) = (NoProgress, Cancel::new());
    let f = Loaded::new(flow(), &ds, cache.path(), &none, &cancel).unwrap();
    let v = Loaded::new(vae(), &ds, cache.path(), &none, &cancel).unwrap();
    assert_eq!(f.encodings.codes.shape(), (64, FLOW_LATENT_DIM));
    assert_eq!(
        pair_estimator(&Estimator::Lstsq, &f, &v),
        Estimator::RidgeCv
    );
    assert_eq!(
        pair_estimator(&Estimator::Affine, &v, &f),
        Estimator::RidgeCv
    );
    assert_eq!(pair_estimator(&Estimator::Lstsq, &v, &v), Estimator::Lstsq);
    let kept = Estimator::Ridge { lambda: 2.0 };
    assert_eq!(pair_estimator(&kept, &f, &v), kept);
    // gains (screened, cached) and a sector support set of the flow
    let opts = PairOptions {
        support_size: 16,
        num_selected: 3,
        gain_images: 8,
        ..Default::default()
    };
    let g = cached_gains(&f, &ds, 8, cache.path(), &none, &cancel).unwrap();
    let again = cached_gains(&f, &ds, 8, cache.path(), &none, &cancel).unwrap();
    // (read back from the JSON cache: equal up to the last bit of the float parsing)
    assert_eq!(g.order, again.order);
    let worst = g
        .gains
        .iter()
        .zip(&again.gains)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1e-30))
        .fold(0.0, f64::max);
    assert!(worst < 1e-12, "cached gains differ by {worst}");
    let support = source_support_set(&f, &g, &ds, &opts).unwrap();
    assert_eq!(support.indices.len(), 16);
    let eval: Vec<usize> = (0..64).filter(|i| i % 4 == 0).collect();
    for (src, tgt) in [(&f, &v), (&v, &f)] {
        let map = fit_pair(src, tgt, &support.indices, &Estimator::Lstsq, &Device::Cpu).unwrap();
        assert_eq!(map.estimator, Estimator::RidgeCv);
        assert!(map.info.lambda.is_some_and(|l| l > 0.0));
        assert_eq!(map.info.num_points, 16);
        let m = evaluate_pair(src, tgt, &map, &ds, &eval, &none, &cancel).unwrap();
        assert!(m.m_mse_mean.is_finite() && m.l_mse.is_finite());
        assert!((0.0..=1.0).contains(&m.cka_mapped_target));
        assert_eq!(m.num_samples, eval.len());
    }
}

#[test]
fn wide_codes_are_cached_as_f16() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (n, d) = (5, F16_ABOVE_DIM + 8);
    let codes = DMatrix::from_fn(n, d, |_, _| rng.random_range(-4.0f32..4.0));
    let enc = Encodings {
        model_name: "wide".into(),
        model_hash: "0123456789abcdef".into(),
        dataset_id: "test".into(),
        sample_ids: (0..n).map(|i| format!("s{i}")).collect(),
        codes: codes.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.lacodes");
    save(&enc, &path).unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(bytes < n * d * 3, "{bytes} bytes: not f16");
    let back = load(&path).unwrap();
    let err = (&back.codes - &codes).abs().max();
    assert!(err <= 4.0 / 1024.0, "f16 rounding {err}");
    // a truncated file is an error naming it
    let all = std::fs::read(&path).unwrap();
    std::fs::write(&path, &all[..all.len() - 1]).unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("wide.lacodes"), "{e}");
    // narrow codes stay f32 and exact
    let narrow = Encodings {
        codes: codes.columns(0, 8).into_owned(),
        ..enc
    };
    save(&narrow, &path).unwrap();
    assert_eq!(load(&path).unwrap().codes, narrow.codes);
}

#[test]
fn cka_of_wide_codes_uses_the_gram_form_and_agrees_with_the_definition() {
    // 20 points in 300 and 7 dimensions: the N x N form is used; compare with
    // ‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F) computed directly.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x = DMatrix::from_fn(20, 300, |_, _| rng.random_range(-1.0f32..1.0));
    let y = DMatrix::from_fn(20, 7, |_, _| rng.random_range(-1.0f32..1.0)) + x.columns(0, 7) * 0.5;
    let centre = |m: &DMatrix<f32>| {
        let mut c = m.map(f64::from);
        let mean = c.row_mean();
        for mut row in c.row_iter_mut() {
            row -= &mean;
        }
        c
    };
    let (xc, yc) = (centre(&x), centre(&y));
    let direct = (yc.transpose() * &xc).norm_squared()
        / ((xc.transpose() * &xc).norm() * (yc.transpose() * &yc).norm());
    let cka = latent_atlas::latent::linear_cka(&x, &y).unwrap();
    assert!((cka - direct).abs() < 1e-6, "{cka} vs {direct}");
    assert!((latent_atlas::latent::linear_cka(&x, &x).unwrap() - 1.0).abs() < 1e-9);
}
