//! `latent-atlas encode` and `decode`: latent codes as float32 .npy for numpy users.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;

use super::bar::load_data;
use crate::data::{OnBadImage, Split};
use crate::model::device::parse_device;
use crate::model::LatentModel;
use crate::zoo::load_model;

/// Encode a dataset (or some of its samples) into codes.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Model name (zoo) or directory.
    #[arg(long)]
    pub model: String,
    /// Dataset spec.
    #[arg(long, default_value = "synthfaces")]
    pub data: String,
    /// Only these sample ids (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub ids: Vec<String>,
    /// Only this split: train, valid or test.
    #[arg(long)]
    pub split: Option<String>,
    /// Output .npy (float32, N x d); the sample ids go to the same name with `.ids.txt`.
    #[arg(long)]
    pub out: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Writes a tensor as .npy atomically.
pub fn write_npy_atomic(t: &Tensor, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .suffix(".npy")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    t.write_npy(tmp.path())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename into place: {}", path.display()))?;
    Ok(())
}

/// Runs `encode`.
pub fn run_encode(a: EncodeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let model = load_model(&a.model, &device)?;
    let data = load_data(&a.data, OnBadImage::Skip)?;
    let indices: Vec<usize> = if !a.ids.is_empty() {
        a.ids
            .iter()
            .map(|id| {
                data.index_of(id)
                    .with_context(|| format!("no sample `{id}` in {}", data.id))
            })
            .collect::<Result<_>>()?
    } else {
        match a.split.as_deref() {
            None => (0..data.len()).collect(),
            Some("train") => data.indices(Split::Train),
            Some("valid") => data.indices(Split::Valid),
            Some("test") => data.indices(Split::Test),
            Some(s) => bail!("unknown split `{s}` (train, valid, test)"),
        }
    };
    // Streams in batches: memory holds the model, one batch of images and the N x d codes.
    let d = model.latent_dim();
    let bar = super::bar::Bar::new();
    crate::progress::Progress::start(&bar, "encoding", indices.len() as u64);
    let mut values: Vec<f32> = Vec::with_capacity(indices.len() * d);
    for chunk in indices.chunks(a.batch_size.max(1)) {
        let x = data.batch(chunk, &device)?;
        let z = model.encode(&x)?.to_device(&Device::Cpu)?;
        drop(x);
        let z: Vec<f32> = z.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        if z.len() != chunk.len() * d {
            bail!(
                "{} returned {} values for {} images of latent size {d}",
                model.name(),
                z.len(),
                chunk.len()
            );
        }
        values.extend_from_slice(&z);
        crate::progress::Progress::update(&bar, (values.len() / d.max(1)) as u64, "");
    }
    crate::progress::Progress::finish(&bar, "done");
    let codes = Tensor::from_vec(values, (indices.len(), d), &Device::Cpu)?;
    write_npy_atomic(&codes, &a.out)?;
    let ids: String = indices
        .iter()
        .map(|&i| format!("{}\n", data.sample_ids[i]))
        .collect();
    let ids_path = a.out.with_extension("ids.txt");
    crate::model::store::write_atomic(&ids_path, ids.as_bytes())?;
    println!(
        "wrote {} codes of dimension {} to {} (ids in {})",
        indices.len(),
        model.latent_dim(),
        a.out.display(),
        ids_path.display()
    );
    Ok(())
}

/// Decode codes into images.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Model name (zoo) or directory.
    #[arg(long)]
    pub model: String,
    /// Input .npy, float32, N x latent_dim.
    #[arg(long)]
    pub codes: PathBuf,
    /// Output directory for PNGs (000000.png, ...).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write images.npy (N x 3 x 64 x 64, float32 in [0, 1]).
    #[arg(long)]
    pub npy: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Reads an N x d float32 .npy of any width, checking dtype, rank and finiteness.
pub fn read_codes_any(path: &Path) -> Result<Tensor> {
    if !path.exists() {
        bail!("no such file: {}", path.display());
    }
    let t = Tensor::read_npy(path)
        .with_context(|| format!("not a readable .npy file: {}", path.display()))?;
    if t.dtype() != DType::F32 {
        bail!(
            "codes must be float32, got {:?}: {}",
            t.dtype(),
            path.display()
        );
    }
    let (_, d) = t.dims2().with_context(|| {
        format!(
            "codes must be a 2-D N x d array, got {:?}: {}",
            t.dims(),
            path.display()
        )
    })?;
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    if let Some(i) = crate::latent::first_non_finite(&v) {
        bail!(
            "codes contain a non-finite value at row {}, column {}: {}",
            i / d.max(1),
            i % d.max(1),
            path.display()
        );
    }
    Ok(t)
}

/// Reads an N x d float32 .npy and checks it against the model.
pub fn read_codes(path: &Path, latent_dim: usize) -> Result<Tensor> {
    let t = read_codes_any(path)?;
    let dims = t.dims();
    if dims[1] != latent_dim {
        bail!(
            "codes must be N x {latent_dim} for this model, got {dims:?}: {}",
            path.display()
        );
    }
    Ok(t)
}

/// Runs `decode`.
pub fn run_decode(a: DecodeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let model = load_model(&a.model, &device)?;
    let codes = read_codes(&a.codes, model.latent_dim())?;
    let n = codes.dim(0)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let mut all = Vec::new();
    for start in (0..n).step_by(256) {
        let len = 256.min(n - start);
        let x = model
            .decode(&codes.narrow(0, start, len)?.to_device(&device)?)?
            .to_device(&Device::Cpu)?;
        for (j, img) in crate::grid::to_rgb_images(&x)?.iter().enumerate() {
            crate::grid::save_png(img, &a.out.join(format!("{:06}.png", start + j)))?;
        }
        if a.npy {
            all.push(x);
        }
    }
    if a.npy && !all.is_empty() {
        write_npy_atomic(&Tensor::cat(&all, 0)?, &a.out.join("images.npy"))?;
    }
    println!(
        "decoded {n} codes with {} into {}",
        model.name(),
        a.out.display()
    );
    Ok(())
}
