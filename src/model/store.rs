//! Saving and loading model directories (`config.json` + `model.safetensors`), with a strict
//! check of every tensor name and shape, and deterministic weight initialisation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Model, ModelConfig, ModelError, Net, Result};

/// File name of the config inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Prefix of tensors that are used only while training (never shipped).
pub const TRAINING_ONLY_PREFIX: &str = "disc.";

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ModelError + 'a {
    move |source| ModelError::Io {
        action,
        source,
        path: path.to_path_buf(),
    }
}

/// Initialises every variable deterministically from `seed`, in name order: weights uniform in
/// ±√(6 / fan_in)·0.5 (fan_in = product of all but the first dimension), biases and batch-norm
/// shifts zero, batch-norm scales (1-D `weight`s) and running variances one.
pub fn init_weights(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::BadInput("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> =
            if name.ends_with("running_var") || (dims.len() == 1 && name.ends_with("weight")) {
                vec![1.0; n]
            } else if name.ends_with("bias") || name.ends_with("running_mean") || dims.len() == 1 {
                vec![0.0; n]
            } else {
                let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
                let bound = (6.0 / fan_in as f32).sqrt() * 0.5;
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
        crate::model::weights::assign(var, &Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

/// Reads and parses `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err("cannot read model config", &path))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        msg: e.to_string(),
        path,
    })
}

/// Copies tensors from `tensors` into the variables of `varmap`, checking that every variable
/// has a tensor of the same shape and that no tensor is left over (except those whose names
/// start with one of `ignore_prefixes`). Errors name the tensor and `path`.
pub fn assign_checked(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    ignore_prefixes: &[&str],
    path: &Path,
) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::BadInput("variable map lock poisoned".into()))?;
    let werr = |msg: String| ModelError::Weights {
        msg,
        path: path.to_path_buf(),
    };
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = tensors
            .get(name)
            .ok_or_else(|| werr(format!("missing tensor `{name}` (shape {:?})", var.dims())))?;
        if t.dims() != var.dims() {
            return Err(werr(format!(
                "tensor `{name}` has shape {:?}, the architecture needs {:?}",
                t.dims(),
                var.dims()
            )));
        }
        if t.id() != var.as_tensor().id() {
            crate::model::weights::assign(var, &t.to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
    }
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !data.contains_key(*k) && !ignore_prefixes.iter().any(|p| k.starts_with(p)))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(werr(format!(
            "unexpected tensor `{name}` ({} unexpected in all)",
            extra.len()
        )));
    }
    Ok(())
}

/// Reads all tensors of a safetensors file, with the path in any error.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(ModelError::Io {
            action: "cannot read weights",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            path: path.to_path_buf(),
        });
    }
    candle_core::safetensors::load(path, device).map_err(|e| ModelError::Weights {
        msg: format!("unreadable safetensors file ({e})"),
        path: path.to_path_buf(),
    })
}

/// Loads the model in `dir` (config + weights), checking every tensor name and shape.
pub fn load_model(dir: &Path, device: &Device) -> Result<Model> {
    let config = read_config(dir)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let net = Net::build(&config, vb, false).map_err(|e| ModelError::Config {
        msg: format!("cannot build the architecture: {e}"),
        path: dir.join(CONFIG_FILE),
    })?;
    let path = dir.join(WEIGHTS_FILE);
    let tensors = read_tensors(&path, device)?;
    assign_checked(&varmap, &tensors, &[TRAINING_ONLY_PREFIX], &path)?;
    Ok(Model {
        config,
        varmap,
        net,
        device: device.clone(),
    })
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("cannot create directory", dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(io_err("cannot create temporary file in", dir))?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io_err("cannot write", path))?;
    // temporary files are private (0600); artifacts get the usual 0644
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| ModelError::Io {
        action: "cannot rename into place",
        source: e.error,
        path: path.to_path_buf(),
    })?;
    Ok(())
}

/// Serialises named tensors to safetensors bytes (f32, or f16 when `half`).
pub fn tensors_to_bytes(tensors: &HashMap<String, Tensor>, half: bool) -> Result<Vec<u8>> {
    let mut converted: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, v) in tensors {
        let v = v.to_device(&Device::Cpu)?;
        let v = if half {
            v.to_dtype(DType::F16)?
        } else {
            v.to_dtype(DType::F32)?
        };
        converted.push((k.clone(), v));
    }
    converted.sort_by(|a, b| a.0.cmp(&b.0));
    let data: Vec<(&str, &Tensor)> = converted.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize(data, None)
        .map_err(|e| ModelError::BadInput(format!("cannot serialise tensors: {e}")))
}

/// All variables of a model as named tensors, optionally without training-only ones.
pub fn named_tensors(
    varmap: &VarMap,
    include_training_only: bool,
) -> Result<HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ModelError::BadInput("variable map lock poisoned".into()))?;
    Ok(data
        .iter()
        .filter(|(k, _)| include_training_only || !k.starts_with(TRAINING_ONLY_PREFIX))
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect())
}

/// Saves a model directory atomically: weights (without training-only tensors) then config.
pub fn save_model(model: &Model, dir: &Path, half: bool) -> Result<PathBuf> {
    let tensors = named_tensors(&model.varmap, false)?;
    write_atomic(&dir.join(WEIGHTS_FILE), &tensors_to_bytes(&tensors, half)?)?;
    let json = serde_json::to_string_pretty(&model.config).map_err(|e| ModelError::Config {
        msg: e.to_string(),
        path: dir.join(CONFIG_FILE),
    })?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
    Ok(dir.to_path_buf())
}
