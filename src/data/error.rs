//! The error type of the data module.

use std::path::PathBuf;

/// Everything that can go wrong while reading, preprocessing or caching a dataset.
///
/// Messages that concern a file name it last, e.g.
/// `cannot decode image: unexpected EOF: /x/y.jpg`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("{action}: {source}: {}", path.display())]
    Io {
        /// What was being attempted ("cannot read file", "cannot create folder", ...).
        action: &'static str,
        /// The underlying I/O error.
        source: std::io::Error,
        /// The file or folder concerned.
        path: PathBuf,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image: {reason}: {}", path.display())]
    Decode {
        /// Why decoding failed.
        reason: String,
        /// The image file.
        path: PathBuf,
    },
    /// A crop box does not fit inside the image.
    #[error(
        "crop box x={x} y={y} w={w} h={h} is outside the {width}x{height} image: {}",
        path.display()
    )]
    CropOutOfBounds {
        /// Left edge of the box.
        x: u32,
        /// Top edge of the box.
        y: u32,
        /// Box width.
        w: u32,
        /// Box height.
        h: u32,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// The image file.
        path: PathBuf,
    },
    /// A text file (attribute or partition list) is malformed.
    #[error("{message} at line {line}: {}", path.display())]
    Parse {
        /// What is wrong.
        message: String,
        /// 1-based line number.
        line: usize,
        /// The text file.
        path: PathBuf,
    },
    /// A dataset source is missing something or is inconsistent.
    #[error("{message}: {}", path.display())]
    Source {
        /// What is wrong.
        message: String,
        /// The file or folder concerned.
        path: PathBuf,
    },
    /// A folder holds no image files.
    #[error("no image files (jpg, jpeg, png, pgm, ppm) found: {}", path.display())]
    NoImages {
        /// The folder searched.
        path: PathBuf,
    },
    /// Every image of a source failed to load.
    #[error("all {count} images failed to load (first: {first}): {}", path.display())]
    AllImagesBad {
        /// How many images were tried.
        count: usize,
        /// The first failure, as text.
        first: String,
        /// The folder the images came from.
        path: PathBuf,
    },
    /// A `.npy` file is malformed or not a C-order uint8 array.
    #[error("invalid .npy data: {message}: {}", path.display())]
    Npy {
        /// What is wrong.
        message: String,
        /// The file (or the name of the embedded asset).
        path: PathBuf,
    },
    /// A dataset cache file is truncated, corrupt or of another format version.
    #[error("invalid dataset cache: {message}: {}", path.display())]
    Cache {
        /// What is wrong.
        message: String,
        /// The cache file.
        path: PathBuf,
    },
    /// A dataset breaks one of its invariants (lengths disagree, duplicate ids, ...).
    #[error("invalid dataset {id:?}: {message}")]
    Invalid {
        /// The dataset id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// A sample index is past the end of the dataset.
    #[error("sample index {index} is out of range for a dataset of {len} samples")]
    IndexOutOfRange {
        /// The offending index.
        index: usize,
        /// Number of samples in the dataset.
        len: usize,
    },
    /// An option has a value that makes no sense.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The cache directory could not be determined.
    #[error("cannot determine a cache directory: set LATENT_ATLAS_CACHE")]
    NoCacheDir,
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// Shorthand for [`DataError::Io`].
    pub(crate) fn io(
        action: &'static str,
        source: std::io::Error,
        path: impl Into<PathBuf>,
    ) -> Self {
        DataError::Io {
            action,
            source,
            path: path.into(),
        }
    }

    /// Shorthand for [`DataError::Parse`].
    pub(crate) fn parse(message: impl Into<String>, line: usize, path: impl Into<PathBuf>) -> Self {
        DataError::Parse {
            message: message.into(),
            line,
            path: path.into(),
        }
    }

    /// Shorthand for [`DataError::Source`].
    pub(crate) fn bad_source(message: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        DataError::Source {
            message: message.into(),
            path: path.into(),
        }
    }
}
