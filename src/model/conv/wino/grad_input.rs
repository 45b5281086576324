//! The Winograd input gradient (`wino.rs`; a transposed convolution's forward): each of the
//! 4 output phases is a 2x2 convolution of the padded output gradient with whole 2x2 tiles,
//! its 3x3 windows split into class rows and transformed by `wino_simd.rs`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::packed::Panels;
use super::{
    applies, epilogue, filter_tile, filters, group_images, input_gradient_takes, lead,
    per_thread_groups, point_stride, threads, transform_input, winograd_vector_transforms,
    ConvGeom, Dims, Epilogue, Filter, Mat, Tiling,
};
use crate::model::activation::filled_vec;

/// Whether [`grad_input`] computes the input gradient of this convolution: the shapes of
/// [`applies`] (whole 2x2 tiles of each output phase), with the vector transforms, where
/// the route of [`super::winograd_input_gradient`] takes `d.c_out` gradient channels.
pub(in crate::model::conv) fn applies_grad_input(d: &Dims, g: &ConvGeom) -> bool {
    applies(d, g) && winograd_vector_transforms() && input_gradient_takes(d.c_out, d.c_in)
}

/// The input gradient's transformed kernels `[4 phases][c_out][9][c_in]`: output phase
/// `(py, px)` is a 2x2 convolution of the padded gy whose tap `(dy, dx)` is
/// `w[co, ci, 3 - 2dy - py, 3 - 2dx - px]`.
fn grad_input_filter(w: &[f32], d: &Dims) -> Vec<f32> {
    let (n, k) = (d.c_in, d.c_out);
    let fill = |u: &mut [MaybeUninit<f32>]| {
        // in parallel over (phase, output channel), each owning its 9 x c_in values
        u.par_chunks_mut(9 * n).enumerate().for_each(|(j, part)| {
            let (ph, co) = (j / k, j % k);
            let (py, px) = (ph / 2, ph % 2);
            for ci in 0..n {
                let wk = &w[(co * n + ci) * 16..][..16];
                let tap = |dy: usize, dx: usize| wk[(3 - 2 * dy - py) * 4 + 3 - 2 * dx - px];
                let ut = filter_tile([[tap(0, 0), tap(0, 1)], [tap(1, 0), tap(1, 1)]]);
                for (p, val) in ut.into_iter().enumerate() {
                    part[p * n + ci].write(val);
                }
            }
        })
    };
    // SAFETY: each chunk's loops write all of its 9 x c_in values.
    unsafe { filled_vec(4 * k * 9 * n, fill) }
}

/// `∂/∂x` of `conv2d(x, w)` given `gy` ([`applies_grad_input`]), with `epi` applied to the
/// finished gradient (a transposed convolution's forward with its bias and leaky ReLU).
///
/// Output pixel `(2a + py, 2b + px)` of gx sums 2x2 taps of gy around `(a, b)`: each output
/// phase is a 2x2 convolution of the padded gy, by Winograd over 2x2 tiles of the phase
/// (3x3 windows every 2 pixels, at the phase's offset): 36 products `[tiles, c_out] ·
/// [c_out, c_in]`, 9 multiply-adds per tile and channel pair where the phase kernel does 16.
pub(in crate::model::conv) fn grad_input(
    gy: &[f32],
    w: &[f32],
    b: usize,
    d: &Dims,
    epi: Option<Epilogue>,
) -> Vec<f32> {
    let tl = Tiling::pairs(d);
    let u = if Panels::applies(d.c_in) {
        Filter::Packed(filters::grad_input_panels(w, d))
    } else {
        Filter::Plain(grad_input_filter(w, d))
    };
    let (k, n, tiles) = (tl.k(), d.c_in, tl.tiles());
    let (img_gy, img_gx) = (d.c_out * d.ho * d.wo, d.c_in * d.h * d.w);
    let nb = group_images(tiles, k + 4 * n, b.div_ceil(threads()));
    let tg = nb * tiles;
    let fill = |gx: &mut [MaybeUninit<f32>]| {
        per_thread_groups(gx, img_gx, b, nb, (k, 4 * n, tg), |i0, cnt, chunk, s| {
            let gyg = &gy[i0 * img_gy..][..cnt * img_gy];
            transform_input(gyg, cnt, &tl, &mut s.v, (tg, 0), &mut s.planes);
            phase_products(&s.v, &u, &mut s.m, (d.c_out, n), tg, cnt * tiles);
            grad_input_output(&s.m, cnt, d, tg, chunk, epi);
        })
    };
    // SAFETY: the groups cover gx, and grad_input_output writes every pixel of each.
    unsafe { filled_vec(b * img_gx, fill) }
}

/// `m[p][ph] = v[p][ph] · u[ph][p]` for the 4 phases and 9 points over the first `cols`
/// tiles: `v` `[9][k = 4·c_out][lead(tg)]` (row `4co + ph`), `u` `[4][c_out][9][n]`, `m`
/// `[9][4·n][lead(tg)]` (row `ph·n + ci`); packed, `u` is point `9·ph + p`'s panels.
fn phase_products(
    v: &[f32],
    u: &Filter,
    m: &mut [f32],
    (c_out, n): (usize, usize),
    tg: usize,
    cols: usize,
) {
    let ld = lead(tg);
    let (vs, ms) = (point_stride(4 * c_out, ld), point_stride(4 * n, ld));
    assert!(v.len() >= 9 * vs && m.len() >= 9 * ms);
    assert!(cols <= tg);
    for ph in 0..4 {
        for p in 0..9 {
            let lhs = Mat {
                ptr: v[p * vs + ph * ld..].as_ptr(),
                rs: 1,
                cs: (4 * ld) as isize,
            };
            let dst = &mut m[p * ms + ph * n * ld..][..n * ld];
            let at = (9 * ph + p, ph * c_out * 9 * n + p * n);
            u.product(at, dst, ld, (cols, n, c_out), lhs);
        }
    }
}

/// Aᵀ m A of [`phase_products`]' results into the gradient images (`[cnt][c_in][h][w]`).
fn grad_input_output(
    m: &[f32],
    cnt: usize,
    d: &Dims,
    tg: usize,
    gx: &mut [MaybeUninit<f32>],
    epi: Option<Epilogue>,
) {
    let (th, tw) = (d.ho / 2, d.wo / 2);
    let (n, tiles, plane) = (d.c_in, th * tw, d.h * d.w);
    let ld = lead(tg);
    let ms = point_stride(4 * n, ld);
    assert!(m.len() >= 9 * ms && cnt * tiles <= tg && gx.len() >= cnt * n * plane);
    assert!(d.h == 4 * th && d.w == 4 * tw);
    // channel outside, images inside: the 36 reads per tile run along each channel's rows
    for ci in 0..n {
        let (bias, slope) = epilogue(epi, ci);
        for i in 0..cnt {
            let out = gx[(i * n + ci) * plane..][..plane]
                .as_mut_ptr()
                .cast::<f32>();
            // SAFETY: applies_grad_input checked AVX2; point p of phase ph at tile t < tiles
            // is at (ci + ph·n)·ld + i·tiles + t + p·ms < 9·ms (ci < n, i·tiles + t < tg <
            // ld); the plane holds 16·th·tw = h·w floats.
            unsafe {
                crate::model::conv::wino_simd::finish_phases(
                    m.as_ptr().add(ci * ld + i * tiles),
                    ms,
                    n * ld,
                    (th, tw),
                    out,
                    bias,
                    slope,
                )
            }
        }
    }
}
