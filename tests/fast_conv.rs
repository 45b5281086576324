//! The fast CPU conv kernels must agree with candle's native ops: outputs and gradients.

mod common;
use common::{assert_matches_native, max_abs_diff, seeded as rand};

use candle_core::{Device, Tensor, Var};
use latent_atlas::model::activation::leaky_relu;
use latent_atlas::model::conv::{conv2d, conv_transpose2d, ConvGeom};

const GEOMS: [(usize, usize, usize); 7] = [
    (4, 2, 1),
    (3, 1, 1),
    (4, 1, 0),
    (5, 2, 2),
    (3, 2, 1),
    (4, 3, 1),
    (2, 2, 0),
];

#[test]
fn conv2d_matches_native_forward_and_gradients() {
    for (i, &(k, s, p)) in GEOMS.iter().enumerate() {
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        // odd sides: the last stride phase is shorter than the others
        let x = Var::from_tensor(&rand(&[3, 5, 13, 13], i as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[7, 5, k, k], 100 + i as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
        assert_matches_native(&ours, &native, &x, &w, 7, &format!("{g:?}"));
    }
}

/// 4x4 stride-2 convolutions with 32+ input channels on even sides whose output pixels come
/// in strips of 16 run the implicit-gemm kernels (conv::implicit: forward, weight gradient,
/// and the input gradient by stride phases): one strip per image
/// (8x8 → 4x4, images in groups), several strips (16x16, 32x16), output channels not a
/// multiple of the 6-channel panels, im2col rows in 256-row slices with a partial last one
/// (33 and 40 input channels: 528 and 640 rows), and weight gradients summed over several
/// groups of pixels.
#[test]
fn implicit_gemm_kernels_match_native() {
    let g = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    for (i, &(b, c_in, h, w, c_out)) in [
        (5, 32, 8, 8, 7),
        (3, 33, 16, 16, 13),
        (2, 40, 16, 16, 6),
        (4, 32, 32, 16, 1),
        (2, 48, 8, 8, 12),
        // 16+ output channels: the AVX-512 kernel's 16-wide panels, full and partial
        (2, 32, 16, 16, 20),
        (2, 32, 8, 8, 35),
        // two 256-pixel groups per thread: the weight gradient accumulates across them
        (4, 32, 32, 32, 7),
    ]
    .iter()
    .enumerate()
    {
        let x = Var::from_tensor(&rand(&[b, c_in, h, w], 300 + i as u64)).unwrap();
        let wt = Var::from_tensor(&rand(&[c_out, c_in, 4, 4], 400 + i as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), g).unwrap();
        let what = format!("{b}x{c_in}x{h}x{w} -> {c_out}");
        if h == w {
            let native = x.as_tensor().conv2d(wt.as_tensor(), 1, 2, 1, 1).unwrap();
            assert_matches_native(&ours, &native, &x, &wt, 500 + i as u64, &what);
        } else {
            // candle's backward fails on non-square inputs: the forward only
            let native = x.as_tensor().conv2d(wt.as_tensor(), 1, 2, 1, 1).unwrap();
            assert!(max_abs_diff(&ours, &native) < 1e-4, "forward {what}");
        }
    }
    // a transposed conv's backward runs the same forward and weight-gradient kernels on its
    // output gradient (32 output channels: 512 im2col rows)
    // (80 input channels: the phase-wise forward sums 320 rows in two slices)
    // (16 and 20 output channels: 256 and 320 rows, the stride-phase forward from 16
    // channels up; 16 is the generator's last transposed layer, 20 a partial panel)
    for (i, &(b, c_in, side, c_out)) in [
        (3, 40, 8, 32),
        (2, 24, 4, 48),
        (2, 80, 4, 32),
        (2, 32, 16, 16),
        (2, 24, 8, 20),
    ]
    .iter()
    .enumerate()
    {
        let x = Var::from_tensor(&rand(&[b, c_in, side, side], 600 + i as u64)).unwrap();
        let wt = Var::from_tensor(&rand(&[c_in, c_out, 4, 4], 700 + i as u64)).unwrap();
        let ours = conv_transpose2d(x.as_tensor(), wt.as_tensor(), g).unwrap();
        let native = x
            .as_tensor()
            .conv_transpose2d(wt.as_tensor(), 1, 0, 2, 1)
            .unwrap();
        let what = format!("transposed {b}x{c_in}x{side}x{side} -> {c_out}");
        assert_matches_native(&ours, &native, &x, &wt, 800 + i as u64, &what);
    }
}

/// 3x3 stride-1 convolutions (the Split-VAE's residual blocks) with 256+ im2col rows run the
/// implicit-gemm forward with one plane per channel, and their input gradient is the same
/// kernel on the flipped, transposed weights: one strip per image (4x4), several (8x8,
/// 16x16), 288-1152 rows (two to five 256-row slices), output channels not a multiple of the
/// 6-channel panels, more and fewer outputs than inputs, and the weight gradient by the
/// implicit kernel (accumulator within 512 KB) and by im2col + gemm (128 channels). Where
/// the Winograd F(2x2, 3x3) kernels run (AVX2), the shapes with 32+ input and output
/// channels take those instead; `fast_conv_winograd3.rs` checks them with the kernels on and
/// off.
#[test]
fn implicit_stride_one_kernels_match_native() {
    let g = ConvGeom {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    for (i, &(b, c_in, side, c_out)) in [
        (3, 32, 8, 32),
        (2, 64, 16, 64),
        (5, 32, 4, 13),
        (2, 40, 8, 50),
        (2, 128, 8, 128),
    ]
    .iter()
    .enumerate()
    {
        let x = Var::from_tensor(&rand(&[b, c_in, side, side], 900 + i as u64)).unwrap();
        let wt = Var::from_tensor(&rand(&[c_out, c_in, 3, 3], 950 + i as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), g).unwrap();
        let native = x.as_tensor().conv2d(wt.as_tensor(), 1, 1, 1, 1).unwrap();
        let what = format!("3x3 {b}x{c_in}x{side}x{side} -> {c_out}");
        assert_matches_native(&ours, &native, &x, &wt, 990 + i as u64, &what);
    }
}

/// Non-square inputs (candle's own conv2d backward fails on them, so no native reference for
/// the gradients): the forward against candle, the gradients by the adjoint identities of a
/// bilinear map, `<conv(x, w), r> = <x, ∂/∂x> = <w, ∂/∂w>`.
#[test]
fn conv2d_on_non_square_inputs_is_consistent() {
    let dot = |a: &Tensor, b: &Tensor| {
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for (i, &(k, s, p)) in GEOMS.iter().enumerate() {
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        let x = Var::from_tensor(&rand(&[2, 4, 13, 10], 40 + i as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[6, 4, k, k], 140 + i as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
        assert!(max_abs_diff(&ours, &native) < 1e-4, "forward {g:?}");
        let r = rand(ours.dims(), 11);
        let value = dot(&ours, &r);
        let grads = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let via_x = dot(x.as_tensor(), grads.get(&x).unwrap());
        let via_w = dot(w.as_tensor(), grads.get(&w).unwrap());
        let tol = 1e-4 * value.abs().max(1.0);
        assert!(
            (via_x - value).abs() < tol,
            "grad x {g:?}: {via_x} vs {value}"
        );
        assert!(
            (via_w - value).abs() < tol,
            "grad w {g:?}: {via_w} vs {value}"
        );
    }
}

/// Fewer output than input channels at stride 1 (an RGB output conv): the input gradient takes
/// the flipped-kernel convolution route.
#[test]
fn conv2d_with_fewer_outputs_matches_native_gradients() {
    for (i, &(k, p)) in [(3usize, 1usize), (5, 2), (3, 0), (4, 1)]
        .iter()
        .enumerate()
    {
        let g = ConvGeom {
            kernel: k,
            stride: 1,
            padding: p,
        };
        let x = Var::from_tensor(&rand(&[2, 9, 11, 11], 60 + i as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[3, 9, k, k], 160 + i as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x.as_tensor().conv2d(w.as_tensor(), p, 1, 1, 1).unwrap();
        assert_matches_native(&ours, &native, &x, &w, 13, &format!("{g:?}"));
    }
}

#[test]
fn conv_transpose2d_matches_native_forward_and_gradients() {
    for (i, &(k, s, p)) in [(4, 2, 1), (4, 1, 0), (3, 1, 1), (3, 2, 1), (5, 3, 2)]
        .iter()
        .enumerate()
    {
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        let x = Var::from_tensor(&rand(&[2, 6, 5, 5], 20 + i as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[6, 4, k, k], 200 + i as u64)).unwrap();
        let ours = conv_transpose2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x
            .as_tensor()
            .conv_transpose2d(w.as_tensor(), p, 0, s, 1)
            .unwrap();
        assert_matches_native(&ours, &native, &x, &w, 9, &format!("{g:?}"));
    }
}

#[test]
fn batch_of_one_uses_the_same_kernels() {
    let g = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let x = rand(&[1, 8, 16, 16], 3);
    let w = rand(&[8, 4, 4, 4], 4);
    let ours = conv_transpose2d(&x, &w, g).unwrap();
    let native = x.conv_transpose2d(&w, 1, 0, 2, 1).unwrap();
    assert!(max_abs_diff(&ours, &native) < 1e-4);
}

/// Batch 1 takes the paths that split one image among the threads (input channels for the
/// im2col and for the transposed convolution's rows and col2im): every geometry, an odd
/// channel count (uneven groups) and a single channel, against candle with gradients.
#[test]
fn batch_of_one_matches_native_with_gradients() {
    for (i, &(k, s, p)) in GEOMS.iter().enumerate() {
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        for (c_in, c_out) in [(5, 7), (7, 3), (1, 4)] {
            let seed = 10 * i as u64 + c_in as u64;
            let x = Var::from_tensor(&rand(&[1, c_in, 13, 13], seed)).unwrap();
            let w = Var::from_tensor(&rand(&[c_out, c_in, k, k], 200 + seed)).unwrap();
            let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
            let native = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
            let what = format!("conv2d b1 {c_in}->{c_out} {g:?}");
            assert_matches_native(&ours, &native, &x, &w, seed, &what);
            // transposed: x is the output side of the conv above
            let side = g.conv_out(13);
            if g.transposed_out(side) != 13 {
                continue;
            }
            let xt = Var::from_tensor(&rand(&[1, c_out, side, side], 300 + seed)).unwrap();
            let ours = conv_transpose2d(xt.as_tensor(), w.as_tensor(), g).unwrap();
            let native = xt
                .as_tensor()
                .conv_transpose2d(w.as_tensor(), p, 0, s, 1)
                .unwrap();
            let what = format!("conv_transpose2d b1 {c_out}->{c_in} {g:?}");
            assert_matches_native(&ours, &native, &xt, &w, seed + 1, &what);
        }
    }
}

/// Weight gradients over 1024+ pixels per image take the dot-product kernel (conv::dot): for a
/// 3x3 conv with up to 8 outputs as shifted dot products over padded rows (conv::direct),
/// for a transposed conv's backward over im2col rows; output channels not a multiple of its
/// groups of 4 (one and two groups), rows not a multiple of its blocks, a pixel count and a
/// padded row length not multiples of 8.
#[test]
fn weight_gradients_by_dot_products_match_native() {
    let same = ConvGeom {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    for c_out in [8, 7, 6, 3, 1] {
        let x = Var::from_tensor(&rand(&[2, 5, 33, 33], 40 + c_out as u64)).unwrap();
        let w = Var::from_tensor(&rand(&[c_out, 5, 3, 3], 50 + c_out as u64)).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), same).unwrap();
        let native = x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
        let what = format!("conv2d 5->{c_out} on 33x33");
        assert_matches_native(&ours, &native, &x, &w, 60 + c_out as u64, &what);
    }
    let up = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let x = Var::from_tensor(&rand(&[2, 6, 32, 32], 70)).unwrap();
    let w = Var::from_tensor(&rand(&[6, 5, 4, 4], 71)).unwrap();
    let ours = conv_transpose2d(x.as_tensor(), w.as_tensor(), up).unwrap();
    let native = x
        .as_tensor()
        .conv_transpose2d(w.as_tensor(), 1, 0, 2, 1)
        .unwrap();
    assert_matches_native(
        &ours,
        &native,
        &x,
        &w,
        72,
        "conv_transpose2d 6->5 32x32 -> 64x64",
    );
}

/// Stride-1 convolutions with at most 4 outputs run a direct kernel (conv::direct) in blocks
/// of 24 output pixels per row: non-square inputs wider than a block with a ragged last
/// block, padding 0 to 2, batch 1 (split by rows among threads) and batch 3 (by image).
#[test]
fn direct_stride_one_convolution_matches_native() {
    for (i, &(b, c_in, h, w, c_out, k, p)) in [
        (1usize, 5usize, 9usize, 37usize, 2usize, 3usize, 1usize),
        (3, 5, 9, 37, 3, 3, 1),
        (2, 4, 11, 30, 4, 4, 0),
        (1, 2, 6, 50, 1, 5, 2),
        (3, 16, 17, 64, 3, 3, 1),
    ]
    .iter()
    .enumerate()
    {
        let g = ConvGeom {
            kernel: k,
            stride: 1,
            padding: p,
        };
        let x = rand(&[b, c_in, h, w], 80 + i as u64);
        let wt = rand(&[c_out, c_in, k, k], 90 + i as u64);
        let ours = conv2d(&x, &wt, g).unwrap();
        let native = x.conv2d(&wt, p, 1, 1, 1).unwrap();
        assert_eq!(ours.dims(), native.dims());
        let d = max_abs_diff(&ours, &native);
        assert!(
            d < 1e-4,
            "{b}x{c_in}x{h}x{w} -> {c_out}, k {k} p {p}: differs by {d}"
        );
    }
}

/// Even sides with "same"-style padding make each tap's im2col row one shifted block copy
/// (unfold::tap_as_block): stride 2 (4x4 and 3x3, padding 1) and stride 1 (3x3 and 5x5),
/// square with gradients and non-square for the forward.
#[test]
fn block_copied_taps_match_native() {
    for (i, &(k, s, p)) in [(4, 2, 1), (3, 2, 1), (3, 1, 1), (5, 1, 2), (2, 2, 0)]
        .iter()
        .enumerate()
    {
        let g = ConvGeom {
            kernel: k,
            stride: s,
            padding: p,
        };
        let seed = 110 + i as u64;
        let x = Var::from_tensor(&rand(&[3, 6, 16, 16], seed)).unwrap();
        let w = Var::from_tensor(&rand(&[5, 6, k, k], seed + 20)).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
        let native = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
        assert_matches_native(&ours, &native, &x, &w, seed + 40, &format!("16x16 {g:?}"));
        let xr = rand(&[2, 6, 12, 20], seed + 60);
        let ours = conv2d(&xr, w.as_tensor(), g).unwrap();
        let native = xr.conv2d(w.as_tensor(), p, s, 1, 1).unwrap();
        assert!(max_abs_diff(&ours, &native) < 1e-4, "12x20 {g:?}");
    }
}

/// Leaky ReLU against `max(x, 0.2 x)`, forward and gradient, on a tensor of `shape`.
fn assert_leaky_matches_reference(shape: &[usize], seed: u64) {
    let x = Var::from_tensor(&rand(shape, seed)).unwrap();
    let ours = leaky_relu(x.as_tensor(), 0.2).unwrap();
    let reference = x
        .as_tensor()
        .maximum(&(x.as_tensor() * 0.2).unwrap())
        .unwrap();
    assert!(max_abs_diff(&ours, &reference) < 1e-7);
    let r = rand(ours.dims(), seed + 1);
    let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (reference * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(max_abs_diff(go.get(&x).unwrap(), gr.get(&x).unwrap()) < 1e-6);
}

/// The fused sigmoid against candle-nn's, forward and gradient, on values far into both
/// tails (×40: saturated outputs, gradients near 0) and on the serial and parallel paths.
#[test]
fn sigmoid_matches_candle_nn_with_gradient() {
    for (shape, seed) in [(&[4usize, 3, 9, 9][..], 21u64), (&[3, 7, 64, 64][..], 22)] {
        let x = Var::from_tensor(&(rand(shape, seed) * 40.0).unwrap()).unwrap();
        let ours = latent_atlas::model::activation::sigmoid(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::sigmoid(x.as_tensor()).unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-6, "forward {shape:?}");
        let r = rand(ours.dims(), seed + 1);
        let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(
            max_abs_diff(go.get(&x).unwrap(), gr.get(&x).unwrap()) < 1e-6,
            "gradient {shape:?}"
        );
    }
}

#[test]
fn leaky_relu_on_many_threads_matches_reference() {
    // above activation::SERIAL_BELOW values: the parallel path
    assert_leaky_matches_reference(&[3, 16, 64, 64], 15);
}

#[test]
fn leaky_relu_matches_reference_with_gradient() {
    assert_leaky_matches_reference(&[4, 3, 9, 9], 5);
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let g = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let x = rand(&[1, 3, 8, 8], 1);
    let w = rand(&[4, 5, 4, 4], 2);
    assert!(conv2d(&x, &w, g).is_err());
    assert!(conv2d(&x.to_dtype(candle_core::DType::F64).unwrap(), &w, g).is_err());
}

/// `conv2d_bias_leaky` / `conv_transpose2d_bias_leaky` (one fused autograd node) equal
/// leaky(native conv + bias) in value and in the gradients of x, w and b; also with an input
/// that needs no gradient (a first layer) and on the implicit-gemm shapes.
#[test]
fn fused_conv_bias_leaky_matches_composite() {
    use latent_atlas::model::conv::{conv2d_bias_leaky, conv_transpose2d_bias_leaky};
    let g = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let slope = 0.2;
    let leaky = |y: &Tensor| y.maximum(&(y * slope as f64).unwrap()).unwrap();
    for (i, &(transposed, b, c_in, side, c_out, first)) in [
        (false, 3, 5, 13, 7, false),
        (false, 2, 32, 16, 12, false),
        (false, 2, 3, 16, 8, true),
        (true, 2, 6, 5, 4, false),
        (true, 3, 40, 8, 32, false),
    ]
    .iter()
    .enumerate()
    {
        let seed = 900 + 10 * i as u64;
        let x = Var::from_tensor(&rand(&[b, c_in, side, side], seed)).unwrap();
        let wshape = if transposed {
            [c_in, c_out, 4, 4]
        } else {
            [c_out, c_in, 4, 4]
        };
        let w = Var::from_tensor(&rand(&wshape, seed + 1)).unwrap();
        let bias = Var::from_tensor(&rand(&[c_out], seed + 2)).unwrap();
        let xin = if first {
            x.as_tensor().detach()
        } else {
            x.as_tensor().clone()
        };
        let (ours, pre) = if transposed {
            (
                conv_transpose2d_bias_leaky(&xin, w.as_tensor(), bias.as_tensor(), g, slope)
                    .unwrap(),
                xin.conv_transpose2d(w.as_tensor(), 1, 0, 2, 1).unwrap(),
            )
        } else {
            (
                conv2d_bias_leaky(&xin, w.as_tensor(), bias.as_tensor(), g, slope).unwrap(),
                xin.conv2d(w.as_tensor(), 1, 2, 1, 1).unwrap(),
            )
        };
        let bb = bias.as_tensor().reshape((1, c_out, 1, 1)).unwrap();
        let reference = leaky(&pre.broadcast_add(&bb).unwrap());
        let what = format!("case {i}");
        assert!(max_abs_diff(&ours, &reference) < 1e-4, "forward {what}");
        let r = rand(ours.dims(), seed + 3);
        let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (go, gr) = (grads(&ours), grads(&reference));
        for (v, name, tol) in [(&w, "w", 1e-3), (&bias, "b", 1e-3)] {
            let d = max_abs_diff(go.get(v).unwrap(), gr.get(v).unwrap());
            assert!(d < tol, "grad {name} {what}: {d}");
        }
        if first {
            assert!(
                go.get(&x).is_none(),
                "a detached input gets no gradient ({what})"
            );
        } else {
            let d = max_abs_diff(go.get(&x).unwrap(), gr.get(&x).unwrap());
            assert!(d < 1e-4, "grad x {what}: {d}");
        }
    }
}

#[test]
fn frozen_discriminator_passes_the_same_input_gradient_and_no_weight_gradients() {
    use candle_nn::{VarBuilder, VarMap};
    use latent_atlas::model::gan::Discriminator;
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let disc = Discriminator::new(
        VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev),
        8,
    )
    .unwrap();
    // nudge the zero-initialised biases and batch-norm shifts so that they matter
    for (i, v) in vm.all_vars().iter().enumerate() {
        let noise = rand(v.dims(), 100 + i as u64).affine(0.05, 0.0).unwrap();
        latent_atlas::model::weights::assign(v, &(v.as_tensor() + noise).unwrap()).unwrap();
    }
    let x = Var::from_tensor(&rand(&[4, 3, 64, 64], 7)).unwrap();
    let live = disc.forward(x.as_tensor()).unwrap();
    let frozen = disc.frozen().forward(x.as_tensor()).unwrap();
    assert_eq!(max_abs_diff(&live, &frozen), 0.0, "frozen forward differs");
    let g_live = live.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g_frozen = frozen.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let (a, b) = (
        g_live.get(x.as_tensor()).expect("live input gradient"),
        g_frozen.get(x.as_tensor()).expect("frozen input gradient"),
    );
    let scale = a
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(scale > 0.0);
    assert!(max_abs_diff(a, b) <= 1e-5 * scale, "input gradients differ");
    let vars = vm.all_vars();
    // 4 conv weights, the first conv's bias (the others precede a batch norm, which cancels
    // them: not added), 3 batch-norm scales and shifts, the head's weight and bias
    let live_count = vars
        .iter()
        .filter(|v| g_live.get(v.as_tensor()).is_some())
        .count();
    assert_eq!(live_count, 13, "live pass gradients");
    for v in &vars {
        assert!(
            g_frozen.get(v.as_tensor()).is_none(),
            "frozen pass computed a weight gradient"
        );
    }
}
