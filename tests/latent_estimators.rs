//! Known-answer tests for every map estimator, the numpy reference fixture, ill-posed and bad
//! inputs, estimator names, and map save/load.

use candle_core::Device;
use latent_atlas::latent::estimators::{target_from_source, Estimator, LinearMap};
use latent_atlas::latent::metrics::l_mse;
use latent_atlas::latent::LatentError;
use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
}

/// `z_in_target = z_in_source · w (+ b) + 0.01 · noise`.
fn make_target(
    x: &DMatrix<f32>,
    w: &DMatrix<f32>,
    b: Option<&DVector<f32>>,
    seed: u64,
) -> DMatrix<f32> {
    let mut y = x * w + randn(x.nrows(), w.ncols(), seed) * 0.01;
    if let Some(b) = b {
        for (mut col, bj) in y.column_iter_mut().zip(b.iter()) {
            col.add_scalar_mut(*bj);
        }
    }
    y
}

fn max_abs_diff(a: &DMatrix<f32>, b: &DMatrix<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

fn fit(x: &DMatrix<f32>, y: &DMatrix<f32>, est: &Estimator) -> LinearMap {
    target_from_source(x, y, est, &Device::Cpu).unwrap()
}

/// Closed-form estimators recover a known map to 5e-3 (noise 0.01, N = 500: the expected
/// error is about 0.01 / √500 ≈ 5e-4 per entry).
#[test]
fn closed_forms_recover_known_maps_both_shapes() {
    for (d1, d2) in [(16, 24), (24, 16)] {
        let x = randn(500, d1, 1);
        let w = randn(d1, d2, 2);
        let y = make_target(&x, &w, None, 3);
        for est in [Estimator::Lstsq, Estimator::Ridge { lambda: 0.1 }] {
            let map = fit(&x, &y, &est);
            assert_eq!(map.weight.shape(), (d1, d2));
            assert!(map.bias.is_none());
            let err = max_abs_diff(&map.weight, &w);
            assert!(err < 5e-3, "{est} {d1}x{d2}: max error {err}");
            assert_eq!(map.info.num_points, 500);
            assert_eq!(map.info.rank, d1);
            assert!(map.info.ridge_fallback.is_none());
            assert!(map.info.condition.unwrap() < 10.0);
        }
    }
}

#[test]
fn affine_recovers_weight_and_bias() {
    for (d1, d2) in [(16, 24), (24, 16)] {
        let x = randn(500, d1, 4).add_scalar(0.5);
        let w = randn(d1, d2, 5);
        let b = DVector::from_fn(d2, |i, _| i as f32 * 0.1 - 1.0);
        let y = make_target(&x, &w, Some(&b), 6);
        let map = fit(&x, &y, &Estimator::Affine);
        assert!(max_abs_diff(&map.weight, &w) < 5e-3);
        let bias = map.bias.as_ref().unwrap();
        let berr = bias
            .iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(berr < 5e-3, "bias error {berr}");
        // apply adds the bias.
        let mapped = map.apply(&x).unwrap();
        assert!(l_mse(&mapped, &y).unwrap() < 2e-4);
    }
}

/// Adam (the paper's trained map) gets within 0.02 of the known map.
#[test]
fn sgd_recovers_known_map() {
    for (d1, d2) in [(16, 24), (24, 16)] {
        let x = randn(500, d1, 7);
        let w = randn(d1, d2, 8) * 0.5;
        let y = make_target(&x, &w, None, 9);
        let map = fit(&x, &y, &Estimator::sgd_default());
        let err = max_abs_diff(&map.weight, &w);
        assert!(err < 0.02, "sgd {d1}x{d2}: max error {err}");
        // Final loss = MSE (noise², 1e-4) + l2·‖W‖²_F.
        let penalty = 1e-4 * f64::from(w.norm_squared());
        let loss = map.info.final_loss.unwrap();
        assert!(loss < penalty + 1e-3, "loss {loss}, penalty {penalty}");
    }
}

/// Random `rows x cols` matrix with orthonormal columns (`rows >= cols`).
fn orthonormal_columns(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
    randn(rows, cols, seed)
        .map(f64::from)
        .qr()
        .q()
        .map(|v| v as f32)
}

#[test]
fn procrustes_recovers_exact_scaled_rotation() {
    let x = randn(300, 16, 10);
    let r = orthonormal_columns(16, 16, 11);
    let y = &x * &r * 1.7;
    let map = fit(&x, &y, &Estimator::Procrustes);
    let err = max_abs_diff(&map.weight, &(&r * 1.7));
    assert!(err < 1e-4, "max error {err}");
}

#[test]
fn procrustes_non_square_with_noise() {
    // d1 < d2: R has orthonormal rows; exact for any X up to noise.
    let x = randn(500, 16, 12);
    let r = orthonormal_columns(24, 16, 13).transpose();
    let y = make_target(&x, &(&r * 0.8), None, 14);
    let map = fit(&x, &y, &Estimator::Procrustes);
    assert!(max_abs_diff(&map.weight, &(&r * 0.8)) < 5e-3);
    // d1 > d2: R has orthonormal columns; exact when XᵀX ∝ I, so use whitened X.
    let x = orthonormal_columns(500, 24, 15) * (500f32).sqrt();
    let r = orthonormal_columns(24, 16, 16);
    let y = make_target(&x, &(&r * 1.3), None, 17);
    let map = fit(&x, &y, &Estimator::Procrustes);
    let err = max_abs_diff(&map.weight, &(&r * 1.3));
    assert!(err < 5e-3, "max error {err}");
    let rt_r = map.weight.transpose() * &map.weight / (1.3 * 1.3);
    assert!(max_abs_diff(&rt_r, &DMatrix::identity(16, 16)) < 1e-2);
}

#[test]
fn ridge_with_big_lambda_shrinks_toward_zero() {
    let x = randn(500, 16, 18);
    let w = randn(16, 24, 19);
    let y = make_target(&x, &w, None, 20);
    let small = fit(&x, &y, &Estimator::Ridge { lambda: 1.0 }).weight.norm();
    let big = fit(&x, &y, &Estimator::Ridge { lambda: 1e7 }).weight.norm();
    assert!(big < 1e-3 * small, "{big} vs {small}");
    // λ = 0 is plain least squares.
    let zero = fit(&x, &y, &Estimator::Ridge { lambda: 0.0 });
    assert!(max_abs_diff(&zero.weight, &fit(&x, &y, &Estimator::Lstsq).weight) < 1e-6);
}

#[test]
fn rank_deficient_inputs_fall_back_to_ridge_and_stay_finite() {
    // Fewer points than dimensions.
    let x = randn(10, 16, 21);
    let y = randn(10, 5, 22);
    for est in [Estimator::Lstsq, Estimator::Affine] {
        let map = fit(&x, &y, &est);
        assert!(map.info.ridge_fallback.is_some(), "{est}");
        assert!(map.weight.iter().all(|v| v.is_finite()));
        // The fit still interpolates the training points closely.
        assert!(l_mse(&map.apply(&x).unwrap(), &y).unwrap() < 1e-3);
    }
    // Duplicated columns.
    let mut x = randn(200, 8, 23);
    let col = x.column(2).clone_owned();
    x.set_column(5, &col);
    let w = randn(8, 3, 24);
    let y = make_target(&x, &w, None, 25);
    let map = fit(&x, &y, &Estimator::Lstsq);
    assert!(map.info.ridge_fallback.unwrap() > 0.0);
    assert_eq!(map.info.rank, 7);
    assert!(map.info.condition.is_none_or(|c| c > 1e10));
    assert!(map.weight.iter().all(|v| v.is_finite()));
    assert!(l_mse(&map.apply(&x).unwrap(), &y).unwrap() < 1e-3);
    // Procrustes and SGD also stay finite.
    for est in [
        Estimator::Procrustes,
        Estimator::Sgd {
            steps: 50,
            lr: 1e-2,
            l2: 1e-4,
        },
    ] {
        let map = fit(&x, &y, &est);
        assert!(map.weight.iter().all(|v| v.is_finite()), "{est}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let x = randn(50, 4, 26);
    let y = randn(50, 3, 27);
    let cpu = Device::Cpu;
    let all = [
        Estimator::Lstsq,
        Estimator::Affine,
        Estimator::Ridge { lambda: 0.5 },
        Estimator::Procrustes,
        Estimator::sgd_default(),
    ];
    for est in &all {
        let mut bad = x.clone();
        bad[(7, 2)] = f32::NAN;
        let e = target_from_source(&bad, &y, est, &cpu).unwrap_err();
        assert!(
            matches!(e, LatentError::NonFinite { row: 7, col: 2, .. }),
            "{est}: {e}"
        );
        let mut bad = y.clone();
        bad[(3, 1)] = f32::INFINITY;
        assert!(matches!(
            target_from_source(&x, &bad, est, &cpu),
            Err(LatentError::NonFinite { .. })
        ));
        let short = y.rows(0, 40).clone_owned();
        let e = target_from_source(&x, &short, est, &cpu).unwrap_err();
        assert!(matches!(e, LatentError::Shape(_)), "{est}: {e}");
        assert!(e.to_string().contains("50") && e.to_string().contains("40"));
        let one = (x.rows(0, 1).clone_owned(), y.rows(0, 1).clone_owned());
        assert!(matches!(
            target_from_source(&one.0, &one.1, est, &cpu),
            Err(LatentError::NotEnoughPoints(_))
        ));
        let zeros = DMatrix::<f32>::zeros(50, 4);
        assert!(
            matches!(
                target_from_source(&zeros, &y, est, &cpu),
                Err(LatentError::Degenerate(_))
            ),
            "{est}"
        );
    }
    // The least-squares fits look for bad codes only when their cross products are not
    // finite: every kind of bad code must still be found and placed. An infinite target code
    // in a row whose source codes are all zero enters XᵀY only as ∞ · 0 = NaN.
    for est in [Estimator::Lstsq, Estimator::Ridge { lambda: 0.5 }] {
        let (mut xs, mut ys) = (x.clone(), y.clone());
        xs.row_mut(11).fill(0.0);
        ys[(11, 2)] = f32::INFINITY;
        let e = target_from_source(&xs, &ys, &est, &cpu).unwrap_err();
        assert!(
            matches!(&e, LatentError::NonFinite { what, row: 11, col: 2 } if what == "z_in_target"),
            "{est}: {e}"
        );
        let mut xs = x.clone();
        xs[(49, 3)] = f32::NEG_INFINITY;
        let e = target_from_source(&xs, &y, &est, &cpu).unwrap_err();
        assert!(
            matches!(&e, LatentError::NonFinite { what, row: 49, col: 3 } if what == "z_in_source"),
            "{est}: {e}"
        );
        // finite codes whose products overflow f32: an error, but not a non-finite code
        let huge = x.map(|v| v * 1e30);
        let e = target_from_source(&huge, &y, &est, &cpu).unwrap_err();
        assert!(matches!(e, LatentError::Degenerate(_)), "{est}: {e}");
    }
    let neg = Estimator::Ridge { lambda: -1.0 };
    assert!(matches!(
        target_from_source(&x, &y, &neg, &cpu),
        Err(LatentError::InvalidArgument(_))
    ));
    let nan = Estimator::Ridge { lambda: f64::NAN };
    assert!(matches!(
        target_from_source(&x, &y, &nan, &cpu),
        Err(LatentError::InvalidArgument(_))
    ));
    let sgd = Estimator::Sgd {
        steps: 10,
        lr: 0.0,
        l2: 0.0,
    };
    assert!(matches!(
        target_from_source(&x, &y, &sgd, &cpu),
        Err(LatentError::InvalidArgument(_))
    ));
    // apply checks the width and finiteness.
    let map = fit(&x, &y, &Estimator::Lstsq);
    assert!(matches!(map.apply(&y), Err(LatentError::Shape(_))));
    let mut bad = x.clone();
    bad[(0, 0)] = f32::NAN;
    assert!(map.apply(&bad).is_err());
}

#[test]
fn estimator_names_round_trip() {
    let all = [
        Estimator::Lstsq,
        Estimator::Affine,
        Estimator::Ridge { lambda: 0.1 },
        Estimator::Procrustes,
        Estimator::sgd_default(),
        Estimator::Sgd {
            steps: 10,
            lr: 0.5,
            l2: 0.0,
        },
    ];
    for est in all {
        let parsed: Estimator = est.to_string().parse().unwrap();
        assert_eq!(parsed, est);
        let json = serde_json::to_string(&est).unwrap();
        assert_eq!(serde_json::from_str::<Estimator>(&json).unwrap(), est);
    }
    assert_eq!(
        "ridge:0.1".parse::<Estimator>().unwrap(),
        Estimator::Ridge { lambda: 0.1 }
    );
    assert_eq!(
        "sgd".parse::<Estimator>().unwrap(),
        Estimator::sgd_default()
    );
    assert_eq!(
        "sgd:steps=300".parse::<Estimator>().unwrap(),
        Estimator::Sgd {
            steps: 300,
            lr: 1e-2,
            l2: 1e-4
        }
    );
    for bad in ["", "ridge", "ridge:x", "lsq", "sgd:foo=1", "lstsq:3"] {
        assert!(
            matches!(
                bad.parse::<Estimator>(),
                Err(LatentError::ParseEstimator(_))
            ),
            "{bad}"
        );
    }
}

/// Reads an f32 or f64 tensor of the fixture as a row-major matrix.
fn fixture_matrix(st: &safetensors::SafeTensors, name: &str) -> DMatrix<f64> {
    let t = st.tensor(name).unwrap();
    let values: Vec<f64> = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    };
    let shape = t.shape();
    let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
    DMatrix::from_row_slice(rows, cols, &values)
}

/// lstsq and affine agree with numpy's `np.linalg.lstsq` (tools/make_lstsq_reference.py).
#[test]
fn lstsq_matches_numpy_reference() {
    let bytes = std::fs::read("tests/fixtures/lstsq_reference.safetensors").unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x = fixture_matrix(&st, "X").map(|v| v as f32);
    let y = fixture_matrix(&st, "Y").map(|v| v as f32);
    assert_eq!((x.shape(), y.shape()), ((200, 12), (200, 9)));
    let w_ref = fixture_matrix(&st, "W").map(|v| v as f32);
    let map = fit(&x, &y, &Estimator::Lstsq);
    let err = max_abs_diff(&map.weight, &w_ref);
    assert!(err < 1e-4, "lstsq vs numpy: max error {err}");
    let wa_ref = fixture_matrix(&st, "W_affine").map(|v| v as f32);
    let b_ref = fixture_matrix(&st, "b_affine").map(|v| v as f32);
    let map = fit(&x, &y, &Estimator::Affine);
    assert!(max_abs_diff(&map.weight, &wa_ref) < 1e-4);
    let b = DMatrix::from_column_slice(9, 1, map.bias.as_ref().unwrap().as_slice());
    assert!(max_abs_diff(&b, &b_ref) < 1e-4);
}

#[test]
fn maps_round_trip_through_npy_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let x = randn(100, 16, 30).add_scalar(0.2);
    let y = randn(100, 24, 31);
    for est in [
        Estimator::Affine,
        Estimator::Ridge { lambda: 0.25 },
        Estimator::Lstsq,
    ] {
        let map = fit(&x, &y, &est);
        let folder = dir.path().join("npy");
        map.save_npy(&folder).unwrap();
        let back = LinearMap::load_npy(&folder).unwrap();
        assert_eq!(back, map, "{est} via npy");
        let file = dir.path().join("map.safetensors");
        map.save_safetensors(&file).unwrap();
        let back = LinearMap::load_safetensors(&file).unwrap();
        assert_eq!(back, map, "{est} via safetensors");
    }
    // The last save (lstsq, no bias) removed the stale b.npy of the affine map.
    assert!(!dir.path().join("npy/b.npy").exists());
    // W.npy has a numpy header: magic, version 1.0, '<f4', C order, shape (16, 24).
    let bytes = std::fs::read(dir.path().join("npy/W.npy")).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"));
    assert!(header.contains("'shape': (16, 24)"));
    assert!(header.ends_with('\n'));
    assert_eq!(bytes.len(), 10 + header_len + 16 * 24 * 4);
    // C order: the second value is W[0, 1].
    let map = LinearMap::load_npy(&dir.path().join("npy")).unwrap();
    let second = f32::from_le_bytes(
        bytes[10 + header_len + 4..10 + header_len + 8]
            .try_into()
            .unwrap(),
    );
    assert_eq!(second, map.weight[(0, 1)]);
    // Errors name the file.
    let missing = dir.path().join("nowhere.safetensors");
    let e = LinearMap::load_safetensors(&missing)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("nowhere.safetensors"), "{e}");
    std::fs::write(&missing, b"garbage").unwrap();
    assert!(LinearMap::load_safetensors(&missing).is_err());
}

fn time_lstsq(n: usize, d1: usize, d2: usize, reps: usize) -> f64 {
    let x = randn(n, d1, 40);
    let y = randn(n, d2, 41);
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let map = fit(&x, &y, &Estimator::Lstsq);
        best = best.min(t.elapsed().as_secs_f64());
        assert!(map.weight.iter().all(|v| v.is_finite()));
    }
    best * 1e3
}

/// Timings; run with `cargo test --release --test latent_estimators -- --ignored --nocapture`.
#[test]
#[ignore]
fn lstsq_timing() {
    println!(
        "lstsq 150 x 64 -> 150: {:.3} ms (best of 50)",
        time_lstsq(150, 64, 150, 50)
    );
    println!(
        "lstsq 10,000 x 64 -> 150: {:.2} ms (best of 10)",
        time_lstsq(10_000, 64, 150, 10)
    );
    println!(
        "lstsq 200,000 x 64 -> 150: {:.1} ms (best of 5)",
        time_lstsq(200_000, 64, 150, 5)
    );
    println!(
        "lstsq 200,000 x 150 -> 64: {:.1} ms (best of 3)",
        time_lstsq(200_000, 150, 64, 3)
    );
}

/// numpy reads a saved `W.npy` back exactly; needs `/tmp/tvenv/bin/python` with numpy, so it
/// is opt-in: `cargo test --test latent_estimators -- --ignored npy_readable_by_numpy`.
#[test]
#[ignore]
fn npy_readable_by_numpy() {
    let python = std::path::Path::new("/tmp/tvenv/bin/python");
    if !python.exists() {
        eprintln!("skipped: no {}", python.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let x = randn(60, 5, 50).add_scalar(1.0);
    let map = fit(&x, &randn(60, 3, 51), &Estimator::Affine);
    map.save_npy(dir.path()).unwrap();
    let script = "import numpy as np, sys; w = np.load(sys.argv[1] + '/W.npy'); b = np.load(sys.argv[1] + '/b.npy'); \
                  assert w.dtype == np.float32 and w.shape == (5, 3) and b.shape == (3,); \
                  print(' '.join(repr(float(v)) for v in list(w.ravel()) + list(b)))";
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<f32> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let mut expected: Vec<f32> = map.weight.transpose().as_slice().to_vec();
    expected.extend(map.bias.as_ref().unwrap().iter());
    assert_eq!(values, expected);
}

/// Where the time of a large lstsq goes (same invocation as `lstsq_timing`).
#[test]
#[ignore]
fn lstsq_timing_breakdown() {
    use latent_atlas::latent::{check_finite, linalg::cross_products};
    let (x, y) = (randn(200_000, 64, 40), randn(200_000, 150, 41));
    let best = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let finite = best(&|| {
        check_finite("x", &x).unwrap();
        check_finite("y", &y).unwrap();
    });
    let products = best(&|| drop(cross_products(&x, Some(&y))));
    println!("200,000 x 64 -> 150: finiteness checks {finite:.1} ms, XᵀX + XᵀY {products:.1} ms");
}

#[test]
fn first_non_finite_finds_the_earliest_across_chunks() {
    use latent_atlas::latent::first_non_finite;
    let n = 200_000;
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
    assert_eq!(first_non_finite(&v), None);
    assert_eq!(first_non_finite(&[]), None);
    // Two bad values in different parallel chunks: the earlier one is reported.
    v[150_001] = f32::NAN;
    v[70_123] = f32::INFINITY;
    assert_eq!(first_non_finite(&v), Some(70_123));
    v[70_123] = 1.0;
    assert_eq!(first_non_finite(&v), Some(150_001));
    v[0] = f32::NEG_INFINITY;
    assert_eq!(first_non_finite(&v), Some(0));
    // The last element of a ragged final chunk.
    let mut w = vec![0.5f32; 3 * (1 << 14) + 5];
    let last = w.len() - 1;
    w[last] = f32::NAN;
    assert_eq!(first_non_finite(&w), Some(last));
    // A full-data map reports the row and column of a NaN far into a large code matrix.
    let x = randn(50_000, 8, 3);
    let mut y = randn(50_000, 4, 4);
    y[(41_234, 3)] = f32::NAN;
    let e = target_from_source(&x, &y, &Estimator::Lstsq, &Device::Cpu).unwrap_err();
    assert!(
        matches!(
            e,
            LatentError::NonFinite {
                row: 41_234,
                col: 3,
                ..
            }
        ),
        "{e}"
    );
}
