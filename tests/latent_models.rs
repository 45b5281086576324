//! Reconstruction gain and relocation on tiny random models and a tiny in-test dataset.

use candle_core::Device;
use latent_atlas::data::{Dataset, Split, IMAGE_LEN};
use latent_atlas::latent::estimators::{target_from_source, Estimator};
use latent_atlas::latent::gain::{reconstruction_gain, select_features};
use latent_atlas::latent::relocation::evaluate_relocation;
use latent_atlas::latent::LatentError;
use latent_atlas::model::{Family, LatentModel, Model, ModelConfig};
use latent_atlas::progress::{Cancel, NoProgress};
use nalgebra::DMatrix;

fn tiny_model(name: &str, latent_dim: usize, seed: u64) -> Model {
    let mut cfg = ModelConfig::new(name, Family::Vae, latent_dim);
    cfg.base_channels = 4;
    Model::new(cfg, &Device::Cpu, seed, false).unwrap()
}

/// 24 images of smooth colour gradients.
fn tiny_dataset() -> Dataset {
    let n = 24;
    let mut pixels = Vec::with_capacity(n * IMAGE_LEN);
    for i in 0..n {
        for c in 0..3 {
            for y in 0..64 {
                for x in 0..64 {
                    pixels.push(((x * (i + 1) + y * (c + 2) * 3 + i * 31) % 256) as u8);
                }
            }
        }
    }
    Dataset {
        id: "test:gradients".into(),
        sample_ids: (0..n).map(|i| format!("g{i}")).collect(),
        splits: vec![Split::Test; n],
        pixels: pixels.into(),
        info: Default::default(),
        skipped: vec![],
    }
}

/// Codes of `indices` as an `N x d` matrix.
fn encode(model: &Model, ds: &Dataset, indices: &[usize]) -> DMatrix<f32> {
    let z = model
        .encode(&ds.batch(indices, &Device::Cpu).unwrap())
        .unwrap();
    let rows = z.to_vec2::<f32>().unwrap();
    DMatrix::from_fn(rows.len(), rows[0].len(), |r, c| rows[r][c])
}

#[test]
fn gain_report_shapes_and_order() {
    let model = tiny_model("a", 6, 1);
    let ds = tiny_dataset();
    let indices: Vec<usize> = (0..24).collect();
    let report = reconstruction_gain(&model, &ds, &indices, &NoProgress, &Cancel::new()).unwrap();
    assert_eq!(report.gains.len(), 6);
    assert_eq!(report.num_images, 24);
    assert!(report.gains.iter().all(|g| g.is_finite()));
    assert!(report.baseline_mse.is_finite() && report.baseline_mse > 0.0);
    let mut sorted = report.order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..6).collect::<Vec<_>>());
    assert!(report
        .order
        .windows(2)
        .all(|p| report.gains[p[0]] >= report.gains[p[1]]));
    assert_eq!(report.cumulative_share(0), 0.0);
    let shares: Vec<f64> = (0..=6).map(|k| report.cumulative_share(k)).collect();
    assert!(shares.windows(2).all(|p| p[0] <= p[1]));
    if report.gains.iter().any(|g| *g > 0.0) {
        assert!((report.cumulative_share(6) - 1.0).abs() < 1e-12);
    }
    // Feature selection on the order.
    assert_eq!(
        select_features(&report.order, 3, 150).unwrap(),
        report.order[..3].to_vec()
    );
    assert!(select_features(&report.order, 7, 150).is_err()); // only 6 variables
    let order: Vec<usize> = (0..64).collect();
    assert_eq!(select_features(&order, 7, 150).unwrap().len(), 7);
    assert!(select_features(&order, 8, 150).is_err()); // 256 sectors > 150
    assert!(select_features(&order, 0, 150).is_err());
    assert!(select_features(&[1, 1, 2], 2, 150).is_err());
    // Cancel and empty input.
    let cancel = Cancel::new();
    cancel.cancel();
    let e = reconstruction_gain(&model, &ds, &indices, &NoProgress, &cancel).unwrap_err();
    assert!(matches!(e, LatentError::Cancelled));
    assert!(reconstruction_gain(&model, &ds, &[], &NoProgress, &Cancel::new()).is_err());
    assert!(reconstruction_gain(&model, &ds, &[0, 99], &NoProgress, &Cancel::new()).is_err());
}

#[test]
fn relocation_onto_itself_matches_reconstruction() {
    let model = tiny_model("a", 6, 2);
    let ds = tiny_dataset();
    let indices: Vec<usize> = (0..24).rev().collect();
    let z = encode(&model, &ds, &indices);
    let map = target_from_source(&z, &z, &Estimator::Lstsq, &Device::Cpu).unwrap();
    let m = evaluate_relocation(
        &model,
        &model,
        &map,
        &ds,
        &indices,
        &z,
        &z,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!(m.num_samples, 24);
    assert_eq!(m.per_sample_m_mse.len(), 24);
    assert_eq!(m.per_sample_r_mse.len(), 24);
    assert_eq!(m.per_dim_l_mse.len(), 6);
    assert_eq!(m.singular_values.len(), 6);
    assert!(m.l_mse < 1e-8);
    assert!((m.cka_mapped_target - 1.0).abs() < 1e-6);
    assert!(
        (m.m_mse_mean - m.r_mse_mean).abs() < 1e-5,
        "{} vs {}",
        m.m_mse_mean,
        m.r_mse_mean
    );
    for (a, b) in m.per_sample_m_mse.iter().zip(&m.per_sample_r_mse) {
        assert!((a - b).abs() < 1e-5);
    }
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("\"m_mse_mean\""));
}

#[test]
fn relocation_between_different_models() {
    let source = tiny_model("a", 6, 3);
    let target = tiny_model("b", 8, 4);
    let ds = tiny_dataset();
    let indices: Vec<usize> = (0..24).collect();
    let zs = encode(&source, &ds, &indices);
    let zt = encode(&target, &ds, &indices);
    let cpu = Device::Cpu;
    let map = target_from_source(&zs, &zt, &Estimator::Affine, &cpu).unwrap();
    let m = evaluate_relocation(
        &source,
        &target,
        &map,
        &ds,
        &indices,
        &zs,
        &zt,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!(m.per_dim_l_mse.len(), 8);
    assert_eq!(m.singular_values.len(), 6);
    assert_eq!(m.estimator, "affine");
    let all = [
        m.l_mse,
        m.r_mse_mean,
        m.r_mse_std,
        m.m_mse_mean,
        m.m_mse_std,
        m.cka_mapped_target,
    ];
    assert!(all.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(m.per_sample_m_mse.iter().all(|v| v.is_finite()));
    // Wrong shapes are errors, not panics.
    let nop = &NoProgress;
    let go = Cancel::new();
    let e =
        evaluate_relocation(&target, &source, &map, &ds, &indices, &zs, &zt, nop, &go).unwrap_err();
    assert!(matches!(e, LatentError::Shape(_)), "{e}");
    let e = evaluate_relocation(
        &source,
        &target,
        &map,
        &ds,
        &indices[..10],
        &zs,
        &zt,
        nop,
        &go,
    )
    .unwrap_err();
    assert!(matches!(e, LatentError::Shape(_)), "{e}");
    let stop = Cancel::new();
    stop.cancel();
    let e = evaluate_relocation(&source, &target, &map, &ds, &indices, &zs, &zt, nop, &stop)
        .unwrap_err();
    assert!(matches!(e, LatentError::Cancelled));
}
