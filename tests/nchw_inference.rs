//! The NCHW inference paths that run where the channels-last stacks do not (a CPU without
//! AVX2 + FMA, or not x86-64): `LATENT_ATLAS_NO_CHANNELS_LAST` is set before any kernel runs
//! (this binary's only test, so nothing runs before it). The stacks must then decline, the
//! encoder's inference must give its training forward's values, and the generator's (batch
//! norms folded into the NCHW transposed convs) `generate`'s images.

mod common;
use common::{max_abs_diff, seeded as rand};

use candle_core::Device;
use latent_atlas::model::conv::{conv_stack_leaky, deconv_stack_leaky, ConvGeom, StackCache};
use latent_atlas::model::vae::ConvEncoder;

#[test]
fn nchw_inference_paths_match_training_forward() {
    std::env::set_var("LATENT_ATLAS_NO_CHANNELS_LAST", "1");
    assert_eq!(
        latent_atlas::model::conv::channels_last_stack_kernel(),
        None
    );
    let g = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let w = rand(&[16, 3, 4, 4], 70);
    let b = rand(&[16], 71);
    let x = rand(&[2, 3, 16, 16], 72);
    assert!(
        conv_stack_leaky(&x, &[(&w, &b, g)], 0.2, &StackCache::default())
            .unwrap()
            .is_none()
    );
    let wt = rand(&[3, 16, 4, 4], 74);
    assert!(
        deconv_stack_leaky(&x, &[(&wt, None, &b)], 0.2, &StackCache::default())
            .unwrap()
            .is_none()
    );

    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let enc = ConvEncoder::new(vb, 8).unwrap();
    let x = rand(&[2, 3, 64, 64], 73);
    let d = max_abs_diff(
        &enc.forward(&x).unwrap(),
        &enc.forward_inference(&x).unwrap(),
    );
    assert!(d == 0.0, "fallback inference differs from forward by {d}");

    common::stack::check_generator_inference("NCHW");
}
