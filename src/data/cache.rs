//! The preprocessed-dataset cache: a fast binary file per dataset id.
//!
//! File layout (all integers little-endian):
//! `b"LATLASDS"` (8 bytes) · format version `u32` · header length `u64` · JSON header (id,
//! version, n, image_len, pixel checksum, sample ids, splits, info, skipped) · `n * IMAGE_LEN`
//! raw pixel bytes. Bumping [`CACHE_VERSION`] invalidates every old cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::npy::write_atomic_with;
use super::{DataError, Dataset, SampleInfo, SkippedImage, Split, IMAGE_LEN};

/// Magic bytes at the start of every cache file.
pub const CACHE_MAGIC: &[u8; 8] = b"LATLASDS";
/// Version of the cache format; files of another version are rejected.
pub const CACHE_VERSION: u32 = 1;
/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "LATENT_ATLAS_CACHE";
/// File extension of cache files.
pub const CACHE_EXTENSION: &str = "ladata";

const PREFIX_LEN: u64 = 8 + 4 + 8;

#[derive(Serialize)]
struct HeaderOut<'a> {
    id: &'a str,
    version: u32,
    n: usize,
    image_len: usize,
    pixels_checksum: u64,
    sample_ids: &'a [String],
    splits: &'a [Split],
    info: &'a SampleInfo,
    skipped: &'a [SkippedImage],
}

#[derive(Deserialize)]
struct HeaderIn {
    id: String,
    version: u32,
    n: usize,
    image_len: usize,
    pixels_checksum: u64,
    sample_ids: Vec<String>,
    splits: Vec<Split>,
    info: SampleInfo,
    skipped: Vec<SkippedImage>,
}

/// A fast 64-bit checksum of the pixel bytes (not cryptographic; catches corruption).
fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(K);
        hash ^= hash >> 29;
    }
    for &byte in tail {
        hash = (hash ^ u64::from(byte)).wrapping_mul(K);
        hash ^= hash >> 29;
    }
    hash
}

impl Dataset {
    /// Saves the dataset to `path` in the binary cache format, atomically (temporary file in
    /// the same folder, then rename).
    pub fn save_cache(&self, path: &Path) -> Result<(), DataError> {
        self.validate()?;
        let header = HeaderOut {
            id: &self.id,
            version: CACHE_VERSION,
            n: self.len(),
            image_len: IMAGE_LEN,
            pixels_checksum: checksum(&self.pixels),
            sample_ids: &self.sample_ids,
            splits: &self.splits,
            info: &self.info,
            skipped: &self.skipped,
        };
        let header = serde_json::to_vec(&header).map_err(|e| DataError::Cache {
            message: format!("cannot encode header: {e}"),
            path: path.to_path_buf(),
        })?;
        write_atomic_with(path, |out| {
            out.write_all(CACHE_MAGIC)?;
            out.write_all(&CACHE_VERSION.to_le_bytes())?;
            out.write_all(&(header.len() as u64).to_le_bytes())?;
            out.write_all(&header)?;
            out.write_all(&self.pixels)
        })
    }

    /// Loads a dataset saved by [`Dataset::save_cache`]. A truncated or corrupt file, or one of
    /// another format version, gives a [`DataError::Cache`] naming the file.
    pub fn load_cache(path: &Path) -> Result<Dataset, DataError> {
        let bad = |message: String| DataError::Cache {
            message,
            path: path.to_path_buf(),
        };
        let mut file =
            std::fs::File::open(path).map_err(|e| DataError::io("cannot open cache", e, path))?;
        let file_len = file
            .metadata()
            .map_err(|e| DataError::io("cannot read cache", e, path))?
            .len();
        if file_len < PREFIX_LEN {
            return Err(bad(format!("truncated: only {file_len} bytes")));
        }
        let mut prefix = [0u8; PREFIX_LEN as usize];
        file.read_exact(&mut prefix)
            .map_err(|e| DataError::io("cannot read cache", e, path))?;
        if &prefix[..8] != CACHE_MAGIC {
            return Err(bad(
                "not a latent-atlas dataset cache (bad magic bytes)".to_string()
            ));
        }
        let mut word4 = [0u8; 4];
        word4.copy_from_slice(&prefix[8..12]);
        let version = u32::from_le_bytes(word4);
        if version != CACHE_VERSION {
            return Err(bad(format!(
                "format version {version}, this program reads version {CACHE_VERSION}"
            )));
        }
        let mut word8 = [0u8; 8];
        word8.copy_from_slice(&prefix[12..20]);
        let header_len = u64::from_le_bytes(word8);
        if header_len > file_len - PREFIX_LEN {
            return Err(bad(format!(
                "truncated: header of {header_len} bytes but only {} bytes follow",
                file_len - PREFIX_LEN
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| DataError::io("cannot read cache", e, path))?;
        let header: HeaderIn =
            serde_json::from_slice(&header).map_err(|e| bad(format!("corrupt header: {e}")))?;
        if header.version != CACHE_VERSION || header.image_len != IMAGE_LEN {
            return Err(bad(format!(
                "header says version {} with {} bytes per image, expected version {CACHE_VERSION} \
                 with {IMAGE_LEN}",
                header.version, header.image_len
            )));
        }
        let pixel_len = (header.n as u64).checked_mul(IMAGE_LEN as u64);
        let available = file_len - PREFIX_LEN - header_len;
        if pixel_len != Some(available) {
            let expected = pixel_len.map_or_else(|| "too many".to_string(), |p| p.to_string());
            return Err(bad(format!(
                "truncated or corrupt: {available} pixel bytes for {} images (expected {expected})",
                header.n
            )));
        }
        let mut pixels = vec![0u8; available as usize];
        file.read_exact(&mut pixels)
            .map_err(|e| DataError::io("cannot read cache", e, path))?;
        if checksum(&pixels) != header.pixels_checksum {
            return Err(bad("corrupt: pixel checksum mismatch".to_string()));
        }
        let dataset = Dataset {
            id: header.id,
            sample_ids: header.sample_ids,
            splits: header.splits,
            pixels,
            info: header.info,
            skipped: header.skipped,
        };
        if dataset.len() != header.n {
            return Err(bad(format!(
                "corrupt: {} sample ids for {} images",
                dataset.len(),
                header.n
            )));
        }
        dataset
            .validate()
            .map_err(|e| bad(format!("corrupt: {e}")))?;
        Ok(dataset)
    }
}

/// Cache directory: `$LATENT_ATLAS_CACHE` if set (and not empty), else the OS cache folder
/// of "latent-atlas" (`directories::ProjectDirs`); created if missing.
pub fn cache_dir() -> Result<PathBuf, DataError> {
    let dir = match std::env::var_os(CACHE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => directories::ProjectDirs::from("", "", "latent-atlas")
            .ok_or(DataError::NoCacheDir)?
            .cache_dir()
            .to_path_buf(),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| DataError::io("cannot create cache folder", e, &dir))?;
    Ok(dir)
}

/// The file name of the cache of dataset `id`: a readable slug of the id plus 16 hex digits
/// of its SHA-256, e.g. `folder-home-me-faces-center-test-0-2-3f2a….ladata`.
pub fn cache_file_name(id: &str) -> String {
    let mut slug = String::new();
    for ch in id.chars() {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 60 {
            break;
        }
    }
    if !slug.is_empty() && !slug.ends_with('-') {
        slug.push('-');
    }
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{slug}{hex}.{CACHE_EXTENSION}")
}

/// Loads dataset `id` from its cache file in [`cache_dir`] if present and valid, else builds it
/// with `build`, saves the cache and returns it. An unusable cache file is logged and rebuilt;
/// a cache that cannot be written is logged and the built dataset still returned. The returned
/// dataset's `id` is always `id` (a built dataset with another id gets `id`), so `id` must
/// capture every option that changes the content (e.g. from
/// [`folder_dataset_id`](super::folder::folder_dataset_id) or
/// [`celeba_dataset_id`](super::celeba::celeba_dataset_id)).
pub fn cached<F: FnOnce() -> Result<Dataset, DataError>>(
    id: &str,
    build: F,
) -> Result<Dataset, DataError> {
    let path = cache_dir()?.join(cache_file_name(id));
    if path.exists() {
        match Dataset::load_cache(&path) {
            Ok(dataset) if dataset.id == id => {
                log::info!("loaded dataset {id} from cache {}", path.display());
                return Ok(dataset);
            }
            Ok(dataset) => log::warn!(
                "cache holds dataset {:?}, not {id:?}; rebuilding: {}",
                dataset.id,
                path.display()
            ),
            Err(error) => log::warn!("ignoring dataset cache, rebuilding: {error}"),
        }
    }
    let mut dataset = build()?;
    if dataset.id != id {
        log::debug!(
            "dataset id {:?} replaced by the cache key {id:?}",
            dataset.id
        );
        dataset.id = id.to_string();
    }
    match dataset.save_cache(&path) {
        Ok(()) => log::info!("cached dataset {id} in {}", path.display()),
        Err(error) => log::warn!("could not write dataset cache: {error}"),
    }
    Ok(dataset)
}
