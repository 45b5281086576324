//! Adam with its state kept as plain vectors, so that checkpoints can save and restore it
//! (candle-nn's AdamW keeps its moments private) and the update runs multi-threaded.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use rayon::prelude::*;

use super::Result;

/// Adam hyper-parameters (L2 weight decay added to the gradient, as in Keras/PyTorch Adam).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// L2 penalty coefficient.
    pub weight_decay: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Adam over a named set of variables.
pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Steps taken so far.
    pub step: u64,
    /// Hyper-parameters.
    pub params: AdamParams,
}

impl Adam {
    /// Optimises `vars` (name, variable), sorted by name for a stable order.
    pub fn new(mut vars: Vec<(String, Var)>, params: AdamParams) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars
            .iter()
            .map(|(_, v)| vec![0f32; v.elem_count()])
            .collect();
        let v = vars
            .iter()
            .map(|(_, v)| vec![0f32; v.elem_count()])
            .collect();
        Self {
            vars,
            m,
            v,
            step: 0,
            params,
        }
    }

    /// One update from the gradients in `grads` (variables without a gradient are skipped).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
        let lr_t = (p.lr * bc2.sqrt() / bc1) as f32;
        let (b1, b2, eps, wd) = (
            p.beta1 as f32,
            p.beta2 as f32,
            (p.eps * bc2.sqrt()) as f32,
            p.weight_decay as f32,
        );
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut w: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            w.par_chunks_mut(4096)
                .zip(m.par_chunks_mut(4096))
                .zip(v.par_chunks_mut(4096))
                .zip(g.par_chunks(4096))
                .for_each(|(((w, m), v), g)| {
                    for j in 0..w.len() {
                        let gj = g[j] + wd * w[j];
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        w[j] -= lr_t * m[j] / (v[j].sqrt() + eps);
                    }
                });
            crate::model::weights::assign(var, &Tensor::from_vec(w, var.dims(), var.device())?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`<prefix>m.<var>`, `<prefix>v.<var>`) for a checkpoint.
    pub fn state_tensors(&self, prefix: &str) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let dev = candle_core::Device::Cpu;
            out.insert(
                format!("{prefix}m.{name}"),
                Tensor::from_slice(&self.m[i], var.dims(), &dev)?,
            );
            out.insert(
                format!("{prefix}v.{name}"),
                Tensor::from_slice(&self.v[i], var.dims(), &dev)?,
            );
        }
        Ok(out)
    }

    /// Restores the moments saved by [`Adam::state_tensors`]; missing entries stay zero.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        step: u64,
    ) -> Result<()> {
        self.step = step;
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let Some(t) = tensors.get(&format!("{prefix}m.{name}")) {
                self.m[i] = t.flatten_all()?.to_vec1()?;
            }
            if let Some(t) = tensors.get(&format!("{prefix}v.{name}")) {
                self.v[i] = t.flatten_all()?.to_vec1()?;
            }
        }
        Ok(())
    }
}
