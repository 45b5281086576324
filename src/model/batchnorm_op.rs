//! Fused batch normalisation `(x − mean_c) / sqrt(var_c + ε)` over `[B, C, H, W]` (statistics per
//! channel over batch and pixels) for the CPU, with a hand-written backward. Built from candle
//! reductions and broadcasts the same thing costs about half of a GAN training step.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{contiguous_f32, grad_pair};
use super::channel_op::{bchw, channel_rows, map_rows, rows_lane_sum};

/// Per channel `(mean, 1 / sqrt(var + eps))`, biased variance, two passes in f64.
fn stats(x: &[f32], b: usize, c: usize, hw: usize, eps: f32) -> Vec<(f32, f32)> {
    mean_var(x, b, c, hw)
        .into_iter()
        .map(|(mean, var)| (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32))
        .collect()
}

/// Per channel `(mean, biased variance)`, two passes, parallel over channels: each pixel row
/// summed in f32 lanes (vectorised), rows accumulated in f64.
fn mean_var(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let rows = || channel_rows(x, b, c, hw, ch);
            let n = (b * hw).max(1) as f64;
            let mean = rows_lane_sum(rows().map(|r| (r, r)), |u, _| u) / n;
            let m = mean as f32;
            let var = rows_lane_sum(rows().map(|r| (r, r)), move |u, _| (u - m) * (u - m)) / n;
            (mean, var)
        })
        .collect()
}

/// `x ↦ [mean_0..mean_C, var_0..var_C]` (no gradient).
struct MeanVar;

impl CustomOp1 for MeanVar {
    fn name(&self) -> &'static str {
        "fast-batch-statistics"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("batch_statistics", s, l)?;
        let (b, c, hw) = bchw("batch_normalize", l)?;
        let mv = mean_var(x, b, c, hw);
        let mut out: Vec<f32> = mv.iter().map(|&(m, _)| m as f32).collect();
        out.extend(mv.iter().map(|&(_, v)| v as f32));
        Ok((CpuStorage::F32(out), Shape::from(2 * c)))
    }
}

/// Per-channel batch mean and biased variance of `x` (`[B, C, H, W]`), detached: one fused
/// pass on the CPU (candle's strided reductions were 15 % of a short GAN run, in the
/// batch-norm calibration), candle reductions elsewhere.
pub fn batch_statistics(x: &Tensor) -> Result<(Tensor, Tensor)> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let c = x.dim(1)?;
        let mv = x.detach().contiguous()?.apply_op1_no_bwd(&MeanVar)?;
        Ok((mv.narrow(0, 0, c)?, mv.narrow(0, c, c)?))
    } else {
        let x = x.detach();
        let mean = x.mean_keepdim((0, 2, 3))?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
        Ok((mean.flatten_all()?, var.flatten_all()?))
    }
}

struct Normalize(f32);
struct NormalizeGrad(f32);

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "fast-batch-normalize"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("batch_normalize", s, l)?;
        let (b, c, hw) = bchw("batch_normalize", l)?;
        let st = stats(x, b, c, hw, self.0);
        let y = map_rows(x.len(), hw, |k, y| {
            let (mean, inv) = st[k % c];
            for (o, &v) in y.iter_mut().zip(&x[k * hw..]) {
                o.write((v - mean) * inv);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(
            &arg.contiguous()?,
            &NormalizeGrad(self.0),
        )?))
    }
}

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "fast-batch-normalize-grad"
    }
    /// `dx = inv · (g − mean(g) − ŷ · mean(g ŷ))` per channel, `ŷ = (x − mean) · inv`.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = grad_pair("batch_normalize", (s1, l1), (s2, l2))?;
        let (b, c, hw) = bchw("batch_normalize", l2)?;
        let st = stats(x, b, c, hw, self.0);
        let n = (b * hw).max(1) as f64;
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, inv) = st[ch];
                let gr = || channel_rows(g, b, c, hw, ch);
                let sg = rows_lane_sum(gr().map(|r| (r, r)), |u, _| u);
                let sgy = f64::from(inv)
                    * rows_lane_sum(gr().zip(channel_rows(x, b, c, hw, ch)), move |u, v| {
                        u * (v - mean)
                    });
                ((sg / n) as f32, (sgy / n) as f32)
            })
            .collect();
        let dx = map_rows(x.len(), hw, |k, dx| {
            let ch = k % c;
            let (mean, inv) = st[ch];
            let (mg, mgy) = sums[ch];
            let r = k * hw..(k + 1) * hw;
            for ((o, &gv), &xv) in dx.iter_mut().zip(&g[r.clone()]).zip(&x[r]) {
                o.write(inv * (gv - mg - (xv - mean) * inv * mgy));
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Normalises `x` (`[B, C, H, W]`) per channel with its batch statistics (biased variance,
/// `eps` added): fused on the CPU for f32, candle reductions elsewhere.
pub fn batch_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Normalize(eps as f32))
    } else {
        reference_batch_normalize(x, eps)
    }
}

/// The same normalisation from plain candle ops (the reference the tests pin the fused op to).
pub fn reference_batch_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim((0, 2, 3))?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}
