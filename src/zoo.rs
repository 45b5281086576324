//! The shipped zoo and dataset specs: resolving `--model` names and `--data` specs, shared by
//! the command line and the explorer. Datasets are cached on disk after the first load.
//!
//! Specs: `synthfaces` (12,000 images, seed 0) or `synthfaces:n=N:seed=S`; `orl`;
//! `folder:PATH` (centre crop); `celeba:ROOT` with optional `:first=N` and `:crop=hq`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::data::{
    self, synthfaces, CelebaCrop, CelebaOptions, Crop, Dataset, FolderOptions, OnBadImage,
};
use crate::model::{self, Model};

/// Where the shipped assets are: `$LATENT_ATLAS_ASSETS`, else `assets/` of this source tree.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("LATENT_ATLAS_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// The shipped model zoo directory.
pub fn zoo_dir() -> PathBuf {
    assets_dir().join("models")
}

/// Resolves `--model`: a directory path, or the name of a model in the zoo.
pub fn model_dir(name_or_dir: &str) -> Result<PathBuf> {
    let p = Path::new(name_or_dir);
    if p.join(model::store::CONFIG_FILE).exists() {
        return Ok(p.to_path_buf());
    }
    let z = zoo_dir().join(name_or_dir);
    if z.join(model::store::CONFIG_FILE).exists() {
        return Ok(z);
    }
    bail!(
        "no model `{name_or_dir}`: neither a model directory nor a model of the zoo in {}",
        zoo_dir().display()
    )
}

/// Loads a model by name or directory on `device`.
pub fn load_model(name_or_dir: &str, device: &candle_core::Device) -> Result<Model> {
    let dir = model_dir(name_or_dir)?;
    model::load_model(&dir, device).with_context(|| format!("loading model {}", dir.display()))
}

fn kv<'a>(parts: &'a [&'a str], key: &str) -> Option<&'a str> {
    parts
        .iter()
        .find_map(|p| p.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Loads the dataset named by `spec`, from the cache when it was built before.
pub fn load_data(spec: &str, on_bad_image: OnBadImage) -> Result<Dataset> {
    load_data_with_progress(spec, on_bad_image, &|_, _| {})
}

/// Like [`load_data`], reporting `(done, total)` images while preprocessing or generating.
pub fn load_data_with_progress(
    spec: &str,
    on_bad_image: OnBadImage,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Dataset> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "synthfaces" => {
            let parts: Vec<&str> = rest.split(':').filter(|s| !s.is_empty()).collect();
            let num = kv(&parts, "n").map(str::parse).transpose().context("synthfaces: bad n=")?.unwrap_or(synthfaces::DEFAULT_NUM);
            let seed = kv(&parts, "seed").map(str::parse).transpose().context("synthfaces: bad seed=")?.unwrap_or(0);
            let id = synthfaces::dataset_id(num, seed);
            Ok(data::cached(&id, || {
                let gen = load_model("refdcgan", &candle_core::Device::Cpu)
                    .map_err(|e| data::DataError::InvalidOption(format!("cannot load the reference DCGAN: {e:#}")))?;
                                synthfaces::generate(&gen, num, seed, Some(progress))
            })?)
        }
        "orl" => Ok(data::orl()?),
        "folder" => {
            let dir = std::fs::canonicalize(rest).with_context(|| format!("no such folder: {rest}"))?;
            let opts = FolderOptions { crop: Crop::Center, on_bad_image, test_fraction: 0.1, limit: None };
            let id = data::folder::folder_dataset_id(&dir, &opts);
                        Ok(data::cached(&id, || data::load_folder(&dir, &opts, Some(progress)))?)
        }
        "celeba" => {
            let mut parts = rest.split(':');
            let root = std::fs::canonicalize(parts.next().unwrap_or("")).with_context(|| format!("no such CelebA root: {rest}"))?;
            let parts: Vec<&str> = parts.collect();
            let limit = kv(&parts, "first").map(str::parse).transpose().context("celeba: bad first=")?;
            let crop = match kv(&parts, "crop") {
                None | Some("paper") => CelebaCrop::Paper,
                Some("hq") => CelebaCrop::Hq,
                Some(c) => bail!("celeba: unknown crop `{c}` (paper or hq)"),
            };
            let opts = CelebaOptions { crop, limit, on_bad_image };
            let id = data::celeba::celeba_dataset_id(&root, &opts);
                        Ok(data::cached(&id, || data::load_celeba(&root, &opts, Some(progress)))?)
        }
        _ => bail!("unknown dataset `{spec}` (synthfaces[:n=N:seed=S], orl, folder:PATH, celeba:ROOT[:first=N][:crop=hq])"),
    }
}
