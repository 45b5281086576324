//! Reading version 1 dataset caches (written before version 2): `b"LATLASDS"` · version `u32`
//! (1) · header length `u64` · JSON header (id, version, n, image_len, pixel checksum, sample
//! ids, splits, info, skipped) · `n * IMAGE_LEN` raw pixel bytes.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::cache::{cache_error, read_range};
use super::pixels::{PixelFile, PixelStorage, Pixels};
use super::{DataError, Dataset, SampleInfo, SkippedImage, Split, IMAGE_LEN};

const PREFIX_LEN: u64 = 8 + 4 + 8;

#[derive(Deserialize)]
struct HeaderV1 {
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

/// The version 1 checksum: like the current one, but seeded with the length up front.
fn checksum_v1(bytes: &[u8]) -> u64 {
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

/// Reads a version 1 file (the magic and version are checked by the caller). Pixels beyond
/// `storage`'s threshold are read on demand and not checksummed.
pub(crate) fn load_v1(
    mut file: File,
    file_len: u64,
    path: &Path,
    storage: &PixelStorage,
) -> Result<Dataset, DataError> {
    let bad = |message: String| cache_error(path, message);
    if file_len < PREFIX_LEN {
        return Err(bad(format!("truncated: only {file_len} bytes")));
    }
    let prefix = read_range(&mut file, path, 0, PREFIX_LEN as usize)?;
    let mut word8 = [0u8; 8];
    word8.copy_from_slice(&prefix[12..20]);
    let header_len = u64::from_le_bytes(word8);
    if header_len > file_len - PREFIX_LEN {
        return Err(bad(format!(
            "truncated: header of {header_len} bytes but only {} bytes follow",
            file_len - PREFIX_LEN
        )));
    }
    let header = read_range(&mut file, path, PREFIX_LEN, header_len as usize)?;
    let header: HeaderV1 =
        serde_json::from_slice(&header).map_err(|e| bad(format!("corrupt header: {e}")))?;
    if header.version != 1 || header.image_len != IMAGE_LEN {
        return Err(bad(format!(
            "header says version {} with {} bytes per image, expected version 1 with \
             {IMAGE_LEN}",
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
    let offset = PREFIX_LEN + header_len;
    let pixels = if storage.keeps_in_memory(available) {
        let bytes = read_range(&mut file, path, offset, available as usize)?;
        if checksum_v1(&bytes) != header.pixels_checksum {
            return Err(bad("corrupt: pixel checksum mismatch".to_string()));
        }
        Pixels::Memory(bytes)
    } else {
        Pixels::File(Arc::new(PixelFile::open(
            file, path, offset, header.n, None,
        )))
    };
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
