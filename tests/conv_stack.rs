//! The channels-last inference stack (`conv::conv_stack_leaky`, used by every encoder and
//! recoder at inference) against the layer-by-layer NCHW route and candle's native conv2d.

mod common;
use common::{max_abs_diff, seeded as rand};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use latent_atlas::model::activation::leaky_relu;
use latent_atlas::model::conv::{conv_stack_leaky, ConvGeom};
use latent_atlas::model::vae::ConvEncoder;
use latent_atlas::model::{Family, LatentModel, Model, ModelConfig};

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The stack by candle's own conv2d, layer after layer, flattened.
fn native(x: &Tensor, layers: &[(Tensor, Tensor, ConvGeom)], slope: f32) -> Tensor {
    let mut h = x.clone();
    for (w, b, g) in layers {
        let y = h.conv2d(w, g.padding, g.stride, 1, 1).unwrap();
        let y = y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
        h = leaky_relu(&y, slope).unwrap();
    }
    h.flatten_from(1).unwrap()
}

/// A layer: output channels, kernel, stride, padding.
type Spec = (usize, usize, usize, usize);

/// Random layers for `(c_out, kernel, stride, padding)` from `c_in` channels.
fn layers(c_in: usize, spec: &[Spec], seed: u64) -> Vec<(Tensor, Tensor, ConvGeom)> {
    let mut c = c_in;
    spec.iter()
        .enumerate()
        .map(|(i, &(co, k, s, p))| {
            let scale = 1.0 / ((c * k * k) as f64).sqrt();
            let w = (rand(&[co, c, k, k], seed + 2 * i as u64) * scale).unwrap();
            let b = (rand(&[co], seed + 2 * i as u64 + 1) * 0.3).unwrap();
            c = co;
            (
                w,
                b,
                ConvGeom {
                    kernel: k,
                    stride: s,
                    padding: p,
                },
            )
        })
        .collect()
}

/// Every geometry the models use (4x4 stride 2 from 3 channels, 32 → 256 channels) and
/// others: 16-channel blocks (one vector), 48 channels (three), 3x3 stride-1 and unpadded
/// layers, odd sides, batches whose pixel count leaves a partial 8-pixel tile, a batch of
/// one, and a slope above 1.
#[test]
fn stack_matches_native_conv_layers() {
    if !has_avx512() {
        eprintln!("no AVX-512F: the channels-last stack does not apply, nothing to compare");
        return;
    }
    let cases: Vec<(usize, usize, usize, Vec<Spec>, f32)> = vec![
        // the VAE encoder at c = 8 on 64x64 images
        (
            3,
            3,
            64,
            vec![(16, 4, 2, 1), (32, 4, 2, 1), (32, 4, 2, 1), (64, 4, 2, 1)],
            0.2,
        ),
        // the encoder's real widths, on 32x32 to keep the test quick
        (
            2,
            3,
            32,
            vec![(32, 4, 2, 1), (64, 4, 2, 1), (128, 4, 2, 1), (256, 4, 2, 1)],
            0.2,
        ),
        // odd sides, partial tiles, 3x3 stride 1, no padding, 48 channels
        (
            3,
            5,
            13,
            vec![(48, 3, 1, 1), (16, 4, 2, 1), (32, 3, 2, 0)],
            0.2,
        ),
        (1, 1, 9, vec![(16, 3, 1, 1), (16, 3, 1, 0)], 1.5),
        (7, 2, 6, vec![(32, 4, 2, 1)], 0.01),
    ];
    for (i, (b, c, side, spec, slope)) in cases.into_iter().enumerate() {
        let x = rand(&[b, c, side, side], 100 + i as u64);
        let ls = layers(c, &spec, 200 + 10 * i as u64);
        let parts: Vec<_> = ls.iter().map(|(w, b, g)| (w, b, *g)).collect();
        let ours = conv_stack_leaky(&x, &parts, slope)
            .unwrap()
            .unwrap_or_else(|| panic!("case {i}: the stack should apply"));
        let want = native(&x, &ls, slope);
        let scale = want.abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
        let scale: f32 = scale.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let d = max_abs_diff(&ours, &want);
        assert!(
            d <= 1e-4 * (1.0 + scale),
            "case {i}: max |diff| {d} (values up to {scale})"
        );
    }
}

/// Where the path cannot run it says so (`None`) and the callers fall back: a layer with
/// 20 output channels, a non-f32 input, weights that do not chain.
#[test]
fn stack_declines_what_it_cannot_run() {
    let x = rand(&[2, 3, 16, 16], 1);
    let ls = layers(3, &[(20, 4, 2, 1)], 2);
    let parts: Vec<_> = ls.iter().map(|(w, b, g)| (w, b, *g)).collect();
    assert!(conv_stack_leaky(&x, &parts, 0.2).unwrap().is_none());
    let ls = layers(3, &[(16, 4, 2, 1)], 3);
    let parts: Vec<_> = ls.iter().map(|(w, b, g)| (w, b, *g)).collect();
    let x64 = x.to_dtype(DType::F64).unwrap();
    assert!(conv_stack_leaky(&x64, &parts, 0.2).unwrap().is_none());
    let x5 = rand(&[2, 5, 16, 16], 4);
    assert!(conv_stack_leaky(&x5, &parts, 0.2).unwrap().is_none());
}

/// The encoder's inference path gives the training forward's values, and a model's
/// `encode` (which takes it) gives what the network's own `encode` does.
#[test]
fn encoder_inference_matches_training_forward() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let enc = ConvEncoder::new(vb.pp("enc"), 32).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let t = var.as_tensor();
        let r = (rand(t.dims(), name.len() as u64 * 7 + t.elem_count() as u64) * 0.05).unwrap();
        var.set(&r).unwrap();
    }
    let x = rand(&[3, 3, 64, 64], 9).affine(0.5, 0.5).unwrap();
    let train = enc.forward(&x).unwrap();
    let infer = enc.forward_inference(&x).unwrap();
    let d = max_abs_diff(&train, &infer);
    assert!(d < 1e-4, "encoder: inference differs from forward by {d}");

    let model = Model::new(
        ModelConfig::new("m", Family::Vae, 16),
        &Device::Cpu,
        3,
        false,
    )
    .unwrap();
    let codes = model.encode(&x).unwrap();
    let latent_atlas::model::Net::Vae(vae) = &model.net else {
        panic!("a VAE model holds a VAE network")
    };
    let (mean, _) = vae.encode(&x).unwrap();
    let d = max_abs_diff(&codes, &mean);
    assert!(d < 1e-4, "model encode differs from the network's by {d}");
}

/// The transposed stack (`conv::deconv_stack_leaky`: each layer
/// `leaky(conv_transpose2d(h, w) · scale + shift)`) against candle's native transposed conv,
/// with and without a scale, from 16- and 32-channel blocks, odd sides, a batch of one.
#[test]
fn transposed_stack_matches_native() {
    if !has_avx512() {
        eprintln!("no AVX-512F: the channels-last stack does not apply, nothing to compare");
        return;
    }
    // (batch, c_in, h, w, output channels per layer, scaled)
    let cases: Vec<(usize, usize, usize, usize, Vec<usize>, bool)> = vec![
        (3, 64, 4, 4, vec![32, 32, 16], true),
        (1, 16, 3, 5, vec![48, 16], false),
        (2, 256, 4, 4, vec![128, 64], true),
    ];
    for (i, (b, c, h, w, outs, scaled)) in cases.into_iter().enumerate() {
        let seed = 500 + 20 * i as u64;
        let x = rand(&[b, c, h, w], seed);
        let mut layers = Vec::new();
        let mut ci = c;
        for (l, &co) in outs.iter().enumerate() {
            let s = seed + 3 * l as u64 + 1;
            let wt = (rand(&[ci, co, 4, 4], s) * (1.0 / ((ci * 4) as f64).sqrt())).unwrap();
            let scale = scaled.then(|| rand(&[co], s + 1).affine(0.5, 1.0).unwrap());
            let shift = (rand(&[co], s + 2) * 0.3).unwrap();
            layers.push((wt, scale, shift));
            ci = co;
        }
        let parts: Vec<_> = layers.iter().map(|(w, s, t)| (w, s.as_ref(), t)).collect();
        let ours = latent_atlas::model::conv::deconv_stack_leaky(&x, &parts, 0.2)
            .unwrap()
            .unwrap_or_else(|| panic!("case {i}: the transposed stack should apply"));
        let mut want = x.clone();
        for (wt, scale, shift) in &layers {
            let mut y = want.conv_transpose2d(wt, 1, 0, 2, 1).unwrap();
            if let Some(s) = scale {
                y = y.broadcast_mul(&s.reshape((1, (), 1, 1)).unwrap()).unwrap();
            }
            let y = y
                .broadcast_add(&shift.reshape((1, (), 1, 1)).unwrap())
                .unwrap();
            want = leaky_relu(&y, 0.2).unwrap();
        }
        assert_eq!(ours.dims(), want.dims(), "case {i}: shape");
        let d = max_abs_diff(&ours, &want);
        assert!(d <= 2e-4, "case {i}: max |diff| {d}");
    }
}

/// The generator's inference path (batch norms folded into the transposed convs) gives
/// `generate`'s images, with running statistics away from their initial 0 and 1.
#[test]
fn generator_inference_matches_generate() {
    let model = Model::new(
        ModelConfig::new("g", Family::Gan, 16),
        &Device::Cpu,
        5,
        false,
    )
    .unwrap();
    for (name, var) in model.varmap.data().lock().unwrap().iter() {
        let t = var.as_tensor();
        let seed = name.len() as u64 * 13 + t.elem_count() as u64;
        if name.contains("running_var") {
            var.set(&rand(t.dims(), seed).affine(0.5, 1.0).unwrap())
                .unwrap();
        } else if name.contains("running_mean") {
            var.set(&(rand(t.dims(), seed) * 0.2).unwrap()).unwrap();
        }
    }
    let latent_atlas::model::Net::Gan(gan) = &model.net else {
        panic!("a GAN model holds a GAN network")
    };
    let z = rand(&[5, 16], 77);
    let a = gan.generate(&z).unwrap();
    let b = gan.generate_inference(&z).unwrap();
    let d = max_abs_diff(&a, &b);
    assert!(
        d < 1e-4,
        "generator: inference differs from generate by {d}"
    );
}
