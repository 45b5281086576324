//! CelebA as users have it on disk: `img_align_celeba/000001.jpg …` (178x218 aligned
//! photos), `list_attr_celeba.txt` (40 binary attributes, -1/1) and `list_eval_partition.txt`
//! (0 train, 1 valid, 2 test).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::folder::has_image_extension;
use super::image_prep::{preprocess_files, Crop, Progress};
use super::{DataError, Dataset, OnBadImage, PixelStorage, SampleInfo, Split};

/// Folder (under the CelebA root) holding the images.
pub const CELEBA_IMAGE_DIR: &str = "img_align_celeba";
/// Attribute file (under the CelebA root).
pub const CELEBA_ATTR_FILE: &str = "list_attr_celeba.txt";
/// Partition file (under the CelebA root).
pub const CELEBA_PARTITION_FILE: &str = "list_eval_partition.txt";
/// Number of images the paper used (the first 70,000 in sorted file order).
pub const PAPER_SUBSET_LEN: usize = 70_000;

/// How CelebA images are cropped before resizing to 64x64 (bilinear).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CelebaCrop {
    /// The paper's crop of the 178x218 aligned images: the 128x128 box at x=25, y=45.
    #[default]
    Paper,
    /// The CelebA-HQ-style crop: the 880x880 box at x=60, y=20. It is meant for 1024x1024
    /// CelebA-HQ images placed in `img_align_celeba/`; on smaller images (such as the 178x218
    /// aligned ones) every image fails with an error giving the image size.
    Hq,
}

impl CelebaCrop {
    /// The crop box in pixels.
    pub fn crop(&self) -> Crop {
        match self {
            CelebaCrop::Paper => Crop::Box {
                x: 25,
                y: 45,
                w: 128,
                h: 128,
            },
            CelebaCrop::Hq => Crop::Box {
                x: 60,
                y: 20,
                w: 880,
                h: 880,
            },
        }
    }

    /// Short name used in dataset ids: `"paper"` or `"hq"`.
    pub fn name(&self) -> &'static str {
        match self {
            CelebaCrop::Paper => "paper",
            CelebaCrop::Hq => "hq",
        }
    }
}

/// How to load CelebA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CelebaOptions {
    /// Crop before resizing.
    pub crop: CelebaCrop,
    /// Load only the first `limit` images in sorted file-name order.
    pub limit: Option<usize>,
    /// What to do with an image that cannot be read.
    pub on_bad_image: OnBadImage,
}

/// The paper's support set (appendix B): 150 **0-based positions in the sorted CelebA file
/// list** (`000001.jpg` is position 0), all below 70,000 (the paper used the first 70,000
/// images). The paper does not say whether they are 0- or 1-based; 0-based is the natural
/// reading of its Python code. Map them to dataset indices with [`paper_support_set`].
pub const PAPER_SUPPORT_SET: [usize; 150] = [
    30, 58, 298, 702, 842, 873, 1779, 1809, 1844, 2590, 2719, 3888, 4114, 4223, 4550, 5659, 5718,
    6058, 6108, 6128, 6175, 6244, 6705, 6815, 7499, 7679, 8225, 9457, 11254, 11282, 12367, 13077,
    13371, 13993, 14193, 15390, 15711, 15817, 16505, 17186, 17458, 18250, 18283, 18582, 19080,
    19175, 19612, 22505, 22633, 23173, 23199, 23308, 23511, 24231, 26431, 27169, 28270, 28401,
    28433, 29453, 30248, 30269, 30619, 31741, 31795, 31836, 31978, 32272, 32770, 32828, 33332,
    33613, 33669, 34024, 35804, 35823, 35882, 35944, 36483, 36926, 37374, 37534, 37538, 37572,
    37682, 38194, 38483, 38677, 39232, 39267, 39424, 39901, 40405, 41464, 42969, 43035, 43199,
    44054, 44252, 44589, 44798, 45930, 46259, 46693, 48128, 48786, 48839, 49498, 50345, 52454,
    52516, 52673, 52753, 52834, 53071, 53308, 54937, 56128, 56492, 56693, 57844, 57927, 57942,
    58020, 58089, 58162, 58389, 58947, 60359, 61004, 61180, 61374, 61495, 61530, 61794, 61878,
    63535, 63891, 64328, 64342, 64663, 65041, 66277, 66321, 66663, 68027, 68753, 69274, 69750,
    69936,
];

/// Lines of a text file, numbered from 1, blank ones left out.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty())
}

fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError::io("cannot read file", e, path))
}

/// The parsed attribute file.
struct AttrTable {
    names: Vec<String>,
    rows: HashMap<String, Vec<i8>>,
}

/// Parses `list_attr_celeba.txt`; every row must name an image in `known`.
fn parse_attr_file(path: &Path, known: &HashSet<&str>) -> Result<AttrTable, DataError> {
    let text = read_text(path)?;
    let mut lines = numbered_lines(&text);
    let (count_line, count_text) = lines
        .next()
        .ok_or_else(|| DataError::parse("empty file (expected the image count)", 1, path))?;
    let count: usize = count_text.parse().map_err(|_| {
        DataError::parse(
            format!("expected the image count, found {count_text:?}"),
            count_line,
            path,
        )
    })?;
    let (names_line, names_text) = lines.next().ok_or_else(|| {
        DataError::parse("missing the attribute names line", count_line + 1, path)
    })?;
    let names: Vec<String> = names_text.split_whitespace().map(str::to_string).collect();
    if names.is_empty() {
        return Err(DataError::parse("no attribute names", names_line, path));
    }
    let mut rows = HashMap::new();
    for (line_number, line) in lines {
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap_or_default();
        let values: Vec<&str> = fields.collect();
        if values.len() != names.len() {
            return Err(DataError::parse(
                format!(
                    "expected {} attribute values, found {}",
                    names.len(),
                    values.len()
                ),
                line_number,
                path,
            ));
        }
        if !known.contains(name) {
            return Err(DataError::parse(
                format!("unknown image name {name:?} (not in {CELEBA_IMAGE_DIR})"),
                line_number,
                path,
            ));
        }
        let parsed = values
            .iter()
            .map(|v| match *v {
                "1" => Ok(1i8),
                "-1" => Ok(-1i8),
                other => Err(DataError::parse(
                    format!("attribute value {other:?} is not -1 or 1"),
                    line_number,
                    path,
                )),
            })
            .collect::<Result<Vec<i8>, DataError>>()?;
        if rows.insert(name.to_string(), parsed).is_some() {
            return Err(DataError::parse(
                format!("duplicate image name {name:?}"),
                line_number,
                path,
            ));
        }
    }
    if rows.len() != count {
        return Err(DataError::parse(
            format!(
                "the header gives {count} images but the file lists {}",
                rows.len()
            ),
            count_line,
            path,
        ));
    }
    Ok(AttrTable { names, rows })
}

/// Parses `list_eval_partition.txt`; every row must name an image in `known`.
fn parse_partition_file(
    path: &Path,
    known: &HashSet<&str>,
) -> Result<HashMap<String, Split>, DataError> {
    let text = read_text(path)?;
    let mut splits = HashMap::new();
    for (line_number, line) in numbered_lines(&text) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, partition] = fields[..] else {
            return Err(DataError::parse(
                format!(
                    "expected 2 columns (image, partition), found {}",
                    fields.len()
                ),
                line_number,
                path,
            ));
        };
        let split = match partition {
            "0" => Split::Train,
            "1" => Split::Valid,
            "2" => Split::Test,
            other => {
                return Err(DataError::parse(
                    format!("partition {other:?} is not 0, 1 or 2"),
                    line_number,
                    path,
                ))
            }
        };
        if !known.contains(name) {
            return Err(DataError::parse(
                format!("unknown image name {name:?} (not in {CELEBA_IMAGE_DIR})"),
                line_number,
                path,
            ));
        }
        if splits.insert(name.to_string(), split).is_some() {
            return Err(DataError::parse(
                format!("duplicate image name {name:?}"),
                line_number,
                path,
            ));
        }
    }
    Ok(splits)
}

/// Image file names in `dir` (not recursive), sorted.
fn list_celeba_images(dir: &Path) -> Result<Vec<String>, DataError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| DataError::io("cannot read folder", e, dir))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io("cannot read folder", e, dir))?;
        let path = entry.path();
        if has_image_extension(&path) && path.is_file() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The dataset id of a CelebA load: `"celeba:{absolute root}:first={limit or all}:crop={paper|hq}"`.
pub fn celeba_dataset_id(root: &Path, opts: &CelebaOptions) -> String {
    let absolute = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let first = opts
        .limit
        .map_or_else(|| "all".to_string(), |n| n.to_string());
    format!(
        "celeba:{}:first={first}:crop={}",
        absolute.display(),
        opts.crop.name()
    )
}

/// Loads CelebA from `root` (see the module docs for the layout): the images of
/// `img_align_celeba/` sorted by file name (the first `opts.limit` of them if given), cropped
/// with `opts.crop` and resized to 64x64 in parallel (`progress` gets `(done, total)`), with
/// their 40 attributes ([`SampleInfo::attributes`]) and partition (as splits). Sample ids are
/// the file names.
///
/// Errors name the file (and line): missing files or folder, a malformed line, a wrong number
/// of columns, a row naming an image not in the folder, an image without attribute or
/// partition row, and bad images per `opts.on_bad_image`. Pixels are kept per
/// [`PixelStorage::from_env`] (see [`load_celeba_with`]).
pub fn load_celeba(
    root: &Path,
    opts: &CelebaOptions,
    progress: Option<Progress<'_>>,
) -> Result<Dataset, DataError> {
    load_celeba_with(root, opts, &PixelStorage::from_env(), progress)
}

/// Like [`load_celeba`], with the images streamed into pixel storage per `storage` (memory,
/// or a pending pixel file: the full 202,599 images take 2.5 GB), a chunk of files at a time.
pub fn load_celeba_with(
    root: &Path,
    opts: &CelebaOptions,
    storage: &PixelStorage,
    progress: Option<Progress<'_>>,
) -> Result<Dataset, DataError> {
    let image_dir = root.join(CELEBA_IMAGE_DIR);
    let attr_path = root.join(CELEBA_ATTR_FILE);
    let partition_path = root.join(CELEBA_PARTITION_FILE);
    let all_names = list_celeba_images(&image_dir)?;
    if all_names.is_empty() {
        return Err(DataError::NoImages { path: image_dir });
    }
    let known: HashSet<&str> = all_names.iter().map(String::as_str).collect();
    let attrs = parse_attr_file(&attr_path, &known)?;
    let partitions = parse_partition_file(&partition_path, &known)?;

    let selected = &all_names[..opts
        .limit
        .map_or(all_names.len(), |n| n.min(all_names.len()))];
    for name in selected {
        if !attrs.rows.contains_key(name) {
            return Err(DataError::bad_source(
                format!("no attribute row for image {name}"),
                &attr_path,
            ));
        }
        if !partitions.contains_key(name) {
            return Err(DataError::bad_source(
                format!("no partition row for image {name}"),
                &partition_path,
            ));
        }
    }
    let paths: Vec<PathBuf> = selected.iter().map(|name| image_dir.join(name)).collect();
    let prepared = preprocess_files(
        &paths,
        opts.crop.crop(),
        opts.on_bad_image,
        storage,
        progress,
    )?;
    prepared.ensure_some(&image_dir)?;

    let mut sample_ids = Vec::with_capacity(prepared.kept.len());
    let mut splits = Vec::with_capacity(prepared.kept.len());
    let mut attributes = Vec::with_capacity(prepared.kept.len() * attrs.names.len());
    for &position in &prepared.kept {
        let name = &selected[position];
        sample_ids.push(name.clone());
        splits.push(partitions.get(name).copied().unwrap_or(Split::Train));
        if let Some(row) = attrs.rows.get(name) {
            attributes.extend_from_slice(row);
        }
    }
    Ok(Dataset {
        id: celeba_dataset_id(root, opts),
        sample_ids,
        splits,
        pixels: prepared.pixels,
        info: SampleInfo {
            attribute_names: attrs.names,
            attributes: Some(attributes),
            ..SampleInfo::default()
        },
        skipped: prepared.skipped,
    })
}

/// Maps [`PAPER_SUPPORT_SET`] (positions in the sorted CelebA file list) to indices into `ds`,
/// in the order of the constant. Skipped images are taken into account (they still occupy
/// their position in the file list); a support image that was skipped is an error. Errors if
/// fewer than 70,000 images are loaded.
pub fn paper_support_set(ds: &Dataset) -> Result<Vec<usize>, DataError> {
    if ds.len() < PAPER_SUBSET_LEN {
        return Err(DataError::Invalid {
            id: ds.id.clone(),
            message: format!(
                "the paper's support set needs the first {PAPER_SUBSET_LEN} CelebA images, \
                 but only {} are loaded",
                ds.len()
            ),
        });
    }
    let mut files: Vec<(&str, Option<usize>)> = ds
        .sample_ids
        .iter()
        .enumerate()
        .map(|(index, id)| (id.as_str(), Some(index)))
        .collect();
    files.extend(ds.skipped.iter().map(|s| {
        let name = s
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        (name, None)
    }));
    files.sort_unstable();
    PAPER_SUPPORT_SET
        .iter()
        .map(|&position| match files.get(position) {
            Some((_, Some(index))) => Ok(*index),
            Some((name, None)) => Err(DataError::Invalid {
                id: ds.id.clone(),
                message: format!("support set image {name} (position {position}) was skipped"),
            }),
            None => Err(DataError::IndexOutOfRange {
                index: position,
                len: files.len(),
            }),
        })
        .collect()
}
