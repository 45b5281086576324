//! `probe` through the real binary on a CelebA-shaped tree (the path a user with CelebA on
//! disk takes): the shipped VAEs encode the crops, ridge classifiers predict the 40 attributes,
//! and the target's probe is applied to mapped source codes.

use std::fmt::Write as _;
use std::process::Command;

use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

const N: usize = 150;

fn name(k: usize) -> String {
    format!("{:06}.jpg", k + 1)
}

/// Brightness of image `k`'s face box: a pseudo-random level in 30..=230.
fn level(k: usize) -> u8 {
    (30 + (k * 83) % 201) as u8
}

/// Attribute 0 ("Bright") is planted: +1 when the face box is bright. The others follow the
/// image index and carry nothing a code could see.
fn attribute(k: usize, j: usize) -> i8 {
    let on = if j == 0 {
        level(k) > 130
    } else {
        (k * 7 + j * 13) % 5 < 2
    };
    if on {
        1
    } else {
        -1
    }
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("img_align_celeba");
    std::fs::create_dir(&images).unwrap();
    for k in 0..N {
        let v = level(k);
        let tint = (k * 29 % 60) as u8;
        let image = RgbImage::from_fn(178, 218, |x, y| {
            if (25..153).contains(&x) && (45..173).contains(&y) {
                let dx = x as f32 - 89.0;
                let shade = (dx.abs() * 0.3) as u8;
                Rgb([
                    v.saturating_sub(shade),
                    v.saturating_sub(tint / 2),
                    v.saturating_sub(tint),
                ])
            } else {
                Rgb([90, 90, 90])
            }
        });
        let file = std::fs::File::create(images.join(name(k))).unwrap();
        JpegEncoder::new_with_quality(file, 95)
            .write_image(image.as_raw(), 178, 218, ExtendedColorType::Rgb8)
            .unwrap();
    }
    let mut attrs = format!("{N}\n");
    let names: Vec<String> = std::iter::once("Bright".to_string())
        .chain((1..40).map(|j| format!("Attr_{j}")))
        .collect();
    attrs.push_str(&names.join(" "));
    attrs.push('\n');
    for k in 0..N {
        let _ = write!(attrs, "{}", name(k));
        for j in 0..40 {
            let _ = write!(attrs, " {:>2}", attribute(k, j));
        }
        attrs.push('\n');
    }
    std::fs::write(dir.path().join("list_attr_celeba.txt"), attrs).unwrap();
    let partition: String = (0..N)
        .map(|k| format!("{} {}\n", name(k), [0, 0, 0, 1, 2][k % 5]))
        .collect();
    std::fs::write(dir.path().join("list_eval_partition.txt"), partition).unwrap();
    dir
}

#[test]
fn probe_predicts_celeba_attributes_before_and_after_the_map() {
    let root = fixture();
    let cache = tempfile::tempdir().unwrap();
    let spec = format!("celeba:{}", root.path().display());
    let out = Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
        .args([
            "probe",
            "--models",
            "vae-a,vae-b",
            "--data",
            &spec,
            "--fit-on",
            "full",
            "--json",
        ])
        .env("LATENT_ATLAS_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["task"], "attributes");
    assert_eq!(j["outputs"].as_array().unwrap().len(), 40);
    assert_eq!(j["outputs"][0], "Bright");
    let majority = j["majority_baseline"].as_f64().unwrap();
    assert!((0.5..1.0).contains(&majority), "{majority}");
    for m in j["models"].as_array().unwrap() {
        let per = m["per_output"].as_array().unwrap();
        assert_eq!(per.len(), 40);
        let bright = per[0].as_f64().unwrap();
        assert!(
            bright >= 0.9,
            "{}: planted attribute accuracy {bright}",
            m["model"]
        );
    }
    let pairs = j["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    for p in pairs {
        let agreement = p["agreement"].as_f64().unwrap();
        assert!(agreement > 0.8, "{p}");
        let bright = p["per_output"][0].as_f64().unwrap();
        assert!(bright >= 0.85, "planted attribute after the map: {p}");
    }
}

#[test]
fn probe_on_data_without_ground_truth_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for k in 0..6u8 {
        RgbImage::from_pixel(64, 64, Rgb([k * 30, 80, 120]))
            .save(dir.path().join(format!("{k}.png")))
            .unwrap();
    }
    let spec = format!("folder:{}", dir.path().display());
    let out = Command::new(env!("CARGO_BIN_EXE_latent-atlas"))
        .args(["probe", "--models", "vae-a,vae-b", "--data", &spec])
        .env("LATENT_ATLAS_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ground truth"), "{err}");
}
