//! The input gradient of a 4x4 stride-2 convolution (a transposed convolution: the
//! decoder's and generator's up-sampling layers run it forward) by stride phases, with the
//! micro-kernel and buffers of [`super::implicit`].
//!
//! Input pixel `(2a + ry, 2b + rx)` receives exactly the 2 x 2 taps whose phase is `(ry, rx)`, from the
//! output gradient at `(a - dy, b - dx)`. Each phase plane of `∂/∂x` is then a 2x2
//! convolution of `gy` (whose pixels are the plane's pixels, since planes are as large as the
//! output): 16-pixel strips of `gy` shifted by each tap's offset and masked, against per-phase
//! weight panels. No im2col matrix, no col2im accumulation; the 4 finished planes of each
//! channel are interleaved into the image once.

use rayon::prelude::*;

use super::implicit::{applies_geometry, masked_row, Scratch, KC, MR};
use super::kernels::{group_size, threads, Epilogue};
use super::micro::Micro;
use super::unfold::{from_planes, tap_phase, Dims};
use super::ConvGeom;

/// Whether [`grad_input_images`] handles this convolution's input gradient: a 4x4 stride-2
/// kernel (2 taps per phase and axis) with the layout [`applies_geometry`] needs and at
/// least [`MIN_ROWS_GRAD_INPUT`] im2col rows.
pub(super) fn applies_grad_input(d: &Dims, g: &ConvGeom) -> bool {
    g.kernel == 4 && g.stride == 2 && d.col_rows(g) >= MIN_ROWS_GRAD_INPUT && applies_geometry(d, g)
}

/// The fewest im2col rows (16 input channels of a 4x4 kernel) for which the input gradient
/// runs by stride phases rather than im2col + product + col2im. The forward's threshold (32
/// channels) had kept the 32 → 16 transposed layer (the decoder's and generator's last,
/// 64x64) on col2im; by phases it is 14-17 % faster on a Zen 3 without AVX-512 (paired
/// `bench --layers` runs: forward 18.3-20.8 → 13.6-17.2 ms, forward + backward 61-65 →
/// 48-55 ms). Fewer channels (an RGB input's gradient) stay on col2im.
const MIN_ROWS_GRAD_INPUT: usize = 256;

/// Per-phase weight panels, tap offsets and masks of one convolution.
pub(super) struct PhaseWeights {
    /// Per phase: panels of `micro.nr` input channels, each `[c_out * 4][nr]` (row
    /// `co * 4 + j` for the phase's tap `j`), zero-padded past `c_in`.
    panels: Vec<Vec<f32>>,
    /// The micro-kernel for `c_in` columns.
    micro: Micro,
    /// Per phase, per tap `j`: the offset of the source in `gy` from the plane pixel.
    offs: Vec<[isize; 4]>,
    /// Per phase, per tap `j`, per plane pixel: all ones where the source exists, else 0.
    masks: Vec<Vec<u32>>,
    margin: usize,
}

impl PhaseWeights {
    /// From the weights `w` (`[c_out, c_in, 4, 4]`); requires [`applies_grad_input`] (a 4x4 kernel:
    /// 2 taps per phase and axis).
    pub(super) fn new(w: &[f32], d: &Dims, g: &ConvGeom) -> Self {
        let (k, rows) = (g.kernel, d.c_out * 4);
        let micro = Micro::for_cols(d.c_in);
        let nr = micro.nr;
        let (mut panels, mut offs, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        let mut reach = 0isize;
        for phase in 0..4 {
            let taps = PhaseTaps::new(d, g, phase);
            reach = taps.offs.iter().fold(reach, |r, o| r.max(o.abs()));
            let mut p = vec![0f32; d.c_in.div_ceil(nr) * rows * nr];
            for ci in 0..d.c_in {
                let panel = &mut p[(ci / nr) * rows * nr..][..rows * nr];
                for co in 0..d.c_out {
                    for (j, &(ki, kj)) in taps.taps.iter().enumerate() {
                        panel[(co * 4 + j) * nr + ci % nr] =
                            w[((co * d.c_in + ci) * k + ki) * k + kj];
                    }
                }
            }
            panels.push(p);
            offs.push(taps.offs);
            masks.push(taps.masks);
        }
        Self {
            panels,
            micro,
            offs,
            masks,
            margin: (reach as usize + MR).next_multiple_of(16),
        }
    }
}

/// The 4 taps of one stride phase of a 4x4 stride-2 kernel ([`applies_grad_input`]'s
/// geometry): input pixel `(2a + ry, 2b + rx)` of phase `ry·2 + rx` receives tap `j`'s
/// weight times the output gradient at plane pixel `a·wo + b + offs[j]` where `masks` allows.
pub(super) struct PhaseTaps {
    /// Per tap `j`: the kernel row and column `(ki, kj)`.
    pub(super) taps: [(usize, usize); 4],
    /// Per tap: the offset of the source in a `gy` plane from the plane pixel.
    pub(super) offs: [isize; 4],
    /// Per tap, per plane pixel (`[4][ho·wo]`): all ones where the source exists, else 0.
    pub(super) masks: Vec<u32>,
}

impl PhaseTaps {
    pub(super) fn new(d: &Dims, g: &ConvGeom, phase: usize) -> Self {
        let (k, n) = (g.kernel, d.col_cols());
        let (ry, rx) = (phase / 2, phase % 2);
        let along = |r: usize| -> Vec<(usize, isize)> {
            (0..k)
                .filter_map(|t| {
                    let (p, o) = tap_phase(t, g);
                    (p == r).then_some((t, o))
                })
                .collect()
        };
        let (taps_y, taps_x) = (along(ry), along(rx));
        let mut s = Self {
            taps: [(0, 0); 4],
            offs: [0; 4],
            masks: vec![0u32; 4 * n],
        };
        for (j, ((ki, dy), (kj, dx))) in taps_y
            .iter()
            .flat_map(|a| taps_x.iter().map(move |b| (*a, *b)))
            .enumerate()
            .take(4)
        {
            s.taps[j] = (ki, kj);
            s.offs[j] = -(dy * d.wo as isize + dx);
            let m = &mut s.masks[j * n..][..n];
            for a in 0..d.ho {
                let oy = a as isize - dy;
                if oy < 0 || oy >= d.ho as isize {
                    continue;
                }
                for b in 0..d.wo {
                    let ox = b as isize - dx;
                    if ox >= 0 && ox < d.wo as isize {
                        m[a * d.wo + b] = u32::MAX;
                    }
                }
            }
        }
        s
    }
}

/// `∂/∂x` of `conv2d(x, w)` for `cnt` consecutive images of the output gradient `gy`
/// (`[cnt, c_out, ho, wo]`) into `gx` (`[cnt, c_in, h, w]`, every element written), with
/// `pw` from [`PhaseWeights::new`]. Requires [`applies_grad_input`].
pub(super) fn grad_input_images(
    gy: &[f32],
    cnt: usize,
    pw: &PhaseWeights,
    d: &Dims,
    gx: &mut [std::mem::MaybeUninit<f32>],
    scratch: &mut Scratch,
    epi: Option<Epilogue>,
) {
    let n = d.col_cols();
    let (rows, plane, out) = (d.c_out * 4, n, d.c_out * n);
    assert!(gy.len() >= cnt * out && gx.len() >= cnt * d.c_in * d.h * d.w);
    // gy with margins, so that shifted strip loads stay inside the buffer
    let margin = pw.margin;
    scratch.planes.clear();
    scratch.planes.resize(margin, 0.0);
    scratch.planes.extend_from_slice(&gy[..cnt * out]);
    scratch.planes.resize(cnt * out + 2 * margin, 0.0);
    // the 4 phase planes of every input channel: [image][c_in][phase][plane]
    scratch.phases.resize(cnt * d.c_in * 4 * plane, 0.0);
    scratch.strip.resize(KC * MR, 0.0);
    let dst = scratch.phases.as_mut_ptr();
    for phase in 0..4 {
        let (offs, mask) = (&pw.offs[phase], &pw.masks[phase]);
        for k0 in (0..rows).step_by(KC) {
            let kc = KC.min(rows - k0);
            for i in 0..cnt {
                for p0 in (0..n).step_by(MR) {
                    // SAFETY: applies_geometry() checked AVX2; reads stay within the margins.
                    unsafe {
                        pack_gy_strip(
                            &scratch.planes,
                            margin + i * out,
                            n,
                            offs,
                            mask,
                            p0,
                            k0,
                            kc,
                            &mut scratch.strip,
                        )
                    };
                    let (micro, nr) = (pw.micro, pw.micro.nr);
                    for (j, panel) in pw.panels[phase].chunks_exact(rows * nr).enumerate() {
                        let ci = j * nr;
                        // SAFETY: applies_geometry() checked FMA, Micro AVX-512 for its wide kernel;
                        // the tile (16 plane pixels from p0, channels ci.. ci + nr clipped to
                        // c_in) lies inside image i's phase planes.
                        unsafe {
                            micro.tile(
                                (nr.min(d.c_in - ci), kc),
                                dst.add(((i * d.c_in + ci) * 4 + phase) * plane + p0),
                                4 * plane,
                                scratch.strip.as_ptr(),
                                panel.as_ptr().add(k0 * nr),
                                k0 > 0,
                            );
                        }
                    }
                }
            }
        }
    }
    let img = d.c_in * d.h * d.w;
    for i in 0..cnt {
        for ci in 0..d.c_in {
            let planes = &scratch.phases[(i * d.c_in + ci) * 4 * plane..][..4 * plane];
            let chan = &mut gx[i * img + ci * d.h * d.w..][..d.h * d.w];
            from_planes(planes, d, 2, chan);
            if let Some(e) = epi {
                // SAFETY: from_planes wrote every element of the channel.
                unsafe { e.apply(ci, chan.as_mut_ptr().cast::<f32>(), chan.len()) };
            }
        }
    }
}

/// Rows `k0..k0 + kc` (`co * 4 + tap`) of one phase's strip at plane pixels `p0..p0 + 16`:
/// `gy[co, p + off[tap]]` where the mask allows, else 0; `gy` is one image's output
/// gradient at `src[base..]`.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_gy_strip(
    src: &[f32],
    base: usize,
    n: usize,
    offs: &[isize; 4],
    mask: &[u32],
    p0: usize,
    k0: usize,
    kc: usize,
    strip: &mut [f32],
) {
    debug_assert!(strip.len() >= kc * MR);
    let dst = strip.as_mut_ptr();
    for r in 0..kc {
        let k = k0 + r;
        let (co, j) = (k / 4, k % 4);
        let from = (base + co * n + p0) as isize + offs[j];
        debug_assert!(from >= 0 && from as usize + MR <= src.len());
        masked_row(
            src.as_ptr().offset(from),
            mask.as_ptr().add(j * n + p0),
            dst.add(r * MR),
        );
    }
}

/// `∂/∂x` of `conv2d(x, w)` for a batch by [`grad_input_images`], in parallel over
/// groups of images.
pub(super) fn grad_input(
    gy: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    g: &ConvGeom,
    epi: Option<Epilogue>,
) -> Vec<f32> {
    if super::lanes::applies(d) {
        return super::lanes::grad_input(gy, w, b, d, g, epi);
    }
    let (n, img) = (d.col_cols(), d.c_in * d.h * d.w);
    let out = d.c_out * n;
    let pw = PhaseWeights::new(w, d, g);
    let nb = group_size(n).min(b.div_ceil(threads()));
    let fill = |gx: &mut [std::mem::MaybeUninit<f32>]| {
        gx.par_chunks_mut(nb * img).enumerate().for_each_init(
            Scratch::default,
            |scratch, (gi, gxchunk)| {
                let cnt = gxchunk.len() / img;
                let gyg = &gy[gi * nb * out..][..cnt * out];
                grad_input_images(gyg, cnt, &pw, d, gxchunk, scratch, epi);
            },
        )
    };
    // SAFETY: the chunks cover gx and grad_input_images writes every element of each (every
    // pixel of every channel is in exactly one of the 4 interleaved phase planes).
    unsafe { crate::model::activation::filled_vec(b * img, fill) }
}
