//! Bounded-memory datasets: pixels read on demand from a file behave exactly like pixels in
//! memory (loaders, cache round trips, batches, encodings), and damaged files fail clearly.

use std::path::Path;

use candle_core::Device;
use image::{Rgb, RgbImage};
use latent_atlas::data::pixels::{PixelStorage, MAX_IN_MEMORY_ENV};
use latent_atlas::data::{
    load_folder_with, synthfaces, DataError, Dataset, FolderOptions, OnBadImage, PixelSink, Pixels,
    SampleInfo, Split, IMAGE_LEN,
};
use latent_atlas::latent::encodings::{encode_dataset, load, save};
use latent_atlas::model::{Family, Model, ModelConfig};
use latent_atlas::progress::{Cancel, NoProgress};

/// A dataset of `n` distinct images with identities, attributes and latents, in memory.
fn memory_dataset(n: usize) -> Dataset {
    Dataset {
        id: format!("stream:n={n}"),
        sample_ids: (0..n).map(|i| format!("img{i:04}")).collect(),
        splits: (0..n)
            .map(|i| [Split::Train, Split::Valid, Split::Test][i % 3])
            .collect(),
        pixels: (0..n * IMAGE_LEN)
            .map(|i| ((i * 31 + i / IMAGE_LEN * 97) % 253) as u8)
            .collect::<Vec<u8>>()
            .into(),
        info: SampleInfo {
            identity: Some((0..n as u32).map(|i| i % 7).collect()),
            attribute_names: vec!["Smiling".to_string()],
            attributes: Some((0..n).map(|i| if i % 2 == 0 { 1 } else { -1 }).collect()),
            generating_latent_dim: 2,
            generating_latents: Some((0..2 * n).map(|i| i as f32 * 0.25 - 3.0).collect()),
        },
        skipped: Vec::new(),
    }
}

/// Files directly in `dir` (names), sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts that `a` and `b` have the same pixels through every accessor.
fn assert_same_pixels(a: &Dataset, b: &Dataset) {
    assert_eq!(a.len(), b.len());
    assert!(a.pixels == b.pixels);
    for i in 0..a.len() {
        assert_eq!(a.image_u8(i), b.image_u8(i), "image {i}");
    }
    let n = a.len();
    let picks: Vec<usize> = (0..n).rev().step_by(3).chain([0, 1, 2, n - 1, 0]).collect();
    let x = a.batch(&picks, &Device::Cpu).unwrap();
    let y = b.batch(&picks, &Device::Cpu).unwrap();
    let (x, y): (Vec<f32>, Vec<f32>) = (
        x.flatten_all().unwrap().to_vec1().unwrap(),
        y.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert_eq!(x, y);
    assert_eq!(a.image_mse(0, n - 1), b.image_mse(0, n - 1));
}

#[test]
fn cache_round_trips_lazily_and_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.ladata");
    let ds = memory_dataset(30);
    ds.save_cache(&path).unwrap();

    let eager = Dataset::load_cache_with(&path, &PixelStorage::in_memory()).unwrap();
    assert!(eager.pixels.is_in_memory());
    assert!(eager == ds);
    // Just under the size: read on demand, with every field identical.
    let limit = PixelStorage {
        max_in_memory_bytes: (30 * IMAGE_LEN - 1) as u64,
        spill_dir: None,
    };
    let lazy = Dataset::load_cache_with(&path, &limit).unwrap();
    assert!(!lazy.pixels.is_in_memory());
    assert_eq!(lazy.pixels.file_path().as_deref(), Some(path.as_path()));
    assert!(lazy == ds);
    assert_eq!(lazy.info, ds.info);
    assert_eq!(lazy.splits, ds.splits);
    assert_same_pixels(&lazy, &ds);
    lazy.verify_pixels().unwrap();
    assert_eq!(lazy.image_u8(30).len(), 0);
    assert!(matches!(
        lazy.batch(&[3, 30], &Device::Cpu),
        Err(DataError::IndexOutOfRange { index: 30, len: 30 })
    ));

    // A lazily opened dataset saved elsewhere is copied and still reads back identically.
    let copy = dir.path().join("copy.ladata");
    lazy.save_cache(&copy).unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&path).unwrap());
    // Saving over the file it reads from works too (the open handle keeps the old data).
    lazy.save_cache(&path).unwrap();
    assert!(Dataset::load_cache_with(&path, &PixelStorage::on_disk(None)).unwrap() == ds);
    assert_eq!(files_in(dir.path()), ["copy.ladata", "ds.ladata"]);
}

#[test]
fn sink_spills_mid_stream_and_saving_renames_the_pending_file() {
    let dir = tempfile::tempdir().unwrap();
    let reference = memory_dataset(12);
    let bytes = reference.pixels.as_slice().unwrap().to_vec();
    // Starts in memory (nothing expected), spills to a file after 5 images.
    let storage = PixelStorage {
        max_in_memory_bytes: (5 * IMAGE_LEN) as u64,
        spill_dir: Some(dir.path().to_path_buf()),
    };
    let mut sink = PixelSink::new(&storage, 0).unwrap();
    for chunk in bytes.chunks(3 * IMAGE_LEN) {
        sink.push(chunk).unwrap();
    }
    assert!(sink.push(&bytes[..IMAGE_LEN - 1]).is_err());
    assert_eq!(sink.num_images(), 12);
    let pixels = sink.finish().unwrap();
    let Pixels::File(file) = &pixels else {
        panic!("expected a pixel file, got {pixels:?}")
    };
    assert!(file.is_pending());
    let mut ds = reference.clone();
    ds.pixels = pixels.clone();
    assert_same_pixels(&ds, &reference);
    assert_eq!(files_in(dir.path()).len(), 1, "one pending pixel file");

    // Saved in the same folder: the pending file becomes the cache file (no copy).
    let path = dir.path().join("built.ladata");
    ds.save_cache(&path).unwrap();
    assert!(!file.is_pending());
    assert_eq!(ds.pixels.file_path().as_deref(), Some(path.as_path()));
    assert_eq!(files_in(dir.path()), ["built.ladata"]);
    let back = Dataset::load_cache_with(&path, &PixelStorage::on_disk(None)).unwrap();
    assert!(back == reference);
    back.verify_pixels().unwrap();
    assert!(Dataset::load_cache_with(&path, &PixelStorage::in_memory()).unwrap() == reference);

    // A pending file in another folder is copied into the cache folder and removed on drop.
    let other = tempfile::tempdir().unwrap();
    let storage = PixelStorage::on_disk(Some(other.path().to_path_buf()));
    let mut sink = PixelSink::new(&storage, 12).unwrap();
    sink.push(&bytes).unwrap();
    let mut ds = reference.clone();
    ds.pixels = sink.finish().unwrap();
    let path = dir.path().join("copied.ladata");
    ds.save_cache(&path).unwrap();
    assert!(Dataset::load_cache_with(&path, &PixelStorage::in_memory()).unwrap() == reference);
    assert_eq!(files_in(other.path()).len(), 1);
    drop(ds);
    assert!(
        files_in(other.path()).is_empty(),
        "pending file not removed"
    );
}

#[test]
fn damaged_lazy_caches_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.ladata");
    memory_dataset(8).save_cache(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let shown = path.display().to_string();
    let lazy = PixelStorage::on_disk(None);
    let open_err = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let err = Dataset::load_cache_with(&path, &lazy).unwrap_err();
        assert!(matches!(err, DataError::Cache { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.ends_with(&shown), "{message}");
        message
    };
    // Cut inside the pixels, the header and the per-sample blocks.
    for cut in [100, 48 + 3 * IMAGE_LEN, good.len() - 200, good.len() - 1] {
        let message = open_err(&good[..cut]);
        assert!(message.contains("truncated"), "cut at {cut}: {message}");
    }
    let mut bytes = good.clone();
    bytes[good.len() - 3] ^= 1;
    assert!(open_err(&bytes).contains("checksum"));

    // Flipped pixels are not read when a large cache opens; verify_pixels finds them.
    let mut bytes = good.clone();
    bytes[48 + 5 * IMAGE_LEN + 17] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let ds = Dataset::load_cache_with(&path, &lazy).unwrap();
    let message = ds.verify_pixels().unwrap_err().to_string();
    assert!(
        message.contains("checksum") && message.ends_with(&shown),
        "{message}"
    );

    // A file truncated after it was opened: reads fail with the file named, never panic.
    std::fs::write(&path, &good).unwrap();
    let ds = Dataset::load_cache_with(&path, &lazy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(48 + 4 * IMAGE_LEN as u64)
        .unwrap();
    assert_eq!(ds.image_u8(2).len(), IMAGE_LEN);
    let message = ds.batch(&[1, 6], &Device::Cpu).unwrap_err().to_string();
    assert!(
        message.contains("truncated") && message.ends_with(&shown),
        "{message}"
    );
    assert!(ds.image_u8(7).is_empty());
    assert!(ds.try_image_u8(7).is_err());
}

/// Writes `count` PNGs of varied sizes and colours plus one corrupt file at `bad_at`.
fn image_folder(dir: &Path, count: usize, bad_at: usize) {
    for i in 0..count {
        let name = dir.join(format!("f{i:05}.png"));
        if i == bad_at {
            std::fs::write(&name, b"\x89PNG\r\n\x1a\n not really").unwrap();
            continue;
        }
        let (w, h) = (16 + (i % 5) as u32 * 3, 14 + (i % 3) as u32 * 5);
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 9 + i as u32) as u8,
                (y * 7) as u8,
                (i * 13 % 256) as u8,
            ])
        })
        .save(&name)
        .unwrap();
    }
}

#[test]
fn folder_streamed_to_disk_equals_the_in_memory_load() {
    let images = tempfile::tempdir().unwrap();
    // More than one preprocessing chunk (1024 files), the bad file in the second chunk.
    image_folder(images.path(), 1030, 1027);
    let spill = tempfile::tempdir().unwrap();
    let opts = FolderOptions::default();
    let memory = load_folder_with(images.path(), &opts, &PixelStorage::in_memory(), None).unwrap();
    let disk_storage = PixelStorage::on_disk(Some(spill.path().to_path_buf()));
    let disk = load_folder_with(images.path(), &opts, &disk_storage, None).unwrap();
    assert!(memory.pixels.is_in_memory() && !disk.pixels.is_in_memory());
    assert_eq!(disk.len(), 1029);
    assert_eq!(disk.sample_ids, memory.sample_ids);
    assert_eq!(disk.sample_ids[1026], "f01026.png");
    assert_eq!(disk.sample_ids[1027], "f01028.png");
    assert_eq!(disk.skipped, memory.skipped);
    assert_eq!(disk.skipped.len(), 1);
    assert!(disk.skipped[0].path.ends_with("f01027.png"));
    assert!(disk.skipped[0].reason.contains("f01027.png"));
    assert_same_pixels(&disk, &memory);

    let reject = FolderOptions {
        on_bad_image: OnBadImage::Reject,
        ..opts
    };
    let err = load_folder_with(images.path(), &reject, &disk_storage, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("f01027.png"), "{err}");
    drop(disk);
    assert!(
        files_in(spill.path()).is_empty(),
        "pending pixel files left"
    );
}

fn tiny_vae() -> Model {
    let mut cfg = ModelConfig::new("tiny-vae", Family::Vae, 5);
    cfg.base_channels = 4;
    Model::new(cfg, &Device::Cpu, 3, false).unwrap()
}

#[test]
fn encodings_of_a_lazy_dataset_equal_the_in_memory_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.ladata");
    let ds = memory_dataset(23);
    ds.save_cache(&path).unwrap();
    let lazy = Dataset::load_cache_with(&path, &PixelStorage::on_disk(None)).unwrap();
    assert!(!lazy.pixels.is_in_memory());
    let model = tiny_vae();
    let (none, cancel) = (NoProgress, Cancel::new());
    let a = encode_dataset(&model, "h", &ds, 5, &none, &cancel).unwrap();
    let b = encode_dataset(&model, "h", &lazy, 5, &none, &cancel).unwrap();
    let c = encode_dataset(&model, "h", &lazy, 64, &none, &cancel).unwrap();
    assert_eq!(a.codes.shape(), (23, 5));
    assert_eq!(a.codes, b.codes);
    assert_eq!(a.sample_ids, b.sample_ids);
    assert!((&a.codes - &c.codes).abs().max() < 1e-5);
    // The encodings cache streams in and out without changing a bit.
    let codes_path = dir.path().join("codes.lacodes");
    save(&b, &codes_path).unwrap();
    let back = load(&codes_path).unwrap();
    assert_eq!(back.codes, b.codes);
    assert_eq!(back.sample_ids, b.sample_ids);
    let bytes = std::fs::read(&codes_path).unwrap();
    std::fs::write(&codes_path, &bytes[..bytes.len() - 2]).unwrap();
    let err = load(&codes_path).unwrap_err().to_string();
    assert!(err.contains("codes.lacodes"), "{err}");
}

#[test]
fn synthfaces_generated_to_disk_equal_the_in_memory_ones() {
    let Ok(generator) = latent_atlas::zoo::load_model("refdcgan", &Device::Cpu) else {
        panic!("the shipped refdcgan model is missing from assets/models");
    };
    let spill = tempfile::tempdir().unwrap();
    let memory =
        synthfaces::generate_with(&generator, 9, 4, &PixelStorage::in_memory(), None).unwrap();
    let disk_storage = PixelStorage::on_disk(Some(spill.path().to_path_buf()));
    let disk = synthfaces::generate_with(&generator, 9, 4, &disk_storage, None).unwrap();
    assert!(!disk.pixels.is_in_memory());
    assert_eq!(disk.info, memory.info);
    assert_same_pixels(&disk, &memory);
    let path = spill.path().join("synth.ladata");
    disk.save_cache(&path).unwrap();
    assert_eq!(files_in(spill.path()), ["synth.ladata"]);
    assert!(Dataset::load_cache_with(&path, &PixelStorage::in_memory()).unwrap() == memory);
}

#[test]
fn threshold_comes_from_the_environment() {
    // The only test here that touches the variable; the others pass their storage explicitly.
    std::env::set_var(MAX_IN_MEMORY_ENV, "0.5");
    assert_eq!(PixelStorage::from_env().max_in_memory_bytes, 512 * 1024);
    std::env::set_var(MAX_IN_MEMORY_ENV, "lots");
    assert_eq!(
        PixelStorage::from_env(),
        PixelStorage::default(),
        "an unparsable value falls back to the default"
    );
    std::env::remove_var(MAX_IN_MEMORY_ENV);
    assert_eq!(PixelStorage::from_env(), PixelStorage::default());
    assert!(PixelStorage::default().keeps_in_memory(12_000 * IMAGE_LEN as u64));
    assert!(!PixelStorage::default().keeps_in_memory(202_599 * IMAGE_LEN as u64));
}
