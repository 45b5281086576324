//! Any folder of images (searched recursively).

use std::path::{Path, PathBuf};

use super::image_prep::{preprocess_files, Crop, Progress};
use super::{hash_split, DataError, Dataset, OnBadImage, PixelStorage, SampleInfo};

/// File extensions (lower case) that are treated as images.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "pgm", "ppm"];

/// How to load an image folder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FolderOptions {
    /// Which part of each image to keep before resizing to 64x64.
    pub crop: Crop,
    /// What to do with an image that cannot be read.
    pub on_bad_image: OnBadImage,
    /// Fraction of the images put in the test split (by [`hash_split`] of the sample id), in
    /// `[0, 1]`.
    pub test_fraction: f64,
    /// Load only the first `limit` image files (in sorted relative-path order).
    pub limit: Option<usize>,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            crop: Crop::Center,
            on_bad_image: OnBadImage::Skip,
            test_fraction: 0.2,
            limit: None,
        }
    }
}

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| e.eq_ignore_ascii_case(known))
    })
}

/// All image files under `dir` (recursive; symbolic links to folders are not followed),
/// as `(relative id with '/' separators, full path)`, sorted by id.
pub fn list_image_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder)
            .map_err(|e| DataError::io("cannot read folder", e, &folder))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io("cannot read folder", e, &folder))?;
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(|e| DataError::io("cannot read folder entry", e, &path))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if has_image_extension(&path) && (file_type.is_file() || path.is_file()) {
                let id = relative_id(dir, &path);
                found.push((id, path));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// `path` relative to `dir`, components joined by '/'.
fn relative_id(dir: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(dir).unwrap_or(path);
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// The dataset id of a folder load: `"folder:{absolute dir}:{crop}:test={fraction}"`, plus
/// `":first={limit}"` when limited.
pub fn folder_dataset_id(dir: &Path, opts: &FolderOptions) -> String {
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut id = format!(
        "folder:{}:{}:test={}",
        absolute.display(),
        opts.crop.id_fragment(),
        opts.test_fraction
    );
    if let Some(limit) = opts.limit {
        id.push_str(&format!(":first={limit}"));
    }
    id
}

/// Loads every image under `dir` (recursively; extensions jpg, jpeg, png, pgm, ppm in any
/// case; the format itself is detected from the content), sorted by relative path, which is
/// also the sample id (with '/' separators). Images are cropped with `opts.crop` and resized
/// to 64x64 in parallel; `progress` gets `(done, total)`. Splits come from [`hash_split`].
///
/// Errors: no image files, every image bad, or (with [`OnBadImage::Reject`]) any bad image.
/// Pixels are kept per [`PixelStorage::from_env`] (see [`load_folder_with`]).
pub fn load_folder(
    dir: &Path,
    opts: &FolderOptions,
    progress: Option<Progress<'_>>,
) -> Result<Dataset, DataError> {
    load_folder_with(dir, opts, &PixelStorage::from_env(), progress)
}

/// Like [`load_folder`], with the images streamed into pixel storage per `storage` (memory,
/// or a pending pixel file for a large folder), a chunk of files at a time.
pub fn load_folder_with(
    dir: &Path,
    opts: &FolderOptions,
    storage: &PixelStorage,
    progress: Option<Progress<'_>>,
) -> Result<Dataset, DataError> {
    if !(0.0..=1.0).contains(&opts.test_fraction) {
        return Err(DataError::InvalidOption(format!(
            "test fraction {} is not in [0, 1]",
            opts.test_fraction
        )));
    }
    let mut files = list_image_files(dir)?;
    if let Some(limit) = opts.limit {
        files.truncate(limit);
    }
    if files.is_empty() {
        return Err(DataError::NoImages {
            path: dir.to_path_buf(),
        });
    }
    let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    let prepared = preprocess_files(&paths, opts.crop, opts.on_bad_image, storage, progress)?;
    prepared.ensure_some(dir)?;
    let sample_ids: Vec<String> = prepared.kept.iter().map(|&i| files[i].0.clone()).collect();
    let splits = sample_ids
        .iter()
        .map(|id| hash_split(id, opts.test_fraction))
        .collect();
    Ok(Dataset {
        id: folder_dataset_id(dir, opts),
        sample_ids,
        splits,
        pixels: prepared.pixels,
        info: SampleInfo::default(),
        skipped: prepared.skipped,
    })
}
