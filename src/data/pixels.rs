//! Where a dataset's pixels live: in memory, or as a block of a file read on demand.
//!
//! A [`Pixels`] store holds `N * IMAGE_LEN` bytes (N images, CHW, RGB). Small datasets keep
//! them in a `Vec<u8>`; large ones (more than [`PixelStorage::max_in_memory_bytes`], by default
//! [`DEFAULT_MAX_IN_MEMORY_BYTES`], overridable with `$LATENT_ATLAS_MAX_IN_MEMORY_MB`) keep them
//! in a file and read the images a batch asks for with positioned reads, so memory stays
//! bounded whatever N is. Loaders append images to a [`PixelSink`](super::PixelSink), which
//! spills to a temporary file in the cache folder once the data will not fit; that file is
//! laid out as a dataset cache file, so saving the cache only appends the metadata and renames
//! it.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tempfile::TempPath;

use super::sink::Checksum;
use super::{DataError, IMAGE_LEN};

/// Environment variable: the largest pixel block (in MiB, may be fractional) kept in memory;
/// larger datasets are read from disk on demand. `0` reads every non-empty dataset from disk.
pub const MAX_IN_MEMORY_ENV: &str = "LATENT_ATLAS_MAX_IN_MEMORY_MB";
/// Default of [`PixelStorage::max_in_memory_bytes`]: 256 MiB (about 21,800 images).
pub const DEFAULT_MAX_IN_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Images per read when a file-backed store is scanned from start to end.
const SCAN_IMAGES: usize = 1024;

/// Where the pixels of a dataset go while it is built or opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PixelStorage {
    /// Pixel blocks of at most this many bytes are held in memory; larger ones stay in a file
    /// and are read on demand.
    pub max_in_memory_bytes: u64,
    /// Folder for the pixel file of a large dataset being built; `None`: the cache folder
    /// ([`cache_dir`](super::cache_dir)), or the system temporary folder if that fails. Use the
    /// cache folder's file system so that saving the cache is a rename, not a copy.
    pub spill_dir: Option<PathBuf>,
}

impl Default for PixelStorage {
    fn default() -> Self {
        PixelStorage {
            max_in_memory_bytes: DEFAULT_MAX_IN_MEMORY_BYTES,
            spill_dir: None,
        }
    }
}

impl PixelStorage {
    /// The default storage with the threshold from `$LATENT_ATLAS_MAX_IN_MEMORY_MB` when set
    /// (an unparsable value is logged and ignored).
    pub fn from_env() -> Self {
        let mut storage = PixelStorage::default();
        if let Some(text) = std::env::var_os(MAX_IN_MEMORY_ENV) {
            let text = text.to_string_lossy();
            match text.trim().parse::<f64>() {
                Ok(mib) if mib >= 0.0 && mib.is_finite() => {
                    storage.max_in_memory_bytes = (mib * 1024.0 * 1024.0) as u64;
                }
                _ => log::warn!(
                    "ignoring {MAX_IN_MEMORY_ENV}={text:?}: not a number of MiB >= 0; using {} MiB",
                    DEFAULT_MAX_IN_MEMORY_BYTES >> 20
                ),
            }
        }
        storage
    }

    /// Everything in memory, whatever the size.
    pub fn in_memory() -> Self {
        PixelStorage {
            max_in_memory_bytes: u64::MAX,
            spill_dir: None,
        }
    }

    /// Everything (but empty datasets) on disk; pixel files of datasets being built go to
    /// `spill_dir` (see [`PixelStorage::spill_dir`]).
    pub fn on_disk(spill_dir: Option<PathBuf>) -> Self {
        PixelStorage {
            max_in_memory_bytes: 0,
            spill_dir,
        }
    }

    /// Whether a pixel block of `bytes` bytes is kept in memory.
    pub fn keeps_in_memory(&self, bytes: u64) -> bool {
        bytes <= self.max_in_memory_bytes
    }

    /// The folder for pending pixel files (see [`PixelStorage::spill_dir`]).
    pub(crate) fn spill_folder(&self) -> PathBuf {
        if let Some(dir) = &self.spill_dir {
            return dir.clone();
        }
        match super::cache_dir() {
            Ok(dir) => dir,
            Err(error) => {
                log::warn!("{error}; building pixel files in the temporary folder");
                std::env::temp_dir()
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pixels kept in a file: `num_images * IMAGE_LEN` bytes from byte `offset`, read on demand
/// with positioned reads (safe from several threads at once). The file stays open, so it
/// remains readable even if a newer cache is renamed over its path.
pub struct PixelFile {
    file: File,
    path: Mutex<PathBuf>,
    offset: u64,
    num_images: usize,
    checksum: Option<u64>,
    /// Set while this is the unsaved pixel file of a dataset being built (deleted on drop).
    pending: Mutex<Option<TempPath>>,
    /// Serialises seek-based I/O (reads on platforms without positioned reads, and the
    /// metadata append that turns a pending file into a cache file).
    io_lock: Mutex<()>,
}

impl PixelFile {
    /// A store over an open cache file: `num_images` images from byte `offset` of `file`
    /// (named `path` in errors), with the checksum the file's header gives, if any.
    pub(crate) fn open(
        file: File,
        path: &Path,
        offset: u64,
        num_images: usize,
        checksum: Option<u64>,
    ) -> Self {
        PixelFile {
            file,
            path: Mutex::new(path.to_path_buf()),
            offset,
            num_images,
            checksum,
            pending: Mutex::new(None),
            io_lock: Mutex::new(()),
        }
    }

    /// The unsaved pixel file of a dataset being built: `num_images` images from byte
    /// `offset` of `file`, which `temp` deletes unless it is saved as a cache.
    pub(crate) fn pending(
        file: File,
        temp: TempPath,
        offset: u64,
        num_images: usize,
        checksum: u64,
    ) -> Self {
        PixelFile {
            file,
            path: Mutex::new(temp.to_path_buf()),
            offset,
            num_images,
            checksum: Some(checksum),
            pending: Mutex::new(Some(temp)),
            io_lock: Mutex::new(()),
        }
    }

    /// The file (its current name: a pending file is renamed when saved as a cache).
    pub fn path(&self) -> PathBuf {
        lock(&self.path).clone()
    }

    /// Number of images.
    pub fn num_images(&self) -> usize {
        self.num_images
    }

    /// Whether this is the not yet saved pixel file of a dataset being built.
    pub fn is_pending(&self) -> bool {
        lock(&self.pending).is_some()
    }

    /// The checksum of the pixel bytes recorded when they were written (not verified).
    pub(crate) fn known_checksum(&self) -> Option<u64> {
        self.checksum
    }

    /// Reads images `first .. first + out.len() / IMAGE_LEN` into `out`.
    pub fn read_into(&self, first: usize, out: &mut [u8]) -> Result<(), DataError> {
        let count = out.len() / IMAGE_LEN;
        let end = first
            .checked_add(count)
            .filter(|&end| end <= self.num_images);
        if !out.len().is_multiple_of(IMAGE_LEN) || end.is_none() {
            return Err(DataError::IndexOutOfRange {
                index: first.saturating_add(count.saturating_sub(1)),
                len: self.num_images,
            });
        }
        let position = self.offset + (first as u64) * (IMAGE_LEN as u64);
        self.read_exact_at(out, position).map_err(|e| {
            let path = self.path();
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DataError::Cache {
                    message: format!(
                        "truncated: images {first}..{} lie past the end of the file",
                        first + count
                    ),
                    path,
                }
            } else {
                DataError::io("cannot read pixels from", e, path)
            }
        })
    }

    #[cfg(unix)]
    fn read_exact_at(&self, out: &mut [u8], position: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(out, position)
    }

    #[cfg(not(unix))]
    fn read_exact_at(&self, out: &mut [u8], position: u64) -> std::io::Result<()> {
        use std::io::Read;
        let _guard = lock(&self.io_lock);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(position))?;
        file.read_exact(out)
    }

    /// If this is a pending pixel file in the folder of `path`: truncates it to the pixels,
    /// appends what `write_rest` writes, writes `prefix` at the start, syncs and renames it to
    /// `path`. Returns `Ok(false)` (and changes nothing visible) when it is not pending, lies in
    /// another folder, or cannot be renamed there, so the caller writes a copy instead.
    pub(crate) fn adopt_as(
        &self,
        path: &Path,
        prefix: &[u8],
        write_rest: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<bool, DataError> {
        let mut pending = lock(&self.pending);
        let Some(temp) = pending.as_ref() else {
            return Ok(false);
        };
        let folder = |p: &Path| {
            let parent = match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::canonicalize(&parent).unwrap_or(parent)
        };
        if folder(temp) != folder(path) {
            return Ok(false);
        }
        let temp_path = temp.to_path_buf();
        let werr = |e: std::io::Error| DataError::io("cannot write file", e, path);
        {
            let _guard = lock(&self.io_lock);
            let pixels_end = self.offset + (self.num_images as u64) * (IMAGE_LEN as u64);
            self.file.set_len(pixels_end).map_err(werr)?;
            let mut file = &self.file;
            file.seek(SeekFrom::Start(pixels_end)).map_err(werr)?;
            let mut writer = BufWriter::new(file);
            write_rest(&mut writer).map_err(werr)?;
            writer.flush().map_err(werr)?;
            drop(writer);
            file.seek(SeekFrom::Start(0)).map_err(werr)?;
            file.write_all(prefix).map_err(werr)?;
            self.file.sync_all().map_err(werr)?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.file
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| DataError::io("cannot set permissions of", e, path))?;
        }
        let Some(temp) = pending.take() else {
            return Ok(false);
        };
        match temp.persist(path) {
            Ok(()) => {
                *lock(&self.path) = path.to_path_buf();
                Ok(true)
            }
            Err(error) => {
                log::debug!(
                    "cannot rename {} to {} ({}); writing a copy",
                    temp_path.display(),
                    path.display(),
                    error.error
                );
                *pending = Some(error.path);
                Ok(false)
            }
        }
    }
}

/// The pixels of a dataset: `N * IMAGE_LEN` bytes, N images in CHW order.
#[derive(Clone)]
pub enum Pixels {
    /// All bytes in memory.
    Memory(Vec<u8>),
    /// Bytes in a file, read on demand (shared by clones of the dataset).
    File(Arc<PixelFile>),
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::Memory(Vec::new())
    }
}

impl From<Vec<u8>> for Pixels {
    fn from(bytes: Vec<u8>) -> Self {
        Pixels::Memory(bytes)
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pixels::Memory(bytes) => write!(f, "Pixels::Memory({} bytes)", bytes.len()),
            Pixels::File(file) => write!(
                f,
                "Pixels::File({} images in {})",
                file.num_images,
                file.path().display()
            ),
        }
    }
}

impl Pixels {
    /// Number of bytes (`N * IMAGE_LEN` for a valid dataset).
    pub fn len(&self) -> usize {
        match self {
            Pixels::Memory(bytes) => bytes.len(),
            Pixels::File(file) => file.num_images * IMAGE_LEN,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of whole images.
    pub fn num_images(&self) -> usize {
        self.len() / IMAGE_LEN
    }

    /// Whether the bytes are in memory (else they are read from a file on demand).
    pub fn is_in_memory(&self) -> bool {
        matches!(self, Pixels::Memory(_))
    }

    /// The file the bytes are read from, for a file-backed store.
    pub fn file_path(&self) -> Option<PathBuf> {
        match self {
            Pixels::Memory(_) => None,
            Pixels::File(file) => Some(file.path()),
        }
    }

    /// All bytes, when in memory.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match self {
            Pixels::Memory(bytes) => Some(bytes),
            Pixels::File(_) => None,
        }
    }

    /// All bytes, mutable, when in memory.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match self {
            Pixels::Memory(bytes) => Some(bytes),
            Pixels::File(_) => None,
        }
    }

    /// Images `first .. first + count`, borrowed when in memory, read when in a file. Errors
    /// when the range is past the end or the file cannot be read.
    pub fn images(&self, first: usize, count: usize) -> Result<Cow<'_, [u8]>, DataError> {
        let n = self.num_images();
        let end = first.checked_add(count).filter(|&end| end <= n);
        let Some(end) = end else {
            return Err(DataError::IndexOutOfRange {
                index: first.saturating_add(count.saturating_sub(1)),
                len: n,
            });
        };
        match self {
            Pixels::Memory(bytes) => Ok(Cow::Borrowed(&bytes[first * IMAGE_LEN..end * IMAGE_LEN])),
            Pixels::File(file) => {
                let mut out = vec![0u8; count * IMAGE_LEN];
                file.read_into(first, &mut out)?;
                Ok(Cow::Owned(out))
            }
        }
    }

    /// Calls `visit` with consecutive runs of at most `images_per_chunk` images, in order.
    pub fn for_each_chunk(
        &self,
        images_per_chunk: usize,
        mut visit: impl FnMut(&[u8]) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let n = self.num_images();
        let step = images_per_chunk.max(1);
        let mut first = 0;
        while first < n {
            let count = step.min(n - first);
            visit(&self.images(first, count)?)?;
            first += count;
        }
        Ok(())
    }

    /// All bytes in a `Vec` (reads the whole file for a file-backed store).
    pub fn to_vec(&self) -> Result<Vec<u8>, DataError> {
        if let Pixels::Memory(bytes) = self {
            return Ok(bytes.clone());
        }
        let mut out = Vec::with_capacity(self.len());
        self.for_each_chunk(SCAN_IMAGES, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// The [`Checksum`] of all bytes: recorded at write time for a file-backed store when
    /// known, else computed (reading the whole file).
    pub(crate) fn checksum(&self) -> Result<u64, DataError> {
        match self {
            Pixels::Memory(bytes) => Ok(Checksum::of(bytes)),
            Pixels::File(file) => match file.known_checksum() {
                Some(sum) => Ok(sum),
                None => self.computed_checksum(),
            },
        }
    }

    /// The [`Checksum`] of all bytes, always computed from the data.
    pub(crate) fn computed_checksum(&self) -> Result<u64, DataError> {
        let mut sum = Checksum::new();
        self.for_each_chunk(SCAN_IMAGES, |chunk| {
            sum.update(chunk);
            Ok(())
        })?;
        Ok(sum.finish())
    }
}

impl PartialEq for Pixels {
    /// Equal bytes (a file-backed store is read chunk by chunk; a read error counts as
    /// unequal).
    fn eq(&self, other: &Self) -> bool {
        if let (Pixels::Memory(a), Pixels::Memory(b)) = (self, other) {
            return a == b;
        }
        if let (Pixels::File(a), Pixels::File(b)) = (self, other) {
            if Arc::ptr_eq(a, b) {
                return true;
            }
        }
        if self.len() != other.len() {
            return false;
        }
        let n = self.num_images();
        let mut first = 0;
        while first < n {
            let count = SCAN_IMAGES.min(n - first);
            match (self.images(first, count), other.images(first, count)) {
                (Ok(a), Ok(b)) if a == b => {}
                _ => return false,
            }
            first += count;
        }
        true
    }
}
