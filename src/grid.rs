//! Writing image batches as PNG grids (sample grids, reconstruction grids, montages).

use std::path::Path;

use candle_core::Tensor;

/// Errors from writing a grid.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// The tensor is not `[n, 3, h, w]` or could not be read.
    #[error("bad image batch: {0}")]
    BadBatch(String),
    /// Encoding or writing failed.
    #[error("cannot write PNG: {msg}: {path}")]
    Write {
        /// What failed.
        msg: String,
        /// The output file.
        path: std::path::PathBuf,
    },
}

/// Converts `[n, 3, h, w]` floats in [0, 1] to `n` RGB images.
pub fn to_rgb_images(images: &Tensor) -> Result<Vec<image::RgbImage>, GridError> {
    let bad = |e: candle_core::Error| GridError::BadBatch(e.to_string());
    let (n, c, h, w) = images.dims4().map_err(bad)?;
    if c != 3 {
        return Err(GridError::BadBatch(format!("expected 3 channels, got {c}")));
    }
    let data: Vec<f32> = images
        .to_device(&candle_core::Device::Cpu)
        .map_err(bad)?
        .flatten_all()
        .map_err(bad)?
        .to_vec1()
        .map_err(bad)?;
    let plane = h * w;
    Ok((0..n)
        .map(|i| {
            let img = &data[i * 3 * plane..(i + 1) * 3 * plane];
            image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let px = |ch: usize| (img[ch * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8;
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect())
}

/// Tiles images into rows of `cols` with a `gap`-pixel dark border.
pub fn tile(images: &[image::RgbImage], cols: usize, gap: u32) -> image::RgbImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((64, 64));
    let mut out = image::RgbImage::from_pixel(
        cols as u32 * (w + gap) + gap,
        rows as u32 * (h + gap) + gap,
        image::Rgb([24, 24, 24]),
    );
    for (i, img) in images.iter().enumerate() {
        let (r, c) = ((i / cols) as u32, (i % cols) as u32);
        image::imageops::replace(
            &mut out,
            img,
            (gap + c * (w + gap)) as i64,
            (gap + r * (h + gap)) as i64,
        );
    }
    out
}

/// Writes an RGB image as PNG atomically (temporary file, then rename).
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<(), GridError> {
    let werr = |msg: String| GridError::Write {
        msg,
        path: path.to_path_buf(),
    };
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| werr(e.to_string()))?;
    crate::model::store::write_atomic(path, &bytes).map_err(|e| werr(e.to_string()))
}

/// Writes `[n, 3, h, w]` images in [0, 1] as a PNG grid with `cols` columns.
pub fn save_grid(images: &Tensor, cols: usize, path: &Path) -> Result<(), GridError> {
    save_png(&tile(&to_rgb_images(images)?, cols, 2), path)
}
