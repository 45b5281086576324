//! im2col / col2im for the fast convolutions: one image at a time, NCHW, with strided
//! convolutions routed through stride-phase planes so that every tap is a contiguous copy.

use super::ConvGeom;

/// Rows of the im2col matrix: `c * k * k`; columns: `ho * wo`.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Dims {
    /// A convolution of `c_in` planes of `h x w` into `c_out` channels with geometry `g`.
    pub(super) fn of(c_in: usize, (h, w): (usize, usize), c_out: usize, g: &ConvGeom) -> Self {
        Dims {
            c_in,
            h,
            w,
            c_out,
            ho: g.conv_out(h),
            wo: g.conv_out(w),
        }
    }
    pub(super) fn col_rows(&self, g: &ConvGeom) -> usize {
        self.c_in * g.kernel * g.kernel
    }
    pub(super) fn col_cols(&self) -> usize {
        self.ho * self.wo
    }
}

/// Range of output positions `o` whose input position `o * s + tap - p` lies in `0..len`.
#[inline(always)]
pub(super) fn valid_range(tap: usize, g: &ConvGeom, len: usize, out_len: usize) -> (usize, usize) {
    let (s, p) = (g.stride as isize, g.padding as isize);
    let off = tap as isize - p;
    // smallest o with o*s + off >= 0
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    // largest o with o*s + off <= len-1, plus one
    let hi_num = len as isize - 1 - off;
    let hi = if hi_num < 0 { 0 } else { hi_num / s + 1 };
    (
        lo.clamp(0, out_len as isize) as usize,
        hi.clamp(0, out_len as isize) as usize,
    )
}

/// Side lengths of the stride-phase planes of a `h x w` channel: `(ceil(h/s), ceil(w/s))`.
pub(super) fn plane_dims(d: &Dims, s: usize) -> (usize, usize) {
    (d.h.div_ceil(s), d.w.div_ceil(s))
}

/// Where tap `tap` of output position `o` lands in the phase planes:
/// input position `o * s + tap - p = (o + shift) * s + phase`.
#[inline(always)]
pub(super) fn tap_phase(tap: usize, g: &ConvGeom) -> (usize, isize) {
    let q = tap as isize - g.padding as isize;
    let s = g.stride as isize;
    (q.rem_euclid(s) as usize, q.div_euclid(s))
}

/// Splits one channel (`h x w`) into its `s x s` stride phases:
/// `planes[(ry * s + rx)][a][b] = x[a * s + ry][b * s + rx]` (entries past the edge stay as
/// they are: no tap ever reads them).
#[inline(always)]
pub(super) fn to_planes(xc: &[f32], d: &Dims, s: usize, planes: &mut [f32]) {
    let (hp, wp) = plane_dims(d, s);
    for iy in 0..d.h {
        let (a, ry) = (iy / s, iy % s);
        let src = &xc[iy * d.w..(iy + 1) * d.w];
        if s == 2 {
            // the common case, as pairs (vectorises into shuffles)
            let (p0, rest) = planes[(ry * 2 * hp + a) * wp..].split_at_mut(hp * wp);
            let p1 = &mut rest[..wp];
            let pairs = src.chunks_exact(2);
            if let [last] = pairs.remainder() {
                p0[d.w / 2] = *last;
            }
            for ((pair, o0), o1) in pairs.zip(p0.iter_mut()).zip(p1.iter_mut()) {
                *o0 = pair[0];
                *o1 = pair[1];
            }
            continue;
        }
        for rx in 0..s {
            let dst = &mut planes[((ry * s + rx) * hp + a) * wp..][..wp];
            for (o, &v) in dst.iter_mut().zip(src.iter().skip(rx).step_by(s)) {
                *o = v;
            }
        }
    }
}

/// The inverse of [`to_planes`]: writes every pixel of one channel from its phase planes.
#[inline(always)]
pub(super) fn from_planes(
    planes: &[f32],
    d: &Dims,
    s: usize,
    xc: &mut [std::mem::MaybeUninit<f32>],
) {
    let (hp, wp) = plane_dims(d, s);
    for iy in 0..d.h {
        let (a, ry) = (iy / s, iy % s);
        let dst = &mut xc[iy * d.w..(iy + 1) * d.w];
        if s == 2 {
            let p0 = &planes[(ry * 2 * hp + a) * wp..][..wp];
            let p1 = &planes[((ry * 2 + 1) * hp + a) * wp..][..wp];
            let mut pairs = dst.chunks_exact_mut(2);
            for ((pair, &v0), &v1) in (&mut pairs).zip(p0).zip(p1) {
                pair[0].write(v0);
                pair[1].write(v1);
            }
            if let [last] = pairs.into_remainder() {
                last.write(p0[d.w / 2]);
            }
            continue;
        }
        for rx in 0..s {
            let src = &planes[((ry * s + rx) * hp + a) * wp..][..wp];
            for (o, &v) in dst.iter_mut().skip(rx).step_by(s).zip(src) {
                o.write(v);
            }
        }
    }
}

/// Unfolds one image `x` (`[c_in, h, w]`) into `cols` (`[c_in*k*k, ho*wo]`, rows `ld`
/// apart: several images side by side when `ld` is a multiple of `ho*wo`).
///
/// Strided convolutions first split each channel into its stride phases ([`to_planes`]), so
/// that every tap becomes a contiguous row copy instead of a strided gather.
pub(super) fn im2col(x: &[f32], d: &Dims, g: &ConvGeom, cols: &mut [f32], ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 (checked).
        return unsafe { im2col_avx2(x, d, g, cols, ld) };
    }
    im2col_impl(x, d, g, cols, ld)
}

/// Whether this CPU has AVX2: the unfold loops are then compiled for it (twice the vector
/// width of the x86-64 baseline for the copies, zero fills and adds).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn im2col_avx2(x: &[f32], d: &Dims, g: &ConvGeom, cols: &mut [f32], ld: usize) {
    im2col_impl(x, d, g, cols, ld)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn col2im_avx2(cols: &mut [f32], d: &Dims, g: &ConvGeom, x: &mut [f32], ld: usize) {
    col2im_impl(cols, d, g, x, ld)
}

#[inline(always)]
fn im2col_impl(x: &[f32], d: &Dims, g: &ConvGeom, cols: &mut [f32], ld: usize) {
    let (k, s) = (g.kernel, g.stride);
    let n = d.col_cols();
    let (hp, wp) = plane_dims(d, s);
    let mut planes = if s > 1 {
        vec![0f32; s * s * hp * wp]
    } else {
        Vec::new()
    };
    for c in 0..d.c_in {
        let xc = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        // (source, rows, row length) the taps copy from
        let (src, src_rows_len) = if s > 1 {
            to_planes(xc, d, s, &mut planes);
            (&planes[..], wp)
        } else {
            (xc, d.w)
        };
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            let (ry, dy) = tap_phase(ki, g);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                let (rx, dx) = tap_phase(kj, g);
                let plane = &src[(ry * s + rx) * hp * wp..]; // s = 1: one plane, the channel
                let row = &mut cols[((c * k + ki) * k + kj) * ld..][..n];
                if src_rows_len == d.wo {
                    let rows = (oy_lo, oy_hi, dy);
                    tap_as_block(plane, row, d.wo, rows, (ox_lo, ox_hi, dx));
                    continue;
                }
                for oy in 0..d.ho {
                    let dst = &mut row[oy * d.wo..(oy + 1) * d.wo];
                    if oy < oy_lo || oy >= oy_hi || ox_lo >= ox_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let a = (oy as isize + dy) as usize;
                    let b0 = (ox_lo as isize + dx) as usize;
                    let src_row = &plane[a * src_rows_len..(a + 1) * src_rows_len];
                    dst[..ox_lo].fill(0.0);
                    dst[ox_hi..].fill(0.0);
                    dst[ox_lo..ox_hi].copy_from_slice(&src_row[b0..b0 + (ox_hi - ox_lo)]);
                }
            }
        }
    }
}

/// One tap's im2col row when the source rows are as long as the output rows (stride-phase
/// planes of a stride-2 conv with padding 1, or a same-padded stride-1 conv): the valid output
/// rows are the source shifted by `dy * wo + dx`, so one contiguous copy, then the columns the
/// shift wrapped around (at most `ox_lo` and `wo - ox_hi` per row) and the invalid rows are
/// zeroed. Replaces a copy and two fills per output row: the taps of 4x4 and 8x8 maps are
/// 3-8 values, where the calls cost more than the copying.
#[inline(always)]
fn tap_as_block(
    plane: &[f32],
    row: &mut [f32],
    wo: usize,
    (oy_lo, oy_hi, dy): (usize, usize, isize),
    (ox_lo, ox_hi, dx): (usize, usize, isize),
) {
    if oy_lo >= oy_hi || ox_lo >= ox_hi {
        row.fill(0.0);
        return;
    }
    row[..oy_lo * wo].fill(0.0);
    row[oy_hi * wo..].fill(0.0);
    let block = &mut row[oy_lo * wo..oy_hi * wo];
    let (j0, j1, from) = block_span(block.len(), plane.len(), wo, oy_lo, dy, dx);
    block[j0..j1].copy_from_slice(&plane[from..from + (j1 - j0)]);
    block[..j0].fill(0.0);
    block[j1..].fill(0.0);
    zero_wrapped(block, wo, ox_lo, ox_hi);
}

/// The part `j0..j1` of a tap's block that has a source (or target) in a plane of `plane_len`
/// values, and where in the plane it starts: block entry `j` is plane entry
/// `(oy_lo + dy) * wo + dx + j`. The clipped ends are wrapped-around columns.
#[inline(always)]
fn block_span(
    len: usize,
    plane_len: usize,
    wo: usize,
    oy_lo: usize,
    dy: isize,
    dx: isize,
) -> (usize, usize, usize) {
    let start = (oy_lo as isize + dy) * wo as isize + dx;
    let j0 = (-start).clamp(0, len as isize) as usize;
    let j1 = (plane_len as isize - start).clamp(j0 as isize, len as isize) as usize;
    (j0, j1, (start + j0 as isize) as usize)
}

/// Zeroes the columns outside `ox_lo..ox_hi` of every `wo`-long row of `block`.
#[inline(always)]
fn zero_wrapped(block: &mut [f32], wo: usize, ox_lo: usize, ox_hi: usize) {
    if ox_lo > 0 || ox_hi < wo {
        for r in block.chunks_exact_mut(wo) {
            for v in &mut r[..ox_lo] {
                *v = 0.0;
            }
            for v in &mut r[ox_hi..] {
                *v = 0.0;
            }
        }
    }
}

/// The adjoint of [`tap_as_block`]: adds one tap's im2col row into the plane as one shifted
/// block. The row's entries that map outside the plane (the wrapped-around columns) are
/// zeroed first (`row` is scratch), so they add nothing where the shift lands them.
#[inline(always)]
fn tap_block_add(
    row: &mut [f32],
    plane: &mut [f32],
    wo: usize,
    (oy_lo, oy_hi, dy): (usize, usize, isize),
    (ox_lo, ox_hi, dx): (usize, usize, isize),
) {
    if oy_lo >= oy_hi || ox_lo >= ox_hi {
        return;
    }
    let block = &mut row[oy_lo * wo..oy_hi * wo];
    zero_wrapped(block, wo, ox_lo, ox_hi);
    let (j0, j1, to) = block_span(block.len(), plane.len(), wo, oy_lo, dy, dx);
    for (o, v) in plane[to..to + (j1 - j0)].iter_mut().zip(&block[j0..j1]) {
        *o += *v;
    }
}

/// Folds `cols` (`[c_in*k*k, ho*wo]`, rows `ld` apart) back into one image `x`
/// (`[c_in, h, w]`), summing overlaps. `cols` is scratch: entries that fall on padding are
/// zeroed.
///
/// Strided convolutions accumulate into the stride phases of each channel (contiguous adds)
/// and interleave them once at the end ([`from_planes`]).
pub(super) fn col2im(cols: &mut [f32], d: &Dims, g: &ConvGeom, x: &mut [f32], ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 (checked).
        return unsafe { col2im_avx2(cols, d, g, x, ld) };
    }
    col2im_impl(cols, d, g, x, ld)
}

#[inline(always)]
fn col2im_impl(cols: &mut [f32], d: &Dims, g: &ConvGeom, x: &mut [f32], ld: usize) {
    let (k, s) = (g.kernel, g.stride);
    let n = d.col_cols();
    let (hp, wp) = plane_dims(d, s);
    let mut planes = if s > 1 {
        vec![0f32; s * s * hp * wp]
    } else {
        Vec::new()
    };
    for c in 0..d.c_in {
        let xc = &mut x[c * d.h * d.w..(c + 1) * d.h * d.w];
        let (acc, acc_row_len): (&mut [f32], usize) = if s > 1 {
            planes.fill(0.0);
            (&mut planes[..], wp)
        } else {
            xc.fill(0.0);
            (&mut xc[..], d.w)
        };
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(ki, g, d.h, d.ho);
            let (ry, dy) = tap_phase(ki, g);
            for kj in 0..k {
                let (ox_lo, ox_hi) = valid_range(kj, g, d.w, d.wo);
                if ox_lo >= ox_hi {
                    continue;
                }
                let (rx, dx) = tap_phase(kj, g);
                let plane_at = (ry * s + rx) * hp * wp; // 0 when s = 1
                let row = &mut cols[((c * k + ki) * k + kj) * ld..][..n];
                if acc_row_len == d.wo {
                    let plane_len = if s > 1 { hp * wp } else { d.h * d.w };
                    let plane = &mut acc[plane_at..plane_at + plane_len];
                    tap_block_add(row, plane, d.wo, (oy_lo, oy_hi, dy), (ox_lo, ox_hi, dx));
                    continue;
                }
                let b0 = (ox_lo as isize + dx) as usize;
                for oy in oy_lo..oy_hi {
                    let a = (oy as isize + dy) as usize;
                    let dst = &mut acc[plane_at + a * acc_row_len..][..acc_row_len];
                    let src = &row[oy * d.wo + ox_lo..oy * d.wo + ox_hi];
                    for (o, v) in dst[b0..b0 + src.len()].iter_mut().zip(src) {
                        *o += *v;
                    }
                }
            }
        }
        if s > 1 {
            from_planes(&planes, d, s, super::mm::as_uninit(xc));
        }
    }
}

/// `w[co, ci, ki, kj]` → `w'[ci, co, k-1-ki, k-1-kj]`: the kernel whose stride-1
/// convolution is the adjoint of `w`'s.
pub(super) fn flipped_transposed(w: &[f32], c_out: usize, c_in: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for co in 0..c_out {
        for ci in 0..c_in {
            let src = &w[(co * c_in + ci) * k * k..][..k * k];
            let dst = &mut out[(ci * c_out + co) * k * k..][..k * k];
            for (o, v) in dst.iter_mut().zip(src.iter().rev()) {
                *o = *v;
            }
        }
    }
    out
}
