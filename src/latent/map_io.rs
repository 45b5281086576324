//! Saving and loading [`LinearMap`]s.
//!
//! * `.npy` folder: `W.npy` (`d_source x d_target`, `'<f4'`, C order, numpy-loadable), `b.npy`
//!   (`d_target`, affine maps only; a stale one is removed) and `map.json` (estimator and fit
//!   info; optional on load: without it the estimator reads as `lstsq`/`affine`).
//! * safetensors file: tensors `weight` (`[d_source, d_target]` f32) and optionally `bias`
//!   (`[d_target]`), metadata `estimator` (its display string, e.g. `ridge:0.1`) and
//!   `fit_info` (JSON of [`FitInfo`]).
//!
//! All writes are atomic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nalgebra::{DMatrix, DVector};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::estimators::{Estimator, FitInfo, LinearMap};
use super::{read_file, write_atomic, LatentError, Result};

/// File name of the weight in a `.npy` map folder.
pub const WEIGHT_NPY: &str = "W.npy";
/// File name of the bias in a `.npy` map folder.
pub const BIAS_NPY: &str = "b.npy";
/// File name of the metadata in a `.npy` map folder.
pub const MAP_JSON: &str = "map.json";

#[derive(Serialize, Deserialize)]
struct MapMeta {
    estimator: Estimator,
    info: FitInfo,
    convention: String,
}

const CONVENTION: &str = "z_in_target = z_in_source · W (+ b); W is d_source x d_target";

/// Encodes `values` (C order) as a `.npy` file of dtype `'<f4'` and the given shape (format 1.0).
pub fn encode_npy_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let shape_text = match shape {
        [single] => format!("({single},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    bytes
}

/// Reads an `f32` `.npy` file into its shape and C-order values (via candle's reader).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |msg: String| LatentError::Format {
        msg,
        path: path.to_path_buf(),
    };
    if !path.exists() {
        return Err(LatentError::Io {
            action: "cannot read file",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
            path: path.to_path_buf(),
        });
    }
    let t =
        candle_core::Tensor::read_npy(path).map_err(|e| bad(format!("not a .npy file ({e})")))?;
    let t = t
        .to_dtype(candle_core::DType::F32)
        .map_err(|e| bad(e.to_string()))?;
    let shape = t.dims().to_vec();
    let values = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| bad(e.to_string()))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad("non-finite values".into()));
    }
    Ok((shape, values))
}

fn row_major(w: &DMatrix<f32>) -> Vec<f32> {
    w.transpose().as_slice().to_vec()
}

impl LinearMap {
    /// Writes `dir/W.npy` (`d_source x d_target`), `dir/b.npy` (affine only; removed
    /// otherwise) and `dir/map.json`, creating `dir` if needed.
    pub fn save_npy(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| LatentError::Io {
            action: "cannot create folder",
            source,
            path: dir.to_path_buf(),
        })?;
        let (d1, d2) = self.weight.shape();
        write_atomic(
            &dir.join(WEIGHT_NPY),
            &encode_npy_f32(&[d1, d2], &row_major(&self.weight)),
        )?;
        let bias_path = dir.join(BIAS_NPY);
        match &self.bias {
            Some(b) => write_atomic(&bias_path, &encode_npy_f32(&[b.len()], b.as_slice()))?,
            None if bias_path.exists() => {
                std::fs::remove_file(&bias_path).map_err(|source| LatentError::Io {
                    action: "cannot remove stale bias",
                    source,
                    path: bias_path.clone(),
                })?
            }
            None => {}
        }
        let meta = MapMeta {
            estimator: self.estimator.clone(),
            info: self.info.clone(),
            convention: CONVENTION.into(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| LatentError::Format {
            msg: e.to_string(),
            path: dir.join(MAP_JSON),
        })?;
        write_atomic(&dir.join(MAP_JSON), &json)
    }

    /// Reads a map folder written by [`LinearMap::save_npy`] (or by numpy: `W.npy` 2-D,
    /// optional `b.npy` 1-D of length `d_target`, optional `map.json`).
    pub fn load_npy(dir: &Path) -> Result<LinearMap> {
        let w_path = dir.join(WEIGHT_NPY);
        let (shape, values) = read_npy_f32(&w_path)?;
        let [d1, d2] = shape[..] else {
            return Err(LatentError::Format {
                msg: format!("W must be 2-D, got shape {shape:?}"),
                path: w_path,
            });
        };
        let weight = DMatrix::from_row_slice(d1, d2, &values);
        let b_path = dir.join(BIAS_NPY);
        let bias = if b_path.exists() {
            let (shape, values) = read_npy_f32(&b_path)?;
            if shape != [d2] {
                return Err(LatentError::Format {
                    msg: format!("bias must have shape [{d2}], got {shape:?}"),
                    path: b_path,
                });
            }
            Some(DVector::from_vec(values))
        } else {
            None
        };
        let meta_path = dir.join(MAP_JSON);
        let (estimator, info) = if meta_path.exists() {
            let meta: MapMeta = serde_json::from_slice(&read_file(&meta_path)?).map_err(|e| {
                LatentError::Format {
                    msg: e.to_string(),
                    path: meta_path.clone(),
                }
            })?;
            (meta.estimator, meta.info)
        } else if bias.is_some() {
            (Estimator::Affine, FitInfo::default())
        } else {
            (Estimator::Lstsq, FitInfo::default())
        };
        Ok(LinearMap {
            weight,
            bias,
            estimator,
            info,
        })
    }

    /// Writes a safetensors file with `weight` (`[d_source, d_target]`), optional `bias`
    /// (`[d_target]`) and metadata `estimator`, `fit_info`, `convention`.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let fmt_err = |msg: String| LatentError::Format {
            msg,
            path: path.to_path_buf(),
        };
        let (d1, d2) = self.weight.shape();
        let w_bytes: Vec<u8> = row_major(&self.weight)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b_bytes: Option<Vec<u8>> = self
            .bias
            .as_ref()
            .map(|b| b.iter().flat_map(|v| v.to_le_bytes()).collect());
        let mut views = vec![(
            "weight".to_string(),
            TensorView::new(Dtype::F32, vec![d1, d2], &w_bytes)
                .map_err(|e| fmt_err(e.to_string()))?,
        )];
        if let (Some(bytes), Some(b)) = (&b_bytes, &self.bias) {
            let view = TensorView::new(Dtype::F32, vec![b.len()], bytes)
                .map_err(|e| fmt_err(e.to_string()))?;
            views.push(("bias".to_string(), view));
        }
        let info = serde_json::to_string(&self.info).map_err(|e| fmt_err(e.to_string()))?;
        let metadata = HashMap::from([
            ("estimator".to_string(), self.estimator.to_string()),
            ("fit_info".to_string(), info),
            ("convention".to_string(), CONVENTION.to_string()),
        ]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| fmt_err(e.to_string()))?;
        write_atomic(path, &bytes)
    }

    /// Reads a safetensors file written by [`LinearMap::save_safetensors`]. Missing metadata
    /// reads as `lstsq`/`affine` with default fit info.
    pub fn load_safetensors(path: &Path) -> Result<LinearMap> {
        let bad = |msg: String| LatentError::Format {
            msg,
            path: path.to_path_buf(),
        };
        let bytes = read_file(path)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let (wshape, wvals) =
            tensor_f32(&st, "weight", path)?.ok_or_else(|| bad("no tensor `weight`".into()))?;
        let [d1, d2] = wshape[..] else {
            return Err(bad(format!("weight must be 2-D, got shape {wshape:?}")));
        };
        let weight = DMatrix::from_row_slice(d1, d2, &wvals);
        let bias = match tensor_f32(&st, "bias", path)? {
            Some((shape, vals)) if shape == [d2] => Some(DVector::from_vec(vals)),
            Some((shape, _)) => {
                return Err(bad(format!("bias must have shape [{d2}], got {shape:?}")))
            }
            None => None,
        };
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let estimator = match meta.get("estimator") {
            Some(s) => s.parse()?,
            None if bias.is_some() => Estimator::Affine,
            None => Estimator::Lstsq,
        };
        let info = match meta.get("fit_info") {
            Some(s) => serde_json::from_str(s).map_err(|e| bad(format!("bad fit_info ({e})")))?,
            None => FitInfo::default(),
        };
        Ok(LinearMap {
            weight,
            bias,
            estimator,
            info,
        })
    }
}

/// Shape and C-order values of tensor `name` (must be f32 and finite), if present.
fn tensor_f32(st: &SafeTensors, name: &str, path: &Path) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    let bad = |msg: String| LatentError::Format {
        msg,
        path: PathBuf::from(path),
    };
    let view = match st.tensor(name) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    if view.dtype() != Dtype::F32 {
        return Err(bad(format!(
            "tensor `{name}` must be f32, got {:?}",
            view.dtype()
        )));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!("tensor `{name}` has non-finite values")));
    }
    Ok(Some((view.shape().to_vec(), values)))
}
