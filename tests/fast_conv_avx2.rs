//! The AVX2 paths of the conv kernels (gemm_f32's 16x6 micro-kernel, gemm's products), which a
//! CPU with AVX-512F never takes otherwise: `LATENT_ATLAS_NO_AVX512` is set before any kernel
//! runs (this binary's only test, so nothing runs before it), then the implicit, stride-phase
//! and im2col routes are compared with candle's native ops, outputs and gradients, and the
//! AVX-512-only channels-last inference stack must decline, the encoder and the generator
//! falling back to their NCHW inference paths.

mod common;
use common::{assert_matches_native as check, max_abs_diff, seeded as rand};

use candle_core::{Device, Var};
use latent_atlas::model::conv::{conv2d, conv_stack_leaky, conv_transpose2d, ConvGeom};
use latent_atlas::model::vae::ConvEncoder;

#[test]
fn avx2_kernels_match_native() {
    std::env::set_var("LATENT_ATLAS_NO_AVX512", "1");
    // (batch, c_in, side, c_out, kernel, stride): 4x4 stride-2 layers on the implicit and
    // stride-phase kernels (output channels past and within one 6-wide panel), 3x3 stride-1
    // ones (implicit, and im2col for the 16 -> 3 output conv), the first 3-channel layer
    for (i, &(b, c_in, side, c_out, k, s)) in [
        (3, 32, 16, 20, 4, 2),
        (2, 40, 8, 7, 4, 2),
        (2, 32, 8, 35, 3, 1),
        (2, 16, 16, 3, 3, 1),
        (2, 3, 16, 32, 4, 2),
    ]
    .iter()
    .enumerate()
    {
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: 1,
        };
        let x = Var::from_tensor(&rand(&[b, c_in, side, side], 10 + i as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[c_out, c_in, k, k], 20 + i as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x.as_tensor().conv2d(w.as_tensor(), 1, s, 1, 1).unwrap();
        check(
            &ours,
            &native,
            &x,
            &w,
            30 + i as u64,
            &format!("conv {b}x{c_in}x{side} -> {c_out} k{k}"),
        );
    }
    let g = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    for (i, &(b, c_in, side, c_out)) in [
        (2, 40, 8, 32),
        (2, 64, 4, 20),
        (2, 32, 16, 16),
        (2, 24, 8, 20),
    ]
    .iter()
    .enumerate()
    {
        let x = Var::from_tensor(&rand(&[b, c_in, side, side], 40 + i as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[c_in, c_out, 4, 4], 50 + i as u64)).unwrap();
        let ours = conv_transpose2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x
            .as_tensor()
            .conv_transpose2d(w.as_tensor(), 1, 0, 2, 1)
            .unwrap();
        check(
            &ours,
            &native,
            &x,
            &w,
            60 + i as u64,
            &format!("transposed {c_in} -> {c_out}"),
        );
    }
    // the channels-last inference stack is AVX-512 only: it declines, and the encoder's
    // inference path falls back to the NCHW forward
    let w = rand(&[16, 3, 4, 4], 70);
    let b = rand(&[16], 71);
    let x = rand(&[2, 3, 16, 16], 72);
    assert!(conv_stack_leaky(&x, &[(&w, &b, g)], 0.2).unwrap().is_none());
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let enc = ConvEncoder::new(vb, 8).unwrap();
    let x = rand(&[2, 3, 64, 64], 73);
    let d = max_abs_diff(
        &enc.forward(&x).unwrap(),
        &enc.forward_inference(&x).unwrap(),
    );
    assert!(d == 0.0, "fallback inference differs from forward by {d}");

    // the generator's inference without the channels-last stack: its batch norms folded into
    // the NCHW transposed convs (scale into the weights, shift as the fused bias), against
    // `generate`, with running statistics away from their initial 0 and 1
    use latent_atlas::model::{Family, Model, ModelConfig, Net};
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
        let value = if name.contains("running_var") {
            // small variances scale the (small) initial activations up, as in a trained model
            rand(t.dims(), seed).affine(0.02, 0.02)
        } else if name.contains("running_mean") {
            rand(t.dims(), seed) * 0.02
        } else if name.contains(".n") && name.ends_with(".weight") {
            // batch-norm scales of both signs and away from 1
            rand(t.dims(), seed).affine(2.0, 0.3)
        } else {
            continue;
        };
        var.set(&value.unwrap()).unwrap();
    }
    let Net::Gan(gan) = &model.net else {
        panic!("a GAN model holds a GAN network")
    };
    let z = rand(&[5, 16], 77);
    let (a, b) = (
        gan.generate(&z).unwrap(),
        gan.generate_inference(&z).unwrap(),
    );
    let d = max_abs_diff(&a, &b);
    assert!(
        d < 1e-4,
        "generator: NCHW inference differs from generate by {d}"
    );
    let spread = (a.max_all().unwrap().to_scalar::<f32>().unwrap()
        - a.min_all().unwrap().to_scalar::<f32>().unwrap())
    .abs();
    assert!(
        spread > 0.05,
        "degenerate generator output (spread {spread})"
    );
}
