//! Writing pixels while a dataset is built ([`PixelSink`]) and the streaming checksum the
//! cache format uses.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use tempfile::TempPath;

use super::cache::PIXELS_OFFSET;
use super::pixels::{PixelFile, PixelStorage, Pixels};
use super::{DataError, IMAGE_LEN};

/// File name prefix of pending pixel files (datasets being built).
pub(crate) const PENDING_PREFIX: &str = ".latlas-pixels-";
/// File name suffix of pending pixel files.
pub(crate) const PENDING_SUFFIX: &str = ".part";

/// A 64-bit streaming checksum (not cryptographic; catches corruption): 8-byte little-endian
/// words multiplied into the state, the trailing bytes one by one, then the total length.
/// The result does not depend on how the input is split into `update` calls.
#[derive(Clone, Debug)]
pub(crate) struct Checksum {
    hash: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

const CHECKSUM_K: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(hash: u64, value: u64) -> u64 {
    let hash = (hash ^ value).wrapping_mul(CHECKSUM_K);
    hash ^ (hash >> 29)
}

impl Checksum {
    pub(crate) fn new() -> Self {
        Checksum {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 8 {
                return;
            }
            self.hash = mix(self.hash, u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let words = bytes.chunks_exact(8);
        let rest = words.remainder();
        for word in words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.hash = mix(self.hash, u64::from_le_bytes(w));
        }
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut hash = self.hash;
        for &byte in &self.tail[..self.tail_len] {
            hash = mix(hash, u64::from(byte));
        }
        mix(hash, self.len)
    }

    /// The checksum of `bytes` in one go.
    pub(crate) fn of(bytes: &[u8]) -> u64 {
        let mut sum = Checksum::new();
        sum.update(bytes);
        sum.finish()
    }
}

/// `io::Write` that only checksums what it is given.
pub(crate) struct ChecksumWriter(pub(crate) Checksum);

impl Write for ChecksumWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The not yet finished pixel file of a [`PixelSink`].
struct Spill {
    writer: BufWriter<File>,
    temp: TempPath,
}

/// Collects the images of a dataset being built, in memory while they fit under the
/// storage's threshold and in a temporary file (laid out as a cache file) beyond it.
pub struct PixelSink {
    storage: PixelStorage,
    memory: Vec<u8>,
    spill: Option<Spill>,
    num_images: usize,
    checksum: Checksum,
}

impl PixelSink {
    /// A sink for about `expected_images` images: when those would not fit in memory under
    /// `storage`, it writes to a file from the start.
    pub fn new(storage: &PixelStorage, expected_images: usize) -> Result<Self, DataError> {
        let mut sink = PixelSink {
            storage: storage.clone(),
            memory: Vec::new(),
            spill: None,
            num_images: 0,
            checksum: Checksum::new(),
        };
        let expected_bytes = (expected_images as u64).saturating_mul(IMAGE_LEN as u64);
        if storage.keeps_in_memory(expected_bytes) {
            sink.memory
                .reserve(expected_images.saturating_mul(IMAGE_LEN));
        } else {
            sink.start_spill()?;
        }
        Ok(sink)
    }

    /// Number of images pushed so far.
    pub fn num_images(&self) -> usize {
        self.num_images
    }

    fn start_spill(&mut self) -> Result<(), DataError> {
        let dir = self.storage.spill_folder();
        std::fs::create_dir_all(&dir)
            .map_err(|e| DataError::io("cannot create folder", e, &dir))?;
        let temp = tempfile::Builder::new()
            .prefix(PENDING_PREFIX)
            .suffix(PENDING_SUFFIX)
            .tempfile_in(&dir)
            .map_err(|e| DataError::io("cannot create a temporary file in", e, &dir))?;
        let (file, temp) = temp.into_parts();
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let werr = |e: std::io::Error| DataError::io("cannot write file", e, &*temp);
        writer
            .write_all(&[0u8; PIXELS_OFFSET as usize])
            .map_err(werr)?;
        writer.write_all(&self.memory).map_err(werr)?;
        self.memory = Vec::new();
        self.spill = Some(Spill { writer, temp });
        Ok(())
    }

    /// Appends whole images (`images.len()` must be a multiple of `IMAGE_LEN`).
    pub fn push(&mut self, images: &[u8]) -> Result<(), DataError> {
        if !images.len().is_multiple_of(IMAGE_LEN) {
            return Err(DataError::InvalidOption(format!(
                "{} bytes are not a whole number of {IMAGE_LEN}-byte images",
                images.len()
            )));
        }
        let after = (self.num_images * IMAGE_LEN + images.len()) as u64;
        if self.spill.is_none() && !self.storage.keeps_in_memory(after) {
            self.start_spill()?;
        }
        match &mut self.spill {
            Some(spill) => spill
                .writer
                .write_all(images)
                .map_err(|e| DataError::io("cannot write file", e, &*spill.temp))?,
            None => self.memory.extend_from_slice(images),
        }
        self.checksum.update(images);
        self.num_images += images.len() / IMAGE_LEN;
        Ok(())
    }

    /// The finished store: in memory, or the pending file (deleted unless saved as a cache).
    pub fn finish(self) -> Result<Pixels, DataError> {
        let Some(Spill { writer, temp }) = self.spill else {
            let mut memory = self.memory;
            memory.shrink_to_fit();
            return Ok(Pixels::Memory(memory));
        };
        let file = writer
            .into_inner()
            .map_err(|e| DataError::io("cannot write file", e.into_error(), &*temp))?;
        let store = PixelFile::pending(
            file,
            temp,
            PIXELS_OFFSET,
            self.num_images,
            self.checksum.finish(),
        );
        Ok(Pixels::File(Arc::new(store)))
    }
}
