//! Fused batch normalisation `(x − mean_c) / sqrt(var_c + ε)` over `[B, C, H, W]` (statistics per
//! channel over batch and pixels) for the CPU, with a hand-written backward. Built from candle
//! reductions and broadcasts the same thing costs about half of a GAN training step.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{contiguous_f32, grad_pair};
use super::channel_op::{
    bchw, channel_rows, channel_vector, fill_rows, fusable_slope, map_rows, rows_lane_sum, LANES,
};

/// Per channel `(mean, 1 / sqrt(var + eps))`, biased variance, from [`mean_var`].
fn stats(x: &[f32], b: usize, c: usize, hw: usize, eps: f32) -> Vec<(f32, f32)> {
    mean_var(x, b, c, hw)
        .into_iter()
        .map(|(mean, var)| (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32))
        .collect()
}

/// Per channel `(mean, biased variance)`, one pass, parallel over channels: `Σ (x − s)` and
/// `Σ (x − s)²` with the shift `s` the channel's first value (so that a mean far from zero does
/// not cancel the variance away), each pixel row summed in [`LANES`] f32 lanes (vectorised) and
/// flushed into f64 totals every 8192 values. The two-pass form (mean, then `Σ (x − mean)²`)
/// read every activation twice: the statistics were 3 % of a GAN training step (perf).
fn mean_var(x: &[f32], b: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let n = (b * hw).max(1) as f64;
            let shift = channel_rows(x, b, c, hw, ch)
                .next()
                .and_then(|r| r.first())
                .copied()
                .unwrap_or(0.0);
            let (s1, s2) = shifted_sums(channel_rows(x, b, c, hw, ch), shift);
            let d = s1 / n;
            // rounding can leave a constant channel's variance a hair below zero; a NaN stays
            let var = s2 / n - d * d;
            (f64::from(shift) + d, if var < 0.0 { 0.0 } else { var })
        })
        .collect()
}

/// `(Σ (v − shift), Σ (v − shift)²)` over rows, in 32 f32 lanes per sum (four independent
/// vector chains each: with eight lanes the adds were latency-bound, and one pass with them
/// was slower than the two passes it replaced) flushed to f64 every 8192 values.
fn shifted_sums<'a>(rows: impl Iterator<Item = &'a [f32]>, shift: f32) -> (f64, f64) {
    let (mut l1, mut l2) = ([0f32; LANES], [0f32; LANES]);
    let (mut total, mut since) = ((0f64, 0f64), 0usize);
    let flush = |l1: &mut [f32; LANES], l2: &mut [f32; LANES], total: &mut (f64, f64)| {
        total.0 += l1.iter().map(|&v| f64::from(v)).sum::<f64>();
        total.1 += l2.iter().map(|&v| f64::from(v)).sum::<f64>();
        (*l1, *l2) = ([0f32; LANES], [0f32; LANES]);
    };
    for r in rows {
        let mut chunks = r.chunks_exact(LANES);
        for xs in &mut chunks {
            for ((a, q), &v) in l1.iter_mut().zip(l2.iter_mut()).zip(xs) {
                let d = v - shift;
                *a += d;
                *q += d * d;
            }
        }
        // what is left of a row (all of a 4x4 map's 16 values) in eights, then one at a time
        let mut eights = chunks.remainder().chunks_exact(8);
        for xs in &mut eights {
            for ((a, q), &v) in l1.iter_mut().zip(l2.iter_mut()).zip(xs) {
                let d = v - shift;
                *a += d;
                *q += d * d;
            }
        }
        for &v in eights.remainder() {
            let d = f64::from(v - shift);
            total.0 += d;
            total.1 += d * d;
        }
        since += r.len();
        if since >= 8192 {
            flush(&mut l1, &mut l2, &mut total);
            since = 0;
        }
    }
    flush(&mut l1, &mut l2, &mut total);
    total
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

/// `leaky(γ_c · (x − mean_c) · inv_c + β_c)` with the batch statistics `(mean_c, inv_c)`, as
/// one op: the batch norm of every GAN layer. Against [`batch_normalize`] followed by
/// `channel_affine_leaky` it skips the normalised intermediate, the separate leaky-ReLU
/// gradient and the second statistics pass of the backward (its 16 MB generator layer was
/// read 17 times and written 5 times per training step; fused, 7 and 2).
struct NormalizeAffineLeaky {
    eps: f32,
    slope: f32,
    /// `(mean, inv)` per channel, kept by the forward pass for the backward.
    stats: OnceLock<Vec<(f32, f32)>>,
}

/// The backward of [`NormalizeAffineLeaky`] on `(grad, x)`: `[dx…, dγ…, dβ…]`.
struct NormalizeAffineLeakyGrad {
    eps: f32,
    slope: f32,
    stats: Option<Vec<(f32, f32)>>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// Per channel, the affine `x · a + t` that normalises with `(mean, inv)` and applies `γ, β`:
/// `a = γ · inv`, `t = β − mean · a`.
fn folded(st: &[(f32, f32)], gamma: &[f32], beta: &[f32]) -> Vec<(f32, f32)> {
    st.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, inv), (&g, &b))| {
            let a = g * inv;
            (a, b - mean * a)
        })
        .collect()
}

impl CustomOp3 for NormalizeAffineLeaky {
    fn name(&self) -> &'static str {
        "fast-batch-norm-leaky-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const OP: &str = "batch_norm_leaky";
        let x = contiguous_f32(OP, s1, l1)?;
        let (b, c, hw) = bchw(OP, l1)?;
        let gamma = channel_vector(OP, s2, l2, c)?;
        let beta = channel_vector(OP, s3, l3, c)?;
        let st = stats(x, b, c, hw, self.eps);
        let ab = folded(&st, gamma, beta);
        let slope = self.slope;
        let y = map_rows(x.len(), hw, move |k, y| {
            let (a, t) = ab[k % c];
            for (o, &v) in y.iter_mut().zip(&x[k * hw..]) {
                let u = v * a + t;
                o.write(u * if u > 0.0 { 1.0 } else { slope });
            }
        });
        // candle runs each op instance's forward once; were it run again, `set` would keep the
        // first statistics, and the backward (which reads them) belongs to that first run
        let _ = self.stats.set(st);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (len, c) = (x.elem_count(), gamma.elem_count());
        let op = NormalizeAffineLeakyGrad {
            eps: self.eps,
            slope: self.slope,
            stats: self.stats.get().cloned(),
            gamma: gamma.flatten_all()?.to_vec1()?,
            beta: beta.flatten_all()?.to_vec1()?,
        };
        let all = grad.contiguous()?.apply_op2_no_bwd(&x.contiguous()?, &op)?;
        Ok((
            Some(all.narrow(0, 0, len)?.reshape(x.shape())?),
            Some(all.narrow(0, len, c)?),
            Some(all.narrow(0, len + c, c)?),
        ))
    }
}

/// `(Σ g′, Σ g′ · (x − mean))` over a channel's rows, `g′ = g · leaky′(x · a + t)`, in
/// [`LANES`] f32 lanes per sum flushed to f64 every 8192 values (as `rows_lane_sum`). `g′` is written
/// to a small stack block first: in one loop with the two sums, the select of `leaky′`
/// became a branch per value (SSE2 SLP vectorisation), mispredicted on real data (4-5x
/// slower); alone, it vectorises.
fn leaky_grad_sums<'a>(
    rows: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    a: f32,
    t: f32,
    mean: f32,
    slope: f32,
) -> (f64, f64) {
    const BLOCK: usize = 256;
    let mut block = [0f32; BLOCK];
    let (mut sg, mut sgx) = ([0f32; LANES], [0f32; LANES]);
    let (mut total, mut since) = ((0f64, 0f64), 0usize);
    for (gr, xr) in rows {
        for (gb, xb) in gr.chunks(BLOCK).zip(xr.chunks(BLOCK)) {
            let gp = &mut block[..gb.len()];
            for ((o, &gv), &xv) in gp.iter_mut().zip(gb).zip(xb) {
                let u = xv * a + t;
                *o = gv * if u > 0.0 { 1.0 } else { slope };
            }
            let (mut gc, mut xc) = (gp.chunks_exact(LANES), xb.chunks_exact(LANES));
            for (gs, xs) in (&mut gc).zip(&mut xc) {
                for ((l, m), (&p, &v)) in sg.iter_mut().zip(sgx.iter_mut()).zip(gs.iter().zip(xs)) {
                    *l += p;
                    *m += p * (v - mean);
                }
            }
            // what is left of a block (all of a 4x4 map's 16 values) in eights
            let (mut ge, mut xe) = (
                gc.remainder().chunks_exact(8),
                xc.remainder().chunks_exact(8),
            );
            for (g8, x8) in (&mut ge).zip(&mut xe) {
                for ((l, m), (&p, &v)) in sg.iter_mut().zip(sgx.iter_mut()).zip(g8.iter().zip(x8)) {
                    *l += p;
                    *m += p * (v - mean);
                }
            }
            for (&p, &v) in ge.remainder().iter().zip(xe.remainder()) {
                total.0 += f64::from(p);
                total.1 += f64::from(p * (v - mean));
            }
        }
        since += gr.len();
        if since >= 8192 {
            total.0 += sg.iter().map(|&v| f64::from(v)).sum::<f64>();
            total.1 += sgx.iter().map(|&v| f64::from(v)).sum::<f64>();
            (sg, sgx, since) = ([0f32; LANES], [0f32; LANES], 0);
        }
    }
    total.0 += sg.iter().map(|&v| f64::from(v)).sum::<f64>();
    total.1 += sgx.iter().map(|&v| f64::from(v)).sum::<f64>();
    total
}

impl CustomOp2 for NormalizeAffineLeakyGrad {
    fn name(&self) -> &'static str {
        "fast-batch-norm-leaky-relu-grad"
    }
    /// With `g′ = g · leaky′(u)`, `u = γ x̂ + β`: `dβ = Σ g′`, `dγ = Σ g′ x̂` and
    /// `dx = γ · inv · (g′ − dβ / N − x̂ · dγ / N)` per channel (`N` = batch × pixels).
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = grad_pair("batch_norm_leaky", (s1, l1), (s2, l2))?;
        let (b, c, hw) = bchw("batch_norm_leaky", l2)?;
        if self.gamma.len() != c || self.beta.len() != c {
            candle_core::bail!(
                "batch_norm_leaky grad: γ/β of {} for {c} channels",
                self.gamma.len()
            )
        }
        let computed;
        let st: &[(f32, f32)] = match &self.stats {
            Some(st) if st.len() == c => st,
            _ => {
                computed = stats(x, b, c, hw, self.eps);
                &computed
            }
        };
        let ab = &folded(st, &self.gamma, &self.beta);
        let slope = self.slope;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(move |ch| {
                let ((a, t), (mean, inv)) = (ab[ch], st[ch]);
                let rows = channel_rows(g, b, c, hw, ch).zip(channel_rows(x, b, c, hw, ch));
                let (sg, sgx) = leaky_grad_sums(rows, a, t, mean, slope);
                (sg, sgx * f64::from(inv))
            })
            .collect();
        let n = (b * hw).max(1) as f64;
        // dx = coef · g′ + k1 · x + k0 per channel
        let coefs: Vec<[f32; 5]> = (0..c)
            .map(|ch| {
                let ((a, t), (mean, inv), (sg, sgx)) = (ab[ch], st[ch], sums[ch]);
                let coef = f64::from(self.gamma[ch]) * f64::from(inv);
                let (mg, mgy) = (sg / n, sgx / n);
                let k1 = -coef * f64::from(inv) * mgy;
                let k0 = -coef * mg - k1 * f64::from(mean);
                [a, t, coef as f32, k1 as f32, k0 as f32]
            })
            .collect();
        let len = x.len();
        let mut out = Vec::with_capacity(len + 2 * c);
        let coefs = &coefs;
        // `move`: the slope by value (a captured reference kept this loop scalar)
        fill_rows(&mut out.spare_capacity_mut()[..len], hw, move |k, dx| {
            let [a, t, coef, k1, k0] = coefs[k % c];
            let r = k * hw..(k + 1) * hw;
            for ((o, &gv), &xv) in dx.iter_mut().zip(&g[r.clone()]).zip(&x[r]) {
                let u = xv * a + t;
                let gp = gv * if u > 0.0 { 1.0 } else { slope };
                o.write(coef * gp + k1 * xv + k0);
            }
        });
        // SAFETY: `fill_rows` wrote every row of the first `len` values.
        unsafe { out.set_len(len) };
        out.extend(sums.iter().map(|&(_, sgx)| sgx as f32));
        out.extend(sums.iter().map(|&(sg, _)| sg as f32));
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

/// Batch normalisation with the batch statistics (biased variance, `eps` added), the affine
/// `γ, β` and a leaky ReLU with `slope`, for `x` `[B, C, H, W]`: one fused op with a
/// hand-written backward on the CPU (f32, `slope > 0`), [`batch_normalize`] then
/// `channel_affine_leaky` elsewhere.
pub fn batch_norm_leaky(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    slope: f32,
) -> Result<Tensor> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if f32_cpu(x) && f32_cpu(gamma) && f32_cpu(beta) && x.rank() == 4 && fusable_slope(slope) {
        x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            NormalizeAffineLeaky {
                eps: eps as f32,
                slope,
                stats: OnceLock::new(),
            },
        )
    } else {
        super::channel_op::channel_affine_leaky(&batch_normalize(x, eps)?, gamma, beta, slope)
    }
}
