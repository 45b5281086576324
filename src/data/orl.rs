//! The ORL / AT&T Database of Faces: 400 grayscale photos of 40 people, 10 each.
//!
//! The raw database (`s1 … s40/1.pgm … 10.pgm`, 92x112 8-bit PGM) is preprocessed once by
//! [`import_orl_dir`] (centre square crop 92x92 at y offset 10, bilinear resize to 64x64) and
//! shipped as `assets/orl/orl_64x64.npy` (uint8, shape (400, 64, 64)), which is embedded in the
//! binary; [`orl`] loads it. See `assets/orl/PROVENANCE.md` for the source and the
//! acknowledgement the database asks for: "The ORL Database of Faces, AT&T Laboratories
//! Cambridge".
//!
//! Sample order is s1/1 … s1/10, s2/1 … s40/10 (numeric, not lexical); sample ids are
//! `"s{subject}/{image}.pgm"`; the identity label is `subject - 1` (0..40). Split: per subject,
//! images 9 and 10 are [`Split::Test`], images 1 to 8 [`Split::Train`] (320 train, 80 test).

use std::path::{Path, PathBuf};

use super::image_prep::{preprocess_files, Crop};
use super::npy::{parse_npy_u8, write_npy_u8};
use super::{
    DataError, Dataset, OnBadImage, PixelStorage, Pixels, SampleInfo, Split, IMAGE_CHANNELS,
    IMAGE_LEN, IMAGE_SIZE,
};

/// Number of people in the ORL database.
pub const ORL_SUBJECTS: usize = 40;
/// Number of images per person in the ORL database.
pub const ORL_IMAGES_PER_SUBJECT: usize = 10;
/// Total number of ORL images.
pub const ORL_LEN: usize = ORL_SUBJECTS * ORL_IMAGES_PER_SUBJECT;
/// The dataset id of ORL.
pub const ORL_ID: &str = "orl";
/// Where the shipped asset lives, relative to the repository root.
pub const ORL_ASSET_PATH: &str = "assets/orl/orl_64x64.npy";

/// The preprocessed ORL faces, uint8 (400, 64, 64), embedded in the binary.
static ORL_NPY: &[u8] = include_bytes!("../../assets/orl/orl_64x64.npy");

/// The split of ORL image number `image` (1-based, 1..=10): 9 and 10 are Test, the rest Train.
pub fn orl_split(image: usize) -> Split {
    if image >= 9 {
        Split::Test
    } else {
        Split::Train
    }
}

/// `(subject, image)` pairs, both 1-based, in dataset order.
fn orl_order() -> impl Iterator<Item = (usize, usize)> {
    (1..=ORL_SUBJECTS).flat_map(|s| (1..=ORL_IMAGES_PER_SUBJECT).map(move |i| (s, i)))
}

/// Builds the ORL dataset (ids, identities, splits) around `pixels` (400 CHW RGB images).
fn orl_dataset(pixels: Pixels) -> Dataset {
    let sample_ids = orl_order().map(|(s, i)| format!("s{s}/{i}.pgm")).collect();
    let splits = orl_order().map(|(_, i)| orl_split(i)).collect();
    let identity = orl_order().map(|(s, _)| (s - 1) as u32).collect();
    Dataset {
        id: ORL_ID.to_string(),
        sample_ids,
        splits,
        pixels,
        info: SampleInfo {
            identity: Some(identity),
            ..SampleInfo::default()
        },
        skipped: Vec::new(),
    }
}

/// Reads the raw ORL layout under `dir` (`s1 … s40/1.pgm … 10.pgm`, 92x112 grayscale),
/// centre-crops each image to its largest square (92x92 at y offset 10), resizes it to 64x64
/// (bilinear) and returns the dataset. Any missing or unreadable image is an error.
pub fn import_orl_dir(dir: &Path) -> Result<Dataset, DataError> {
    let paths: Vec<PathBuf> = orl_order()
        .map(|(s, i)| dir.join(format!("s{s}")).join(format!("{i}.pgm")))
        .collect();
    let prepared = preprocess_files(
        &paths,
        Crop::Center,
        OnBadImage::Reject,
        &PixelStorage::in_memory(),
        None,
    )?;
    Ok(orl_dataset(prepared.pixels))
}

/// Grayscale ORL pixels (400 x 64 x 64) → the ORL dataset with gray replicated to RGB.
pub fn orl_from_gray(gray: &[u8], source: &Path) -> Result<Dataset, DataError> {
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    if gray.len() != ORL_LEN * plane {
        return Err(DataError::Npy {
            message: format!(
                "expected {} bytes of ORL pixels, got {}",
                ORL_LEN * plane,
                gray.len()
            ),
            path: source.to_path_buf(),
        });
    }
    let mut pixels = Vec::with_capacity(ORL_LEN * IMAGE_LEN);
    for image in gray.chunks_exact(plane) {
        for _ in 0..IMAGE_CHANNELS {
            pixels.extend_from_slice(image);
        }
    }
    Ok(orl_dataset(pixels.into()))
}

/// The shipped ORL faces (embedded in the binary, so it works from any directory): 400
/// images, identities 0..40, 320 train / 80 test (see the module docs).
pub fn orl() -> Result<Dataset, DataError> {
    let source = Path::new(ORL_ASSET_PATH);
    let (shape, range) = parse_npy_u8(ORL_NPY).map_err(|message| DataError::Npy {
        message,
        path: source.to_path_buf(),
    })?;
    if shape != [ORL_LEN, IMAGE_SIZE, IMAGE_SIZE] {
        return Err(DataError::Npy {
            message: format!("shape {shape:?} is not [{ORL_LEN}, {IMAGE_SIZE}, {IMAGE_SIZE}]"),
            path: source.to_path_buf(),
        });
    }
    orl_from_gray(&ORL_NPY[range], source)
}

/// Writes the ORL asset: the first channel of each of the 400 images of `dataset` (made by
/// [`import_orl_dir`]) as a uint8 `.npy` of shape (400, 64, 64), atomically. Errors if the
/// dataset does not have 400 grayscale (R = G = B) images.
pub fn write_orl_asset(dataset: &Dataset, path: &Path) -> Result<(), DataError> {
    dataset.validate()?;
    let invalid = |message: String| DataError::Invalid {
        id: dataset.id.clone(),
        message,
    };
    if dataset.len() != ORL_LEN {
        return Err(invalid(format!(
            "{} images, ORL has {ORL_LEN}",
            dataset.len()
        )));
    }
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut gray = Vec::with_capacity(ORL_LEN * plane);
    for index in 0..dataset.len() {
        let image = dataset.image_u8(index);
        let (red, rest) = image.split_at(plane);
        if rest.chunks_exact(plane).any(|channel| channel != red) {
            return Err(invalid(format!("image {index} is not grayscale")));
        }
        gray.extend_from_slice(red);
    }
    write_npy_u8(path, &[ORL_LEN, IMAGE_SIZE, IMAGE_SIZE], &gray)
}
