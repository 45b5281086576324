//! The Winograd weight gradient split among threads by input channels instead of by images,
//! for layers whose gradient is larger than their transformed inputs (few tiles, many
//! channels: the 128 → 256 layer at 8x8, 4 tiles per image, and the 256 → 128 transposed
//! layer's backward).
//!
//! Split by images (`grad_weight.rs`), each thread's products fill a whole `[9][4·c_in][c_out]`
//! accumulator (4.7 MB at 128 → 256) that a last pass zero-fills, reads back from both threads
//! and sums: at batch 64 that pass was 7-8 % of the layer's forward + backward, bound by
//! memory. Split by channels, each thread transforms its input channels of every image (and
//! the whole output gradient, which is half as large at that layer), runs the 9 products
//! over all tiles at once and finishes its own weights: no zero fill, no sum, half the data.
//! Measured in one process, alternating (batch 64, 128 → 256 at 8x8, forward + weight
//! gradient, best of 30 each): 8.1-8.5 ms split by images, 7.8-8.0 by channels.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::{lead, output_tile, threads, transform_input, with_scratch, Dims, Tiling};
use super::{point_products, transform_grad_tiles};
use crate::model::activation::filled_vec;

/// Whether [`grad_weight_by_channels`] takes a layer with `k` = 4·c_in rows and `n` output
/// channels over `t` tiles in all: with several threads, where one thread's accumulator
/// (`k·n` per point) outgrows its share of the transformed inputs (`t·(k + n)` per point
/// over the threads).
pub(super) fn splits_channels(k: usize, n: usize, t: usize, c_in: usize) -> bool {
    let parts = threads();
    parts > 1 && c_in >= parts && k * n * parts > t * (k + n)
}

/// `∂/∂w` (`[c_out, c_in, 4, 4]`) as `grad_weight.rs`, each thread over all images for its
/// share of the input channels.
pub(super) fn grad_weight_by_channels(x: &[f32], gy: &[f32], b: usize, d: &Dims) -> Vec<f32> {
    let parts = threads().min(d.c_in);
    let per = d.c_in.div_ceil(parts);
    let (n, plane, img) = (d.c_out, d.h * d.w, d.c_in * d.h * d.w);
    let tiles = (d.ho / 2) * (d.wo / 2);
    let t = b * tiles;
    let ldn = lead(n);
    struct Out(*mut MaybeUninit<f32>);
    // SAFETY: each part writes only the weights of its own input channels (disjoint).
    unsafe impl Sync for Out {}
    let fill = |gw: &mut [MaybeUninit<f32>]| {
        let out = Out(gw.as_mut_ptr());
        let out = &out;
        (0..parts).into_par_iter().for_each(|part| {
            let c0 = part * per;
            let nc = per.min(d.c_in - c0);
            let sub = Dims { c_in: nc, ..*d };
            let tl = Tiling::strided(&sub);
            let k = tl.k();
            with_scratch((9, k, n, t), |s| {
                for i in 0..b {
                    let xi = &x[i * img + c0 * plane..][..nc * plane];
                    transform_input(xi, 1, &tl, &mut s.v, (t, i * tiles), &mut s.planes);
                }
                transform_grad_tiles(gy, b, d, &mut s.m, t);
                // the 9 products over all tiles at once, into an uninitialised accumulator
                let mut acc: Vec<f32> = Vec::with_capacity(9 * k * ldn);
                let acc = &mut acc.spare_capacity_mut()[..9 * k * ldn];
                point_products(acc, (&s.m, &s.v), (n, k, t, t), false);
                // Aᵀ m A into gw[co, c0 + ci, 2dy + by, 2dx + bx] for row kk = 4ci + 2by + bx
                for kk in 0..k {
                    let (ci, by, bx) = (c0 + kk / 4, (kk / 2) % 2, kk % 2);
                    for co in 0..n {
                        let mut mt = [0f32; 9];
                        for (p, m) in mt.iter_mut().enumerate() {
                            // SAFETY: the product stored row co < n of every column.
                            *m = unsafe { acc[(p * k + kk) * ldn + co].assume_init() };
                        }
                        let o = output_tile(mt);
                        let at = (co * d.c_in + ci) * 16;
                        for (dy, row) in o.iter().enumerate() {
                            for (dx, &val) in row.iter().enumerate() {
                                // SAFETY: inside gw (co < c_out, ci < c_in); channel ci
                                // belongs to this part alone.
                                unsafe {
                                    (*out.0.add(at + (2 * dy + by) * 4 + 2 * dx + bx)).write(val)
                                };
                            }
                        }
                    }
                }
            });
        });
    };
    // SAFETY: the parts cover the input channels, and each writes all 16 values of every
    // (co, ci) of its channels (4 rows kk per channel, 4 values each).
    unsafe { filled_vec(d.c_out * d.c_in * 16, fill) }
}
