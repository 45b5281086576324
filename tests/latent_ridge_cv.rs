//! Known-answer tests of `ridge:auto` (ridge with λ by exact leave-one-out error), in the
//! primal (more points than dimensions) and dual (far more dimensions than points) forms.

use candle_core::Device;
use latent_atlas::latent::{target_from_source, Estimator, LinearMap};
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn(r: usize, c: usize, seed: u64) -> DMatrix<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DMatrix::from_fn(r, c, |_, _| StandardNormal.sample(&mut rng))
}

fn fit(x: &DMatrix<f32>, y: &DMatrix<f32>, est: &Estimator) -> LinearMap {
    target_from_source(x, y, est, &Device::Cpu).unwrap()
}

fn max_abs(a: &DMatrix<f32>, b: &DMatrix<f32>) -> f32 {
    (a - b).abs().max()
}

fn mse(a: &DMatrix<f32>, b: &DMatrix<f32>) -> f64 {
    (a - b).iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / a.len() as f64
}

/// Leave-one-out error by refitting `ridge:λ` without each point in turn.
fn brute_force_loo(x: &DMatrix<f32>, y: &DMatrix<f32>, lambda: f64) -> f64 {
    let n = x.nrows();
    let mut total = 0.0;
    for i in 0..n {
        let keep: Vec<usize> = (0..n).filter(|&r| r != i).collect();
        let map = fit(
            &x.select_rows(keep.iter()),
            &y.select_rows(keep.iter()),
            &Estimator::Ridge { lambda },
        );
        let pred = map.apply(&x.rows(i, 1).into_owned()).unwrap();
        total += (pred - y.rows(i, 1))
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>();
    }
    total / (n * y.ncols()) as f64
}

#[test]
fn parses_and_displays() {
    for s in ["ridge:auto", "RIDGE:AUTO", "ridge-cv"] {
        assert_eq!(s.parse::<Estimator>().unwrap(), Estimator::RidgeCv, "{s}");
    }
    assert_eq!(Estimator::RidgeCv.to_string(), "ridge:auto");
    assert!("ridge:sometimes".parse::<Estimator>().is_err());
}

#[test]
fn primal_recovers_a_known_map_with_a_small_lambda() {
    let x = randn(300, 6, 1);
    let w = randn(6, 4, 2);
    let y = &x * &w + randn(300, 4, 3) * 0.01;
    let map = fit(&x, &y, &Estimator::RidgeCv);
    assert_eq!(map.estimator, Estimator::RidgeCv);
    assert!(max_abs(&map.weight, &w) < 5e-3, "{}", map.weight);
    let lambda = map.info.lambda.unwrap();
    // λ on the sum of squares: here XᵀX ≈ 300·I, the noise is tiny, so λ stays far below it
    assert!(lambda < 3.0, "λ = {lambda}");
    assert_eq!(map.info.rank, 6);
    assert!(map.info.condition.is_some());
    // identical to ridge:λ with the chosen λ
    let same = fit(&x, &y, &Estimator::Ridge { lambda });
    assert!(max_abs(&map.weight, &same.weight) < 1e-5);
    // the reported leave-one-out error is the brute-force one
    let loo = brute_force_loo(&x, &y, lambda);
    let cv = map.info.cv_mse.unwrap();
    assert!((cv - loo).abs() < 1e-6 + 1e-3 * loo, "{cv} vs {loo}");
}

#[test]
fn dual_form_equals_ridge_and_its_loo_is_exact() {
    // 40 points in 300 dimensions: XᵀX is singular, the dual form is used.
    let x = randn(40, 300, 4);
    let y = &x * randn(300, 3, 5) * 0.05 + randn(40, 3, 6) * 0.3;
    let map = fit(&x, &y, &Estimator::RidgeCv);
    let lambda = map.info.lambda.unwrap();
    assert_eq!(map.info.rank, 40);
    assert!(map.info.condition.is_none());
    assert!(map.weight.iter().all(|v| v.is_finite()));
    let same = fit(&x, &y, &Estimator::Ridge { lambda });
    let scale = same.weight.abs().max();
    assert!(
        max_abs(&map.weight, &same.weight) < 1e-3 * scale,
        "dual and primal ridge differ"
    );
    let loo = brute_force_loo(&x, &y, lambda);
    let cv = map.info.cv_mse.unwrap();
    assert!((cv - loo).abs() < 1e-3 * loo, "{cv} vs {loo}");
    // λ is a minimum of the leave-one-out error: neighbours on a finer grid are no better
    for f in [0.5, 2.0] {
        assert!(brute_force_loo(&x, &y, lambda * f) >= loo * (1.0 - 1e-6));
    }
}

#[test]
fn pure_noise_gets_a_large_lambda() {
    let x = randn(60, 20, 7);
    let y = randn(60, 5, 8);
    let map = fit(&x, &y, &Estimator::RidgeCv);
    let lambda = map.info.lambda.unwrap();
    // trace(XᵀX)/20 ≈ 60: the chosen λ shrinks hard
    assert!(lambda > 60.0, "λ = {lambda}");
    assert!(map.weight.abs().max() < 0.2);
}

#[test]
fn flow_sized_codes_map_both_ways_through_shared_factors() {
    // 150 support points; a 12,288-dimensional "flow" side and a 16-dimensional side share
    // 8 factors. Held-out points test the maps.
    let (n, n_test, d_wide, d_small, k) = (150, 100, 12288, 16, 8);
    let factors = randn(n + n_test, k, 9);
    let wide = &factors * randn(k, d_wide, 10) * 0.2 + randn(n + n_test, d_wide, 11);
    let small = &factors * randn(k, d_small, 12) + randn(n + n_test, d_small, 13) * 0.1;
    let (w_fit, w_test) = (
        wide.rows(0, n).into_owned(),
        wide.rows(n, n_test).into_owned(),
    );
    let (s_fit, s_test) = (
        small.rows(0, n).into_owned(),
        small.rows(n, n_test).into_owned(),
    );
    // wide → small (dual form)
    let map = fit(&w_fit, &s_fit, &Estimator::RidgeCv);
    assert_eq!(map.weight.shape(), (d_wide, d_small));
    let err = mse(&map.apply(&w_test).unwrap(), &s_test);
    let var = mse(&s_test, &DMatrix::zeros(n_test, d_small));
    assert!(
        err < 0.2 * var,
        "wide → small: held-out MSE {err} vs variance {var}"
    );
    // λ by leave-one-out is close to the best fixed λ in hindsight (held-out error of the
    // dual ridge Xᵀ(XXᵀ + λI)⁻¹Y over a grid)
    let xd = w_fit.map(f64::from);
    let gram = &xd * xd.transpose();
    let mean_ev = gram.trace() / n as f64;
    let oracle = (-8..=6)
        .map(|e| {
            let mut a = gram.clone();
            for i in 0..n {
                a[(i, i)] += mean_ev * 10f64.powf(f64::from(e) / 2.0);
            }
            let w = xd.transpose() * a.cholesky().unwrap().solve(&s_fit.map(f64::from));
            mse(&(w_test.map(f64::from) * w).map(|v| v as f32), &s_test)
        })
        .fold(f64::INFINITY, f64::min);
    assert!(
        err < 1.1 * oracle,
        "ridge:auto {err} vs best fixed λ {oracle}"
    );
    // small → wide (primal): only the factor part of the wide codes is predictable
    let back = fit(&s_fit, &w_fit, &Estimator::RidgeCv);
    let pred = back.apply(&s_test).unwrap();
    let signal = factors.rows(n, n_test) * randn(k, d_wide, 10) * 0.2;
    let err = mse(&pred, &w_test);
    let noise_floor = mse(&signal, &w_test);
    assert!(
        err < 1.1 * noise_floor,
        "small → wide: {err} vs floor {noise_floor}"
    );
}

/// Timing of the largest dual fit the pair workflow does (`MAX_DUAL_POINTS` flow codes):
/// `cargo test --release --test latent_ridge_cv -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_of_the_largest_dual_fit() {
    let n = latent_atlas::latent::pipeline::MAX_DUAL_POINTS;
    let x = randn(n, 12288, 20);
    let y = randn(n, 64, 21);
    let t0 = std::time::Instant::now();
    let map = fit(&x, &y, &Estimator::RidgeCv);
    eprintln!(
        "ridge:auto on {n} x 12288 → 64: {:.1} s (λ = {:?})",
        t0.elapsed().as_secs_f64(),
        map.info.lambda
    );
}
