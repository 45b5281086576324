//! Dataset cache files, `cached`, `.npy` helpers and dataset invariants.

use std::path::PathBuf;

use latent_atlas::data::cache::cache_file_name;
use latent_atlas::data::npy::{encode_npy_u8, parse_npy_u8, read_npy_u8, write_npy_u8};
use latent_atlas::data::{cached, DataError, Dataset, SampleInfo, SkippedImage, Split, IMAGE_LEN};

fn sample_dataset(n: usize) -> Dataset {
    Dataset {
        id: format!("test:n={n}"),
        sample_ids: (0..n).map(|i| format!("dir/img{i}.png")).collect(),
        splits: (0..n)
            .map(|i| [Split::Train, Split::Valid, Split::Test][i % 3])
            .collect(),
        pixels: (0..n * IMAGE_LEN)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
            .into(),
        info: SampleInfo {
            identity: Some((0..n as u32).collect()),
            attribute_names: vec!["Smiling".to_string(), "Male".to_string()],
            attributes: Some(
                (0..2 * n)
                    .map(|i| if i % 2 == 0 { 1 } else { -1 })
                    .collect(),
            ),
            generating_latent_dim: 3,
            generating_latents: Some(
                (0..3 * n)
                    .map(|i| (i as f32 * 0.1).sin() * 1e-3 + f32::EPSILON)
                    .collect(),
            ),
        },
        skipped: vec![SkippedImage {
            path: PathBuf::from("/data/broken.jpg"),
            reason: "cannot decode image: bad: /data/broken.jpg".to_string(),
        }],
    }
}

#[test]
fn round_trip_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.ladata");
    let ds = sample_dataset(5);
    ds.save_cache(&path).unwrap();
    let loaded = Dataset::load_cache(&path).unwrap();
    assert!(loaded == ds);
    // Overwriting works (atomic rename over an existing file) and leaves no temporary files.
    ds.save_cache(&path).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let empty = sample_dataset(0);
    empty.save_cache(&path).unwrap();
    assert!(Dataset::load_cache(&path).unwrap() == empty);
}

#[test]
fn damaged_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.ladata");
    sample_dataset(4).save_cache(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let shown = path.display().to_string();

    let check = |bytes: &[u8], needle: &str| {
        std::fs::write(&path, bytes).unwrap();
        let err = Dataset::load_cache(&path).unwrap_err();
        assert!(matches!(err, DataError::Cache { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.ends_with(&shown), "{message}");
        assert!(message.contains(needle), "{message} lacks {needle:?}");
    };
    check(&good[..good.len() - 100], "truncated");
    check(&good[..30], "truncated");
    check(&good[..5], "truncated");
    let mut bytes = good.clone();
    bytes[0] = b'X';
    check(&bytes, "magic");
    let mut bytes = good.clone();
    bytes[8] = 99;
    check(&bytes, "version");
    let mut bytes = good.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    check(&bytes, "checksum");
    // Version 2 layout: 48-byte prefix, pixels, JSON header (offset at bytes 32..40), blocks.
    let header_offset = u64::from_le_bytes(good[32..40].try_into().unwrap()) as usize;
    assert_eq!(header_offset, 48 + 4 * IMAGE_LEN);
    let mut bytes = good.clone();
    bytes[header_offset + 5] = b'#';
    check(&bytes, "header");
    let mut bytes = good.clone();
    bytes[48 + 7] ^= 0x55;
    check(&bytes, "pixel checksum");
    let mut bytes = good.clone();
    bytes[24] = 47;
    check(&bytes, "corrupt prefix");
    let mut bytes = good.clone();
    bytes.push(0);
    check(&bytes, "corrupt");

    let missing = dir.path().join("missing.ladata");
    let err = Dataset::load_cache(&missing).unwrap_err().to_string();
    assert!(err.ends_with(&missing.display().to_string()), "{err}");
}

#[test]
fn cached_builds_once_and_rebuilds_a_bad_cache() {
    let dir = tempfile::tempdir().unwrap();
    // The only test in this binary that touches the environment.
    std::env::set_var("LATENT_ATLAS_CACHE", dir.path());
    assert_eq!(latent_atlas::data::cache_dir().unwrap(), dir.path());
    // Pending pixel files of killed builds are removed once a day old, fresh ones are kept.
    let stale = dir.path().join(".latlas-pixels-old.part");
    let fresh = dir.path().join(".latlas-pixels-new.part");
    for file in [&stale, &fresh] {
        std::fs::write(file, b"partial").unwrap();
    }
    let two_days = std::time::Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - two_days)
        .unwrap();
    let id = "test:n=3";
    let mut builds = 0;
    let first = cached(id, || {
        builds += 1;
        Ok(sample_dataset(3))
    })
    .unwrap();
    let second = cached(id, || {
        builds += 1;
        Ok(sample_dataset(3))
    })
    .unwrap();
    assert_eq!(builds, 1);
    assert!(first == second);
    assert!(!stale.exists() && fresh.exists());
    std::fs::remove_file(&fresh).unwrap();

    let file = dir.path().join(cache_file_name(id));
    std::fs::write(&file, b"rubbish").unwrap();
    let third = cached(id, || {
        builds += 1;
        Ok(sample_dataset(3))
    })
    .unwrap();
    assert_eq!(builds, 2);
    assert!(third == first);
    assert!(Dataset::load_cache(&file).is_ok());

    let err = cached("test:fails", || {
        Err(DataError::InvalidOption("boom".to_string()))
    });
    assert!(err.is_err());

    // A built dataset with another id is stored and returned under the cache key.
    let key = "test:key";
    let built = cached(key, || Ok(sample_dataset(2))).unwrap();
    assert_eq!(built.id, key);
    let again = cached(key, || panic!("should come from the cache")).unwrap();
    assert!(again == built);
}

#[test]
fn cache_file_names_are_safe_and_distinct() {
    let a = cache_file_name("folder:/home/me/faces:center:test=0.2");
    let b = cache_file_name("folder:/home/me/faces:center:test=0.3");
    assert_ne!(a, b);
    assert!(
        a.starts_with("folder-home-me-faces-center-test-0-2-"),
        "{a}"
    );
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
        "{a}"
    );
    let long = cache_file_name(&"x/".repeat(500));
    assert!(long.len() < 100);
}

#[test]
fn validate_catches_broken_invariants() {
    let mut ds = sample_dataset(3);
    ds.validate().unwrap();
    ds.sample_ids[2] = ds.sample_ids[0].clone();
    assert!(ds.validate().unwrap_err().to_string().contains("duplicate"));
    let mut ds = sample_dataset(3);
    ds.pixels = vec![0u8; 3 * IMAGE_LEN - 1].into();
    assert!(ds.validate().is_err());
    let mut ds = sample_dataset(3);
    ds.splits.pop();
    assert!(ds.validate().is_err());
    let mut ds = sample_dataset(3);
    ds.info.attributes = Some(vec![1; 5]);
    assert!(ds.validate().is_err());
    let mut ds = sample_dataset(3);
    ds.info.generating_latents = Some(vec![0.0; 8]);
    assert!(ds.validate().is_err());
    let mut ds = sample_dataset(3);
    ds.info.identity = Some(vec![0; 2]);
    assert!(ds.validate().is_err());
}

#[test]
fn npy_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npy");
    let data: Vec<u8> = (0..24).collect();
    write_npy_u8(&path, &[2, 3, 4], &data).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3, 4), }"));
    assert!(header.ends_with('\n'));
    assert_eq!(read_npy_u8(&path).unwrap(), (vec![2, 3, 4], data.clone()));

    let one_d = encode_npy_u8(&[24], &data).unwrap();
    assert_eq!(parse_npy_u8(&one_d).unwrap().0, vec![24]);
    assert!(String::from_utf8_lossy(&one_d).contains("(24,)"));
    assert!(encode_npy_u8(&[5], &data).is_err());
    assert!(write_npy_u8(&path, &[5], &data).is_err());

    assert!(parse_npy_u8(&bytes[..bytes.len() - 1]).is_err());
    assert!(parse_npy_u8(b"hello").is_err());
    let float = replace_bytes(&bytes, b"|u1", b"<f4");
    assert!(parse_npy_u8(&float).unwrap_err().contains("uint8"));
    let fortran = replace_bytes(&bytes, b"False", b"True ");
    assert!(parse_npy_u8(&fortran).unwrap_err().contains("Fortran"));
    let err = read_npy_u8(&dir.path().join("none.npy"))
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("none.npy"), "{err}");
}

/// `bytes` with the first occurrence of `from` replaced by `to` (same length).
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}
