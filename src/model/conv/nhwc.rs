//! Inference-only forward of a stack of `leaky_relu(conv2d(x, w) + b)` layers (the encoders
//! and recoders), channels-last and with no packing of the activations.
//!
//! The training kernels work on NCHW: their micro-kernel wants 16 pixels of one channel side
//! by side, so every 4x4 stride-2 layer first splits its input into stride-phase planes, then
//! packs 16-pixel strips out of them. At inference that split and packing cost about 11 % of
//! an encode. Here each image lives channels-last (`[H + 2p][W + 2p][C]`) inside a zero border
//! of the layer's padding, so:
//!
//! - a tap row of one output pixel (`k` input pixels, `k·C` floats) is one contiguous run, and
//!   the `k` runs of the `k` tap rows are a fixed stride apart;
//! - the micro-kernel takes 16·`NZ` output channels (contiguous weights, `NZ` zmm loads) times
//!   `MP` output pixels (each read with a scalar broadcast straight from the activations);
//! - its epilogue adds the bias, applies the leaky ReLU and stores the pixels' channels into
//!   the next layer's input, inside that layer's border.
//!
//! Each thread runs a few images through the whole stack, so the activations stay in its L2.
//! A batch smaller than the thread count (a batch-1 decode in the explorer) instead shares
//! each layer's tiles among the threads, all layers in one parallel region
//! (`Stack::run_layers`). The last layer's output is transposed back to NCHW order
//! (flattened for `stack_forward`).
//!
//! The packed weights are kept between calls in the model's [`super::StackCache`]: packing
//! costs more than a batch-1 pass (2-5 ms for a generator, mostly page faults on the fresh
//! buffers).
//!
//! Two micro-kernels (`nhwc/tiles.rs`): AVX-512F (8 pixels x 16 or 32 channels in zmm
//! accumulators) and, on CPUs without it, AVX2 + FMA (6 pixels x 16 channels in ymm ones, a
//! 32-channel block as two halves of one tile; the same packed weights).
//!
//! `deconv_stack` runs transposed 4x4 stride-2 layers (the GAN generator's, batch norm folded
//! into weights and bias) on the same tile: each is four 2x2 stride-1 convolutions, one per
//! output phase, whose windows lie inside the input's border of 1.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::ConvGeom;

mod pack;
mod scratch;
mod tiles;
pub(super) use pack::Packed;
use pack::{pack_conv, pack_deconv, Layer};
use scratch::{Cached, Scratch};
use tiles::{tile, tile_avx2, to_planes, to_planes_avx2};

/// Output pixels per tile, at most: the AVX-512 kernel takes 8 pixels x 16·`nz` channels
/// (`nz` zmm vectors: 2 for layers of 32·j channels, 1 for the rest, 16·j), 16
/// accumulators either way.
const MP: usize = 8;

/// Output pixels per tile of the AVX2 kernel: 6 pixels x 16 channels (2 ymm vectors), 12
/// accumulators; a 32-channel block runs as two 16-channel halves of the same tile (3
/// pixels x 32 channels would load 10.7 bytes of weights per FMA instead of 5.3).
const AVX2_P: usize = 6;

/// Which micro-kernel runs the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// AVX-512F: zmm accumulators, 8 pixels per tile.
    Avx512,
    /// AVX2 + FMA: ymm accumulators, 6 pixels x 16 channels per tile.
    Avx2,
}

impl Isa {
    /// The kernel for this CPU: AVX-512F where [`super::micro::has_avx512`] says so, else
    /// AVX2 + FMA; `None` without either, or with `LATENT_ATLAS_NO_CHANNELS_LAST` set (the
    /// encoders and the generator then run their NCHW inference paths).
    fn detect() -> Option<Self> {
        use std::sync::OnceLock;
        static ISA: OnceLock<Option<Isa>> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("LATENT_ATLAS_NO_CHANNELS_LAST").is_some() {
                None
            } else if super::micro::has_avx512() {
                Some(Isa::Avx512)
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                Some(Isa::Avx2)
            } else {
                None
            }
        })
    }

    /// Output pixels per tile for blocks of 16·`nz` channels.
    fn pixels(self) -> usize {
        match self {
            Isa::Avx512 => MP,
            Isa::Avx2 => AVX2_P,
        }
    }
}

/// Whether the channels-last inference stacks run on this CPU, and on which kernel:
/// `Some("AVX-512")`, `Some("AVX2")`, or `None` (NCHW inference paths).
pub fn stack_kernel() -> Option<&'static str> {
    Isa::detect().map(|i| match i {
        Isa::Avx512 => "AVX-512",
        Isa::Avx2 => "AVX2",
    })
}

/// Sides of every activation in the stack, `sides[l]` the input of layer `l`.
fn sides(layers: &[Layer], h: usize, w: usize) -> Vec<(usize, usize)> {
    let mut s = vec![(h, w)];
    for l in layers {
        let hw = *s.last().unwrap_or(&(0, 0));
        s.push(l.out_sides(hw));
    }
    s
}

/// The candle op: `[B, C0, H, W]` → `[B, C·Ho·Wo]` (NCHW flatten order).
struct Stack {
    layers: Arc<Packed>,
    slope: f32,
    isa: Isa,
}

/// Images per thread job whose largest padded activation stays within about 640 KB (half
/// of a Zen 4 L2 plus a margin; the weight block being multiplied takes most of the rest).
fn group(layers: &[Layer], sides: &[(usize, usize)], b: usize, threads: usize) -> usize {
    let per_image = layers
        .iter()
        .zip(sides)
        .map(|(l, (h, w))| (h + 2 * l.geom.padding) * (w + 2 * l.geom.padding) * l.c_in * 4)
        .max()
        .unwrap_or(1)
        .max(1);
    (640 * 1024 / per_image)
        .clamp(1, 16)
        .min(b.div_ceil(threads.max(1)))
        .max(1)
}

impl CustomOp1 for Stack {
    fn name(&self) -> &'static str {
        "conv-stack-channels-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::f32_slice(s, l, "stack input")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let first = &self.layers[0];
        if c != first.c_in {
            candle_core::bail!(
                "conv stack: input has {c} channels, its first layer takes {}",
                first.c_in
            );
        }
        let sides = sides(&self.layers, h, w);
        let last = &self.layers[self.layers.len() - 1];
        let (ho, wo) = sides[sides.len() - 1];
        if ho == 0 || wo == 0 {
            candle_core::bail!("conv stack: a {h}x{w} input leaves no output pixel");
        }
        let feat = last.c_out * ho * wo;
        let mut y = vec![0f32; b * feat];
        let threads = super::kernels::threads();
        if b > 0 && b < threads {
            // fewer images than threads (a batch-1 decode): one group, each layer's tiles
            // shared out among the threads
            let mut sc = Cached::take(&self.layers, &sides, b);
            self.run_group(sc.get(), &sides, x, b, &mut y, threads);
        } else if b > 0 {
            let nb = group(&self.layers, &sides, b, threads);
            y.par_chunks_mut(nb * feat).enumerate().for_each_init(
                || Cached::take(&self.layers, &sides, nb),
                |sc, (gi, out)| {
                    let cnt = out.len() / feat;
                    let img = c * h * w;
                    let xs = &x[gi * nb * img..(gi * nb + cnt) * img];
                    self.run_group(sc.get(), &sides, xs, cnt, out, 1);
                },
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((b, feat))))
    }
}

impl Stack {
    /// The stack for `cnt` images `xs` (NCHW) into `out` (`[cnt][C·Ho·Wo]`), each layer's
    /// tiles in `parts` shares run in parallel (1: all on this thread).
    fn run_group(
        &self,
        sc: &mut Scratch,
        sides: &[(usize, usize)],
        xs: &[f32],
        cnt: usize,
        out: &mut [f32],
        parts: usize,
    ) {
        let first = &self.layers[0];
        let (h, w) = sides[0];
        let p = first.geom.padding;
        let (hp, wp, c) = (h + 2 * p, w + 2 * p, first.c_in);
        // NCHW → channels-last inside the border
        let buf = &mut sc.bufs[0];
        for i in 0..cnt {
            for ch in 0..c {
                let plane = &xs[(i * c + ch) * h * w..][..h * w];
                for (y, row) in plane.chunks_exact(w).enumerate() {
                    let base = ((i * hp + y + p) * wp + p) * c + ch;
                    for (x, v) in row.iter().enumerate() {
                        buf[base + x * c] = *v;
                    }
                }
            }
        }
        self.run_layers(sc, sides, cnt, parts);
        // [n][Ho][Wo][C] → [n][C][Ho][Wo]
        let last = &self.layers[self.layers.len() - 1];
        let (ho, wo) = sides[sides.len() - 1];
        let (co, hw) = (last.c_out, ho * wo);
        let res = &sc.bufs[sc.bufs.len() - 1];
        for (i, o) in out.chunks_exact_mut(co * hw).enumerate() {
            let r = &res[i * hw * co..][..hw * co];
            // SAFETY: the ISA was detected on this CPU by `run`'s callers.
            unsafe {
                match self.isa {
                    Isa::Avx512 => to_planes(r, o, hw, co),
                    Isa::Avx2 => to_planes_avx2(r, o, hw, co),
                }
            }
        }
    }

    /// Every layer on `cnt` images; with `parts` > 1 the threads share each layer's items in
    /// one parallel region (1: all on this thread). `parts` tasks claim chunks of items from
    /// a counter per layer and count them done; a task starts on a layer once the previous
    /// one's items are all done. A task
    /// only ever waits for items another running task has claimed (claimed items finish
    /// without waiting on anything), so a task that starts late, or never runs beside the
    /// others, cannot stall the stack: it finds the items taken or takes them itself. One
    /// region instead of one per layer spares the wake-ups of the sleeping pool threads (on
    /// 2 cores, tens of microseconds each: a batch-1 decode is ~0.5 ms of arithmetic).
    fn run_layers(&self, sc: &mut Scratch, sides: &[(usize, usize)], cnt: usize, parts: usize) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let layers = &self.layers[..];
        let n: Vec<usize> = layers
            .iter()
            .zip(sides)
            .map(|(l, s)| self.items(l, *s, cnt))
            .collect();
        // about four chunks per task and layer: the shares even out, and each chunk runs
        // consecutive tiles of one weight block (one task: the whole layer in one chunk)
        let chunk: Vec<usize> = n
            .iter()
            .map(|&k| if parts <= 1 { k } else { k / (4 * parts) }.max(1))
            .collect();
        let claimed: Vec<AtomicUsize> = n.iter().map(|_| AtomicUsize::new(0)).collect();
        let done: Vec<AtomicUsize> = n.iter().map(|_| AtomicUsize::new(0)).collect();
        let failed = AtomicBool::new(false);
        let bufs: Vec<Dst> = sc
            .bufs
            .iter_mut()
            .map(|b| Dst(b.as_mut_ptr(), b.len()))
            .collect();
        let task = || {
            // a panicking task marks the stack failed, so that the others stop waiting
            struct Flag<'a>(&'a AtomicBool);
            impl Drop for Flag<'_> {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.store(true, Ordering::Release);
                    }
                }
            }
            let _flag = Flag(&failed);
            for (li, layer) in layers.iter().enumerate() {
                if li > 0 {
                    let mut spins = 0u32;
                    while done[li - 1].load(Ordering::Acquire) < n[li - 1] {
                        if failed.load(Ordering::Acquire) {
                            return;
                        }
                        spins += 1;
                        if spins.is_multiple_of(64) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
                let pn = layers.get(li + 1).map_or(0, |l| l.geom.padding);
                // SAFETY: layer li's input is complete (all of layer li - 1's items are
                // done, with release ordering) and no task writes it any more
                let src = unsafe { std::slice::from_raw_parts(bufs[li].0, bufs[li].1) };
                loop {
                    let i = claimed[li].fetch_add(chunk[li], Ordering::Relaxed);
                    if i >= n[li] {
                        break;
                    }
                    let e = (i + chunk[li]).min(n[li]);
                    self.layer(layer, sides[li], src, bufs[li + 1], pn, cnt, i..e);
                    done[li].fetch_add(e - i, Ordering::Release);
                }
            }
        };
        if parts <= 1 {
            task();
        } else {
            (0..parts).into_par_iter().for_each(|_| task());
        }
    }

    /// Work items of a layer on `cnt` images: (phase, channel block, tile of output pixels),
    /// phase-major.
    fn items(&self, layer: &Layer, (h, w): (usize, usize), cnt: usize) -> usize {
        let (phases, (gh, gw)) = if layer.transposed {
            (4, (h, w))
        } else {
            (1, layer.out_sides((h, w)))
        };
        let blocks = layer.c_out / (16 * layer.nz);
        phases * blocks * (cnt * gh * gw).div_ceil(self.isa.pixels())
    }

    /// Items `items` (of [`Self::items`]) of one layer on `cnt` images: `src` its padded
    /// input, `dst` its output inside a border of `pn`. Items write disjoint outputs: threads
    /// may run disjoint ranges of them on the same `dst` at once.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        layer: &Layer,
        (h, w): (usize, usize),
        src: &[f32],
        dst: Dst,
        pn: usize,
        cnt: usize,
        items: std::ops::Range<usize>,
    ) {
        let g = layer.geom;
        let (hp, wp) = (h + 2 * g.padding, w + 2 * g.padding);
        let (ho, wo) = layer.out_sides((h, w));
        let (hq, wq) = (ho + 2 * pn, wo + 2 * pn);
        let (ci, co) = (layer.c_in, layer.c_out);
        let width = 16 * layer.nz;
        debug_assert!(src.len() >= cnt * hp * wp * ci && dst.1 >= cnt * hq * wq * co);
        let (sp, dp) = (src.as_ptr(), dst.0);
        // (phase, kernel rows of the window, its grid): a convolution is one phase over the
        // output grid; a transposed one four 2x2 phases, each over the input grid
        let (phases, k, (gh, gw)) = if layer.transposed {
            (4, 2, (h, w))
        } else {
            (1, g.kernel, (ho, wo))
        };
        let steps = k * k * ci;
        let pixels = cnt * gh * gw;
        let mp = self.isa.pixels();
        let tiles = pixels.div_ceil(mp);
        let blocks = co / width;
        for (phase, wph) in layer
            .packed
            .chunks_exact(co * steps)
            .enumerate()
            .take(phases)
        {
            let (py, px) = (phase / 2, phase % 2);
            for (blk, wb) in wph.chunks_exact(steps * width).enumerate() {
                // this (phase, block)'s tiles within the range
                let first = (phase * blocks + blk) * tiles;
                let (lo, hi) = (
                    items.start.clamp(first, first + tiles) - first,
                    items.end.clamp(first, first + tiles) - first,
                );
                if lo >= hi {
                    continue;
                }
                let bias = &layer.bias[blk * width..][..width];
                // grid position of the tile's first pixel, advanced without divisions
                let p0 = lo * mp;
                let (mut ci0, mut cy, mut cx) = (p0 / (gh * gw), p0 % (gh * gw) / gw, p0 % gw);
                for t0 in (p0..hi * mp).step_by(mp) {
                    let valid = (pixels - t0).min(mp);
                    let mut from = [sp; MP];
                    let mut to = [dp; MP];
                    for j in 0..mp {
                        let (i, y, x) = (ci0, cy, cx);
                        // a partial tile repeats its last pixel (computed, not stored)
                        if j + 1 < valid {
                            step((gh, gw), (&mut ci0, &mut cy, &mut cx));
                        }
                        let (top, left, oy, ox) = if layer.transposed {
                            (y + py, x + px, 2 * y + py, 2 * x + px)
                        } else {
                            (g.stride * y, g.stride * x, y, x)
                        };
                        // SAFETY (offsets): the window's top-left lies inside image i's padded
                        // input, and the output pixel inside image i's bordered output.
                        unsafe {
                            from[j] = sp.add(((i * hp + top) * wp + left) * ci);
                            to[j] = dp.add(((i * hq + oy + pn) * wq + ox + pn) * co + blk * width);
                        }
                    }
                    // step past the tile's last pixel
                    step((gh, gw), (&mut ci0, &mut cy, &mut cx));
                    let rows = (k, k * ci, wp * ci);
                    let (w, s) = (wb.as_ptr(), self.slope);
                    // SAFETY: the ISA was detected on this CPU by `run`; every tap of every
                    // window lies inside `src` (the border covers the padding), the weight
                    // block holds `steps` vectors, and each destination holds `width` floats.
                    unsafe {
                        match (self.isa, layer.nz) {
                            (Isa::Avx512, 2) => tile::<2>(&from, rows, w, bias, s, &to, valid),
                            (Isa::Avx512, _) => tile::<1>(&from, rows, w, bias, s, &to, valid),
                            (Isa::Avx2, nz) => {
                                // one 16-channel half of the block after the other, the
                                // tile's input windows in L1 for the second
                                for h in 0..nz {
                                    let mut to_h = to;
                                    for t in &mut to_h[..valid] {
                                        *t = t.add(16 * h);
                                    }
                                    let half = (w.add(16 * h), width);
                                    let bh = &bias[16 * h..][..16];
                                    tile_avx2(&from, rows, half, bh, s, &to_h, valid);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A layer's output buffer (pointer, length) shared by the threads of a split layer
/// ([`Stack::layer`]): each writes only its own items' pixels.
#[derive(Clone, Copy)]
struct Dst(*mut f32, usize);
// SAFETY: the threads given one `Dst` write disjoint elements and nothing reads them until
// every thread is done (the parallel loop joins).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// The next pixel of a `gh x gw` grid, row-major, image after image.
#[inline(always)]
fn step((gh, gw): (usize, usize), (i, y, x): (&mut usize, &mut usize, &mut usize)) {
    *x += 1;
    if *x == gw {
        *x = 0;
        *y += 1;
        if *y == gh {
            *y = 0;
            *i += 1;
        }
    }
}

/// `x` through `layers` (each `leaky_relu(conv2d(h, w) + b, slope)`), flattened to `[B, F]`
/// in NCHW order, or `None` where this path does not apply: not the CPU, not f32, neither
/// AVX-512F nor AVX2 + FMA (or `LATENT_ATLAS_NO_CHANNELS_LAST` set), output channels not a
/// multiple of 16, non-square kernels, or shapes that do not chain. No gradient flows
/// through the result.
pub fn stack_forward(
    x: &Tensor,
    layers: &[(&Tensor, &Tensor, ConvGeom)],
    slope: f32,
    cache: &super::StackCache,
) -> candle_core::Result<Option<Tensor>> {
    if !eligible(x, layers.len(), slope) {
        return Ok(None);
    }
    let key = layers.iter().map(|(w, _, _)| w.id()).collect();
    let mut small = Vec::new();
    for (_, b, _) in layers {
        small.extend(b.flatten_all()?.to_vec1::<f32>()?);
    }
    let c_in = x.dims()[1];
    let Some(packed) = cache.get_or_pack(key, small, || pack_conv(c_in, layers))? else {
        return Ok(None);
    };
    run(x, packed, slope)
}

/// Whether a stack of `n` layers can run on `x` at all: a rank-4 f32 CPU tensor, a CPU with
/// AVX-512F or AVX2 + FMA ([`Isa::detect`]), a finite slope.
fn eligible(x: &Tensor, n: usize, slope: f32) -> bool {
    x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && x.rank() == 4
        && n > 0
        && Isa::detect().is_some()
        && slope.is_finite()
}

/// `x` through the packed layers, or `None` where the sides do not chain.
fn run(x: &Tensor, packed: Arc<Packed>, slope: f32) -> candle_core::Result<Option<Tensor>> {
    let (_, _, h, w) = x.dims4()?;
    let s = sides(&packed, h, w);
    // a pack cached for these weights may meet an input of another width: decline
    let fits = packed.first().is_some_and(|l| l.c_in == x.dims()[1])
        && packed.iter().zip(&s).all(|(l, (h, w))| {
            let p = 2 * l.geom.padding;
            *h > 0 && *w > 0 && (l.transposed || (h + p >= l.geom.kernel && w + p >= l.geom.kernel))
        });
    let Some(isa) = Isa::detect() else {
        return Ok(None);
    };
    if !fits {
        return Ok(None);
    }
    let op = Stack {
        layers: packed,
        slope,
        isa,
    };
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&op)?))
}

/// `x` `[B, C, h, w]` through transposed 4x4 stride-2 layers (padding 1), each
/// `leaky_relu(conv_transpose2d(h, w) · scale + shift, slope)` per output channel (`scale`
/// absent: 1; a batch norm at inference folds into `scale` and `shift`), as
/// `[B, C', 2^L h, 2^L w]`; `None` where the path does not apply (as [`stack_forward`]).
/// Weights are `[Ci, Co, 4, 4]` (PyTorch's layout). No gradient flows through the result.
pub fn deconv_stack(
    x: &Tensor,
    layers: &[(&Tensor, Option<&Tensor>, &Tensor)],
    slope: f32,
    cache: &super::StackCache,
) -> candle_core::Result<Option<Tensor>> {
    if !eligible(x, layers.len(), slope) {
        return Ok(None);
    }
    let key = layers.iter().map(|(w, _, _)| w.id()).collect();
    let mut small = Vec::new();
    for (_, scale, shift) in layers {
        small.extend(shift.flatten_all()?.to_vec1::<f32>()?);
        if let Some(s) = scale {
            small.extend(s.flatten_all()?.to_vec1::<f32>()?);
        }
        // a scale present or not: a separator the shift values cannot imitate
        small.push(if scale.is_some() {
            f32::INFINITY
        } else {
            f32::NEG_INFINITY
        });
    }
    let c_in = x.dims()[1];
    let Some(packed) = cache.get_or_pack(key, small, || pack_deconv(c_in, layers))? else {
        return Ok(None);
    };
    let c = packed[packed.len() - 1].c_out;
    let (b, _, h, w) = x.dims4()?;
    let Some(y) = run(x, packed, slope)? else {
        return Ok(None);
    };
    let (ho, wo) = (h << layers.len(), w << layers.len());
    Ok(Some(y.reshape((b, c, ho, wo))?))
}
