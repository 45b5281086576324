//! The Winograd F(2x2, 2x2) kernels of 4x4 stride-2 convolutions (`conv/wino.rs`: the forward
//! and the weight gradient) against candle's native ops, outputs and gradients, with the input
//! transform vectorized (`conv/wino_simd.rs`, which also runs the input gradient: the four
//! output phases' 2x2 convolutions; once with it and once with the stride-phase input
//! gradient, the default with our AVX-512 kernel) and one tile at a time; then the same
//! shapes with the Winograd kernels turned off (the implicit-gemm and stride-phase routes
//! they replace). One test in its own binary: `set_winograd` is process-wide, and no other
//! test may run between the two halves.

mod common;
use common::{
    assert_fused_bias_leaky as check_fused, assert_matches_native as check, check_stride2_conv,
    check_stride2_transposed, max_abs_diff, seeded as rand,
};

use candle_core::Var;
use latent_atlas::model::conv::{
    avx512_kernels_enabled, conv2d, conv2d_bias_leaky, conv_transpose2d,
    conv_transpose2d_bias_leaky, set_winograd, set_winograd_input_gradient,
    set_winograd_vector_transforms, winograd_applies, winograd_enabled, winograd_input_gradient,
    ConvGeom, InputGradientRoute,
};

const G: ConvGeom = ConvGeom {
    kernel: 4,
    stride: 2,
    padding: 1,
};

/// (batch, c_in, side, c_out) of convolutions: batches that split unevenly between threads
/// (3, 5), one and several tile rows per image (8, 12, 16, 32 pixels), several groups of
/// tiles per thread (32x32: 64 tiles per image), channel counts that fill no panel
/// (17, 20, 24), the VAE's widest layer shape at a small batch, and row lengths the vector
/// input transform splits into 4-pixel groups with a remainder (20: 4 + 1 groups, 25 tiles:
/// 3 x 8 + 1) or without (64: 16 tiles per row, 256 per image). The 24 → 17, 32 → 64 and
/// 128 → 256 shapes have few tiles for their channels: with two or more threads their weight
/// gradient runs split by input channels (`wino/grad_weight/by_channels.rs`), the others
/// split by images.
const CONVS: [(usize, usize, usize, usize); 8] = [
    (3, 16, 16, 20),
    (2, 24, 12, 17),
    (5, 32, 8, 64),
    (2, 128, 8, 256),
    (4, 16, 32, 32),
    (2, 20, 4, 16),
    (3, 16, 20, 16),
    (2, 16, 64, 16),
];

/// (batch, c_in, side, c_out) of transposed convolutions: their forward runs the Winograd
/// input gradient (with the vector transforms), their backward the Winograd forward and
/// weight gradient on the output gradient (`c_out` is the convolution's input); 2x2 tiles per
/// output phase row: 2, 4, 8, and 5 (a 4-tile group and a remainder). Six images of 64 tiles
/// split into two shares of three, each run as a group of two and a group of one: the
/// backward's fused forward + weight gradient writing each group's output at its offset.
const TRANSPOSED: [(usize, usize, usize, usize); 6] = [
    (3, 32, 8, 16),
    (2, 64, 4, 24),
    (2, 256, 4, 128),
    (2, 32, 16, 16),
    (2, 16, 10, 16),
    (6, 32, 16, 16),
];

fn check_all(on: bool) {
    for (i, &(b, c_in, side, c_out)) in CONVS.iter().enumerate() {
        assert_eq!(
            winograd_applies(b, c_in, (side, side), c_out, G),
            on,
            "route of {b}x{c_in}x{side} -> {c_out}"
        );
        // with the bias + leaky ReLU applied by the output transform
        let what = format!("winograd {on}: {b}x{c_in}x{side}x{side} -> {c_out}");
        check_stride2_conv(i, (b, c_in, side, c_out), &what);
    }
    // a non-square image, 4 tiles each (the 4-lane paths of the vector transforms: square
    // sides give multiples of 16 tiles)
    let (b, c, h, w) = (2, 16, 4, 16);
    assert_eq!(
        winograd_applies(b, c, (h, w), 24, G),
        on,
        "route of {h}x{w}"
    );
    let x = Var::from_tensor(&rand(&[b, c, h, w], 90)).unwrap();
    let wt = Var::from_tensor(&rand(&[24, c, 4, 4], 91)).unwrap();
    let ours = conv2d(x.as_tensor(), wt.as_tensor(), G).unwrap();
    let native = x.as_tensor().conv2d(wt.as_tensor(), 1, 2, 1, 1).unwrap();
    let what = format!("winograd {on}: {b}x{c}x{h}x{w} -> 24");
    check(&ours, &native, &x, &wt, 92, &what);
    let bias = rand(&[24], 93);
    let fused = conv2d_bias_leaky(x.as_tensor(), wt.as_tensor(), &bias, G, 0.2).unwrap();
    check_fused(&fused, &native, &bias, &what);
    let xt = rand(&[b, 24, 2, 8], 94);
    let ours = conv_transpose2d(&xt, wt.as_tensor(), G).unwrap();
    let native = xt.conv_transpose2d(wt.as_tensor(), 1, 0, 2, 1).unwrap();
    let err = max_abs_diff(&ours, &native);
    assert!(err < 1e-4, "{what}: transposed forward off by {err}");
    let bias = rand(&[c], 95);
    let fused = conv_transpose2d_bias_leaky(&xt, wt.as_tensor(), &bias, G, 0.2).unwrap();
    check_fused(&fused, &native, &bias, &what);
    for (i, &(b, c_in, side, c_out)) in TRANSPOSED.iter().enumerate() {
        let out_side = 2 * side;
        assert_eq!(
            winograd_applies(b, c_out, (out_side, out_side), c_in, G),
            on,
            "route of the backward of transposed {b}x{c_in}x{side} -> {c_out}"
        );
        let what = format!("winograd {on}: transposed {b}x{c_in}x{side}x{side} -> {c_out}");
        check_stride2_transposed(i, (b, c_in, side, c_out), &what);
    }
}

#[test]
fn winograd_kernels_match_native_and_the_routes_they_replace() {
    if std::env::var_os("LATENT_ATLAS_NO_WINOGRAD").is_some() {
        assert!(!winograd_enabled());
    } else {
        assert!(winograd_enabled(), "on by default");
        // the input gradient on Winograd is on by default only without our AVX-512 kernel;
        // both of its routes are checked here whatever the CPU
        let default = if avx512_kernels_enabled() {
            InputGradientRoute::Wide
        } else {
            InputGradientRoute::All
        };
        assert_eq!(winograd_input_gradient(), default);
        set_winograd_input_gradient(InputGradientRoute::All);
        check_all(true);
        set_winograd_input_gradient(InputGradientRoute::Off);
        check_all(true);
        set_winograd_input_gradient(InputGradientRoute::All);
        // the scalar input transform (CPUs without AVX2)
        set_winograd_vector_transforms(false);
        check_all(true);
        set_winograd_vector_transforms(true);
    }
    // a first-layer shape (3 input channels) and a 2-channel output stay off the Winograd route
    assert!(!winograd_applies(4, 3, (64, 64), 32, G));
    assert!(!winograd_applies(4, 32, (16, 16), 2, G));
    // one image with two threads: the batch-1 routes
    assert!(!winograd_applies(1, 32, (16, 16), 64, G) || rayon_threads() == 1);
    set_winograd(false);
    check_all(false);
    set_winograd(true);
}

fn rayon_threads() -> usize {
    candle_core::utils::get_num_threads()
}
