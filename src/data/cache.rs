//! The preprocessed-dataset cache: a fast binary file per dataset id.
//!
//! File layout, format version 2 (all integers little-endian):
//! - a 48-byte prefix: `b"LATLASDS"` · version `u32` · reserved `u32` (0) · image count `n`
//!   `u64` · pixel offset `u64` (always 48) · header offset `u64` · header length `u64`;
//! - `n * IMAGE_LEN` raw pixel bytes (each image CHW, RGB) from byte 48;
//! - a JSON header (id, n, checksums, sample ids, skipped images, attribute names, which
//!   per-sample blocks follow);
//! - binary per-sample blocks: splits (`u8`: 0 train, 1 valid, 2 test), identities (`u32`),
//!   attributes (`i8`, `n x attribute_names.len()`), generating latents (`f32`,
//!   `n x generating_latent_dim`), each present only if the dataset has it.
//!
//! The pixels come first so that a large dataset can be written while it is generated (see
//! [`PixelSink`](super::PixelSink)) and read lazily: opening a file whose pixels exceed
//! [`PixelStorage::max_in_memory_bytes`] reads only the header and blocks (the pixel
//! checksum is then checked by [`Dataset::verify_pixels`], not on open). Version 1 files
//! (header before the pixels, everything in JSON) are still read. Bumping [`CACHE_VERSION`]
//! makes older files unreadable, so [`cached`] rebuilds them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::npy::write_atomic_with;
use super::pixels::{PixelStorage, Pixels};
use super::sink::{Checksum, ChecksumWriter, PENDING_PREFIX, PENDING_SUFFIX};
use super::{DataError, Dataset, SkippedImage, Split, IMAGE_LEN};

/// Magic bytes at the start of every cache file.
pub const CACHE_MAGIC: &[u8; 8] = b"LATLASDS";
/// Version of the cache format written; version 1 files are still read.
pub const CACHE_VERSION: u32 = 2;
/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "LATENT_ATLAS_CACHE";
/// File extension of cache files.
pub const CACHE_EXTENSION: &str = "ladata";
/// Byte offset of the pixels in a version 2 cache file (the length of its prefix).
pub(crate) const PIXELS_OFFSET: u64 = 48;
/// Bytes per conversion step when the per-sample blocks are written.
const BLOCK_CHUNK: usize = 1 << 22;

#[derive(Serialize)]
struct HeaderOut<'a> {
    id: &'a str,
    version: u32,
    n: usize,
    image_len: usize,
    pixels_checksum: u64,
    blocks_checksum: u64,
    sample_ids: &'a [String],
    skipped: &'a [SkippedImage],
    identity: bool,
    attribute_names: &'a [String],
    attributes: bool,
    generating_latent_dim: usize,
    generating_latents: bool,
}

fn split_code(split: Split) -> u8 {
    match split {
        Split::Train => 0,
        Split::Valid => 1,
        Split::Test => 2,
    }
}

/// Writes `values` as little-endian bytes, a chunk at a time.
fn write_le<T: Copy, const W: usize>(
    out: &mut dyn Write,
    values: &[T],
    to_bytes: impl Fn(T) -> [u8; W],
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(BLOCK_CHUNK);
    for chunk in values.chunks(BLOCK_CHUNK / W) {
        buffer.clear();
        buffer.extend(chunk.iter().flat_map(|&v| to_bytes(v)));
        out.write_all(&buffer)?;
    }
    Ok(())
}

/// Writes the per-sample blocks of `ds` (see the module docs).
fn write_blocks(ds: &Dataset, out: &mut dyn Write) -> std::io::Result<()> {
    let splits: Vec<u8> = ds.splits.iter().map(|&s| split_code(s)).collect();
    out.write_all(&splits)?;
    if let Some(identity) = &ds.info.identity {
        write_le(out, identity, u32::to_le_bytes)?;
    }
    if let Some(attributes) = &ds.info.attributes {
        write_le(out, attributes, i8::to_le_bytes)?;
    }
    if let Some(latents) = &ds.info.generating_latents {
        write_le(out, latents, f32::to_le_bytes)?;
    }
    Ok(())
}

/// The 48-byte prefix of a version 2 file.
fn encode_prefix(n: usize, header_offset: u64, header_len: u64) -> [u8; PIXELS_OFFSET as usize] {
    let mut prefix = [0u8; PIXELS_OFFSET as usize];
    prefix[..8].copy_from_slice(CACHE_MAGIC);
    prefix[8..12].copy_from_slice(&CACHE_VERSION.to_le_bytes());
    prefix[16..24].copy_from_slice(&(n as u64).to_le_bytes());
    prefix[24..32].copy_from_slice(&PIXELS_OFFSET.to_le_bytes());
    prefix[32..40].copy_from_slice(&header_offset.to_le_bytes());
    prefix[40..48].copy_from_slice(&header_len.to_le_bytes());
    prefix
}

impl Dataset {
    /// Saves the dataset to `path` in the binary cache format, atomically (temporary file in
    /// the same folder, then rename). A dataset just built into a pending pixel file in that
    /// folder (see [`PixelSink`](super::PixelSink)) is saved by appending the metadata to that
    /// file and renaming it, without copying the pixels; otherwise the pixels are streamed.
    pub fn save_cache(&self, path: &Path) -> Result<(), DataError> {
        self.validate()?;
        let n = self.len();
        let pixels_checksum = self.pixels.checksum()?;
        let mut blocks_sum = ChecksumWriter(Checksum::new());
        write_blocks(self, &mut blocks_sum)
            .map_err(|e| DataError::io("cannot encode metadata for", e, path))?;
        let info = &self.info;
        let header = HeaderOut {
            id: &self.id,
            version: CACHE_VERSION,
            n,
            image_len: IMAGE_LEN,
            pixels_checksum,
            blocks_checksum: blocks_sum.0.finish(),
            sample_ids: &self.sample_ids,
            skipped: &self.skipped,
            identity: info.identity.is_some(),
            attribute_names: &info.attribute_names,
            attributes: info.attributes.is_some(),
            generating_latent_dim: info.generating_latent_dim,
            generating_latents: info.generating_latents.is_some(),
        };
        let header = serde_json::to_vec(&header).map_err(|e| DataError::Cache {
            message: format!("cannot encode header: {e}"),
            path: path.to_path_buf(),
        })?;
        let header_offset = PIXELS_OFFSET + (n as u64) * (IMAGE_LEN as u64);
        let prefix = encode_prefix(n, header_offset, header.len() as u64);
        if let Pixels::File(file) = &self.pixels {
            let adopted = file.adopt_as(path, &prefix, |out| {
                out.write_all(&header)?;
                write_blocks(self, out)
            })?;
            if adopted {
                return Ok(());
            }
        }
        write_atomic_with(path, |out| {
            out.write_all(&prefix)?;
            self.pixels
                .for_each_chunk(1024, |chunk| {
                    out.write_all(chunk)
                        .map_err(|e| DataError::io("cannot write file", e, path))
                })
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            out.write_all(&header)?;
            write_blocks(self, out)
        })
    }

    /// Loads a dataset saved by [`Dataset::save_cache`], keeping the pixels in memory or in
    /// the file according to [`PixelStorage::from_env`]. A truncated or corrupt file, or one of
    /// an unknown format version, gives a [`DataError::Cache`] naming the file.
    pub fn load_cache(path: &Path) -> Result<Dataset, DataError> {
        Dataset::load_cache_with(path, &PixelStorage::from_env())
    }

    /// Like [`Dataset::load_cache`] with an explicit `storage` policy: pixels of at most
    /// `storage.max_in_memory_bytes` are read and checked against their checksum, larger ones
    /// are read on demand (only the file length is checked on open).
    pub fn load_cache_with(path: &Path, storage: &PixelStorage) -> Result<Dataset, DataError> {
        let mut file = File::open(path).map_err(|e| DataError::io("cannot open cache", e, path))?;
        let file_len = file
            .metadata()
            .map_err(|e| DataError::io("cannot read cache", e, path))?
            .len();
        if file_len < 12 {
            return Err(cache_error(
                path,
                format!("truncated: only {file_len} bytes"),
            ));
        }
        let mut start = [0u8; 12];
        file.read_exact(&mut start)
            .map_err(|e| DataError::io("cannot read cache", e, path))?;
        if &start[..8] != CACHE_MAGIC {
            return Err(cache_error(
                path,
                "not a latent-atlas dataset cache (bad magic bytes)".to_string(),
            ));
        }
        let version = u32::from_le_bytes([start[8], start[9], start[10], start[11]]);
        match version {
            CACHE_VERSION => super::cache_v2::load_v2(file, file_len, path, storage),
            1 => super::cache_v1::load_v1(file, file_len, path, storage),
            _ => Err(cache_error(
                path,
                format!(
                    "format version {version}, this program reads versions 1 and {CACHE_VERSION}"
                ),
            )),
        }
    }

    /// Reads every pixel of a file-backed dataset and checks them against the checksum its
    /// cache file recorded (which is not done when a large cache is opened). Datasets in
    /// memory were checked when loaded; for them this does nothing.
    pub fn verify_pixels(&self) -> Result<(), DataError> {
        let Pixels::File(file) = &self.pixels else {
            return Ok(());
        };
        let Some(expected) = file.known_checksum() else {
            return Ok(());
        };
        if self.pixels.computed_checksum()? != expected {
            return Err(cache_error(
                &file.path(),
                "corrupt: pixel checksum mismatch".to_string(),
            ));
        }
        Ok(())
    }
}

/// A [`DataError::Cache`] for `path`.
pub(crate) fn cache_error(path: &Path, message: String) -> DataError {
    DataError::Cache {
        message,
        path: path.to_path_buf(),
    }
}

/// Reads `len` bytes at `position`.
pub(crate) fn read_range(
    file: &mut File,
    path: &Path,
    position: u64,
    len: usize,
) -> Result<Vec<u8>, DataError> {
    let mut bytes = vec![0u8; len];
    file.seek(SeekFrom::Start(position))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| DataError::io("cannot read cache", e, path))?;
    Ok(bytes)
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

/// Pending pixel files untouched for this long are left over from a killed build.
const STALE_PENDING_SECS: u64 = 24 * 3600;

/// Removes pending pixel files (of builds that were killed before they could clean up) that
/// have not been written to for [`STALE_PENDING_SECS`]; a build in progress writes to its file
/// continuously, so it is never touched. Failures are logged and ignored.
fn remove_stale_pending_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(PENDING_PREFIX) && name.ends_with(PENDING_SUFFIX)) {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age.as_secs() >= STALE_PENDING_SECS) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("removed a stale pending pixel file: {}", path.display()),
                Err(e) => log::warn!(
                    "cannot remove stale pending pixel file: {e}: {}",
                    path.display()
                ),
            }
        }
    }
}

/// Loads dataset `id` from its cache file in [`cache_dir`] if present and valid, else builds it
/// with `build`, saves the cache and returns it. An unusable cache file is logged and rebuilt;
/// a cache that cannot be written is logged and the built dataset still returned. The returned
/// dataset's `id` is always `id` (a built dataset with another id gets `id`), so `id` must
/// capture every option that changes the content (e.g. from
/// [`folder_dataset_id`](super::folder::folder_dataset_id) or
/// [`celeba_dataset_id`](super::celeba::celeba_dataset_id)).
///
/// Large datasets stay bounded in memory: loaders write their pixels to a pending file in the
/// cache folder, which becomes the cache file by a rename, and a large cache is opened lazily
/// (see [`PixelStorage`]). Pending pixel files left in the cache folder by a killed build are
/// removed once they are a day old.
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
    remove_stale_pending_files(path.parent().unwrap_or(Path::new(".")));
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
