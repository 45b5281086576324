//! Metrics on codes and maps: L-MSE, per-dimension L-MSE, linear CKA, singular values, cycle
//! error, and the shuffled-pairing baseline.

use candle_core::Device;
use latent_atlas::latent::estimators::{target_from_source, Estimator};
use latent_atlas::latent::metrics::{
    cycle_error, l_mse, linear_cka, per_dim_l_mse, singular_values,
};
use latent_atlas::latent::relocation::shuffled_baseline;
use latent_atlas::latent::LatentError;
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
}

fn orthogonal(d: usize, seed: u64) -> DMatrix<f32> {
    randn(d, d, seed).map(f64::from).qr().q().map(|v| v as f32)
}

#[test]
fn a_space_mapped_to_itself_has_zero_error_and_cka_one() {
    let z = randn(400, 12, 1);
    let map = target_from_source(&z, &z, &Estimator::Lstsq, &Device::Cpu).unwrap();
    let mapped = map.apply(&z).unwrap();
    assert!(l_mse(&mapped, &z).unwrap() < 1e-10);
    assert!((linear_cka(&mapped, &z).unwrap() - 1.0).abs() < 1e-6);
    assert!((linear_cka(&z, &z).unwrap() - 1.0).abs() < 1e-6);
    let sv = singular_values(&map.weight).unwrap();
    assert!(sv.iter().all(|s| (s - 1.0).abs() < 1e-4));
}

#[test]
fn shuffled_pairings_are_much_worse() {
    let zs = randn(500, 10, 2);
    let w = randn(10, 8, 3);
    let zt = &zs * &w + randn(500, 8, 4) * 0.05;
    let cpu = Device::Cpu;
    let map = target_from_source(&zs, &zt, &Estimator::Lstsq, &cpu).unwrap();
    let good = l_mse(&map.apply(&zs).unwrap(), &zt).unwrap();
    let (shuffled, perm) = shuffled_baseline(&zs, &zt, &Estimator::Lstsq, &cpu, 9).unwrap();
    assert_eq!(perm.len(), 500);
    let bad = l_mse(&shuffled.apply(&zs).unwrap(), &zt).unwrap();
    assert!(bad > 100.0 * good, "shuffled {bad} vs paired {good}");
}

#[test]
fn cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling() {
    let x = randn(300, 10, 5);
    let y = randn(300, 6, 6) + &x.columns(0, 6) * 0.7;
    let base = linear_cka(&x, &y).unwrap();
    assert!(base > 0.05 && base < 0.95, "{base}");
    let xq = &x * orthogonal(10, 7) * 3.5;
    let yq = &y * orthogonal(6, 8) * 0.2;
    assert!((linear_cka(&xq, &y).unwrap() - base).abs() < 1e-6);
    assert!((linear_cka(&xq, &yq).unwrap() - base).abs() < 1e-6);
    // Translation too (centring).
    assert!((linear_cka(&x.add_scalar(4.0), &y).unwrap() - base).abs() < 1e-6);
    assert!((linear_cka(&x, &y).unwrap() - linear_cka(&y, &x).unwrap()).abs() < 1e-12);
    // Independent codes: CKA near 0.
    assert!(linear_cka(&randn(2000, 5, 9), &randn(2000, 5, 10)).unwrap() < 0.05);
}

#[test]
fn per_dimension_l_mse_averages_to_l_mse() {
    let a = randn(100, 7, 11);
    let mut b = a.clone();
    b.column_mut(3).add_scalar_mut(2.0);
    let per_dim = per_dim_l_mse(&a, &b).unwrap();
    assert_eq!(per_dim.len(), 7);
    assert!((per_dim[3] - 4.0).abs() < 1e-5);
    assert!(per_dim.iter().enumerate().all(|(j, v)| j == 3 || *v == 0.0));
    let mean = per_dim.iter().sum::<f64>() / 7.0;
    assert!((l_mse(&a, &b).unwrap() - mean).abs() < 1e-12);
}

#[test]
fn singular_values_are_descending() {
    let w = DMatrix::from_row_slice(3, 2, &[0.0, 2.0, 5.0, 0.0, 0.0, 0.0]);
    let sv = singular_values(&w).unwrap();
    assert_eq!(sv.len(), 2);
    assert!((sv[0] - 5.0).abs() < 1e-9 && (sv[1] - 2.0).abs() < 1e-9);
    let sv = singular_values(&randn(12, 20, 12)).unwrap();
    assert!(sv.windows(2).all(|p| p[0] >= p[1]));
}

#[test]
fn cycle_error_of_inverse_maps_is_small() {
    let za = randn(300, 8, 13);
    let zb = &za * orthogonal(8, 14) * 2.0;
    let cpu = Device::Cpu;
    let ab = target_from_source(&za, &zb, &Estimator::Lstsq, &cpu).unwrap();
    let ba = target_from_source(&zb, &za, &Estimator::Lstsq, &cpu).unwrap();
    assert!(cycle_error(&ab, &ba, &za).unwrap() < 1e-8);
    let wrong = target_from_source(&za, &randn(300, 5, 15), &Estimator::Lstsq, &cpu).unwrap();
    assert!(matches!(
        cycle_error(&ab, &wrong, &za),
        Err(LatentError::Shape(_))
    ));
}

#[test]
fn metric_errors() {
    let a = randn(10, 3, 16);
    assert!(matches!(
        l_mse(&a, &randn(10, 4, 17)),
        Err(LatentError::Shape(_))
    ));
    assert!(matches!(
        linear_cka(&a, &randn(9, 3, 17)),
        Err(LatentError::Shape(_))
    ));
    let mut bad = a.clone();
    bad[(2, 1)] = f32::NAN;
    assert!(matches!(
        l_mse(&bad, &a),
        Err(LatentError::NonFinite { row: 2, col: 1, .. })
    ));
    assert!(linear_cka(&bad, &a).is_err());
    assert!(singular_values(&bad).is_err());
    let constant = DMatrix::from_element(10, 3, 1.5f32);
    assert!(matches!(
        linear_cka(&constant, &a),
        Err(LatentError::Degenerate(_))
    ));
    assert!(matches!(
        l_mse(&DMatrix::zeros(0, 3), &DMatrix::zeros(0, 3)),
        Err(LatentError::NotEnoughPoints(_))
    ));
}
