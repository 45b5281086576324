//! Image preprocessing: decode (png, jpeg, pgm/ppm, by content), gray→RGB, crop, bilinear
//! resize to 64x64, CHW `u8`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::imageops::FilterType;
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    DataError, OnBadImage, PixelSink, PixelStorage, Pixels, SkippedImage, IMAGE_LEN, IMAGE_SIZE,
};

/// A progress callback: `(done, total)`, called from worker threads.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Which part of an image to keep before resizing to 64x64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Crop {
    /// The largest centred square (for a 92x112 ORL image: 92x92 at x=0, y=10).
    #[default]
    Center,
    /// A user crop box in pixels; loading fails if it does not fit inside the image.
    Box {
        /// Left edge.
        x: u32,
        /// Top edge.
        y: u32,
        /// Width (> 0).
        w: u32,
        /// Height (> 0).
        h: u32,
    },
}

impl Crop {
    /// A short stable text for dataset ids: `"center"` or `"box=x,y,w,h"`.
    pub fn id_fragment(&self) -> String {
        match self {
            Crop::Center => "center".to_string(),
            Crop::Box { x, y, w, h } => format!("box={x},{y},{w},{h}"),
        }
    }

    /// The box `(x, y, w, h)` this crop selects in a `width x height` image; `path` is only used
    /// for the error when the box does not fit.
    pub fn rect(
        &self,
        width: u32,
        height: u32,
        path: &Path,
    ) -> Result<(u32, u32, u32, u32), DataError> {
        match *self {
            Crop::Center => {
                let side = width.min(height);
                if side == 0 {
                    return Err(DataError::Decode {
                        reason: format!("image is empty ({width}x{height})"),
                        path: path.to_path_buf(),
                    });
                }
                Ok(((width - side) / 2, (height - side) / 2, side, side))
            }
            Crop::Box { x, y, w, h } => {
                let fits_x = x.checked_add(w).is_some_and(|right| right <= width);
                let fits_y = y.checked_add(h).is_some_and(|bottom| bottom <= height);
                if w == 0 || h == 0 || !fits_x || !fits_y {
                    return Err(DataError::CropOutOfBounds {
                        x,
                        y,
                        w,
                        h,
                        width,
                        height,
                        path: path.to_path_buf(),
                    });
                }
                Ok((x, y, w, h))
            }
        }
    }
}

/// Decodes an image file (png, jpeg, pgm/ppm; the format is guessed from the content, the
/// extension is only a fallback) into 8-bit RGB. Never panics on bad input.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io("cannot open image", e, path))?
        .with_guessed_format()
        .map_err(|e| DataError::io("cannot read image", e, path))?;
    // Decoders are not supposed to panic, but a corrupt file must never take the app down.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    match decoded {
        Ok(Ok(image)) => Ok(image.to_rgb8()),
        Ok(Err(e)) => Err(DataError::Decode {
            reason: e.to_string(),
            path: path.to_path_buf(),
        }),
        Err(_) => Err(DataError::Decode {
            reason: "decoder panicked".to_string(),
            path: path.to_path_buf(),
        }),
    }
}

/// Crops `image` with `crop`, resizes the result to 64x64 (bilinear,
/// [`FilterType::Triangle`]) and returns [`IMAGE_LEN`] bytes in CHW order. `path` only names
/// the image in errors.
pub fn preprocess_rgb(image: &RgbImage, crop: Crop, path: &Path) -> Result<Vec<u8>, DataError> {
    let (x, y, w, h) = crop.rect(image.width(), image.height(), path)?;
    let cropped = image::imageops::crop_imm(image, x, y, w, h).to_image();
    let size = IMAGE_SIZE as u32;
    let resized = if (w, h) == (size, size) {
        cropped
    } else {
        image::imageops::resize(&cropped, size, size, FilterType::Triangle)
    };
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut chw = vec![0u8; IMAGE_LEN];
    for (i, pixel) in resized.pixels().enumerate() {
        for (c, &value) in pixel.0.iter().enumerate() {
            chw[c * plane + i] = value;
        }
    }
    Ok(chw)
}

/// Decodes, crops and resizes one image file to [`IMAGE_LEN`] bytes (CHW, RGB, 64x64).
pub fn preprocess_file(path: &Path, crop: Crop) -> Result<Vec<u8>, DataError> {
    let image = decode_rgb(path)?;
    preprocess_rgb(&image, crop, path)
}

/// The result of [`preprocess_files`].
#[derive(Clone, Debug, Default)]
pub struct Preprocessed {
    /// Positions (into the input path list) of the images that loaded, increasing.
    pub kept: Vec<usize>,
    /// `kept.len() * IMAGE_LEN` bytes, in the order of `kept` (in memory or in a pending
    /// pixel file, per the [`PixelStorage`] given).
    pub pixels: Pixels,
    /// The images that failed (only with [`OnBadImage::Skip`]), in path order.
    pub skipped: Vec<SkippedImage>,
}

impl Preprocessed {
    /// Errors with [`DataError::AllImagesBad`] (naming `dir`) if images were tried but none
    /// loaded.
    pub fn ensure_some(&self, dir: &Path) -> Result<(), DataError> {
        if self.kept.is_empty() {
            if let Some(first) = self.skipped.first() {
                return Err(DataError::AllImagesBad {
                    count: self.skipped.len(),
                    first: first.reason.clone(),
                    path: dir.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

/// Images decoded in parallel per chunk; the chunk's pixels (12 MiB) are then appended to the
/// sink in path order, so memory does not grow with the number of files.
const CHUNK_FILES: usize = 1024;

/// Preprocesses `paths` with the same `crop`, a chunk of files at a time (each chunk in
/// parallel with rayon), appending the images to a [`PixelSink`] under `storage` (so a large
/// set goes to a file instead of memory). A bad image is skipped (recorded and logged with
/// `log::warn!`) or fails the call with the first error in path order, according to
/// `on_bad_image`. `progress` gets `(done, total)` after each file.
pub fn preprocess_files(
    paths: &[PathBuf],
    crop: Crop,
    on_bad_image: OnBadImage,
    storage: &PixelStorage,
    progress: Option<Progress<'_>>,
) -> Result<Preprocessed, DataError> {
    let total = paths.len();
    if let Some(report) = progress {
        report(0, total);
    }
    let done = AtomicUsize::new(0);
    let mut sink = PixelSink::new(storage, total)?;
    let mut kept = Vec::with_capacity(total);
    let mut skipped = Vec::new();
    let mut chunk_pixels = Vec::with_capacity(CHUNK_FILES.min(total) * IMAGE_LEN);
    for (chunk_index, chunk) in paths.chunks(CHUNK_FILES).enumerate() {
        let results: Vec<Result<Vec<u8>, DataError>> = chunk
            .par_iter()
            .map(|path| {
                let result = preprocess_file(path, crop);
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(report) = progress {
                    report(finished, total);
                }
                result
            })
            .collect();
        chunk_pixels.clear();
        for (offset, result) in results.into_iter().enumerate() {
            let position = chunk_index * CHUNK_FILES + offset;
            match result {
                Ok(chw) => {
                    chunk_pixels.extend_from_slice(&chw);
                    kept.push(position);
                }
                Err(error) => match on_bad_image {
                    OnBadImage::Reject => return Err(error),
                    OnBadImage::Skip => {
                        let reason = error.to_string();
                        log::warn!("skipping image: {reason}");
                        skipped.push(SkippedImage {
                            path: paths[position].clone(),
                            reason,
                        });
                    }
                },
            }
        }
        sink.push(&chunk_pixels)?;
    }
    Ok(Preprocessed {
        kept,
        pixels: sink.finish()?,
        skipped,
    })
}
