//! The normalizing flow: exact invertibility, log-determinant against a brute-force Jacobian,
//! fused kernels against plain candle ops, finite decodes of wild codes, training lowers the
//! NLL (and resumes exactly), save/load round trip with clear errors.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::discs;
use common::max_abs_diff;
use latent_atlas::model::flow::{self, ops, Flow, FlowArch, FLOW_LATENT_DIM};
use latent_atlas::model::train::{train, TrainKind, TrainOptions};
use latent_atlas::model::{
    load_model, save_model, store, Family, LatentModel, Model, ModelConfig, ModelError,
};
use latent_atlas::progress::{Cancel, NoProgress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Moves every flow parameter away from its identity initialisation: random 1x1-conv
/// triangles and scales, actnorm scales and shifts, coupling nets (last layer included).
fn randomise(varmap: &VarMap, seed: u64) {
    store::init_weights(varmap, seed).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let scale = if name.ends_with(".mix.l") || name.ends_with(".mix.u") {
            0.05
        } else if name.ends_with("logs") || name.ends_with("norm.bias") {
            0.2
        } else if name.ends_with(".c3.weight") {
            0.05
        } else {
            continue;
        };
        latent_atlas::model::weights::assign(
            var,
            &uniform(var.dims(), -scale, scale, seed * 1000 + i as u64),
        )
        .unwrap();
    }
}

fn flow_model(width: usize, seed: u64) -> Model {
    let mut cfg = ModelConfig::new("flow-test", Family::Flow, FLOW_LATENT_DIM);
    cfg.base_channels = width;
    cfg.flow = Some(FlowArch::for_width(width));
    Model::new(cfg, &Device::Cpu, seed, false).unwrap()
}

#[test]
fn decode_inverts_encode_exactly() {
    let model = flow_model(8, 1);
    randomise(&model.varmap, 2);
    assert_eq!(model.latent_dim(), 12288);
    let mut x = uniform(&[3, 3, 64, 64], 0.0, 1.0, 3);
    // include exact black and white pixels
    x = x
        .slice_assign(
            &[0..1, 0..3, 0..4, 0..64],
            &Tensor::zeros((1, 3, 4, 64), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap()
        .slice_assign(
            &[1..2, 0..3, 0..4, 0..64],
            &Tensor::ones((1, 3, 4, 64), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
    let z = model.encode(&x).unwrap();
    assert_eq!(z.dims(), &[3, FLOW_LATENT_DIM]);
    let zs = z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(zs.iter().all(|v| v.is_finite()));
    let spread = z
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(spread > 1e-3, "codes are degenerate: mean square {spread}");
    let xr = model.decode(&z).unwrap();
    let err = max_abs_diff(&x, &xr);
    assert!(err < 1e-4, "decode(encode(x)) differs from x by {err}");
    // and the other way round: encode(decode(z)) = z for codes of real images
    let zr = model.encode(&xr).unwrap();
    let zerr = max_abs_diff(&z, &zr);
    assert!(zerr < 2e-2, "encode(decode(z)) differs from z by {zerr}");
}

#[test]
fn log_det_matches_a_brute_force_jacobian() {
    // A tiny flow on 3x8x8 inputs (192 dimensions), two levels of two steps.
    let arch = FlowArch {
        levels: 2,
        steps_per_level: 2,
        hidden: 8,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tiny = Flow::new(vb, &arch, 3, 8).unwrap();
    randomise(&varmap, 5);
    let d = tiny.latent_dim();
    assert_eq!(d, 192);
    // Row b of the batch is the same point; output b is differentiated in row b.
    let x0 = uniform(&[1, 3, 8, 8], 0.05, 0.95, 6);
    let x = Var::from_tensor(&x0.repeat((d, 1, 1, 1)).unwrap()).unwrap();
    let (y, ld_pre) = flow::logit_forward(x.as_tensor()).unwrap();
    let out = tiny.forward(&y, None).unwrap();
    let z = Flow::flatten_parts(&out.parts).unwrap();
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu).unwrap();
    let grads = (z * eye).unwrap().sum_all().unwrap().backward().unwrap();
    let jac = grads.get(x.as_tensor()).unwrap().reshape((d, d)).unwrap();
    let rows = jac.to_vec2::<f32>().unwrap();
    let m = nalgebra::DMatrix::from_fn(d, d, |i, j| f64::from(rows[i][j]));
    let lu = m.lu();
    let brute: f64 = lu.u().diagonal().iter().map(|v| v.abs().ln()).sum();
    let ld = (ld_pre + out.log_det).unwrap().to_vec1::<f32>().unwrap();
    assert!(
        ld.iter().all(|v| (v - ld[0]).abs() < 1e-3),
        "log-det differs across copies"
    );
    let got = f64::from(ld[0]);
    assert!(
        (got - brute).abs() < 1e-2 + 1e-4 * brute.abs(),
        "log|det J|: flow says {got}, brute force {brute}"
    );
}

#[test]
fn fused_kernels_match_plain_candle_ops() {
    let g = ops::CouplingGeom {
        ca: 3,
        cb: 5,
        bound: 2.0,
    };
    let x = Var::from_tensor(&uniform(&[2, 8, 4, 3], -2.0, 2.0, 7)).unwrap();
    let out = Var::from_tensor(&uniform(&[2, 10, 4, 3], -4.0, 4.0, 8)).unwrap();
    let bias = Var::from_tensor(&uniform(&[8], -1.0, 1.0, 9)).unwrap();
    let w = uniform(&[2, 8, 4, 3], -1.0, 1.0, 10);
    let wl = uniform(&[2], -1.0, 1.0, 11);
    let run = |fused: bool| {
        let (y, ld, yb) = if fused {
            (
                ops::coupling(x.as_tensor(), out.as_tensor(), g).unwrap(),
                ops::log_scale_sum(out.as_tensor(), g).unwrap(),
                latent_atlas::model::channel_op::add_bias(x.as_tensor(), bias.as_tensor()).unwrap(),
            )
        } else {
            (
                ops::coupling_reference(x.as_tensor(), out.as_tensor(), g).unwrap(),
                ops::log_scale_sum_reference(out.as_tensor(), g).unwrap(),
                x.as_tensor()
                    .broadcast_add(&bias.as_tensor().reshape((1, 8, 1, 1)).unwrap())
                    .unwrap(),
            )
        };
        let loss = ((&y * &w).unwrap().sum_all().unwrap()
            + (&ld * &wl).unwrap().sum_all().unwrap()
            + yb.sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let get = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        (y, ld, yb, get(&x), get(&out), get(&bias))
    };
    let a = run(true);
    let b = run(false);
    for (name, p, q) in [
        ("y", &a.0, &b.0),
        ("log-det", &a.1, &b.1),
        ("biased", &a.2, &b.2),
        ("dx", &a.3, &b.3),
        ("dout", &a.4, &b.4),
        ("dbias", &a.5, &b.5),
    ] {
        assert_eq!(p.dims(), q.dims(), "{name}");
        let err = max_abs_diff(p, q);
        assert!(err < 1e-4, "{name}: fused and plain differ by {err}");
    }
}

#[test]
fn decode_of_wild_codes_stays_finite_and_in_range() {
    let model = flow_model(4, 3);
    randomise(&model.varmap, 4);
    for scale in [1.0f32, 1e3, 1e30] {
        let z = uniform(&[2, FLOW_LATENT_DIM], -1.0, 1.0, 12)
            .affine(f64::from(scale), 0.0)
            .unwrap();
        let x = model.decode(&z).unwrap();
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
            "decode of codes of scale {scale} left [0, 1]"
        );
    }
    let bad = Tensor::zeros((1, 100), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(model.decode(&bad), Err(ModelError::BadInput(_))));
}

fn opts(epochs: usize) -> TrainOptions {
    TrainOptions {
        latent_dim: FLOW_LATENT_DIM,
        base_channels: 4,
        seed: 5,
        lr: 2e-2,
        ..common::tiny_opts(TrainKind::Flow, "tiny-flow", epochs)
    }
}

#[test]
fn tiny_training_lowers_the_nll_and_resumes_exactly() {
    let data = discs();
    let full = tempfile::tempdir().unwrap();
    let report = common::train_quiet(&opts(5), &data, full.path());
    let h: Vec<f64> = report.state.history.iter().map(|e| e.loss).collect();
    assert_eq!(h.len(), 5);
    assert!(h.iter().all(|v| v.is_finite() && *v > 0.0), "{h:?}");
    assert!(h[4] < h[0] - 0.2, "bits/dim did not drop: {h:?}");
    let model = load_model(full.path(), &Device::Cpu).unwrap();
    assert_eq!(model.config.family, Family::Flow);
    assert_eq!(model.config.flow, Some(FlowArch::for_width(4)));
    let training = model.config.training.clone().unwrap();
    let bpd = training["heldout_bits_per_dim"].as_f64().unwrap();
    // (36 training discs: the held-out ones are far from them, so no bound on the value)
    assert!(
        bpd.is_finite() && bpd > 0.0,
        "held-out bpd {bpd} (training {h:?})"
    );
    eprintln!("training bits/dim {h:?}, held-out {bpd}");
    let q = model.config.quality.clone().unwrap();
    assert!(
        q.r_mse < 1e-8,
        "a flow reconstructs exactly, R-MSE {}",
        q.r_mse
    );
    for f in ["samples/samples_005.png", "samples/recon_005.png"] {
        assert!(full.path().join(f).exists(), "{f}");
    }
    // stop mid-epoch 3, resume: same weights as the uninterrupted run
    let split = tempfile::tempdir().unwrap();
    let mut first = opts(5);
    first.max_steps = Some(7);
    let cancel = Cancel::new();
    train(
        &first,
        &data,
        split.path(),
        &Device::Cpu,
        false,
        &NoProgress,
        &cancel,
    )
    .unwrap();
    train(
        &opts(5),
        &data,
        split.path(),
        &Device::Cpu,
        true,
        &NoProgress,
        &cancel,
    )
    .unwrap();
    let a = store::named_tensors(&model.varmap, false).unwrap();
    let resumed = load_model(split.path(), &Device::Cpu).unwrap();
    let b = store::named_tensors(&resumed.varmap, false).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(
            max_abs_diff(t, &b[name]),
            0.0,
            "{name} differs after resuming"
        );
    }
}

#[test]
fn save_load_round_trip_and_clear_errors() {
    let model = flow_model(4, 7);
    randomise(&model.varmap, 8);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, dir.path(), false).unwrap();
    let loaded = load_model(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.family(), Family::Flow);
    let x = uniform(&[2, 3, 64, 64], 0.0, 1.0, 9);
    assert_eq!(
        max_abs_diff(&model.encode(&x).unwrap(), &loaded.encode(&x).unwrap()),
        0.0
    );
    let config_path = dir.path().join(store::CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).unwrap();
    // a wider architecture than the weights: the first mismatching tensor is named
    let wider = text.replace("\"hidden\": 4", "\"hidden\": 6");
    assert_ne!(wider, text);
    std::fs::write(&config_path, &wider).unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("flow.") && err.contains("shape"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    // a latent size other than the image's
    let wrong_dim = text.replace("\"latent_dim\": 12288", "\"latent_dim\": 64");
    std::fs::write(&config_path, &wrong_dim).unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("12288"), "{err}");
    // a missing tensor
    std::fs::write(&config_path, &text).unwrap();
    let mut tensors = store::named_tensors(&model.varmap, false).unwrap();
    tensors.remove("flow.l1.s0.mix.l");
    let bytes = store::tensors_to_bytes(&tensors, false).unwrap();
    std::fs::write(dir.path().join(store::WEIGHTS_FILE), bytes).unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing tensor `flow.l1.s0.mix.l`"), "{err}");
}

#[test]
fn squeeze_is_inverted_by_unsqueeze() {
    let x = uniform(&[2, 3, 8, 8], -1.0, 1.0, 13);
    let s = flow::squeeze(&x).unwrap();
    assert_eq!(s.dims(), &[2, 12, 4, 4]);
    // channel 4c + 2dy + dx holds pixel (2i + dy, 2j + dx) of channel c
    let a = x
        .narrow(1, 1, 1)
        .unwrap()
        .narrow(2, 3, 1)
        .unwrap()
        .narrow(3, 4, 1)
        .unwrap();
    // c = 1, pixel (3, 4) = (2·1 + 1, 2·2 + 0): channel 4 + 2 = 6 at (1, 2)
    let b = s
        .narrow(1, 6, 1)
        .unwrap()
        .narrow(2, 1, 1)
        .unwrap()
        .narrow(3, 2, 1)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert_eq!(max_abs_diff(&flow::unsqueeze(&s).unwrap(), &x), 0.0);
}

/// The flow's 12,288-dimensional latent is too wide for a full Jacobian: the local basis says
/// so instead of starting 24,576 decodes (the explorer shows this message on its tab).
#[test]
fn local_basis_of_a_flow_is_refused_with_the_reason() {
    let model = flow_model(4, 1);
    let z = vec![0.0f32; FLOW_LATENT_DIM];
    let err = latent_atlas::latent::local_basis::local_basis(&model, &z, 2, 1e-2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("12288-dimensional"), "{err}");
    assert!(err.contains("at most 1024"), "{err}");
}
