//! Image folders: discovery, bad images, crops, splits.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::pnm::{PnmEncoder, PnmSubtype, SampleEncoding};
use image::{ExtendedColorType, GrayImage, ImageEncoder, Rgb, RgbImage};
use latent_atlas::data::{
    hash_split, load_folder, preprocess_file, Crop, DataError, FolderOptions, OnBadImage, Split,
    IMAGE_LEN, IMAGE_SIZE,
};

fn write_jpeg(path: &Path, image: &RgbImage) {
    let file = std::fs::File::create(path).unwrap();
    JpegEncoder::new_with_quality(file, 95)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
}

fn write_pgm(path: &Path, image: &GrayImage) {
    let file = std::fs::File::create(path).unwrap();
    PnmEncoder::new(file)
        .with_subtype(PnmSubtype::Graymap(SampleEncoding::Binary))
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::L8,
        )
        .unwrap();
}

/// 3 good images of different sizes and formats, one corrupt .jpg, one text file.
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    RgbImage::from_fn(80, 60, |x, y| Rgb([x as u8 * 3, y as u8 * 4, 100]))
        .save(root.join("a.png"))
        .unwrap();
    write_jpeg(
        &root.join("sub/b.JPG"),
        &RgbImage::from_fn(100, 120, |x, y| Rgb([200, (x + y) as u8, 50])),
    );
    write_pgm(
        &root.join("c.pgm"),
        &GrayImage::from_fn(50, 50, |x, _| image::Luma([x as u8 * 5])),
    );
    let noise: Vec<u8> = (0..500u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("bad.jpg"), noise).unwrap();
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    dir
}

#[test]
fn skip_keeps_good_images_and_records_the_bad_one() {
    let dir = fixture();
    let calls = AtomicUsize::new(0);
    let last_total = AtomicUsize::new(0);
    let progress = |_done: usize, total: usize| {
        calls.fetch_add(1, Ordering::Relaxed);
        last_total.store(total, Ordering::Relaxed);
    };
    let opts = FolderOptions::default();
    let ds = load_folder(dir.path(), &opts, Some(&progress)).unwrap();
    ds.validate().unwrap();
    assert_eq!(ds.sample_ids, vec!["a.png", "c.pgm", "sub/b.JPG"]);
    assert_eq!(ds.pixels.len(), 3 * IMAGE_LEN);
    assert_eq!(ds.skipped.len(), 1);
    let bad = dir.path().join("bad.jpg");
    assert_eq!(ds.skipped[0].path, bad);
    assert!(ds.skipped[0].reason.contains(&bad.display().to_string()));
    assert_eq!(last_total.load(Ordering::Relaxed), 4);
    assert_eq!(calls.load(Ordering::Relaxed), 5);
    assert!(
        ds.id.starts_with("folder:") && ds.id.contains(":center"),
        "{}",
        ds.id
    );
    // The grayscale image is replicated to three equal channels.
    let c = ds.image_u8(1);
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    assert_eq!(c[..plane], c[plane..2 * plane]);
    // The JPEG is mostly red.
    let b = ds.image_u8(2);
    assert!(b[..plane].iter().all(|&r| r > 180));
    for (i, id) in ds.sample_ids.iter().enumerate() {
        assert_eq!(ds.splits[i], hash_split(id, opts.test_fraction));
    }
}

#[test]
fn reject_names_the_corrupt_file() {
    let dir = fixture();
    let opts = FolderOptions {
        on_bad_image: OnBadImage::Reject,
        ..FolderOptions::default()
    };
    let err = load_folder(dir.path(), &opts, None).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.ends_with(&dir.path().join("bad.jpg").display().to_string()),
        "{message}"
    );
}

#[test]
fn limit_takes_the_first_files() {
    let dir = fixture();
    let opts = FolderOptions {
        limit: Some(2),
        ..FolderOptions::default()
    };
    let ds = load_folder(dir.path(), &opts, None).unwrap();
    assert_eq!(ds.sample_ids, vec!["a.png"]);
    assert_eq!(ds.skipped.len(), 1);
    assert!(ds.id.ends_with(":first=2"), "{}", ds.id);
}

#[test]
fn empty_and_all_bad_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.md"), "x").unwrap();
    let err = load_folder(dir.path(), &FolderOptions::default(), None).unwrap_err();
    assert!(matches!(err, DataError::NoImages { .. }), "{err:?}");
    assert!(err.to_string().ends_with(&dir.path().display().to_string()));

    std::fs::write(dir.path().join("x.png"), b"garbage").unwrap();
    let err = load_folder(dir.path(), &FolderOptions::default(), None).unwrap_err();
    assert!(
        matches!(err, DataError::AllImagesBad { count: 1, .. }),
        "{err:?}"
    );

    let missing = dir.path().join("nope");
    let err = load_folder(&missing, &FolderOptions::default(), None).unwrap_err();
    assert!(
        err.to_string().ends_with(&missing.display().to_string()),
        "{err}"
    );

    let opts = FolderOptions {
        test_fraction: 1.5,
        ..FolderOptions::default()
    };
    assert!(load_folder(dir.path(), &opts, None).is_err());
}

#[test]
fn box_crop_keeps_exactly_the_box() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("box.png");
    let inside = |x: u32, y: u32| (10..50).contains(&x) && (20..60).contains(&y);
    RgbImage::from_fn(100, 80, |x, y| {
        if inside(x, y) {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
    .save(&path)
    .unwrap();
    let chw = preprocess_file(
        &path,
        Crop::Box {
            x: 10,
            y: 20,
            w: 40,
            h: 40,
        },
    )
    .unwrap();
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    assert!(chw[..plane].iter().all(|&v| v == 255));
    assert!(chw[plane..].iter().all(|&v| v == 0));
    // One pixel to the left takes in some blue.
    let shifted = preprocess_file(
        &path,
        Crop::Box {
            x: 9,
            y: 20,
            w: 40,
            h: 40,
        },
    )
    .unwrap();
    assert!(shifted[2 * plane] > 100, "left column should be blue-ish");

    let err = preprocess_file(
        &path,
        Crop::Box {
            x: 70,
            y: 0,
            w: 40,
            h: 40,
        },
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("100x80"), "{message}");
    assert!(message.ends_with(&path.display().to_string()), "{message}");
    assert!(preprocess_file(
        &path,
        Crop::Box {
            x: 0,
            y: 0,
            w: 0,
            h: 10
        }
    )
    .is_err());
    assert!(preprocess_file(
        &path,
        Crop::Box {
            x: u32::MAX,
            y: 0,
            w: 2,
            h: 2
        }
    )
    .is_err());
}

#[test]
fn center_crop_takes_the_middle_square_and_format_comes_from_content() {
    let dir = tempfile::tempdir().unwrap();
    // A PNG with a .jpg name: decoded by content.
    let path = dir.path().join("wide.jpg");
    RgbImage::from_fn(120, 80, |x, _| {
        if (20..100).contains(&x) {
            Rgb([0, 255, 0])
        } else {
            Rgb([0, 0, 0])
        }
    })
    .save_with_format(&path, image::ImageFormat::Png)
    .unwrap();
    let chw = preprocess_file(&path, Crop::Center).unwrap();
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    assert!(chw[plane..2 * plane].iter().all(|&v| v == 255));
    assert!(chw[..plane].iter().all(|&v| v == 0));
}

#[test]
fn hash_split_is_stable_and_honours_the_fraction() {
    assert_eq!(hash_split("a.png", 0.3), hash_split("a.png", 0.3));
    assert_eq!(hash_split("a.png", 0.0), Split::Train);
    assert_eq!(hash_split("a.png", 1.0), Split::Test);
    assert_eq!(hash_split("a.png", f64::NAN), Split::Train);
    let n = 10_000;
    let test = (0..n)
        .filter(|i| hash_split(&format!("img{i}.png"), 0.2) == Split::Test)
        .count();
    assert!((1800..2200).contains(&test), "{test}");
    // Monotone in the fraction: a test sample stays test for larger fractions.
    for i in 0..200 {
        let id = format!("{i}");
        if hash_split(&id, 0.1) == Split::Test {
            assert_eq!(hash_split(&id, 0.5), Split::Test);
        }
    }
}
