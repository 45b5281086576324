//! The channels-last inference stack (`conv::conv_stack_leaky`, used by every encoder and
//! recoder at inference) against the layer-by-layer NCHW route and candle's native conv2d.

mod common;
use common::stack::layers;
use common::{max_abs_diff, seeded as rand};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use latent_atlas::model::conv::conv_stack_leaky;
use latent_atlas::model::vae::ConvEncoder;
use latent_atlas::model::{Family, LatentModel, Model, ModelConfig};

/// The stack's kernel on this CPU; on an x86-64 CPU with AVX2 and FMA it must have one
/// (the comparisons below then run, never skipped on such a CPU).
fn kernel() -> Option<&'static str> {
    let k = latent_atlas::model::conv::channels_last_stack_kernel();
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(
            k.is_some(),
            "an AVX2 + FMA CPU runs the channels-last stack"
        );
    }
    k
}

/// The stack against candle's conv2d layer after layer (`common::stack::check_conv_stack`)
/// on this CPU's kernel.
#[test]
fn stack_matches_native_conv_layers() {
    let Some(k) = kernel() else {
        eprintln!("no AVX2 + FMA: the channels-last stack does not apply, nothing to compare");
        return;
    };
    eprintln!("channels-last stack on {k}");
    common::stack::check_conv_stack();
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
    // a batch smaller than the thread count takes the NCHW layers (the training forward's
    // own kernels: the same values exactly)
    let one = x.narrow(0, 0, 1).unwrap();
    if !latent_atlas::model::conv::stack_pays_off(1) {
        let d = max_abs_diff(
            &enc.forward(&one).unwrap(),
            &enc.forward_inference(&one).unwrap(),
        );
        assert!(
            d == 0.0,
            "batch of one: inference differs from forward by {d}"
        );
    }

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

/// The transposed stack against candle's native transposed conv
/// (`common::stack::check_deconv_stack`) on this CPU's kernel.
#[test]
fn transposed_stack_matches_native() {
    let Some(k) = kernel() else {
        eprintln!("no AVX2 + FMA: the channels-last stack does not apply, nothing to compare");
        return;
    };
    eprintln!("channels-last stack on {k}");
    common::stack::check_deconv_stack();
}

/// The generator's inference path (batch norms folded into the transposed convs) gives
/// `generate`'s images (`common::stack::check_generator_inference`), on this CPU's stack.
#[test]
fn generator_inference_matches_generate() {
    let what = kernel().map_or("NCHW".to_string(), |k| format!("{k} channels-last"));
    common::stack::check_generator_inference(&what);
}
