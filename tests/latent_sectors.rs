//! Sign sectors (both rules) and support sets (sector rule, baselines, JSON, spread check).

use std::collections::HashSet;

use latent_atlas::data::{Dataset, Split, IMAGE_LEN};
use latent_atlas::latent::sectors::{
    max_inhabited_threshold, occupancy_curve, sector_counts, sector_measures, sector_members,
    sector_of_points, SectorRule,
};
use latent_atlas::latent::support::{
    farthest_point_rows, farthest_point_support_set, random_support_set, sector_support_set,
    select_sector_rows, spread_check, SectorSupportOptions, SupportKind, SupportSet,
};
use latent_atlas::latent::LatentError;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn(rows: usize, cols: usize, seed: u64) -> DMatrix<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
}

/// Five hand-made points in 3-D; the selected variables are columns 0 and 2.
fn hand_points() -> DMatrix<f32> {
    DMatrix::from_row_slice(
        5,
        3,
        &[
            1.0, 9.0, 1.0, // + +  -> pattern 0b11
            -1.0, 0.0, 2.0, // - +  -> 0b10
            2.0, 0.0, -0.5, // + -  -> 0b01
            -0.1, 5.0, -0.1, // - - -> 0b00
            0.0, 0.0, 0.0, // zero counts as negative -> 0b00
        ],
    )
}

#[test]
fn hand_made_points_have_known_sectors_and_measures() {
    let z = hand_points();
    let vars = [0, 2];
    assert_eq!(sector_of_points(&z, &vars).unwrap(), vec![3, 2, 1, 0, 0]);
    let norm = sector_measures(&z, &vars, SectorRule::Norm).unwrap();
    let expected = [
        2f32.sqrt(),
        5f32.sqrt(),
        4.25f32.sqrt(),
        0.02f32.sqrt(),
        0.0,
    ];
    for (a, b) in norm.iter().zip(expected) {
        assert!((a - b).abs() < 1e-6);
    }
    let every = sector_measures(&z, &vars, SectorRule::EveryCoordinate).unwrap();
    assert_eq!(every, vec![1.0, 1.0, 0.5, 0.1, 0.0]);
    // At th = 0.9: Norm keeps points 0, 1, 2; EveryCoordinate drops point 2 (|-0.5| < 0.9).
    assert_eq!(
        sector_counts(&z, &vars, SectorRule::Norm, 0.9).unwrap(),
        vec![0, 1, 1, 1]
    );
    assert_eq!(
        sector_counts(&z, &vars, SectorRule::EveryCoordinate, 0.9).unwrap(),
        vec![0, 0, 1, 1]
    );
    // Strict inequality: the origin is in no sector at th = 0, but in sector 0 for th < 0.
    assert_eq!(
        sector_counts(&z, &vars, SectorRule::Norm, 0.0)
            .unwrap()
            .iter()
            .sum::<usize>(),
        4
    );
    assert_eq!(
        sector_counts(&z, &vars, SectorRule::Norm, -1.0).unwrap(),
        vec![2, 1, 1, 1]
    );
    assert_eq!(
        sector_members(&z, &vars, SectorRule::Norm, 0b00, -1.0).unwrap(),
        vec![3, 4]
    );
    assert_eq!(
        sector_members(&z, &vars, SectorRule::Norm, 0b10, 2.0).unwrap(),
        vec![1]
    );
    assert!(sector_members(&z, &vars, SectorRule::Norm, 0b10, 2.5)
        .unwrap()
        .is_empty());
    let sup = max_inhabited_threshold(&z, &vars, SectorRule::EveryCoordinate).unwrap();
    assert_eq!(sup, vec![Some(0.1), Some(0.5), Some(1.0), Some(1.0)]);
    // Variable order matters: bit i is vars[i].
    assert_eq!(sector_of_points(&z, &[2, 0]).unwrap(), vec![3, 1, 2, 0, 0]);
}

#[test]
fn counts_sum_and_never_increase_with_threshold() {
    let z = randn(3000, 12, 1);
    let vars = [3, 7, 1, 10, 0];
    let grid: Vec<f32> = (0..40).map(|i| i as f32 * 0.1).collect();
    for rule in [SectorRule::Norm, SectorRule::EveryCoordinate] {
        let curve = occupancy_curve(&z, &vars, rule, &grid).unwrap();
        assert_eq!(curve.len(), grid.len());
        assert!(curve.iter().all(|c| c.len() == 32));
        // At th = 0 every point except exact zeros is counted.
        assert_eq!(curve[0].iter().sum::<usize>(), 3000);
        for pair in curve.windows(2) {
            for (s, (after, before)) in pair[1].iter().zip(&pair[0]).enumerate() {
                assert!(after <= before, "{rule}: sector {s} grew");
            }
        }
        // The supremum threshold empties each sector exactly there.
        let sup = max_inhabited_threshold(&z, &vars, rule).unwrap();
        for (s, t) in sup.iter().enumerate() {
            let t = t.unwrap();
            let below = sector_counts(&z, &vars, rule, t - 1e-4).unwrap();
            let at = sector_counts(&z, &vars, rule, t).unwrap();
            assert!(below[s] >= 1 && at[s] == 0);
        }
    }
    // The every-coordinate rule is stricter than the norm rule.
    let norm = sector_counts(&z, &vars, SectorRule::Norm, 0.5).unwrap();
    let every = sector_counts(&z, &vars, SectorRule::EveryCoordinate, 0.5).unwrap();
    assert!(norm.iter().zip(&every).all(|(n, e)| e <= n));
}

#[test]
fn bad_sector_arguments_are_errors() {
    let z = hand_points();
    assert!(matches!(
        sector_of_points(&z, &[0, 3]),
        Err(LatentError::Shape(_))
    ));
    assert!(matches!(
        sector_of_points(&z, &[0, 0]),
        Err(LatentError::InvalidArgument(_))
    ));
    assert!(matches!(
        sector_of_points(&z, &[]),
        Err(LatentError::InvalidArgument(_))
    ));
    assert!(sector_counts(&z, &[0], SectorRule::Norm, f32::NAN).is_err());
    assert!(sector_members(&z, &[0, 2], SectorRule::Norm, 4, 0.0).is_err());
    let mut bad = z.clone();
    bad[(1, 2)] = f32::NAN;
    assert!(matches!(
        sector_counts(&bad, &[0, 2], SectorRule::Norm, 0.0),
        Err(LatentError::NonFinite { row: 1, col: 2, .. })
    ));
}

/// `n` tiny images with random pixels, ids `img{i}`.
fn tiny_dataset(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Dataset {
        id: format!("test:random:{n}"),
        sample_ids: (0..n).map(|i| format!("img{i}")).collect(),
        splits: vec![Split::Train; n],
        pixels: (0..n * IMAGE_LEN)
            .map(|_| rng.random::<u8>())
            .collect::<Vec<u8>>()
            .into(),
        info: Default::default(),
        skipped: vec![],
    }
}

#[test]
fn sector_support_set_properties() {
    let z = randn(2000, 10, 2);
    let vars = [4, 0, 9, 2, 7, 1, 5];
    for rule in [SectorRule::Norm, SectorRule::EveryCoordinate] {
        let opts = SectorSupportOptions {
            rule,
            ..Default::default()
        };
        let sel = select_sector_rows(&z, &vars, &opts).unwrap();
        assert_eq!(sel.rows.len(), 150);
        assert_eq!(
            sel.rows.iter().collect::<HashSet<_>>().len(),
            150,
            "duplicates"
        );
        let sectors = sector_of_points(&z, &vars).unwrap();
        let inhabited: HashSet<u32> = sectors.iter().copied().collect();
        assert_eq!(sel.num_sector_picks, inhabited.len());
        let picked: HashSet<u32> = sel.rows[..sel.num_sector_picks]
            .iter()
            .map(|&r| sectors[r])
            .collect();
        assert_eq!(picked, inhabited, "every inhabited sector is represented");
        // Each sector pick is extreme: its measure exceeds its sector's grid threshold, which
        // is within one step of the sector's largest measure.
        let measures = sector_measures(&z, &vars, rule).unwrap();
        let sup = max_inhabited_threshold(&z, &vars, rule).unwrap();
        for &r in &sel.rows[..sel.num_sector_picks] {
            let s = sectors[r] as usize;
            let th = sel.sector_thresholds[s].unwrap();
            assert!(measures[r] > th && th >= sup[s].unwrap() - opts.th_step - 1e-6);
        }
        // Seeded determinism.
        assert_eq!(select_sector_rows(&z, &vars, &opts).unwrap(), sel);
        let other =
            select_sector_rows(&z, &vars, &SectorSupportOptions { seed: 7, ..opts }).unwrap();
        assert_ne!(other.rows, sel.rows);
    }
}

#[test]
fn fill_rule_is_round_robin_by_measure() {
    // One selected variable: sector 1 (positive) has 5 points, sector 0 has 2.
    let values = [3.0, 2.0, 1.0, 4.0, 5.0, -1.0, -2.0];
    let z = DMatrix::from_column_slice(7, 1, &values);
    let opts = SectorSupportOptions {
        size: 6,
        th_step: 1e-3,
        ..Default::default()
    };
    let sel = select_sector_rows(&z, &[0], &opts).unwrap();
    // Extremes first (sector 0: row 6, sector 1: row 4), then sector 0's next (row 5), then
    // sector 1 by decreasing measure (rows 3, 0, 1) once sector 0 is exhausted.
    assert_eq!(sel.rows, vec![6, 4, 5, 3, 0, 1]);
    assert_eq!(sel.num_sector_picks, 2);
}

#[test]
fn support_set_errors() {
    let z = randn(300, 8, 3);
    let vars = [0, 1, 2, 3, 4, 5, 6, 7];
    let e = select_sector_rows(&z, &vars, &SectorSupportOptions::default()).unwrap_err();
    assert!(matches!(e, LatentError::InvalidArgument(_)), "{e}"); // 2^8 = 256 > 150
    let z = z.rows(0, 100).clone_owned();
    let e = select_sector_rows(&z, &[0, 1], &SectorSupportOptions::default()).unwrap_err();
    assert!(matches!(e, LatentError::NotEnoughPoints(_)), "{e}"); // 150 > 100 points
    let opts = SectorSupportOptions {
        size: 10,
        th_step: 0.0,
        ..Default::default()
    };
    assert!(select_sector_rows(&z, &[0, 1], &opts).is_err());
    let ds = tiny_dataset(10, 1);
    assert!(random_support_set(&ds, &[0, 1, 2], 5, 0).is_err());
    assert!(random_support_set(&ds, &[0, 1, 99], 2, 0).is_err());
}

#[test]
fn baselines_have_the_requested_size_and_are_seeded() {
    let ds = tiny_dataset(60, 4);
    let indices: Vec<usize> = (10..60).collect();
    let a = random_support_set(&ds, &indices, 20, 1).unwrap();
    assert_eq!(a.len(), 20);
    assert_eq!(a.indices.iter().collect::<HashSet<_>>().len(), 20);
    assert!(a.indices.iter().all(|i| (10..60).contains(i)));
    assert_eq!(a.method.kind, SupportKind::Random);
    assert_eq!(random_support_set(&ds, &indices, 20, 1).unwrap(), a);
    assert_ne!(
        random_support_set(&ds, &indices, 20, 2).unwrap().indices,
        a.indices
    );
    let z = randn(50, 6, 5);
    let rows = farthest_point_rows(&z, 12, 3).unwrap();
    assert_eq!(rows.iter().collect::<HashSet<_>>().len(), 12);
    // The second pick is the point farthest from the first.
    let dist = |i: usize, j: usize| (z.row(i) - z.row(j)).norm();
    let far = (0..50)
        .max_by(|&i, &j| dist(rows[0], i).total_cmp(&dist(rows[0], j)))
        .unwrap();
    assert_eq!(rows[1], far);
    assert_eq!(farthest_point_rows(&z, 12, 3).unwrap(), rows);
    let set = farthest_point_support_set(&ds, &indices, &z, 12, 3, "m").unwrap();
    assert_eq!(
        set.indices,
        rows.iter().map(|&r| indices[r]).collect::<Vec<_>>()
    );
    assert_eq!(set.sample_ids[0], format!("img{}", set.indices[0]));
    // All 50 points (identical codes allowed) can be taken without duplicates.
    let same = DMatrix::<f32>::zeros(50, 3);
    assert_eq!(
        farthest_point_rows(&same, 50, 0)
            .unwrap()
            .iter()
            .collect::<HashSet<_>>()
            .len(),
        50
    );
}

#[test]
fn support_set_json_round_trip_and_missing_id() {
    let ds = tiny_dataset(300, 6);
    let indices: Vec<usize> = (0..300).collect();
    let z = randn(300, 5, 7);
    let opts = SectorSupportOptions {
        size: 40,
        ..Default::default()
    };
    let set = sector_support_set(&ds, &indices, &z, &[1, 3, 0], &opts, "vae-a").unwrap();
    assert_eq!(set.len(), 40);
    assert_eq!(set.method.model.as_deref(), Some("vae-a"));
    assert_eq!(set.method.selected_vars, vec![1, 3, 0]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("support.json");
    set.save(&path).unwrap();
    assert_eq!(SupportSet::load(&path, &ds).unwrap(), set);
    // A dataset in another order: indices are re-resolved from the ids.
    let mut reordered = ds.clone();
    reordered.sample_ids.reverse();
    let back = SupportSet::load(&path, &reordered).unwrap();
    assert_eq!(
        back.indices,
        set.indices.iter().map(|i| 299 - i).collect::<Vec<_>>()
    );
    // A missing id is an error naming it and the file.
    let mut smaller = ds.clone();
    let missing = set.sample_ids[5].clone();
    let pos = smaller.index_of(&missing).unwrap();
    smaller.sample_ids[pos] = "renamed".into();
    let e = SupportSet::load(&path, &smaller).unwrap_err();
    assert!(matches!(e, LatentError::MissingSample { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{missing:?}")) && msg.ends_with("support.json"),
        "{msg}"
    );
    std::fs::write(&path, "{}").unwrap();
    assert!(matches!(
        SupportSet::read(&path),
        Err(LatentError::Format { .. })
    ));
}

#[test]
fn spread_check_finds_extreme_images_further_apart() {
    // Images 0..4 are black or white (extreme), the rest mid-grey with noise.
    let mut ds = tiny_dataset(40, 8);
    for i in 0..40 {
        let img = &mut ds.pixels.as_mut_slice().unwrap()[i * IMAGE_LEN..(i + 1) * IMAGE_LEN];
        for (k, p) in img.iter_mut().enumerate() {
            *p = match i {
                0 | 2 => 0,
                1 | 3 => 255,
                _ => 100 + ((k * 7 + i * 13) % 50) as u8,
            };
        }
    }
    let check = spread_check(&ds, &[0, 1, 2, 3], 0).unwrap();
    assert_eq!(check.num_support_pairs, 6);
    assert_eq!(check.num_random_pairs, 6);
    assert!((check.support_mean_pair_mse - 4.0 / 6.0).abs() < 1e-9);
    assert!(check.random_mean_pair_mse < check.support_mean_pair_mse);
    assert_eq!(spread_check(&ds, &[0, 1, 2, 3], 0).unwrap(), check);
    assert!(spread_check(&ds, &[0], 0).is_err());
    assert!(spread_check(&ds, &[0, 400], 0).is_err());
}
