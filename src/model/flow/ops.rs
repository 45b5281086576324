//! Fused CPU kernels of the affine coupling (one pass over memory instead of eight candle
//! ops), multi-threaded over the batch, with their gradients. Elsewhere (CUDA) the same maths
//! runs as plain candle ops ([`coupling_reference`], [`log_scale_sum_reference`]).
//!
//! Notation: `x` is the step input `[B, C, H, W]`, its first `ca` channels pass unchanged, the
//! other `cb` become `x_b·e^s + t`; `out` (`[B, 2cb, H, W]`) is the coupling net's output,
//! `s = K·tanh(out[:, :cb] / K)` (`K` the log-scale bound) and `t = out[:, cb:]`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Channel split and log-scale bound of one coupling.
#[derive(Clone, Copy, Debug)]
pub struct CouplingGeom {
    /// Channels passed unchanged.
    pub ca: usize,
    /// Channels transformed.
    pub cb: usize,
    /// Bound `K` of the log-scales.
    pub bound: f32,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("flow coupling: {what} must be f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("flow coupling: {what} must be contiguous"),
    }
}

/// `(B, C, HW)` of `x` and a check of `out` against the geometry.
fn dims(g: &CouplingGeom, lx: &Layout, lo: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = lx.shape().dims4()?;
    let (b2, co, h2, w2) = lo.shape().dims4()?;
    if c != g.ca + g.cb || b2 != b || co != 2 * g.cb || (h2, w2) != (h, w) {
        candle_core::bail!(
            "flow coupling: input {:?} and net output {:?} do not match the split {}+{}",
            lx.shape(),
            lo.shape(),
            g.ca,
            g.cb
        )
    }
    Ok((b, c, h * w))
}

#[inline]
fn log_scale(raw: f32, bound: f32) -> f32 {
    bound * (raw / bound).tanh()
}

/// The coupling itself: `(x, out) ↦ y`.
struct Coupling(CouplingGeom);
/// `(g, out) ↦ ∂L/∂x`.
struct GradX(CouplingGeom);
/// `(g, x, out) ↦ ∂L/∂out` through `y`.
struct GradOut(CouplingGeom);
/// `out ↦ Σ s` per image (`[B]`).
struct LogScaleSum(CouplingGeom);
/// `(g [B], out) ↦ ∂L/∂out` through the log-scale sum.
struct LogScaleSumGrad(CouplingGeom);

/// Per image: the first `ca` channels of `a` copied, the last `cb` multiplied by
/// `exp(log_scale(raw))` and, with `shift`, plus `t` (`out` = `[raw | t]` per image). The
/// coupling's forward (`a` = x, shift) and its gradient with respect to x (`a` = ∂L/∂y).
fn scale_second_part(
    g: &CouplingGeom,
    c: usize,
    hw: usize,
    a: &[f32],
    out: &[f32],
    shift: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; a.len()];
    y.par_chunks_mut(c * hw)
        .zip(a.par_chunks(c * hw))
        .zip(out.par_chunks(2 * g.cb * hw))
        .for_each(|((y, a), o)| {
            y[..g.ca * hw].copy_from_slice(&a[..g.ca * hw]);
            let (raw, t) = o.split_at(g.cb * hw);
            let (yb, ab) = (&mut y[g.ca * hw..], &a[g.ca * hw..]);
            for i in 0..g.cb * hw {
                let scaled = ab[i] * log_scale(raw[i], g.bound).exp();
                yb[i] = if shift { scaled + t[i] } else { scaled };
            }
        });
    y
}

impl CustomOp2 for Coupling {
    fn name(&self) -> &'static str {
        "flow-affine-coupling"
    }
    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        so: &CpuStorage,
        lo: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (_, c, hw) = dims(&g, lx, lo)?;
        let (x, out) = (slice(sx, lx, "x")?, slice(so, lo, "net output")?);
        let y = scale_second_part(&g, c, hw, x, out, true);
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        out: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(out, &GradX(self.0))?;
        let gout = grad.apply_op3_no_bwd(x, out, &GradOut(self.0))?;
        Ok((Some(gx), Some(gout)))
    }
}

impl CustomOp2 for GradX {
    fn name(&self) -> &'static str {
        "flow-affine-coupling-grad-x"
    }
    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        so: &CpuStorage,
        lo: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (_, c, hw) = dims(&g, lg, lo)?;
        let (gy, out) = (slice(sg, lg, "gradient")?, slice(so, lo, "net output")?);
        let gx = scale_second_part(&g, c, hw, gy, out, false);
        Ok((CpuStorage::F32(gx), lg.shape().clone()))
    }
}

impl CustomOp3 for GradOut {
    fn name(&self) -> &'static str {
        "flow-affine-coupling-grad-out"
    }
    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sx: &CpuStorage,
        lx: &Layout,
        so: &CpuStorage,
        lo: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (_, c, hw) = dims(&g, lx, lo)?;
        if lg.shape() != lx.shape() {
            candle_core::bail!("flow coupling: gradient shape {:?}", lg.shape())
        }
        let gy = slice(sg, lg, "gradient")?;
        let (x, out) = (slice(sx, lx, "x")?, slice(so, lo, "net output")?);
        let mut gout = vec![0f32; out.len()];
        gout.par_chunks_mut(2 * g.cb * hw)
            .zip(gy.par_chunks(c * hw))
            .zip(x.par_chunks(c * hw).zip(out.par_chunks(2 * g.cb * hw)))
            .for_each(|((go, gy), (x, o))| {
                let raw = &o[..g.cb * hw];
                let (graw, gt) = go.split_at_mut(g.cb * hw);
                let (gyb, xb) = (&gy[g.ca * hw..], &x[g.ca * hw..]);
                for i in 0..g.cb * hw {
                    let th = (raw[i] / g.bound).tanh();
                    let e = (g.bound * th).exp();
                    graw[i] = gyb[i] * xb[i] * e * (1.0 - th * th);
                    gt[i] = gyb[i];
                }
            });
        Ok((CpuStorage::F32(gout), lo.shape().clone()))
    }
}

impl CustomOp1 for LogScaleSum {
    fn name(&self) -> &'static str {
        "flow-log-scale-sum"
    }
    fn cpu_fwd(&self, so: &CpuStorage, lo: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, co, h, w) = lo.shape().dims4()?;
        if co != 2 * g.cb {
            candle_core::bail!("flow log-scale sum: net output {:?}", lo.shape())
        }
        let out = slice(so, lo, "net output")?;
        let hw = h * w;
        let sums: Vec<f32> = out
            .par_chunks(co * hw)
            .map(|o| {
                o[..g.cb * hw]
                    .iter()
                    .map(|&r| f64::from(log_scale(r, g.bound)))
                    .sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(b)))
    }
    fn bwd(&self, out: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(out, &LogScaleSumGrad(self.0))?,
        ))
    }
}

impl CustomOp2 for LogScaleSumGrad {
    fn name(&self) -> &'static str {
        "flow-log-scale-sum-grad"
    }
    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        so: &CpuStorage,
        lo: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, co, h, w) = lo.shape().dims4()?;
        let gsum = slice(sg, lg, "gradient")?;
        if gsum.len() != b || co != 2 * g.cb {
            candle_core::bail!(
                "flow log-scale sum grad: {:?} vs {:?}",
                lg.shape(),
                lo.shape()
            )
        }
        let out = slice(so, lo, "net output")?;
        let hw = h * w;
        let mut gout = vec![0f32; out.len()];
        gout.par_chunks_mut(co * hw)
            .zip(out.par_chunks(co * hw))
            .zip(gsum.par_iter())
            .for_each(|((go, o), &gs)| {
                for i in 0..g.cb * hw {
                    let th = (o[i] / g.bound).tanh();
                    go[i] = gs * (1.0 - th * th);
                }
            });
        Ok((CpuStorage::F32(gout), lo.shape().clone()))
    }
}

/// `x` with channels `ca..` replaced by `x_b·e^s + t`; fused on the CPU.
pub fn coupling(x: &Tensor, out: &Tensor, g: CouplingGeom) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&out.contiguous()?, Coupling(g))
    } else {
        coupling_reference(x, out, g)
    }
}

/// `Σ s` per image (`[B]`); fused on the CPU.
pub fn log_scale_sum(out: &Tensor, g: CouplingGeom) -> Result<Tensor> {
    if out.device().is_cpu() && out.dtype() == candle_core::DType::F32 {
        out.contiguous()?.apply_op1(LogScaleSum(g))
    } else {
        log_scale_sum_reference(out, g)
    }
}

/// `s = K·tanh(out[:, :cb] / K)` and `t = out[:, cb:]` with candle ops.
pub fn scale_shift_reference(out: &Tensor, g: CouplingGeom) -> Result<(Tensor, Tensor)> {
    let k = f64::from(g.bound);
    let s = out
        .narrow(1, 0, g.cb)?
        .affine(1.0 / k, 0.0)?
        .tanh()?
        .affine(k, 0.0)?;
    Ok((s, out.narrow(1, g.cb, g.cb)?))
}

/// [`coupling`] with plain candle ops (any device; the reference of the tests).
pub fn coupling_reference(x: &Tensor, out: &Tensor, g: CouplingGeom) -> Result<Tensor> {
    let (s, t) = scale_shift_reference(out, g)?;
    let xa = x.narrow(1, 0, g.ca)?;
    let yb = ((x.narrow(1, g.ca, g.cb)? * s.exp()?)? + t)?;
    Tensor::cat(&[&xa, &yb], 1)
}

/// [`log_scale_sum`] with plain candle ops.
pub fn log_scale_sum_reference(out: &Tensor, g: CouplingGeom) -> Result<Tensor> {
    scale_shift_reference(out, g)?.0.flatten_from(1)?.sum(1)
}
