//! CelebA on a tiny fixture tree: files, attributes, partitions, the paper crop, errors.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use latent_atlas::data::{
    load_celeba, paper_support_set, CelebaCrop, CelebaOptions, Dataset, SampleInfo, SkippedImage,
    Split, IMAGE_SIZE, PAPER_SUPPORT_SET,
};

const N: usize = 6;
const OUTSIDE: [u8; 3] = [20, 200, 40];

fn inside_colour(k: usize) -> [u8; 3] {
    [40 + 30 * k as u8, 220 - 25 * k as u8, 120]
}

fn attribute(k: usize, j: usize) -> i8 {
    if (k + j).is_multiple_of(3) {
        1
    } else {
        -1
    }
}

fn name(k: usize) -> String {
    format!("{:06}.jpg", k + 1)
}

fn attr_text(n: usize) -> String {
    let mut text = format!("{n}\n");
    let names: Vec<String> = (0..40).map(|j| format!("Attr_{j}")).collect();
    text.push_str(&names.join(" "));
    text.push('\n');
    for k in 0..n {
        let _ = write!(text, "{}", name(k));
        for j in 0..40 {
            let _ = write!(text, " {:>2}", attribute(k, j));
        }
        text.push('\n');
    }
    text
}

/// A CelebA-shaped tree: 6 JPEGs (178x218) with the paper crop box painted in a per-image
/// colour, the attribute file and the partition file (written in reverse order on purpose).
fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("img_align_celeba");
    std::fs::create_dir(&images).unwrap();
    for k in (0..N).rev() {
        let inside = inside_colour(k);
        let image = RgbImage::from_fn(178, 218, |x, y| {
            if (25..153).contains(&x) && (45..173).contains(&y) {
                Rgb(inside)
            } else {
                Rgb(OUTSIDE)
            }
        });
        let file = std::fs::File::create(images.join(name(k))).unwrap();
        JpegEncoder::new_with_quality(file, 100)
            .write_image(image.as_raw(), 178, 218, ExtendedColorType::Rgb8)
            .unwrap();
    }
    std::fs::write(dir.path().join("list_attr_celeba.txt"), attr_text(N)).unwrap();
    let partition: String = (0..N)
        .map(|k| format!("{} {}\r\n", name(k), k % 3))
        .collect();
    std::fs::write(dir.path().join("list_eval_partition.txt"), partition).unwrap();
    dir
}

#[test]
fn loads_images_attributes_partitions_and_paper_crop() {
    let dir = fixture();
    let ds = load_celeba(dir.path(), &CelebaOptions::default(), None).unwrap();
    ds.validate().unwrap();
    assert_eq!(ds.len(), N);
    assert!(ds.skipped.is_empty());
    assert!(
        ds.id.starts_with("celeba:") && ds.id.ends_with(":first=all:crop=paper"),
        "{}",
        ds.id
    );
    let ids: Vec<String> = (0..N).map(name).collect();
    assert_eq!(ds.sample_ids, ids);
    assert_eq!(ds.info.attribute_names.len(), 40);
    assert_eq!(ds.info.attribute_names[3], "Attr_3");
    let attributes = ds.info.attributes.as_ref().unwrap();
    for k in 0..N {
        for j in 0..40 {
            assert_eq!(
                attributes[k * 40 + j],
                attribute(k, j),
                "image {k} attribute {j}"
            );
        }
        let expected = [Split::Train, Split::Valid, Split::Test][k % 3];
        assert_eq!(ds.splits[k], expected);
    }
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    for k in 0..N {
        let image = ds.image_u8(k);
        for (c, &want) in inside_colour(k).iter().enumerate() {
            let channel = &image[c * plane..(c + 1) * plane];
            let mean = channel.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
            assert!(
                (mean - f64::from(want)).abs() < 3.0,
                "image {k} channel {c} mean {mean}"
            );
            let worst = channel
                .iter()
                .map(|&v| (i16::from(v) - i16::from(want)).abs())
                .max();
            assert!(
                worst.unwrap() <= 6,
                "image {k} channel {c}: worst {worst:?}"
            );
        }
    }
}

#[test]
fn limit_takes_the_first_images() {
    let dir = fixture();
    let opts = CelebaOptions {
        limit: Some(4),
        ..CelebaOptions::default()
    };
    let ds = load_celeba(dir.path(), &opts, None).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.sample_ids[3], "000004.jpg");
    assert_eq!(ds.info.attributes.as_ref().unwrap().len(), 4 * 40);
    assert!(ds.id.ends_with(":first=4:crop=paper"), "{}", ds.id);
}

fn expect_error(dir: &Path, file: &str, needle: &str) {
    let err = load_celeba(dir, &CelebaOptions::default(), None)
        .unwrap_err()
        .to_string();
    let path: PathBuf = dir.join(file);
    assert!(err.ends_with(&path.display().to_string()), "{err}");
    assert!(err.contains(needle), "{err} lacks {needle:?}");
}

#[test]
fn malformed_attribute_file_names_file_and_line() {
    let dir = fixture();
    let attr = dir.path().join("list_attr_celeba.txt");
    let mut lines: Vec<String> = attr_text(N).lines().map(str::to_string).collect();
    lines[4] = lines[4].rsplit_once(' ').unwrap().0.to_string(); // 39 values on line 5
    std::fs::write(&attr, lines.join("\n")).unwrap();
    expect_error(dir.path(), "list_attr_celeba.txt", "at line 5");

    lines = attr_text(N).lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen(" 1", " 7", 1);
    std::fs::write(&attr, lines.join("\n")).unwrap();
    expect_error(dir.path(), "list_attr_celeba.txt", "at line 4");

    std::fs::write(&attr, "six\n").unwrap();
    expect_error(dir.path(), "list_attr_celeba.txt", "at line 1");

    std::fs::write(&attr, attr_text(N).replace("000003.jpg", "999999.jpg")).unwrap();
    expect_error(dir.path(), "list_attr_celeba.txt", "999999.jpg");

    std::fs::write(&attr, attr_text(N).replacen(&N.to_string(), "7", 1)).unwrap();
    expect_error(dir.path(), "list_attr_celeba.txt", "at line 1");

    std::fs::write(
        &attr,
        attr_text(N - 1).replacen(&(N - 1).to_string(), &N.to_string(), 1),
    )
    .unwrap();
    let err = load_celeba(dir.path(), &CelebaOptions::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at line 1") || err.contains("000006.jpg"),
        "{err}"
    );

    std::fs::remove_file(&attr).unwrap();
    expect_error(dir.path(), "list_attr_celeba.txt", "cannot read");
}

#[test]
fn malformed_partition_file_names_file_and_line() {
    let dir = fixture();
    let partition = dir.path().join("list_eval_partition.txt");
    std::fs::write(&partition, "000001.jpg 0\n000002.jpg 5\n").unwrap();
    expect_error(dir.path(), "list_eval_partition.txt", "at line 2");
    std::fs::write(&partition, "000001.jpg 0\nnope.jpg 1\n").unwrap();
    expect_error(dir.path(), "list_eval_partition.txt", "at line 2");
    std::fs::write(&partition, "000001.jpg 0 1\n").unwrap();
    expect_error(dir.path(), "list_eval_partition.txt", "at line 1");
    std::fs::write(&partition, "000001.jpg 0\n").unwrap();
    expect_error(dir.path(), "list_eval_partition.txt", "000002.jpg");
}

#[test]
fn hq_crop_on_small_images_says_why() {
    let dir = fixture();
    let opts = CelebaOptions {
        crop: CelebaCrop::Hq,
        ..CelebaOptions::default()
    };
    let err = load_celeba(dir.path(), &opts, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("178x218") && err.contains("880"), "{err}");
}

#[test]
fn missing_image_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_celeba(dir.path(), &CelebaOptions::default(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(&dir.path().join("img_align_celeba").display().to_string()),
        "{err}"
    );
}

fn fake_celeba(n: usize, skipped: &[usize]) -> Dataset {
    let ids: Vec<String> = (0..n).filter(|k| !skipped.contains(k)).map(name).collect();
    Dataset {
        id: "celeba:fake".to_string(),
        splits: vec![Split::Train; ids.len()],
        sample_ids: ids,
        pixels: Vec::new().into(),
        info: SampleInfo::default(),
        skipped: skipped
            .iter()
            .map(|&k| SkippedImage {
                path: PathBuf::from("/celeba/img_align_celeba").join(name(k)),
                reason: "bad".to_string(),
            })
            .collect(),
    }
}

#[test]
fn paper_support_set_maps_positions() {
    let err = paper_support_set(&fake_celeba(N, &[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("70000") && err.contains(" 6 "), "{err}");

    let ds = fake_celeba(70_000, &[]);
    assert_eq!(paper_support_set(&ds).unwrap(), PAPER_SUPPORT_SET.to_vec());
    assert_eq!(ds.sample_ids[PAPER_SUPPORT_SET[0]], "000031.jpg");

    // A skipped image before the first support image shifts every index by one.
    let ds = fake_celeba(70_001, &[3]);
    let expected: Vec<usize> = PAPER_SUPPORT_SET.iter().map(|p| p - 1).collect();
    assert_eq!(paper_support_set(&ds).unwrap(), expected);

    let ds = fake_celeba(70_001, &[30]);
    let err = paper_support_set(&ds).unwrap_err().to_string();
    assert!(err.contains("000031.jpg"), "{err}");
}
