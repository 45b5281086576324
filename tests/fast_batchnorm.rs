//! The fused batch normalisation and per-channel bias / affine ops match the plain candle
//! compositions: outputs and gradients.

mod common;
use common::max_abs_diff;

use candle_core::{Device, Tensor, Var};
use latent_atlas::model::batchnorm_op::{batch_normalize, reference_batch_normalize};

fn pseudo_random(n: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5) * scale + shift
        })
        .collect()
}

#[test]
fn fused_batch_norm_matches_the_reference_outputs_and_gradients() {
    // 4x4 rows on several threads (whole rows per task), and channels of more than 8192
    // values (the f32 lanes are flushed to f64 part-way)
    for &(b, c, h, w) in &[
        (4usize, 3usize, 5usize, 7usize),
        (16, 8, 4, 4),
        (2, 5, 16, 16),
        (128, 64, 4, 4),
        (3, 2, 64, 64),
    ] {
        let n = b * c * h * w;
        let x = Var::from_vec(
            pseudo_random(n, 7 + n as u64, 3.0, 0.7),
            (b, c, h, w),
            &Device::Cpu,
        )
        .unwrap();
        // a random linear read-out so the gradient is not trivially zero
        let r =
            Tensor::from_vec(pseudo_random(n, 99, 2.0, 0.3), (b, c, h, w), &Device::Cpu).unwrap();
        let fast = batch_normalize(x.as_tensor(), 1e-5).unwrap();
        let slow = reference_batch_normalize(x.as_tensor(), 1e-5).unwrap();
        let diff = (&fast - &slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{b}x{c}x{h}x{w}: output differs by {diff}");

        let g_fast = (fast * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_slow = (slow * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gs) = (
            g_fast.get(x.as_tensor()).unwrap(),
            g_slow.get(x.as_tensor()).unwrap(),
        );
        let scale = gs
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 1e-3, "reference gradient is degenerate");
        let gdiff = (gf - gs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            gdiff < 1e-4 * scale.max(1.0),
            "{b}x{c}x{h}x{w}: gradient differs by {gdiff} (scale {scale})"
        );
    }
}

#[test]
fn fused_batch_norm_leaky_matches_the_reference_outputs_and_gradients() {
    use latent_atlas::model::batchnorm_op::batch_norm_leaky;
    use latent_atlas::model::channel_op::reference_channel_affine;
    let leaky = |v: Tensor| v.maximum(&(&v * 0.2).unwrap()).unwrap();
    // several threads with whole rows per task, channels of more than 8192 values (lanes
    // flushed to f64 part-way), pixel rows that are not a multiple of 8 (the lane remainder),
    // fewer channels than lanes, and the generator's widest layer shape at a smaller batch
    for &(b, c, h, w) in &[
        (4usize, 3usize, 5usize, 7usize),
        (16, 8, 4, 4),
        (3, 2, 64, 64),
        (128, 64, 4, 4),
        (4, 16, 64, 64),
    ] {
        let n = b * c * h * w;
        let x = Var::from_vec(
            pseudo_random(n, 17 + n as u64, 3.0, 0.7),
            (b, c, h, w),
            &Device::Cpu,
        )
        .unwrap();
        // γ of both signs and β that put a fair share of the outputs on each side of zero
        let gamma = Var::from_vec(pseudo_random(c, 5, 3.0, 0.4), c, &Device::Cpu).unwrap();
        let beta = Var::from_vec(pseudo_random(c, 6, 1.0, 0.1), c, &Device::Cpu).unwrap();
        let r =
            Tensor::from_vec(pseudo_random(n, 97, 2.0, 0.3), (b, c, h, w), &Device::Cpu).unwrap();
        let (xt, gt, bt) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
        let fast = batch_norm_leaky(xt, gt, bt, 1e-5, 0.2).unwrap();
        let slow = leaky(
            reference_channel_affine(&reference_batch_normalize(xt, 1e-5).unwrap(), gt, bt)
                .unwrap(),
        );
        let diff = max_abs_diff(&fast, &slow);
        assert!(diff < 1e-4, "{b}x{c}x{h}x{w}: output differs by {diff}");
        let negative = slow
            .lt(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (0.2..0.8).contains(&negative),
            "{b}x{c}x{h}x{w}: {negative} of the outputs negative: the leaky branch is barely tested"
        );

        let g_fast = (fast * &r)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_slow = (slow * &r)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (what, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
            let (gf, gs) = (
                g_fast.get(v.as_tensor()).unwrap(),
                g_slow.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(gf.dims(), v.as_tensor().dims(), "d{what} shape");
            let scale = gs.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let scale = scale.to_scalar::<f32>().unwrap();
            assert!(scale > 1e-3, "reference d{what} is degenerate");
            let d = max_abs_diff(gf, gs);
            assert!(
                d < 2e-4 * scale.max(1.0),
                "{b}x{c}x{h}x{w}: d{what} differs by {d} (scale {scale})"
            );
        }

        // detached γ and β (the frozen discriminator): the input gradient alone, the same
        let fast = batch_norm_leaky(xt, &gt.detach(), &bt.detach(), 1e-5, 0.2).unwrap();
        let g = (fast * &r)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(gt).is_none() && g.get(bt).is_none());
        let d = max_abs_diff(g.get(xt).unwrap(), g_slow.get(xt).unwrap());
        assert!(d < 1e-3, "{b}x{c}x{h}x{w}: frozen dx differs by {d}");
    }
    // a per-channel bias in front cancels (the discriminator does not add its convs' biases)
    let x = Tensor::from_vec(
        pseudo_random(2 * 4 * 36, 8, 3.0, 0.2),
        (2, 4, 6, 6),
        &Device::Cpu,
    )
    .unwrap();
    let gamma = Tensor::from_vec(pseudo_random(4, 9, 2.0, 0.5), 4, &Device::Cpu).unwrap();
    let beta = Tensor::from_vec(pseudo_random(4, 10, 1.0, 0.0), 4, &Device::Cpu).unwrap();
    let bias = Tensor::from_vec(pseudo_random(4, 11, 4.0, 1.0), 4, &Device::Cpu).unwrap();
    let plain = batch_norm_leaky(&x, &gamma, &beta, 1e-5, 0.2).unwrap();
    let biased = latent_atlas::model::channel_op::add_bias(&x, &bias).unwrap();
    let biased = batch_norm_leaky(&biased, &gamma, &beta, 1e-5, 0.2).unwrap();
    assert!(
        max_abs_diff(&plain, &biased) < 1e-4,
        "a bias before the norm changed it"
    );
    // a slope the fused op cannot take goes through the unfused composition
    let x = Tensor::from_vec(pseudo_random(32, 3, 2.0, 0.0), (2, 2, 2, 4), &Device::Cpu).unwrap();
    let ones = Tensor::ones(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    let zeros = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = batch_norm_leaky(&x, &ones, &zeros, 1e-5, 0.0).unwrap();
    let want = reference_batch_normalize(&x, 1e-5).unwrap().relu().unwrap();
    assert!(max_abs_diff(&y, &want) < 1e-5);
    let e = batch_norm_leaky(
        &x,
        &Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        &zeros,
        1e-5,
        0.2,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("batch_norm_leaky") && e.contains("2 channels"),
        "{e}"
    );
}

#[test]
fn fused_batch_norm_rejects_non_4d_input() {
    let x = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = batch_normalize(&x, 1e-5).unwrap_err().to_string();
    assert!(err.contains("[B, C, H, W]"), "{err}");
}

#[test]
fn fused_bias_and_affine_match_the_reference_outputs_and_gradients() {
    use latent_atlas::model::channel_op::{
        add_bias, add_bias_leaky, channel_affine, channel_affine_leaky, reference_add_bias,
        reference_channel_affine,
    };
    let leaky = |v: Tensor| v.maximum(&(&v * 0.2).unwrap()).unwrap();
    // the first runs on several threads, the others (under SERIAL_BELOW values) on one
    for &(b, c, h, w) in &[
        (2usize, 5usize, 128usize, 128usize),
        (128, 64, 4, 4),
        (3, 3, 64, 64),
        (5, 17, 3, 5),
        (1, 1, 1, 1),
    ] {
        let n = b * c * h * w;
        let var = |len: usize, seed: u64, dims: &[usize]| {
            Var::from_vec(pseudo_random(len, seed, 2.0, 0.1), dims, &Device::Cpu).unwrap()
        };
        let x = var(n, 3 + n as u64, &[b, c, h, w]);
        let scale = var(c, 11, &[c]);
        let shift = var(c, 12, &[c]);
        let r =
            Tensor::from_vec(pseudo_random(n, 98, 2.0, 0.3), (b, c, h, w), &Device::Cpu).unwrap();
        type Op<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor;
        let cases: [(&str, Op, Op); 4] = [
            ("bias", &|x, _s, t| add_bias(x, t).unwrap(), &|x, _s, t| {
                reference_add_bias(x, t).unwrap()
            }),
            (
                "affine",
                &|x, s, t| channel_affine(x, s, t).unwrap(),
                &|x, s, t| reference_channel_affine(x, s, t).unwrap(),
            ),
            (
                "bias+leaky",
                &|x, _s, t| add_bias_leaky(x, t, 0.2).unwrap(),
                &|x, _s, t| leaky(reference_add_bias(x, t).unwrap()),
            ),
            (
                "affine+leaky",
                &|x, s, t| channel_affine_leaky(x, s, t, 0.2).unwrap(),
                &|x, s, t| leaky(reference_channel_affine(x, s, t).unwrap()),
            ),
        ];
        for (name, fast, slow) in cases {
            let args = (x.as_tensor(), scale.as_tensor(), shift.as_tensor());
            let (yf, ys) = (fast(args.0, args.1, args.2), slow(args.0, args.1, args.2));
            assert!(
                max_abs_diff(&yf, &ys) < 1e-5,
                "{name} {b}x{c}x{h}x{w}: outputs differ"
            );
            let gf = (yf * &r)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gs = (ys * &r)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (what, v) in [("x", &x), ("scale", &scale), ("shift", &shift)] {
                match (gf.get(v.as_tensor()), gs.get(v.as_tensor())) {
                    (Some(p), Some(q)) => {
                        let tol = 1e-4
                            * q.abs()
                                .unwrap()
                                .flatten_all()
                                .unwrap()
                                .max(0)
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap()
                                .max(1.0);
                        let d = max_abs_diff(p, q);
                        assert!(d < tol, "{name} {b}x{c}x{h}x{w}: d{what} differs by {d}");
                    }
                    (None, None) => assert!(name.starts_with("bias") && what == "scale"),
                    (p, q) => panic!(
                        "{name}: d{what} present fused {} / reference {}",
                        p.is_some(),
                        q.is_some()
                    ),
                }
            }
        }
    }
}

#[test]
fn fused_channel_ops_reject_mismatched_shapes() {
    use latent_atlas::model::channel_op::{
        add_bias, add_bias_leaky, channel_affine, channel_affine_leaky,
    };
    let x = Tensor::zeros((2, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let wrong = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let right = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = add_bias(&x, &wrong).unwrap_err().to_string();
    assert!(e.contains("add_bias") && e.contains("3 channels"), "{e}");
    let e = channel_affine(&x, &right, &wrong).unwrap_err().to_string();
    assert!(e.contains("channel_affine"), "{e}");
    let e = add_bias_leaky(&x, &wrong, 0.2).unwrap_err().to_string();
    assert!(
        e.contains("add_bias_leaky") && e.contains("3 channels"),
        "{e}"
    );
    let e = channel_affine_leaky(&x, &wrong, &right, 0.2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("channel_affine_leaky"), "{e}");
    // A slope the fused op cannot take (0: a plain ReLU) goes through the unfused ops.
    let v = Tensor::new(&[-1f32, 2.0], &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 1, 1))
        .unwrap();
    let y = add_bias_leaky(
        &v,
        &Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap(),
        0.0,
    )
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1::<f32>()
    .unwrap();
    assert_eq!(y, vec![0.0, 1.5]);
}

#[test]
fn fused_batch_statistics_match_candle_reductions() {
    use latent_atlas::model::batchnorm_op::batch_statistics;
    let (b, c, h, w) = (6usize, 5usize, 7usize, 3usize);
    let n = b * c * h * w;
    let x = Tensor::from_vec(pseudo_random(n, 5, 4.0, 1.5), (b, c, h, w), &Device::Cpu).unwrap();
    let (mean, var) = batch_statistics(&x).unwrap();
    let ref_mean = x.mean_keepdim((0, 2, 3)).unwrap();
    let ref_var = x
        .broadcast_sub(&ref_mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_keepdim((0, 2, 3))
        .unwrap();
    assert!(max_abs_diff(&mean, &ref_mean.flatten_all().unwrap()) < 1e-5);
    assert!(max_abs_diff(&var, &ref_var.flatten_all().unwrap()) < 1e-4);
    assert!(
        var.min(0).unwrap().to_scalar::<f32>().unwrap() > 0.1,
        "degenerate data"
    );
    let e =
        batch_statistics(&Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
    assert!(e.contains("[B, C, H, W]"), "{e}");
}

#[test]
fn fused_batch_statistics_stay_accurate_far_from_zero() {
    // one pass with a per-channel shift: a mean 10^5 standard deviations from zero must not
    // cancel the variance away. Rows of 63 values take all three paths of the sums (32-lane
    // chunks, eights, single values); 4 x 4096 values cross the f64 flush.
    use latent_atlas::model::batchnorm_op::batch_statistics;
    for (b, c, h, w, scale, shift) in [
        (3usize, 4usize, 9usize, 7usize, 0.04f32, 1000.0f32),
        (4, 2, 64, 64, 2.0, -3.0),
        (5, 3, 4, 4, 0.5, 20.0),
    ] {
        let n = b * c * h * w;
        let data = pseudo_random(n, 11, scale, shift);
        let x = Tensor::from_vec(data.clone(), (b, c, h, w), &Device::Cpu).unwrap();
        let (mean, var) = batch_statistics(&x).unwrap();
        let (mean, var) = (
            mean.to_vec1::<f32>().unwrap(),
            var.to_vec1::<f32>().unwrap(),
        );
        for ch in 0..c {
            let vals: Vec<f64> = (0..b)
                .flat_map(|bi| {
                    let start = (bi * c + ch) * h * w;
                    data[start..start + h * w].iter().map(|&v| f64::from(v))
                })
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|u| (u - m) * (u - m)).sum::<f64>() / vals.len() as f64;
            assert!(v > 0.0, "degenerate data");
            assert!(
                (f64::from(mean[ch]) - m).abs() <= 1e-6 * m.abs().max(1.0),
                "{b}x{c}x{h}x{w} channel {ch}: mean {} vs {m}",
                mean[ch]
            );
            assert!(
                (f64::from(var[ch]) - v).abs() <= 1e-3 * v,
                "{b}x{c}x{h}x{w} channel {ch}: variance {} vs {v}",
                var[ch]
            );
        }
    }
}
