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

/// The paper's Fig. 2 for samples `idx` of `ds`: in blocks of `per_row` samples, a row of
/// originals, a row of source reconstructions (`source` decoding `source_codes`, one row per
/// sample of `idx`) and a row of target decodings after relocation through `map`. Decodes in
/// chunks of 64. Returns the montage and the mean per-pixel MSE of both decodings against the
/// originals.
pub struct RelocationMontage {
    /// The tiled image.
    pub image: image::RgbImage,
    /// Mean MSE of the source reconstructions.
    pub recon_mse: f64,
    /// Mean MSE of the target decodings after relocation.
    pub mapped_mse: f64,
}

/// Builds a [`RelocationMontage`]; see its documentation.
pub fn relocation_montage(
    ds: &crate::data::Dataset,
    idx: &[usize],
    source: &dyn crate::model::LatentModel,
    source_codes: &nalgebra::DMatrix<f32>,
    target: &dyn crate::model::LatentModel,
    map: &crate::latent::estimators::LinearMap,
    per_row: usize,
) -> anyhow::Result<RelocationMontage> {
    use anyhow::Context as _;
    if idx.is_empty() {
        anyhow::bail!("no samples to show");
    }
    if source_codes.nrows() != idx.len() {
        anyhow::bail!(
            "{} source codes for {} samples",
            source_codes.nrows(),
            idx.len()
        );
    }
    let per_row = per_row.clamp(1, idx.len());
    let cpu = candle_core::Device::Cpu;
    let to_tensor = |m: &nalgebra::DMatrix<f32>, dev: &candle_core::Device| {
        Tensor::from_vec(
            m.transpose().as_slice().to_vec(),
            (m.nrows(), m.ncols()),
            dev,
        )
    };
    let (mut originals, mut recons, mut mapped) = (Vec::new(), Vec::new(), Vec::new());
    let (mut recon_sum, mut mapped_sum) = (0.0f64, 0.0f64);
    for start in (0..idx.len()).step_by(64) {
        let end = (start + 64).min(idx.len());
        let chunk = &idx[start..end];
        let x = ds.batch(chunk, &cpu)?;
        let zs = source_codes.rows(start, end - start).into_owned();
        let r = source
            .decode(&to_tensor(&zs, source.device())?)
            .with_context(|| format!("decoding with {}", source.name()))?
            .to_device(&cpu)?;
        let zt = map.apply(&zs).context("relocating the codes")?;
        let m = target
            .decode(&to_tensor(&zt, target.device())?)
            .with_context(|| format!("decoding with {}", target.name()))?
            .to_device(&cpu)?;
        let sq_sum = |y: &Tensor| -> anyhow::Result<f64> {
            Ok(f64::from((y - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()?) * chunk.len() as f64)
        };
        recon_sum += sq_sum(&r)?;
        mapped_sum += sq_sum(&m)?;
        originals.extend(to_rgb_images(&x)?);
        recons.extend(to_rgb_images(&r)?);
        mapped.extend(to_rgb_images(&m)?);
    }
    let blank = image::RgbImage::from_pixel(
        crate::data::IMAGE_SIZE as u32,
        crate::data::IMAGE_SIZE as u32,
        image::Rgb([24, 24, 24]),
    );
    let mut cells = Vec::new();
    for start in (0..idx.len()).step_by(per_row) {
        let end = (start + per_row).min(idx.len());
        for row in [&originals, &recons, &mapped] {
            cells.extend(row[start..end].iter().cloned());
            cells.extend(std::iter::repeat_n(blank.clone(), per_row - (end - start)));
        }
    }
    let n = idx.len() as f64;
    Ok(RelocationMontage {
        image: tile(&cells, per_row, 2),
        recon_mse: recon_sum / n,
        mapped_mse: mapped_sum / n,
    })
}
