//! The channels-last inference stack (`conv::conv_stack_leaky`, used by every encoder and
//! recoder at inference) against the layer-by-layer NCHW route and candle's native conv2d.

mod common;
use common::stack::layers;
use common::{max_abs_diff, seeded as rand};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use latent_atlas::model::conv::{conv_stack_leaky, StackCache};
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
/// 20 output channels, a non-f32 input, weights that do not chain (also once packed).
#[test]
fn stack_declines_what_it_cannot_run() {
    let x = rand(&[2, 3, 16, 16], 1);
    let ls = layers(3, &[(20, 4, 2, 1)], 2);
    let parts: Vec<_> = ls.iter().map(|(w, b, g)| (w, b, *g)).collect();
    assert!(conv_stack_leaky(&x, &parts, 0.2, &StackCache::default())
        .unwrap()
        .is_none());
    let ls = layers(3, &[(16, 4, 2, 1)], 3);
    let parts: Vec<_> = ls.iter().map(|(w, b, g)| (w, b, *g)).collect();
    let x64 = x.to_dtype(DType::F64).unwrap();
    assert!(conv_stack_leaky(&x64, &parts, 0.2, &StackCache::default())
        .unwrap()
        .is_none());
    let x5 = rand(&[2, 5, 16, 16], 4);
    assert!(conv_stack_leaky(&x5, &parts, 0.2, &StackCache::default())
        .unwrap()
        .is_none());
    // weights packed for 3-channel inputs and kept: a 5-channel input still declines
    let cache = StackCache::default();
    if kernel().is_some() {
        assert!(conv_stack_leaky(&x, &parts, 0.2, &cache).unwrap().is_some());
        assert!(cache.is_held());
    }
    assert!(conv_stack_leaky(&x5, &parts, 0.2, &cache)
        .unwrap()
        .is_none());
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
        latent_atlas::model::weights::assign(var, &r).unwrap();
    }
    let x = rand(&[3, 3, 64, 64], 9).affine(0.5, 0.5).unwrap();
    let train = enc.forward(&x).unwrap();
    let infer = enc.forward_inference(&x).unwrap();
    let d = max_abs_diff(&train, &infer);
    assert!(d < 1e-4, "encoder: inference differs from forward by {d}");
    // kernels rewritten in place (the same tensors, as an optimizer step does; the biases,
    // which the cache compares by value, left as they are): the packed stack kept since the
    // last call must not be used
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with(".weight") {
            let t = (var.as_tensor() * -1.5).unwrap();
            latent_atlas::model::weights::assign(var, &t).unwrap();
        }
    }
    let d = max_abs_diff(
        &enc.forward(&x).unwrap(),
        &enc.forward_inference(&x).unwrap(),
    );
    assert!(
        d < 1e-4,
        "encoder after a weight update: inference differs by {d}"
    );
    assert!(
        max_abs_diff(&infer, &enc.forward_inference(&x).unwrap()) > 1e-3,
        "the update changed nothing"
    );
    // a batch smaller than the thread count: each layer's tiles shared among the threads
    let one = x.narrow(0, 1, 1).unwrap();
    let d = max_abs_diff(
        &enc.forward(&one).unwrap(),
        &enc.forward_inference(&one).unwrap(),
    );
    assert!(
        d < 1e-4,
        "batch of one: inference differs from forward by {d}"
    );

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

/// The VAE decoder's inference path (transposed convs on the channels-last stack) gives the
/// training forward's images for a batch of one (the threads share each layer) and of
/// three, after a weight update too; a model's `decode` takes it for plain codes and stays
/// differentiable for codes that carry a gradient.
#[test]
fn decoder_inference_matches_forward() {
    use latent_atlas::model::vae::ConvDecoder;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let dec = ConvDecoder::new(vb.pp("dec"), 16, 32, 3).unwrap();
    let randomise = |gain: f64| {
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let t = var.as_tensor();
            let seed = name.len() as u64 * 11 + t.elem_count() as u64 + (gain * 10.0) as u64;
            let fan_in = (t.elem_count() / t.dims()[0]).max(1) as f64;
            let r = (rand(t.dims(), seed) * (gain / fan_in.sqrt())).unwrap();
            latent_atlas::model::weights::assign(var, &r).unwrap();
        }
    };
    randomise(2.0);
    let z = rand(&[3, 16], 21);
    let mut before = None;
    for gain in [2.0, 3.0] {
        if gain != 2.0 {
            randomise(gain);
        }
        for n in [1, 3] {
            let zn = z.narrow(0, 0, n).unwrap();
            let (a, b) = (
                dec.forward(&zn).unwrap(),
                dec.forward_inference(&zn).unwrap(),
            );
            assert_eq!(a.dims(), b.dims());
            let d = max_abs_diff(&a, &b);
            assert!(d < 1e-4, "gain {gain}, batch {n}: inference differs by {d}");
            let spread = (a.max_all().unwrap().to_scalar::<f32>().unwrap()
                - a.min_all().unwrap().to_scalar::<f32>().unwrap())
            .abs();
            assert!(spread > 0.05, "degenerate decoder output (spread {spread})");
        }
        let now = dec.forward_inference(&z).unwrap();
        if let Some(b) = &before {
            assert!(
                max_abs_diff(b, &now) > 1e-3,
                "a stale packed stack was used"
            );
        }
        before = Some(now);
    }

    let model = Model::new(
        ModelConfig::new("m", Family::Vae, 16),
        &Device::Cpu,
        3,
        false,
    )
    .unwrap();
    let latent_atlas::model::Net::Vae(vae) = &model.net else {
        panic!("a VAE model holds a VAE network")
    };
    let d = max_abs_diff(&model.decode(&z).unwrap(), &vae.decode(&z).unwrap());
    assert!(d < 1e-4, "model decode differs from the network's by {d}");
    let zv = candle_core::Var::from_tensor(&z).unwrap();
    let y = model.decode(zv.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(
        grads.get(zv.as_tensor()).is_some(),
        "decode of codes with a gradient must stay differentiable"
    );
}
