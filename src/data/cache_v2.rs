//! Reading version 2 dataset cache files (see [`cache`](super::cache) for the layout).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::cache::{cache_error, read_range, CACHE_VERSION, PIXELS_OFFSET};
use super::pixels::{PixelFile, PixelStorage, Pixels};
use super::sink::Checksum;
use super::{DataError, Dataset, SampleInfo, SkippedImage, Split, IMAGE_LEN};

/// Bytes per read step for the per-sample blocks.
const BLOCK_CHUNK: usize = 1 << 22;

#[derive(Deserialize)]
struct HeaderIn {
    id: String,
    version: u32,
    n: usize,
    image_len: usize,
    pixels_checksum: u64,
    blocks_checksum: u64,
    sample_ids: Vec<String>,
    skipped: Vec<SkippedImage>,
    identity: bool,
    attribute_names: Vec<String>,
    attributes: bool,
    generating_latent_dim: usize,
    generating_latents: bool,
}

impl HeaderIn {
    /// Total bytes of the per-sample blocks this header announces (None on overflow).
    fn blocks_len(&self) -> Option<u64> {
        let n = self.n as u64;
        let mut len = n;
        if self.identity {
            len = len.checked_add(n.checked_mul(4)?)?;
        }
        if self.attributes {
            len = len.checked_add(n.checked_mul(self.attribute_names.len() as u64)?)?;
        }
        if self.generating_latents {
            let values = n.checked_mul(self.generating_latent_dim as u64)?;
            len = len.checked_add(values.checked_mul(4)?)?;
        }
        Some(len)
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads the per-sample blocks following the header (the file is positioned at them) into
/// the split list and `info`, checking their checksum.
fn read_blocks(
    file: &mut File,
    path: &Path,
    header: &HeaderIn,
) -> Result<(Vec<Split>, SampleInfo), DataError> {
    let n = header.n;
    let mut sum = Checksum::new();
    let mut read = |len: usize, sum: &mut Checksum, visit: &mut dyn FnMut(&[u8])| {
        let mut buffer = vec![0u8; BLOCK_CHUNK.min(len)];
        let mut left = len;
        while left > 0 {
            let step = BLOCK_CHUNK.min(left);
            file.read_exact(&mut buffer[..step])
                .map_err(|e| DataError::io("cannot read cache", e, path))?;
            sum.update(&buffer[..step]);
            visit(&buffer[..step]);
            left -= step;
        }
        Ok::<(), DataError>(())
    };
    let mut codes = Vec::with_capacity(n);
    read(n, &mut sum, &mut |bytes| codes.extend_from_slice(bytes))?;
    let mut info = SampleInfo {
        attribute_names: header.attribute_names.clone(),
        generating_latent_dim: header.generating_latent_dim,
        ..SampleInfo::default()
    };
    if header.identity {
        let mut identity = Vec::with_capacity(n);
        read(4 * n, &mut sum, &mut |bytes| {
            identity.extend(
                bytes
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            );
        })?;
        info.identity = Some(identity);
    }
    if header.attributes {
        let mut attributes = Vec::with_capacity(n * header.attribute_names.len());
        read(n * header.attribute_names.len(), &mut sum, &mut |bytes| {
            attributes.extend(bytes.iter().map(|&b| b as i8));
        })?;
        info.attributes = Some(attributes);
    }
    if header.generating_latents {
        let count = n * header.generating_latent_dim;
        let mut latents = Vec::with_capacity(count);
        read(4 * count, &mut sum, &mut |bytes| {
            latents.extend(
                bytes
                    .chunks_exact(4)
                    .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            );
        })?;
        info.generating_latents = Some(latents);
    }
    if sum.finish() != header.blocks_checksum {
        return Err(cache_error(
            path,
            "corrupt: checksum mismatch in the per-sample data".to_string(),
        ));
    }
    let splits = codes
        .iter()
        .map(|&code| match code {
            0 => Ok(Split::Train),
            1 => Ok(Split::Valid),
            2 => Ok(Split::Test),
            other => Err(cache_error(path, format!("corrupt: split code {other}"))),
        })
        .collect::<Result<Vec<Split>, DataError>>()?;
    Ok((splits, info))
}

/// Reads a version 2 file (the magic and version are checked).
pub(crate) fn load_v2(
    mut file: File,
    file_len: u64,
    path: &Path,
    storage: &PixelStorage,
) -> Result<Dataset, DataError> {
    let bad = |message: String| cache_error(path, message);
    if file_len < PIXELS_OFFSET {
        return Err(bad(format!("truncated: only {file_len} bytes")));
    }
    let prefix = read_range(&mut file, path, 0, PIXELS_OFFSET as usize)?;
    let n = u64_at(&prefix, 16);
    let pixels_offset = u64_at(&prefix, 24);
    let header_offset = u64_at(&prefix, 32);
    let header_len = u64_at(&prefix, 40);
    if pixels_offset != PIXELS_OFFSET {
        return Err(bad(format!(
            "corrupt prefix: pixels at byte {pixels_offset}, expected {PIXELS_OFFSET}"
        )));
    }
    let pixels_end = n
        .checked_mul(IMAGE_LEN as u64)
        .and_then(|bytes| bytes.checked_add(PIXELS_OFFSET));
    if pixels_end != Some(header_offset) {
        return Err(bad(format!(
            "corrupt prefix: header at byte {header_offset} does not follow {n} images"
        )));
    }
    let header_end = header_offset.checked_add(header_len);
    if header_end.is_none_or(|end| end > file_len) {
        return Err(bad(format!(
            "truncated: {file_len} bytes, but the prefix puts {n} images and a header of \
             {header_len} bytes before byte {}",
            header_offset.saturating_add(header_len)
        )));
    }
    let header_bytes = read_range(&mut file, path, header_offset, header_len as usize)?;
    let header: HeaderIn =
        serde_json::from_slice(&header_bytes).map_err(|e| bad(format!("corrupt header: {e}")))?;
    drop(header_bytes);
    if header.version != CACHE_VERSION || header.image_len != IMAGE_LEN || header.n as u64 != n {
        return Err(bad(format!(
            "corrupt header: version {} with {} images of {} bytes, expected version \
             {CACHE_VERSION} with {n} images of {IMAGE_LEN}",
            header.version, header.n, header.image_len
        )));
    }
    if header.sample_ids.len() != header.n {
        return Err(bad(format!(
            "corrupt header: {} sample ids for {} images",
            header.sample_ids.len(),
            header.n
        )));
    }
    let blocks_end = header
        .blocks_len()
        .and_then(|len| len.checked_add(header_offset + header_len));
    match blocks_end {
        Some(end) if end == file_len => {}
        Some(end) if end > file_len => {
            return Err(bad(format!(
                "truncated: {file_len} bytes, the header announces {end}"
            )))
        }
        Some(end) => {
            return Err(bad(format!(
                "corrupt: {} unexpected bytes after the end of the data",
                file_len - end
            )))
        }
        None => return Err(bad("corrupt header: sizes overflow".to_string())),
    }
    let (splits, info) = read_blocks(&mut file, path, &header)?;
    let pixel_bytes = header_offset - PIXELS_OFFSET;
    let pixels = if storage.keeps_in_memory(pixel_bytes) {
        let bytes = read_range(&mut file, path, PIXELS_OFFSET, pixel_bytes as usize)?;
        if Checksum::of(&bytes) != header.pixels_checksum {
            return Err(bad("corrupt: pixel checksum mismatch".to_string()));
        }
        Pixels::Memory(bytes)
    } else {
        let store = PixelFile::open(
            file,
            path,
            PIXELS_OFFSET,
            header.n,
            Some(header.pixels_checksum),
        );
        Pixels::File(Arc::new(store))
    };
    let dataset = Dataset {
        id: header.id,
        sample_ids: header.sample_ids,
        splits,
        pixels,
        info,
        skipped: header.skipped,
    };
    dataset
        .validate()
        .map_err(|e| bad(format!("corrupt: {e}")))?;
    Ok(dataset)
}
