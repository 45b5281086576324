//! The Winograd F(2x2, 3x3) kernels of 3x3 stride-1 padding-1 convolutions (`conv/wino3.rs`:
//! the forward, the input gradient as the forward on flipped weights, the weight gradient)
//! against candle's native ops, outputs and gradients, and the fused residual block built on
//! them (`conv/residual.rs`) against candle's composite; then the same shapes with the kernels
//! turned off (the implicit-gemm routes and the composite ops they replace). One test in its own binary:
//! `set_winograd3` is process-wide, and no other test may run between the two halves.
#![cfg(target_arch = "x86_64")]

mod common;
use common::{
    assert_fused_bias_leaky, assert_matches_native as check, leaky, max_abs_diff, seeded as rand,
};

use candle_core::{Tensor, Var};
use latent_atlas::model::conv::{
    conv2d, conv2d_bias_leaky, residual_conv3x3, set_winograd3, winograd3_applies,
    winograd3_enabled, ConvGeom,
};

const G: ConvGeom = ConvGeom {
    kernel: 3,
    stride: 1,
    padding: 1,
};

/// (batch, c_in, side, c_out): batches that split unevenly between threads (3, 5), one tile
/// (2x2), tile rows of 1, 2, 3, 4, 5, 8, 12 and 16 tiles (the transforms' 8-, 4- and 1-lane
/// paths and their mixes), channel counts that fill no 16-wide panel (33, 40, 48), more and
/// fewer outputs than inputs, and several groups of images per thread (128 channels at 8x8).
const CONVS: [(usize, usize, usize, usize); 9] = [
    (3, 32, 2, 32),
    (2, 32, 4, 40),
    (5, 40, 6, 33),
    (2, 64, 8, 48),
    (3, 48, 10, 32),
    (2, 32, 16, 32),
    (2, 33, 24, 32),
    (2, 32, 32, 64),
    (9, 128, 8, 128),
];

/// Forward and both gradients of a 3x3 convolution of `x` against candle's, and the fused
/// bias + leaky ReLU forward against `leaky(native + bias)`.
fn check_shape(i: usize, (b, c_in, side, c_out): (usize, usize, usize, usize), on: bool) {
    assert_eq!(
        winograd3_applies(b, c_in, (side, side), c_out, G),
        on,
        "route of {b}x{c_in}x{side} -> {c_out}"
    );
    let x = Var::from_tensor(&rand(&[b, c_in, side, side], 10 + i as u64)).unwrap();
    let w = Var::from_tensor(&rand(&[c_out, c_in, 3, 3], 20 + i as u64)).unwrap();
    let ours = conv2d(x.as_tensor(), w.as_tensor(), G).unwrap();
    let native = x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
    let what = format!("winograd3 {on}: {b}x{c_in}x{side}x{side} -> {c_out}");
    check(&ours, &native, &x, &w, 30 + i as u64, &what);
    let bias = rand(&[c_out], 40 + i as u64);
    let fused = conv2d_bias_leaky(x.as_tensor(), w.as_tensor(), &bias, G, 0.2).unwrap();
    assert_fused_bias_leaky(&fused, &native, &bias, &what);
}

/// The residual block `x + conv(leaky(x), w) + b` (one fused node where the kernels apply)
/// against candle's ops: output and the gradients of x, w and b.
fn check_residual(i: usize, (b, c, side): (usize, usize, usize), on: bool) {
    assert_eq!(winograd3_applies(b, c, (side, side), c, G), on);
    let x = Var::from_tensor(&rand(&[b, c, side, side], 60 + i as u64)).unwrap();
    let w = Var::from_tensor(&rand(&[c, c, 3, 3], 70 + i as u64)).unwrap();
    let bias = Var::from_tensor(&rand(&[c], 80 + i as u64)).unwrap();
    let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), bias.as_tensor());
    let ours = residual_conv3x3(xt, wt, bt, 0.2).unwrap();
    let native = (xt
        + leaky(xt)
            .conv2d(wt, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bt.reshape((1, c, 1, 1)).unwrap())
            .unwrap())
    .unwrap();
    let what = format!("residual, winograd3 {on}: {b}x{c}x{side}x{side}");
    let err = max_abs_diff(&ours, &native);
    assert!(err < 1e-4, "{what}: forward off by {err}");
    let r = rand(ours.dims(), 90 + i as u64);
    let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (go, gn) = (grads(&ours), grads(&native));
    for (v, name, tol) in [(&x, "x", 1e-4), (&w, "w", 1e-3), (&bias, "b", 1e-3)] {
        let err = max_abs_diff(go.get(v).unwrap(), gn.get(v).unwrap());
        assert!(err < tol, "{what}: grad {name} off by {err}");
    }
}

/// (batch, channels, side) of residual blocks: the Split-VAE's three widths at small batches,
/// a 4-tile row and an uneven split between threads.
const RESIDUAL: [(usize, usize, usize); 4] = [(2, 32, 32), (3, 64, 16), (5, 128, 8), (2, 40, 10)];

/// Output and gradients of a non-square convolution (candle's own conv2d backward fails on
/// non-square inputs): returned for a comparison between the routes.
fn non_square(on: bool) -> Vec<Tensor> {
    let (b, c_in, h, w, c_out) = (3, 32, 6, 20, 40);
    assert_eq!(winograd3_applies(b, c_in, (h, w), c_out, G), on);
    let x = Var::from_tensor(&rand(&[b, c_in, h, w], 90)).unwrap();
    let wt = Var::from_tensor(&rand(&[c_out, c_in, 3, 3], 91)).unwrap();
    let ours = conv2d(x.as_tensor(), wt.as_tensor(), G).unwrap();
    let native = x.as_tensor().conv2d(wt.as_tensor(), 1, 1, 1, 1).unwrap();
    let err = max_abs_diff(&ours, &native);
    assert!(err < 1e-4, "winograd3 {on}: {h}x{w} forward off by {err}");
    let r = rand(ours.dims(), 92);
    let grads = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    vec![
        ours,
        grads.get(&x).unwrap().clone(),
        grads.get(&wt).unwrap().clone(),
    ]
}

#[test]
fn winograd3_kernels_match_native_and_the_routes_they_replace() {
    let routed = if std::env::var_os("LATENT_ATLAS_NO_WINOGRAD3").is_some() {
        assert!(!winograd3_enabled());
        None
    } else if !std::arch::is_x86_feature_detected!("avx2") {
        None
    } else {
        assert!(winograd3_enabled(), "on by default where AVX2 + FMA run");
        for (i, &shape) in CONVS.iter().enumerate() {
            check_shape(i, shape, true);
        }
        for (i, &shape) in RESIDUAL.iter().enumerate() {
            check_residual(i, shape, true);
        }
        // too few channels, another geometry, odd sides, one image on two threads
        assert!(!winograd3_applies(4, 16, (32, 32), 16, G));
        assert!(!winograd3_applies(4, 32, (32, 32), 7, G));
        assert!(!winograd3_applies(4, 32, (9, 9), 32, G));
        let g0 = ConvGeom { padding: 0, ..G };
        assert!(!winograd3_applies(4, 32, (8, 8), 32, g0));
        let threads = candle_core::utils::get_num_threads();
        assert!(!winograd3_applies(1, 32, (16, 16), 32, G) || threads == 1);
        Some(non_square(true))
    };
    set_winograd3(false);
    for (i, &shape) in CONVS.iter().enumerate() {
        check_shape(i, shape, false);
    }
    for (i, &shape) in RESIDUAL.iter().enumerate() {
        check_residual(i, shape, false);
    }
    let off = non_square(false);
    if let Some(on) = routed {
        for (a, b) in on.iter().zip(&off) {
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let err = max_abs_diff(a, b);
            assert!(
                err < 1e-5 * scale.max(1.0),
                "non-square: routes differ by {err}"
            );
        }
    }
    set_winograd3(true);
}
