//! Fixtures shared by the training and pipeline tests: datasets of soft coloured discs.
#![allow(dead_code)] // each test binary uses some of them

pub mod stack;

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use latent_atlas::data::{Dataset, SampleInfo, Split, IMAGE_LEN};
use latent_atlas::model::train::{train, TrainKind, TrainOptions, TrainReport};
use latent_atlas::progress::{Cancel, NoProgress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One disc: centre, squared radius scale, RGB colour.
struct Disc {
    centre: (f32, f32),
    r2: f32,
    colour: [f32; 3],
}

/// A dataset of one disc per image on a grey `background`; every fourth image is a test image.
fn disc_dataset(id: &str, prefix: &str, discs: &[Disc], background: f32) -> Dataset {
    let n = discs.len();
    let mut pixels = Vec::with_capacity(n * IMAGE_LEN);
    for d in discs {
        for col in d.colour {
            for y in 0..64 {
                for x in 0..64 {
                    let d2 = (x as f32 - d.centre.0).powi(2) + (y as f32 - d.centre.1).powi(2);
                    let w = (-d2 / d.r2).exp();
                    pixels.push((w * col + (1.0 - w) * background) as u8);
                }
            }
        }
    }
    Dataset {
        id: id.into(),
        sample_ids: (0..n).map(|i| format!("{prefix}{i}")).collect(),
        splits: (0..n)
            .map(|i| {
                if i % 4 == 0 {
                    Split::Test
                } else {
                    Split::Train
                }
            })
            .collect(),
        pixels: pixels.into(),
        info: SampleInfo::default(),
        skipped: Vec::new(),
    }
}

/// 48 images of a soft coloured disc whose position and colour vary with the index.
pub fn discs() -> Dataset {
    let discs: Vec<Disc> = (0..48)
        .map(|i| Disc {
            centre: (16.0 + (i % 6) as f32 * 6.0, 16.0 + (i / 6) as f32 * 4.0),
            r2: 120.0,
            colour: [
                (i * 37 % 255) as f32,
                (i * 91 % 255) as f32,
                (i * 13 % 255) as f32,
            ],
        })
        .collect();
    disc_dataset("test:discs", "disc", &discs, 40.0)
}

/// `n` images of a soft disc whose position, size and colour are drawn from `seed`.
pub fn random_discs(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let discs: Vec<Disc> = (0..n)
        .map(|_| Disc {
            centre: (rng.random_range(16.0..48.0), rng.random_range(16.0..48.0)),
            r2: rng.random_range(60.0..200.0),
            colour: [
                rng.random_range(0.0..255.0),
                rng.random_range(0.0..255.0),
                rng.random_range(0.0..255.0),
            ],
        })
        .collect();
    disc_dataset("test:random-discs", "d", &discs, 60.0)
}

/// Training options for the tiny test models: latent 8, 8 base channels, seed 11, batches of
/// 12, lr 2e-3, whole epochs, on the disc fixtures. Tests override what they need.
pub fn tiny_opts(kind: TrainKind, name: &str, epochs: usize) -> TrainOptions {
    TrainOptions {
        kind,
        name: name.into(),
        latent_dim: 8,
        base_channels: 8,
        seed: 11,
        epochs,
        batch_size: 12,
        lr: 2e-3,
        steps_per_epoch: None,
        max_steps: None,
        generator: None,
        dataset_id: "test:discs".into(),
        image_loss: 0.0,
        keep_recoder: false,
    }
}

/// Trains from scratch on the CPU into `out`, without progress output; panics on error.
pub fn train_quiet(opts: &TrainOptions, data: &Dataset, out: &Path) -> TrainReport {
    train(
        opts,
        data,
        out,
        &Device::Cpu,
        false,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap()
}

/// Leaky ReLU with slope 0.2 from candle's own ops (the reference for the fused kernels).
pub fn leaky(t: &Tensor) -> Tensor {
    let pos = t.relu().unwrap();
    let neg = (t - &pos).unwrap();
    (pos + (neg * 0.2).unwrap()).unwrap()
}

/// `fused` equals `leaky(native + bias)` (bias per channel of `[B, C, H, W]`) within 1e-4.
pub fn assert_fused_bias_leaky(fused: &Tensor, native: &Tensor, bias: &Tensor, what: &str) {
    let channels = bias.dims1().unwrap();
    let shifted = native
        .broadcast_add(&bias.reshape((1, channels, 1, 1)).unwrap())
        .unwrap();
    let err = max_abs_diff(fused, &leaky(&shifted));
    assert!(err < 1e-4, "{what}: fused bias + leaky off by {err}");
}

/// The encoders' and decoders' 4x4 stride-2 padding-1 geometry.
pub const STRIDE2: latent_atlas::model::conv::ConvGeom = latent_atlas::model::conv::ConvGeom {
    kernel: 4,
    stride: 2,
    padding: 1,
};

/// A 4x4 stride-2 padding-1 convolution of `b` random `c_in x side x side` images to `c_out`
/// channels (seeds `10 + i`, `20 + i`, `30 + i`) against candle's: forward and both gradients
/// ([`assert_matches_native`]); then its fused bias + leaky ReLU forward (bias seed `40 + i`).
pub fn check_stride2_conv(
    i: usize,
    (b, c_in, side, c_out): (usize, usize, usize, usize),
    what: &str,
) {
    use latent_atlas::model::conv::{conv2d, conv2d_bias_leaky};
    let g = STRIDE2;
    let x = Var::from_tensor(&seeded(&[b, c_in, side, side], 10 + i as u64)).unwrap();
    let w = Var::from_tensor(&seeded(&[c_out, c_in, 4, 4], 20 + i as u64)).unwrap();
    let ours = conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
    let native = x.as_tensor().conv2d(w.as_tensor(), 1, 2, 1, 1).unwrap();
    assert_matches_native(&ours, &native, &x, &w, 30 + i as u64, what);
    let bias = seeded(&[c_out], 40 + i as u64);
    let fused = conv2d_bias_leaky(x.as_tensor(), w.as_tensor(), &bias, g, 0.2).unwrap();
    assert_fused_bias_leaky(&fused, &native, &bias, what);
}

/// [`check_stride2_conv`] for the transposed convolution of `b` random `c_in x side x side`
/// inputs to `c_out` channels (seeds `50 + i` to `80 + i`).
pub fn check_stride2_transposed(
    i: usize,
    (b, c_in, side, c_out): (usize, usize, usize, usize),
    what: &str,
) {
    use latent_atlas::model::conv::{conv_transpose2d, conv_transpose2d_bias_leaky};
    let g = STRIDE2;
    let x = Var::from_tensor(&seeded(&[b, c_in, side, side], 50 + i as u64)).unwrap();
    let w = Var::from_tensor(&seeded(&[c_in, c_out, 4, 4], 60 + i as u64)).unwrap();
    let ours = conv_transpose2d(x.as_tensor(), w.as_tensor(), g).unwrap();
    let native = x
        .as_tensor()
        .conv_transpose2d(w.as_tensor(), 1, 0, 2, 1)
        .unwrap();
    assert_matches_native(&ours, &native, &x, &w, 70 + i as u64, what);
    let bias = seeded(&[c_out], 80 + i as u64);
    let fused = conv_transpose2d_bias_leaky(x.as_tensor(), w.as_tensor(), &bias, g, 0.2).unwrap();
    assert_fused_bias_leaky(&fused, &native, &bias, what);
}

/// Largest absolute elementwise difference of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Small deterministic pseudo-random values in [-0.5, 0.5) (the conv kernel tests).
pub fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `ours` equals `native` (forward within 1e-4), and so do the gradients of a random weighted
/// sum of each with respect to `x` (1e-4) and `w` (1e-3).
pub fn assert_matches_native(
    ours: &Tensor,
    native: &Tensor,
    x: &Var,
    w: &Var,
    seed: u64,
    what: &str,
) {
    assert!(max_abs_diff(ours, native) < 1e-4, "forward {what}");
    let r = seeded(ours.dims(), seed);
    let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (go, gn) = (grads(ours), grads(native));
    assert!(
        max_abs_diff(go.get(x).unwrap(), gn.get(x).unwrap()) < 1e-4,
        "grad x {what}"
    );
    assert!(
        max_abs_diff(go.get(w).unwrap(), gn.get(w).unwrap()) < 1e-3,
        "grad w {what}"
    );
}
