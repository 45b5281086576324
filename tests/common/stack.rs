//! The channels-last inference stacks (`conv::conv_stack_leaky`, `conv::deconv_stack_leaky`)
//! against candle's native convolutions, layer after layer: shared by `conv_stack.rs` (the
//! CPU's own kernel) and `fast_conv_avx2.rs` (the AVX2 kernel forced on any CPU).

use candle_core::Tensor;
use latent_atlas::model::activation::leaky_relu;
use latent_atlas::model::conv::{conv_stack_leaky, deconv_stack_leaky, ConvGeom, StackCache};

use super::{max_abs_diff, seeded as rand};

/// The stack by candle's own conv2d, layer after layer, flattened.
pub fn native(x: &Tensor, layers: &[(Tensor, Tensor, ConvGeom)], slope: f32) -> Tensor {
    let mut h = x.clone();
    for (w, b, g) in layers {
        let y = h.conv2d(w, g.padding, g.stride, 1, 1).unwrap();
        let y = y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
        h = leaky_relu(&y, slope).unwrap();
    }
    h.flatten_from(1).unwrap()
}

/// A layer: output channels, kernel, stride, padding.
pub type Spec = (usize, usize, usize, usize);

/// Random layers for `(c_out, kernel, stride, padding)` from `c_in` channels.
pub fn layers(c_in: usize, spec: &[Spec], seed: u64) -> Vec<(Tensor, Tensor, ConvGeom)> {
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
/// others: 16-channel blocks (one AVX-512 vector, two AVX2 ones), 48 channels (three
/// blocks), 3x3 stride-1 and unpadded layers, odd sides, batches whose pixel count leaves
/// partial tiles of every kernel (8, 6 and 3 pixels), a batch of one, and a slope above 1.
pub fn check_conv_stack() {
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
        // 9 then 4 output pixels: partial tiles of 3 (6-pixel tiles) and 1 (3-pixel), of 1
        // and 4 (8-pixel)
        (1, 4, 5, vec![(16, 3, 1, 0), (32, 2, 1, 0)], 0.2),
    ];
    for (i, (b, c, side, spec, slope)) in cases.into_iter().enumerate() {
        let x = rand(&[b, c, side, side], 100 + i as u64);
        let ls = layers(c, &spec, 200 + 10 * i as u64);
        let parts: Vec<_> = ls.iter().map(|(w, b, g)| (w, b, *g)).collect();
        let cache = StackCache::default();
        let ours = conv_stack_leaky(&x, &parts, slope, &cache)
            .unwrap()
            .unwrap_or_else(|| panic!("case {i}: the stack should apply"));
        assert!(cache.is_held(), "case {i}: the packed stack is kept");
        let again = conv_stack_leaky(&x, &parts, slope, &cache)
            .unwrap()
            .unwrap();
        assert_eq!(max_abs_diff(&ours, &again), 0.0, "case {i}: from the cache");
        // other images through the buffers the first call left (kept per thread, their
        // borders zero, their interiors overwritten)
        let x2 = rand(&[b, c, side, side], 300 + i as u64);
        let other = conv_stack_leaky(&x2, &parts, slope, &cache)
            .unwrap()
            .unwrap();
        for (got, x) in [(&ours, &x), (&other, &x2)] {
            let want = native(x, &ls, slope);
            let scale = want.abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
            let scale: f32 = scale.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
            let d = max_abs_diff(got, &want);
            assert!(
                d <= 1e-4 * (1.0 + scale),
                "case {i}: max |diff| {d} (values up to {scale})"
            );
        }
    }
}

/// The transposed stack (each layer `leaky(conv_transpose2d(h, w) · scale + shift)`)
/// against candle's native transposed conv, with and without a scale, from 16- and
/// 32-channel blocks, odd sides, a batch of one.
pub fn check_deconv_stack() {
    // (batch, c_in, h, w, output channels per layer, scaled)
    let cases: Vec<(usize, usize, usize, usize, Vec<usize>, bool)> = vec![
        (3, 64, 4, 4, vec![32, 32, 16], true),
        (1, 16, 3, 5, vec![48, 16], false),
        (2, 256, 4, 4, vec![128, 64], true),
        (1, 32, 1, 1, vec![32, 16], true),
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
        let cache = StackCache::default();
        let ours = deconv_stack_leaky(&x, &parts, 0.2, &cache)
            .unwrap()
            .unwrap_or_else(|| panic!("case {i}: the transposed stack should apply"));
        // the same weights with other shifts (new tensors, compared by value): packed anew
        let shifted: Vec<Tensor> = layers.iter().map(|(_, _, t)| (t + 0.5).unwrap()).collect();
        let parts2: Vec<_> = layers
            .iter()
            .zip(&shifted)
            .map(|((w, s, _), t)| (w, s.as_ref(), t))
            .collect();
        let moved = deconv_stack_leaky(&x, &parts2, 0.2, &cache)
            .unwrap()
            .unwrap();
        let fresh = deconv_stack_leaky(&x, &parts2, 0.2, &StackCache::default())
            .unwrap()
            .unwrap();
        assert_eq!(max_abs_diff(&moved, &fresh), 0.0, "case {i}: stale shifts");
        assert!(
            max_abs_diff(&moved, &ours) > 1e-3,
            "case {i}: shifts ignored"
        );
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

/// The generator's inference path (`generate_inference`: batch norms folded into the
/// transposed convs, on the channels-last stack or NCHW, `what` says which) against
/// `generate`, with running statistics away from their initial 0 and 1 and batch-norm
/// scales of both signs.
pub fn check_generator_inference(what: &str) {
    use candle_core::Device;
    use latent_atlas::model::{Family, Model, ModelConfig, Net};
    let model = Model::new(
        ModelConfig::new("g", Family::Gan, 16),
        &Device::Cpu,
        5,
        false,
    )
    .unwrap();
    let Net::Gan(gan) = &model.net else {
        panic!("a GAN model holds a GAN network")
    };
    let z = rand(&[5, 16], 77);
    // packs the initial weights: the writes below must make the stack pack them again
    let initial = gan.generate_inference(&z).unwrap();
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
        } else if name.contains(".t") && name.ends_with(".weight") {
            // transposed-conv weights rewritten in place (the same tensor ids)
            t.affine(1.3, 0.0)
        } else {
            continue;
        };
        latent_atlas::model::weights::assign(var, &value.unwrap()).unwrap();
    }
    let (a, b) = (
        gan.generate(&z).unwrap(),
        gan.generate_inference(&z).unwrap(),
    );
    let d = max_abs_diff(&a, &b);
    assert!(
        d < 1e-4,
        "generator: {what} inference differs from generate by {d}"
    );
    let spread = (a.max_all().unwrap().to_scalar::<f32>().unwrap()
        - a.min_all().unwrap().to_scalar::<f32>().unwrap())
    .abs();
    assert!(
        spread > 0.05,
        "degenerate generator output (spread {spread})"
    );
    assert!(
        max_abs_diff(&initial, &b) > 1e-3,
        "generator: {what} inference kept the weights from before they were written"
    );
}
