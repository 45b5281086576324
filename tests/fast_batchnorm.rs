//! The fused batch normalisation matches the plain candle composition: outputs and gradients.

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
    for &(b, c, h, w) in &[
        (4usize, 3usize, 5usize, 7usize),
        (16, 8, 4, 4),
        (2, 5, 16, 16),
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
fn fused_batch_norm_rejects_non_4d_input() {
    let x = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = batch_normalize(&x, 1e-5).unwrap_err().to_string();
    assert!(err.contains("[B, C, H, W]"), "{err}");
}
