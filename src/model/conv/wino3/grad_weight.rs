//! The weight gradient of `wino3.rs`: the forward's adjoint in the kernel,
//! `gw = Gᵀ [ Σ_tiles (A gy Aᵀ) ⊙ (Bᵀ d B) ] G`, the sum over tiles and images the inner
//! dimension of 16 products `[co, tiles] · [tiles, ci]`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::tiles::{transform_grad_plane, transform_plane, Split};
use super::{
    gradient_tile, group_images, lead, point_stride, product, threads, tiles_of, with_scratch,
    Dims, Mat,
};
use crate::model::activation::filled_vec;

/// `∂/∂w` of `conv2d(x, w)` given `gy` ([`applies`]), `[c_out, c_in, 3, 3]`.
pub(in crate::model::conv) fn grad_weight(x: &[f32], gy: &[f32], b: usize, d: &Dims) -> Vec<f32> {
    grad_weight_with(x, gy, b, d, 1.0)
}

/// `∂/∂w` of `conv2d(leaky(x, pre), w)` given `gy` ([`applies`]; `pre` 1: plain `x`).
pub(in crate::model::conv) fn grad_weight_with(
    x: &[f32],
    gy: &[f32],
    b: usize,
    d: &Dims,
    pre: f32,
) -> Vec<f32> {
    let (th, tw) = tiles_of(d);
    let (k, n, tiles) = (d.c_in, d.c_out, th * tw);
    let (img, out) = (k * d.h * d.w, n * d.ho * d.wo);
    assert!(x.len() >= b * img && gy.len() >= b * out);
    let chunks = threads().min(b).max(1);
    let per = b.div_ceil(chunks);
    let nb = group_images(tiles, k.max(n), per);
    let tg = nb * tiles;
    let ld = lead(tg);
    let (vs, ms) = (point_stride(k, ld), point_stride(n, ld));
    let ldn = lead(n);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            // [16][k][ldn]: (ci, co) at ci·ldn + co, summed over this thread's images
            let mut acc = vec![0f32; 16 * k * ldn];
            with_scratch((16, k, n, tg), |s| {
                let (start, end) = (c * per, ((c + 1) * per).min(b));
                let mut first = true;
                for i0 in (start..end).step_by(nb) {
                    let cnt = nb.min(end - i0);
                    let mut split = Split::new(&mut s.planes[0], d.h, tw);
                    let vp = s.v.as_mut_ptr();
                    for ci in 0..k {
                        for i in 0..cnt {
                            let plane = &x[((i0 + i) * k + ci) * d.h * d.w..][..d.h * d.w];
                            // SAFETY: as in forward.
                            unsafe {
                                split.fill(plane, tw, pre);
                                transform_plane(&split, th, tw, vp.add(ci * ld + i * tiles), vs);
                            }
                        }
                    }
                    let mut gsplit = vec![0f32; 4 * tw];
                    let mp = s.m.as_mut_ptr();
                    for co in 0..n {
                        for i in 0..cnt {
                            let plane = &gy[((i0 + i) * n + co) * d.ho * d.wo..][..d.ho * d.wo];
                            // SAFETY: AVX2; the plane has 2th x 2tw floats; point p's row for
                            // channel co, image i is inside m (Scratch::fit).
                            unsafe {
                                transform_grad_plane(
                                    plane,
                                    th,
                                    tw,
                                    mp.add(co * ld + i * tiles),
                                    ms,
                                    &mut gsplit,
                                )
                            };
                        }
                    }
                    let cols = cnt * tiles;
                    // acc[p] (+)= ug[p] · v[p]ᵀ: [n, cols] · [cols, k], (co, ci) at ci·ldn + co
                    for p in 0..16 {
                        let lhs = Mat {
                            ptr: s.m[p * ms..].as_ptr(),
                            rs: ld as isize,
                            cs: 1,
                        };
                        let rhs = Mat {
                            ptr: s.v[p * vs..].as_ptr(),
                            rs: 1,
                            cs: ld as isize,
                        };
                        let dst = &mut acc[p * k * ldn..][..k * ldn];
                        product(dst, ldn, (n, k, cols), lhs, rhs, !first);
                    }
                    first = false;
                }
            });
            acc
        })
        .collect();
    let ps = k * ldn;
    let fill = |gw: &mut [MaybeUninit<f32>]| {
        gw.par_chunks_mut(k * 9).enumerate().for_each(|(co, gwc)| {
            for ci in 0..k {
                let at = ci * ldn + co;
                let mut st = [0f32; 16];
                for part in &partial {
                    for (p, v) in st.iter_mut().enumerate() {
                        *v += part[p * ps + at];
                    }
                }
                for (o, val) in gwc[ci * 9..][..9].iter_mut().zip(gradient_tile(st)) {
                    o.write(val);
                }
            }
        })
    };
    // SAFETY: every (co, ci) gets its 9 values.
    unsafe { filled_vec(n * k * 9, fill) }
}
