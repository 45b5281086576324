//! Fused per-channel bias and affine ops over `[B, C, H, W]` for the CPU, with hand-written,
//! multi-threaded backward passes.
//!
//! `y.broadcast_add(&b.reshape((1, C, 1, 1)))` costs little forward, but its backward reduces the
//! gradient over batch and pixels with candle's single-threaded strided `sum_keepdim`: about a
//! tenth of a VAE training step (perf, 2 cores). Here the bias gradient is one parallel pass
//! over contiguous pixel rows, and `x * scale_c + shift_c` (batch-norm affine) gets all three
//! gradients from one pass.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::activation::{contiguous_f32, grad_pair};

/// `(batch, channels, pixels per channel and image)` of a `[B, C, H, W]` layout.
pub(crate) fn bchw(op: &str, l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        [b, c, h, w] => Ok((*b, *c, h * w)),
        d => candle_core::bail!("{op}: expected [B, C, H, W], got {d:?}"),
    }
}

pub(crate) fn channel_vector<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
    c: usize,
) -> Result<&'a [f32]> {
    let v = contiguous_f32(op, s, l)?;
    if v.len() != c {
        candle_core::bail!("{op}: per-channel vector {:?} for {c} channels", l.shape())
    }
    Ok(v)
}

/// `Σ f(a_i, b_i)` over several pairs of equally long rows (a channel's rows across the
/// batch), in [`LANES`] f32 lanes carried from row to row (rows shorter than that in eight of
/// them) and flushed into an f64 total every 8192 values (the loop vectorises; a single running
/// sum would be a serial, latency-bound chain). Reducing the lanes to f64 after every row
/// instead cost more than a 4x4 or 8x8 row.
#[inline(always)]
pub(crate) fn rows_lane_sum<'a>(
    rows: impl Iterator<Item = (&'a [f32], &'a [f32])>,
    f: impl Fn(f32, f32) -> f32,
) -> f64 {
    let (mut lanes, mut tail, mut total, mut since) = ([0f32; LANES], 0f32, 0f64, 0usize);
    for (a, b) in rows {
        let mut ca = a.chunks_exact(LANES);
        let mut cb = b.chunks_exact(LANES);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for ((l, &u), &v) in lanes.iter_mut().zip(x).zip(y) {
                *l += f(u, v);
            }
        }
        let mut ea = ca.remainder().chunks_exact(8);
        let mut eb = cb.remainder().chunks_exact(8);
        for (x, y) in (&mut ea).zip(&mut eb) {
            for ((l, &u), &v) in lanes.iter_mut().zip(x).zip(y) {
                *l += f(u, v);
            }
        }
        for (&u, &v) in ea.remainder().iter().zip(eb.remainder()) {
            tail += f(u, v);
        }
        since += a.len();
        if since >= 8192 {
            total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail);
            (lanes, tail, since) = ([0f32; LANES], 0.0, 0);
        }
    }
    total + lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// f32 lanes of the per-channel sums: four AVX2 vectors, four independent add chains (with
/// one, eight lanes, the sums were latency-bound: the batch statistics of a 16-channel 64x64
/// layer at batch 64 took 1.19-1.44 ms in one pass on eight lanes, 0.70-1.29 ms in two
/// passes, 0.55-0.78 ms in one pass on 32 lanes; paired runs, README session 12).
pub(crate) const LANES: usize = 32;

/// Channel `ch`'s pixel rows of `v` (`[b, c, hw]`), image after image.
pub(crate) fn channel_rows(
    v: &[f32],
    b: usize,
    c: usize,
    hw: usize,
    ch: usize,
) -> impl Iterator<Item = &[f32]> {
    (0..b).map(move |bi| &v[(bi * c + ch) * hw..(bi * c + ch + 1) * hw])
}

/// Per-channel sums over batch and pixels: `Σ g` (and `Σ g·x` when `x` is given), as
/// `[C]` or `[2C]` (sums of `g` first). Parallel over images, reduced in f64.
fn channel_sums(g: &[f32], x: Option<&[f32]>, b: usize, c: usize, hw: usize) -> Vec<f32> {
    let sums: Vec<(f64, f64)> = if c >= 8 {
        // per channel, its rows across the batch in one lane sum
        (0..c)
            .into_par_iter()
            .map(|ch| {
                let gr = || channel_rows(g, b, c, hw, ch);
                let sg = rows_lane_sum(gr().map(|r| (r, r)), |u, _| u);
                let sgx = x.map_or(0.0, |x| {
                    rows_lane_sum(gr().zip(channel_rows(x, b, c, hw, ch)), |u, v| u * v)
                });
                (sg, sgx)
            })
            .collect()
    } else {
        // a few channels (an RGB output): in parallel over images, too few tasks otherwise
        (0..b)
            .into_par_iter()
            .fold(
                || vec![(0f64, 0f64); c],
                |mut acc, bi| {
                    for (ch, a) in acc.iter_mut().enumerate() {
                        let r = &g[(bi * c + ch) * hw..(bi * c + ch + 1) * hw];
                        a.0 += rows_lane_sum(std::iter::once((r, r)), |u, _| u);
                        if let Some(x) = x {
                            let xr = &x[(bi * c + ch) * hw..(bi * c + ch + 1) * hw];
                            a.1 += rows_lane_sum(std::iter::once((r, xr)), |u, v| u * v);
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![(0f64, 0f64); c],
                |mut a, b| {
                    for (u, v) in a.iter_mut().zip(b) {
                        u.0 += v.0;
                        u.1 += v.1;
                    }
                    a
                },
            )
    };
    let mut out: Vec<f32> = sums.iter().map(|&(s, _)| s as f32).collect();
    if x.is_some() {
        out.extend(sums.iter().map(|&(_, s)| s as f32));
    }
    out
}

/// `y[b, c, p] = x[b, c, p] * scale[c] + shift[c]` (no scale: 1), in parallel over rows.
fn affine_rows(
    x: &[f32],
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    c: usize,
    hw: usize,
) -> Vec<f32> {
    affine_leaky_rows(x, scale, shift, c, hw, 1.0)
}

/// [`affine_rows`] followed by a leaky ReLU with `slope` (1: none), in the same pass.
fn affine_leaky_rows(
    x: &[f32],
    scale: Option<&[f32]>,
    shift: Option<&[f32]>,
    c: usize,
    hw: usize,
    slope: f32,
) -> Vec<f32> {
    // `move`: slope by value, not a pointer the stores might alias (that kept this loop scalar)
    map_rows(x.len(), hw, move |k, y| {
        let x = &x[k * hw..][..y.len()];
        let ch = k % c;
        let s = scale.map_or(1.0, |s| s[ch]);
        let t = shift.map_or(0.0, |t| t[ch]);
        for (o, &v) in y.iter_mut().zip(x) {
            let v = v * s + t;
            // a select and a multiply, no branch (vectorises); NaN stays NaN
            o.write(v * if v > 0.0 { 1.0 } else { slope });
        }
    })
}

/// A new `len`-value vector of rows of `hw` values, row `k` written by `f(k, row)` (which must
/// write all of it), in parallel with whole rows per task and at least ~4096 values each: a
/// task per 4x4 or 8x8 pixel row cost more in scheduling than the row itself.
pub(crate) fn map_rows<F>(len: usize, hw: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
{
    // SAFETY: `fill_rows` covers the output in whole rows and `f` writes each row in full.
    unsafe { super::activation::filled_vec(len, |y| fill_rows(y, hw, f)) }
}

/// Row `k` (of `hw` values) of `out` written by `f(k, row)`, in parallel like [`map_rows`].
pub(crate) fn fill_rows<F>(out: &mut [std::mem::MaybeUninit<f32>], hw: usize, f: F)
where
    F: Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
{
    let hw = hw.max(1);
    let rows_per_task = 4096usize.div_ceil(hw);
    super::activation::map_chunks(out, rows_per_task * hw, |t, y| {
        for (j, row) in y.chunks_mut(hw).enumerate() {
            f(t * rows_per_task + j, row);
        }
    })
}

/// `x + bias_c`, then a leaky ReLU with the given slope (fused: one pass, one autograd node).
struct AddBias(Option<f32>);
/// `Σ_{b,p} g` per channel → `[C]`.
pub(crate) struct ChannelSum;
/// `x * scale_c + shift_c`, then a leaky ReLU with the given slope.
struct Affine(Option<f32>);
/// `g * scale_c` (the input gradient of [`Affine`]).
struct ScaleRows;
/// `[Σ g, Σ g·x]` per channel → `[2C]`.
struct ChannelSums2;

/// The gradient before an optional leaky ReLU with `slope`, given its output `res` (with a
/// positive slope the output has the sign of the pre-activation).
fn before_leaky(grad: &Tensor, res: &Tensor, slope: Option<f32>) -> Result<Tensor> {
    let g = grad.contiguous()?;
    match slope {
        Some(s) => super::activation::leaky_grad(&g, res, s),
        None => Ok(g),
    }
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        match self.0 {
            None => "fast-add-bias",
            Some(_) => "fast-add-bias-leaky-relu",
        }
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let what = if self.0.is_some() {
            "add_bias_leaky"
        } else {
            "add_bias"
        };
        let x = contiguous_f32(what, s1, l1)?;
        let (_, c, hw) = bchw(what, l1)?;
        let bias = channel_vector(what, s2, l2, c)?;
        let slope = self.0.unwrap_or(1.0);
        Ok((
            CpuStorage::F32(affine_leaky_rows(x, None, Some(bias), c, hw, slope)),
            l1.shape().clone(),
        ))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = before_leaky(grad, res, self.0)?;
        let gb = g.apply_op1_no_bwd(&ChannelSum)?;
        Ok((Some(g), Some(gb)))
    }
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "fast-channel-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32("channel_sum", s, l)?;
        let (b, c, hw) = bchw("channel_sum", l)?;
        Ok((
            CpuStorage::F32(channel_sums(g, None, b, c, hw)),
            Shape::from(c),
        ))
    }
}

impl CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        match self.0 {
            None => "fast-channel-affine",
            Some(_) => "fast-channel-affine-leaky-relu",
        }
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
        let what = if self.0.is_some() {
            "channel_affine_leaky"
        } else {
            "channel_affine"
        };
        let x = contiguous_f32(what, s1, l1)?;
        let (_, c, hw) = bchw(what, l1)?;
        let scale = channel_vector(what, s2, l2, c)?;
        let shift = channel_vector(what, s3, l3, c)?;
        let slope = self.0.unwrap_or(1.0);
        Ok((
            CpuStorage::F32(affine_leaky_rows(x, Some(scale), Some(shift), c, hw, slope)),
            l1.shape().clone(),
        ))
    }
    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = before_leaky(grad, res, self.0)?;
        let c = scale.elem_count();
        let gx = g.apply_op2_no_bwd(scale, &ScaleRows)?;
        let sums = g.apply_op2_no_bwd(&x.contiguous()?, &ChannelSums2)?;
        let gshift = sums.narrow(0, 0, c)?;
        let gscale = sums.narrow(0, c, c)?;
        Ok((Some(gx), Some(gscale), Some(gshift)))
    }
}

impl CustomOp2 for ScaleRows {
    fn name(&self) -> &'static str {
        "fast-channel-scale"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32("channel_affine grad", s1, l1)?;
        let (_, c, hw) = bchw("channel_affine grad", l1)?;
        let scale = channel_vector("channel_affine grad", s2, l2, c)?;
        Ok((
            CpuStorage::F32(affine_rows(g, Some(scale), None, c, hw)),
            l1.shape().clone(),
        ))
    }
}

impl CustomOp2 for ChannelSums2 {
    fn name(&self) -> &'static str {
        "fast-channel-sums"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = grad_pair("channel_affine", (s1, l1), (s2, l2))?;
        let (b, c, hw) = bchw("channel_affine grad", l1)?;
        Ok((
            CpuStorage::F32(channel_sums(g, Some(x), b, c, hw)),
            Shape::from(2 * c),
        ))
    }
}

/// `leaky_relu(y + bias[c], slope)` on the raw `[B, C, hw]` values of `y` (the fused conv
/// ops' epilogue): one parallel pass into a new buffer.
pub(crate) fn bias_leaky_rows(
    y: &[f32],
    bias: &[f32],
    c: usize,
    hw: usize,
    slope: f32,
) -> Vec<f32> {
    affine_leaky_rows(y, None, Some(bias), c, hw, slope)
}

/// The backward of a bias + leaky ReLU epilogue with output `res`: (the gradient before the
/// activation, the bias gradient `[C]`).
pub(crate) fn bias_leaky_grads(
    grad: &Tensor,
    res: &Tensor,
    slope: f32,
) -> Result<(Tensor, Tensor)> {
    let g = before_leaky(grad, res, Some(slope))?;
    let gb = g.apply_op1_no_bwd(&ChannelSum)?;
    Ok((g, gb))
}

/// Slopes the fused activations accept: the output's sign must be the pre-activation's.
pub(crate) fn fusable_slope(slope: f32) -> bool {
    slope > 0.0 && slope.is_finite()
}

/// `leaky_relu(x + bias[c], slope)` for `x` `[B, C, H, W]`: one fused op on the CPU (f32,
/// `slope > 0`; one pass forward, and no intermediate tensor whose gradient candle would
/// accumulate), [`add_bias`] then the leaky ReLU elsewhere.
pub fn add_bias_leaky(x: &Tensor, bias: &Tensor, slope: f32) -> Result<Tensor> {
    if fused(x) && bias.dtype() == DType::F32 && fusable_slope(slope) {
        x.contiguous()?
            .apply_op2(&bias.contiguous()?, AddBias(Some(slope)))
    } else {
        super::activation::leaky_relu(&add_bias(x, bias)?, slope)
    }
}

/// `leaky_relu(x * scale[c] + shift[c], slope)`: fused like [`add_bias_leaky`].
pub fn channel_affine_leaky(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    slope: f32,
) -> Result<Tensor> {
    if fused(x)
        && scale.dtype() == DType::F32
        && shift.dtype() == DType::F32
        && fusable_slope(slope)
    {
        x.contiguous()?.apply_op3(
            &scale.contiguous()?,
            &shift.contiguous()?,
            Affine(Some(slope)),
        )
    } else {
        super::activation::leaky_relu(&channel_affine(x, scale, shift)?, slope)
    }
}

fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4
}

/// `x + bias[c]` for `x` `[B, C, H, W]` and `bias` `[C]`: fused on the CPU (f32), a candle
/// broadcast elsewhere.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused(x) && bias.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op2(&bias.contiguous()?, AddBias(None))
    } else {
        reference_add_bias(x, bias)
    }
}

/// `x * scale[c] + shift[c]` for `x` `[B, C, H, W]`: fused on the CPU (f32), candle broadcasts
/// elsewhere.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    if fused(x) && scale.dtype() == DType::F32 && shift.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op3(&scale.contiguous()?, &shift.contiguous()?, Affine(None))
    } else {
        reference_channel_affine(x, scale, shift)
    }
}

/// [`add_bias`] from plain candle ops (the reference the tests pin the fused op to).
pub fn reference_add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.broadcast_add(&bias.reshape((1, (), 1, 1))?)
}

/// [`channel_affine`] from plain candle ops.
pub fn reference_channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?
        .broadcast_add(&shift.reshape((1, (), 1, 1))?)
}
