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

/// One step's constants: decays, bias-corrected epsilon and learning rate, L2 coefficient.
#[derive(Clone, Copy)]
struct Consts {
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    lr_t: f32,
}

/// The update of `w` with gradient `g` and moments `m`, `v` (equal lengths), in parallel
/// chunks, each compiled for AVX2 where available (the same arithmetic: no fused
/// multiply-adds are formed, so the results match the plain loop's bit for bit).
fn update(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Consts) {
    assert!(m.len() == w.len() && v.len() == w.len() && g.len() == w.len());
    w.par_chunks_mut(4096)
        .zip(m.par_chunks_mut(4096))
        .zip(v.par_chunks_mut(4096))
        .zip(g.par_chunks(4096))
        .for_each(|(((w, m), v), g)| {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is available.
                unsafe { update_avx2(w, m, v, g, c) };
                return;
            }
            update_chunk(w, m, v, g, c);
        });
}

#[inline(always)]
fn update_chunk(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Consts) {
    for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let gj = g + c.wd * *w;
        *m = c.b1 * *m + (1.0 - c.b1) * gj;
        *v = c.b2 * *v + (1.0 - c.b2) * gj * gj;
        *w -= c.lr_t * *m / (v.sqrt() + c.eps);
    }
}

/// [`update_chunk`] compiled for AVX2 (8 lanes).
///
/// # Safety
/// AVX2 is available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Consts) {
    update_chunk(w, m, v, g, c)
}

/// Adam's update of a variable in place (`(w, g)`: the variable and its gradient, both
/// contiguous f32 of one size), the moments held by the op.
struct Update<'a> {
    moments: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    c: Consts,
}

impl candle_core::InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }
    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let (candle_core::CpuStorage::F32(w), candle_core::CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adam: f32 variables only")
        };
        let (Some((w0, w1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adam: a strided variable or gradient")
        };
        let mut held = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v) = &mut *held;
        if w1 - w0 != m.len() || g1 - g0 != m.len() {
            candle_core::bail!(
                "adam: {} values, gradient {} and moments {}",
                w1 - w0,
                g1 - g0,
                m.len()
            )
        }
        update(&mut w[w0..w1], m, v, &g[g0..g1], self.c);
        Ok(())
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
        let consts = Consts {
            b1,
            b2,
            eps,
            wd,
            lr_t,
        };
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let w = var.as_tensor();
            let f32_cpu = w.device().is_cpu() && w.dtype() == candle_core::DType::F32;
            if f32_cpu && w.is_contiguous() && g.dims() == w.dims() {
                // in place, reading the gradient where it lies
                let op = Update {
                    moments: std::sync::Mutex::new((m, v)),
                    c: consts,
                };
                crate::model::weights::update_in_place(var, &g.contiguous()?, &op)?;
                continue;
            }
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut w: Vec<f32> = w.flatten_all()?.to_vec1()?;
            if g.len() != w.len() || m.len() != w.len() {
                return Err(candle_core::Error::Msg(format!(
                    "adam: variable of {} values, gradient {} and moments {}",
                    w.len(),
                    g.len(),
                    m.len()
                ))
                .into());
            }
            update(&mut w, m, v, &g, consts);
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place update (parallel chunks, AVX2) against a plain scalar loop with the same
    /// constants: bit for bit over three steps, a shape whose size leaves a partial chunk.
    #[test]
    fn in_place_update_matches_a_plain_loop_bit_for_bit() {
        let dev = Device::Cpu;
        let (rows, cols) = (97, 101);
        let n = rows * cols;
        let wave = |k: usize, a: f32| (k as f32 * a).sin();
        let mut w: Vec<f32> = (0..n).map(|k| wave(k, 0.37)).collect();
        let var = Var::from_vec(w.clone(), (rows, cols), &dev).unwrap();
        let params = AdamParams {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut adam = Adam::new(vec![("w".into(), var.clone())], params);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        for t in 1..=3 {
            let g: Vec<f32> = (0..n).map(|k| wave(k + 7 * t, 0.91)).collect();
            let gt = Tensor::from_vec(g.clone(), (rows, cols), &dev).unwrap();
            // d/dw Σ w ⊙ g = g exactly
            let grads = (var.as_tensor() * &gt)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            adam.step(&grads).unwrap();
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t as i32), 1.0 - 0.999f64.powi(t as i32));
            let lr_t = (1e-3 * bc2.sqrt() / bc1) as f32;
            let eps = (1e-8 * bc2.sqrt()) as f32;
            for k in 0..n {
                let gj = g[k] + 0.01 * w[k];
                m[k] = 0.9 * m[k] + (1.0 - 0.9) * gj;
                v[k] = 0.999 * v[k] + (1.0 - 0.999) * gj * gj;
                w[k] -= lr_t * m[k] / (v[k].sqrt() + eps);
            }
            let got: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let differ = got
                .iter()
                .zip(&w)
                .filter(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(differ.count(), 0, "step {t}");
            assert_eq!(adam.m[0], m, "first moments, step {t}");
            assert_eq!(adam.v[0], v, "second moments, step {t}");
        }
    }

    /// The in-place write moves the variable's version (packed-weight caches rebuild).
    #[test]
    fn in_place_update_moves_the_version() {
        let dev = Device::Cpu;
        let var = Var::from_vec(vec![1f32; 8], 8, &dev).unwrap();
        let id = var.as_tensor().id();
        let before = crate::model::weights::version_of(&[id]);
        let mut adam = Adam::new(vec![("w".into(), var.clone())], AdamParams::default());
        let grads = var.as_tensor().sum_all().unwrap().backward().unwrap();
        adam.step(&grads).unwrap();
        assert!(crate::model::weights::version_of(&[id]) > before);
        let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!(w.iter().all(|&x| x < 1.0), "{w:?}");
    }
}
