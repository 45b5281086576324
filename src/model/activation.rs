//! Fused, multi-threaded leaky ReLU for the CPU (candle-nn's is five single-threaded ops).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Outputs smaller than this many values are computed on the calling thread: handing work to
/// rayon's pool from outside it (wake a worker, block until it is done) costs tens of
/// microseconds, more than an elementwise op on a batch-1 activation (perf: a quarter of a
/// batch-1 decode went to waking and parking threads).
pub(crate) const SERIAL_BELOW: usize = 1 << 17;

/// A vector of `len` values written by `fill` into its uninitialised storage: no zero-fill
/// first (a pass over every layer's output, about 5 % of an encode).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn filled_vec(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees that `fill` initialised all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// `f(i, out_chunk_i)` for the `chunk`-sized pieces of `out`: in parallel when `out` is large,
/// in order on this thread otherwise.
pub(crate) fn map_chunks<T: Send, F>(out: &mut [T], chunk: usize, f: F)
where
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let chunk = chunk.max(1);
    if out.len() < SERIAL_BELOW {
        out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

/// The f32 data of a contiguous CPU tensor; errors name the custom op `op`.
pub(crate) fn contiguous_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{op}: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A gradient op's two inputs (the incoming gradient and the forward input) as contiguous
/// f32 slices of the same shape; `op` names the operation in errors.
pub(crate) fn grad_pair<'a>(
    op: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    let g = contiguous_f32(op, s1, l1)?;
    let x = contiguous_f32(op, s2, l2)?;
    if l1.dims() != l2.dims() {
        candle_core::bail!(
            "{op} grad: shape mismatch {:?} vs {:?}",
            l1.shape(),
            l2.shape()
        )
    }
    Ok((g, x))
}

struct Leaky(f32);
struct LeakyGrad(f32);

impl CustomOp1 for Leaky {
    fn name(&self) -> &'static str {
        "fast-leaky-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("leaky_relu", s, l)?;
        let slope = self.0;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            map_chunks(y, CHUNK, move |i, y| {
                let x = &x[i * CHUNK..][..y.len()];
                // `move`: slope by value, not a pointer the stores might alias (that kept this
                // loop scalar); a select and a multiply, no branch: vectorises, NaN stays NaN
                for (o, &v) in y.iter_mut().zip(x) {
                    o.write(v * if v > 0.0 { 1.0 } else { slope });
                }
            })
        };
        // SAFETY: the chunks cover the output and each is written in full.
        let y = unsafe { filled_vec(x.len(), fill) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(arg, &LeakyGrad(self.0))?,
        ))
    }
}

impl CustomOp2 for LeakyGrad {
    fn name(&self) -> &'static str {
        "fast-leaky-relu-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = grad_pair("leaky_relu", (s1, l1), (s2, l2))?;
        let slope = self.0;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            map_chunks(out, CHUNK, move |i, o| {
                let (g, x) = (&g[i * CHUNK..][..o.len()], &x[i * CHUNK..][..o.len()]);
                for ((o, &g), &x) in o.iter_mut().zip(g).zip(x) {
                    o.write(g * if x > 0.0 { 1.0 } else { slope });
                }
            })
        };
        // SAFETY: the chunks cover the output and each is written in full.
        let out = unsafe { filled_vec(g.len(), fill) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `g * (x > 0 ? 1 : slope)`: the leaky ReLU's input gradient for incoming `g` at `x` (or at
/// the output, which has the same sign for a positive slope). No gradient of its own.
pub(crate) fn leaky_grad(g: &Tensor, x: &Tensor, slope: f32) -> Result<Tensor> {
    g.apply_op2_no_bwd(&x.contiguous()?, &LeakyGrad(slope))
}

/// Leaky ReLU `x > 0 ? x : slope * x`, any shape. Fused on the CPU, two candle ops elsewhere.
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Leaky(slope))
    } else {
        x.maximum(&(x * slope as f64)?)
    }
}

struct Sigmoid;
struct SigmoidGrad;

impl CustomOp1 for Sigmoid {
    fn name(&self) -> &'static str {
        "fast-sigmoid"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("sigmoid", s, l)?;
        let fill = |y: &mut [MaybeUninit<f32>]| {
            map_chunks(y, CHUNK, |i, y| {
                let x = &x[i * CHUNK..][..y.len()];
                for (o, &v) in y.iter_mut().zip(x) {
                    o.write(1.0 / (1.0 + (-v).exp()));
                }
            })
        };
        // SAFETY: the chunks cover the output and each is written in full.
        let y = unsafe { filled_vec(x.len(), fill) };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2_no_bwd(&res.contiguous()?, &SigmoidGrad)?,
        ))
    }
}

impl CustomOp2 for SigmoidGrad {
    fn name(&self) -> &'static str {
        "fast-sigmoid-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, y) = grad_pair("sigmoid", (s1, l1), (s2, l2))?;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            map_chunks(out, CHUNK, |i, o| {
                let (g, y) = (&g[i * CHUNK..][..o.len()], &y[i * CHUNK..][..o.len()]);
                for ((o, &g), &y) in o.iter_mut().zip(g).zip(y) {
                    o.write(g * y * (1.0 - y));
                }
            })
        };
        // SAFETY: the chunks cover the output and each is written in full.
        let out = unsafe { filled_vec(g.len(), fill) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The logistic sigmoid `1 / (1 + e^-x)`, any shape: on the CPU (f32) one parallel pass
/// forward and one backward (`g · y · (1 − y)` from the output `y`), where candle-nn's op runs
/// on one thread and its backward is four tensor ops; candle-nn's elsewhere.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op1(Sigmoid)
    } else {
        candle_nn::ops::sigmoid(x)
    }
}
