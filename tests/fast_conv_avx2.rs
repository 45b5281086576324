//! The AVX2 paths of the conv kernels (gemm_f32's 16x6 micro-kernel, gemm's products), which a
//! CPU with AVX-512F never takes otherwise: `LATENT_ATLAS_NO_AVX512` is set before any kernel
//! runs (this binary's only test, so nothing runs before it), then the implicit, stride-phase
//! and im2col routes are compared with candle's native ops, outputs and gradients, and the
//! channels-last inference stacks run on their AVX2 kernel (`nchw_inference.rs` checks the
//! NCHW paths that run without them).

mod common;
use common::{assert_matches_native as check, seeded as rand};

use candle_core::Var;
use latent_atlas::model::conv::{conv2d, conv_transpose2d, ConvGeom};

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
    // the channels-last inference stacks run on the AVX2 kernel here (on any CPU with AVX2
    // and FMA): convolutions, transposed convolutions, and the generator's inference
    if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    {
        return;
    }
    assert_eq!(
        latent_atlas::model::conv::channels_last_stack_kernel(),
        Some("AVX2"),
        "with AVX-512 off the channels-last stack runs on AVX2"
    );
    common::stack::check_conv_stack();
    common::stack::check_deconv_stack();
    common::stack::check_generator_inference("AVX2 channels-last");
}
