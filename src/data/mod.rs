//! Datasets: every image source behind one [`Dataset`] type.
//!
//! All images are preprocessed to `IMAGE_CHANNELS x IMAGE_SIZE x IMAGE_SIZE` (3x64x64) `u8`
//! RGB in CHW order; grayscale sources are replicated to three channels. This module is the
//! only place that knows that pixel layout.
//!
//! Sources: the shipped ORL faces ([`orl::orl`]), any image folder ([`folder::load_folder`]),
//! CelebA ([`celeba::load_celeba`]), synthetic faces ([`synthfaces::generate`]). Preprocessed
//! datasets can be cached on disk ([`cache::cached`]).
//!
//! Memory stays bounded for large datasets: pixels live in a [`Pixels`] store, in memory for
//! small datasets and in the cache file (read on demand) for large ones; loaders stream their
//! images into a [`PixelSink`] (see [`pixels`] and [`cache`]).

pub mod cache;
mod cache_v1;
mod cache_v2;
pub mod celeba;
mod error;
pub mod folder;
pub mod image_prep;
pub mod npy;
pub mod orl;
pub mod pixels;
mod sink;
pub mod synthfaces;

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use cache::{cache_dir, cached};
pub use celeba::{
    load_celeba, load_celeba_with, paper_support_set, CelebaCrop, CelebaOptions, PAPER_SUPPORT_SET,
};
pub use error::DataError;
pub use folder::{load_folder, load_folder_with, FolderOptions};
pub use image_prep::{preprocess_file, Crop};
pub use orl::{import_orl_dir, orl};
pub use pixels::{PixelStorage, Pixels};
pub use sink::PixelSink;

/// Side length in pixels of every preprocessed image (images are square).
pub const IMAGE_SIZE: usize = 64;
/// Number of colour channels of every preprocessed image (RGB).
pub const IMAGE_CHANNELS: usize = 3;
/// Number of `u8` values per preprocessed image: `3 * 64 * 64`, CHW order.
pub const IMAGE_LEN: usize = IMAGE_CHANNELS * IMAGE_SIZE * IMAGE_SIZE;

/// Which part of a dataset a sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    /// Used to fit models.
    Train,
    /// Used to choose hyper-parameters (only CelebA has it).
    Valid,
    /// Held out for evaluation.
    Test,
}

/// What to do with an unreadable/corrupt image during preprocessing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnBadImage {
    /// Leave the image out, record it in [`Dataset::skipped`] and log a warning.
    #[default]
    Skip,
    /// Fail the whole load with an error naming the file.
    Reject,
}

/// One image that could not be used, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedImage {
    /// The image file.
    pub path: PathBuf,
    /// Why it was left out (the error message, which names the file).
    pub reason: String,
}

/// Extra per-sample information some sources have.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// Identity label per sample (ORL: subject number minus one, `0..40`).
    pub identity: Option<Vec<u32>>,
    /// Attribute names (CelebA's 40 names; empty for other sources).
    pub attribute_names: Vec<String>,
    /// Attributes, `N x attribute_names.len()` row-major, values `-1` or `1`.
    pub attributes: Option<Vec<i8>>,
    /// Dimension of the latent that generated each sample (synthetic faces: 100, else 0).
    pub generating_latent_dim: usize,
    /// Generating latents, `N x generating_latent_dim` row-major.
    pub generating_latents: Option<Vec<f32>>,
}

/// A preprocessed image dataset: `N` images of [`IMAGE_LEN`] bytes each, with ids and splits.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// Stable dataset id, used as a cache key, e.g. `"orl"`, `"folder:/abs/path:center:test=0.2"`,
    /// `"celeba:/abs/root:first=1000:crop=paper"`, `"synthfaces:n=12000:seed=0"`.
    pub id: String,
    /// Stable per-sample ids (`"s1/1.pgm"`, `"000001.jpg"`, relative path for folders).
    pub sample_ids: Vec<String>,
    /// Split of each sample (one per sample).
    pub splits: Vec<Split>,
    /// `N * IMAGE_LEN` bytes: each image CHW, RGB (grayscale replicated to 3 channels), in
    /// memory or in a file read on demand. A `Vec<u8>` converts with `.into()`.
    pub pixels: Pixels,
    /// Extra per-sample information.
    pub info: SampleInfo,
    /// Images that were left out while loading.
    pub skipped: Vec<SkippedImage>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("id", &self.id)
            .field("len", &self.len())
            .field("pixels", &self.pixels)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sample_ids.len()
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.sample_ids.is_empty()
    }

    /// Indices of the samples in `split`, in increasing order.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        self.splits
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == split)
            .map(|(i, _)| i)
            .collect()
    }

    /// The `IMAGE_LEN` bytes (CHW, RGB) of image `index`: borrowed when the pixels are in
    /// memory, read from the file otherwise. Empty if `index` is out of range or the file
    /// cannot be read (logged; use [`Dataset::try_image_u8`] or [`Dataset::batch`] for checked
    /// access).
    pub fn image_u8(&self, index: usize) -> Cow<'_, [u8]> {
        if index >= self.len() {
            return Cow::Borrowed(&[]);
        }
        self.try_image_u8(index).unwrap_or_else(|error| {
            log::error!("cannot read image {index} of {}: {error}", self.id);
            Cow::Borrowed(&[])
        })
    }

    /// The `IMAGE_LEN` bytes (CHW, RGB) of image `index`; errors when `index` is out of range
    /// or the pixel file cannot be read.
    pub fn try_image_u8(&self, index: usize) -> Result<Cow<'_, [u8]>, DataError> {
        if index >= self.len() {
            return Err(DataError::IndexOutOfRange {
                index,
                len: self.len(),
            });
        }
        self.pixels.images(index, 1)
    }

    /// Mean squared difference per value (pixels scaled to [0, 1]) between images `a` and `b`;
    /// 0 when either index is out of range (or unreadable).
    pub fn image_mse(&self, a: usize, b: usize) -> f64 {
        let (x, y) = (self.image_u8(a), self.image_u8(b));
        if x.is_empty() || y.is_empty() {
            return 0.0;
        }
        let sum: u64 = x
            .iter()
            .zip(y.iter())
            .map(|(&p, &q)| {
                let d = u64::from(p.abs_diff(q));
                d * d
            })
            .sum();
        sum as f64 / (255.0 * 255.0 * x.len() as f64)
    }

    /// An `f32` tensor of shape `[n, 3, 64, 64]` with values in `[0, 1]` holding the images at
    /// `indices` (in that order). Runs of consecutive indices are read from a pixel file with
    /// one read each. Errors on an out-of-range index or an unreadable pixel file.
    pub fn batch(
        &self,
        indices: &[usize],
        device: &candle_core::Device,
    ) -> Result<candle_core::Tensor, DataError> {
        let n = self.len().min(self.pixels.num_images());
        if let Some(&index) = indices.iter().find(|&&index| index >= n) {
            return Err(DataError::IndexOutOfRange {
                index,
                len: self.len(),
            });
        }
        let mut values = Vec::with_capacity(indices.len() * IMAGE_LEN);
        let mut at = 0;
        while at < indices.len() {
            let first = indices[at];
            let mut run = 1;
            while at + run < indices.len() && indices[at + run] == first + run {
                run += 1;
            }
            let images = self.pixels.images(first, run)?;
            values.extend(images.iter().map(|&v| f32::from(v) / 255.0));
            at += run;
        }
        let shape = (indices.len(), IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE);
        Ok(candle_core::Tensor::from_vec(values, shape, device)?)
    }

    /// Index of the sample with id `sample_id`, if any (linear search).
    pub fn index_of(&self, sample_id: &str) -> Option<usize> {
        self.sample_ids.iter().position(|id| id == sample_id)
    }

    /// Checks the invariants: one split per sample, `N * IMAGE_LEN` pixels, unique ids and
    /// per-sample information of matching length. Used after loading a cache.
    pub fn validate(&self) -> Result<(), DataError> {
        let n = self.len();
        let invalid = |message: String| DataError::Invalid {
            id: self.id.clone(),
            message,
        };
        if self.splits.len() != n {
            return Err(invalid(format!(
                "{} splits for {n} samples",
                self.splits.len()
            )));
        }
        if self.pixels.len() != n * IMAGE_LEN {
            return Err(invalid(format!(
                "{} pixel bytes for {n} samples (expected {})",
                self.pixels.len(),
                n * IMAGE_LEN
            )));
        }
        let mut seen = HashSet::with_capacity(n);
        for id in &self.sample_ids {
            if !seen.insert(id.as_str()) {
                return Err(invalid(format!("duplicate sample id {id:?}")));
            }
        }
        let info = &self.info;
        if let Some(identity) = &info.identity {
            if identity.len() != n {
                return Err(invalid(format!(
                    "{} identities for {n} samples",
                    identity.len()
                )));
            }
        }
        if let Some(attributes) = &info.attributes {
            let expected = n * info.attribute_names.len();
            if attributes.len() != expected || info.attribute_names.is_empty() {
                return Err(invalid(format!(
                    "{} attribute values for {n} samples and {} attribute names",
                    attributes.len(),
                    info.attribute_names.len()
                )));
            }
            if attributes.iter().any(|&a| a != -1 && a != 1) {
                return Err(invalid("attribute values other than -1/1".to_string()));
            }
        }
        if let Some(latents) = &info.generating_latents {
            let expected = n * info.generating_latent_dim;
            if latents.len() != expected {
                return Err(invalid(format!(
                    "{} generating latent values for {n} samples of dimension {}",
                    latents.len(),
                    info.generating_latent_dim
                )));
            }
        }
        Ok(())
    }
}

/// Deterministic train/test assignment by hashing the sample id (seedless, stable across runs,
/// platforms and versions): about a fraction `test_fraction` of ids goes to [`Split::Test`], the
/// rest to [`Split::Train`]. The top 53 bits of the first 8 bytes of SHA-256(`sample_id`)
/// (big-endian), divided by 2^53, give a number in `[0, 1)`; below `test_fraction` means Test.
/// A fraction `<= 0` (or NaN) puts everything in Train, `>= 1` everything in Test.
pub fn hash_split(sample_id: &str, test_fraction: f64) -> Split {
    let digest = Sha256::digest(sample_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // The top 53 bits, so that the quotient is exact and strictly below 1.
    let unit = (u64::from_be_bytes(head) >> 11) as f64 / 9_007_199_254_740_992.0;
    if unit < test_fraction {
        Split::Test
    } else {
        Split::Train
    }
}
