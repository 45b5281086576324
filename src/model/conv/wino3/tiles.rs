//! The tile transforms of `wino3.rs`, on rows of tiles with AVX2, 8 (or 4) tiles at a time:
//! each padded input row is first split into its even and odd columns, so that the 4 columns
//! a tile reads are 4 vectors (even / odd at tile `tx` and `tx + 1`).

use std::arch::x86_64::*;

use super::Post;

/// One padded plane split by column parity: `e[R][j]` = padded pixel `(R, 2j)`, `o[R][j]` =
/// `(R, 2j + 1)`, for `R` in `0..h + 2` and `j` in `0..tw + 1` (the padding's positions stay
/// zero: every plane writes the same interior ones).
pub(super) struct Split<'a> {
    e: &'a mut [f32],
    o: &'a mut [f32],
    /// Floats per row (`tw + 1`).
    rl: usize,
}

impl<'a> Split<'a> {
    pub(super) fn new(buf: &'a mut Vec<f32>, h: usize, tw: usize) -> Self {
        let rl = tw + 1;
        let len = (h + 2) * rl;
        buf.clear();
        buf.resize(2 * len, 0.0);
        let (e, o) = buf.split_at_mut(len);
        Split { e, o, rl }
    }

    /// Fills the interior from one `h x w` plane: source row `y` is padded row `y + 1`, its
    /// even columns `o[..tw]`, its odd columns `e[1..]`; each value through a leaky ReLU of
    /// slope `pre` (1: unchanged).
    ///
    /// # Safety
    /// AVX2 is available; `src` holds `h · 2·tw` floats for the `h` of [`Split::new`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill(&mut self, src: &[f32], tw: usize, pre: f32) {
        let (vp, one, zero) = (
            _mm256_set1_ps(pre),
            _mm256_set1_ps(1.0),
            _mm256_setzero_ps(),
        );
        // a select, not a branch; exact for pre = 1
        let lk = |v: __m256| {
            _mm256_mul_ps(
                v,
                _mm256_blendv_ps(vp, one, _mm256_cmp_ps::<_CMP_GT_OQ>(v, zero)),
            )
        };
        let lk1 = |v: f32| v * if v > 0.0 { 1.0 } else { pre };
        let w = 2 * tw;
        let h = src.len() / w;
        assert!(self.e.len() >= (h + 2) * self.rl && self.rl == tw + 1);
        for (y, row) in src.chunks_exact(w).enumerate() {
            let r = (y + 1) * self.rl;
            let (e, o) = (&mut self.e[r + 1..][..tw], &mut self.o[r..][..tw]);
            let mut j = 0;
            while j + 8 <= tw {
                let a = lk(_mm256_loadu_ps(row.as_ptr().add(2 * j)));
                let b = lk(_mm256_loadu_ps(row.as_ptr().add(2 * j + 8)));
                // [a0 a2 b0 b2 | a4 a6 b4 b6] → lanes 0 2 1 3: [a0 a2 a4 a6 b0 b2 b4 b6]
                let ev = _mm256_shuffle_ps::<0x88>(a, b);
                let od = _mm256_shuffle_ps::<0xDD>(a, b);
                let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(ev)));
                let od = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(od)));
                _mm256_storeu_ps(o.as_mut_ptr().add(j), ev);
                _mm256_storeu_ps(e.as_mut_ptr().add(j), od);
                j += 8;
            }
            if j + 4 <= tw {
                // one row of 8: [a0 a2 a0 a2 | a4 a6 a4 a6] → lanes 0 2: [a0 a2 a4 a6 …]
                let a = lk(_mm256_loadu_ps(row.as_ptr().add(2 * j)));
                let ev = _mm256_shuffle_ps::<0x88>(a, a);
                let od = _mm256_shuffle_ps::<0xDD>(a, a);
                let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(ev)));
                let od = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(od)));
                _mm_storeu_ps(o.as_mut_ptr().add(j), _mm256_castps256_ps128(ev));
                _mm_storeu_ps(e.as_mut_ptr().add(j), _mm256_castps256_ps128(od));
                j += 4;
            }
            for jj in j..tw {
                o[jj] = lk1(row[2 * jj]);
                e[jj] = lk1(row[2 * jj + 1]);
            }
        }
    }
}

/// Runs `body` over `0..n` in steps of 8, then 4, then 1 lanes: `$j` the first index, `$wd`
/// the width.
macro_rules! lanes {
    ($n:expr, |$j:ident, $wd:ident| $body:block) => {{
        let n = $n;
        let mut $j = 0usize;
        while $j < n {
            let $wd: usize = if $j + 8 <= n {
                8
            } else if $j + 4 <= n {
                4
            } else {
                1
            };
            $body
            $j += $wd;
        }
    }};
}

/// 8, 4 or 1 floats (the width `wd`) in a ymm register: loads, stores and arithmetic that
/// take the same code for the vector body and the tails.
#[derive(Clone, Copy)]
struct V(__m256);

impl V {
    #[inline(always)]
    unsafe fn load(p: *const f32, wd: usize) -> V {
        match wd {
            8 => V(_mm256_loadu_ps(p)),
            4 => V(_mm256_castps128_ps256(_mm_loadu_ps(p))),
            _ => V(_mm256_set1_ps(*p)),
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, wd: usize) {
        match wd {
            8 => _mm256_storeu_ps(p, self.0),
            4 => _mm_storeu_ps(p, _mm256_castps256_ps128(self.0)),
            _ => *p = _mm256_cvtss_f32(self.0),
        }
    }
    #[inline(always)]
    unsafe fn add(self, o: V) -> V {
        V(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: V) -> V {
        V(_mm256_sub_ps(self.0, o.0))
    }
}

/// Bᵀ d B of every tile of one padded plane (split) into the 16 point rows at `dst + p·ps`
/// (`tw` tiles per tile row, `th` tile rows, consecutive).
///
/// # Safety
/// AVX2 is available; `dst + p·ps` has `th·tw` writable floats for each `p < 16`; `s` was
/// made for `th` tile rows of `tw` tiles.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transform_plane(s: &Split, th: usize, tw: usize, dst: *mut f32, ps: usize) {
    let rl = s.rl;
    assert!(rl == tw + 1 && s.e.len() >= (2 * th + 2) * rl);
    let (e, o) = (s.e.as_ptr(), s.o.as_ptr());
    for ty in 0..th {
        let r = 2 * ty * rl;
        let out = dst.add(ty * tw);
        lanes!(tw, |j, wd| {
            let ld = |base: *const f32, row: usize, off: usize| {
                V::load(base.add(r + row * rl + j + off), wd)
            };
            // Bᵀ over the 4 rows, per column (even / odd at tiles j and j + 1)
            let mut cols = [[V(_mm256_setzero_ps()); 4]; 4];
            for (c, (base, off)) in [(e, 0), (o, 0), (e, 1), (o, 1)].into_iter().enumerate() {
                let (d0, d1, d2, d3) = (
                    ld(base, 0, off),
                    ld(base, 1, off),
                    ld(base, 2, off),
                    ld(base, 3, off),
                );
                cols[c] = [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)];
            }
            // then B over the 4 columns, per row
            let [e0, o0, e1, o1] = cols;
            let rows = e0.into_iter().zip(o0).zip(e1).zip(o1);
            for (a, (((c0, c1), c2), c3)) in rows.enumerate() {
                let q = out.add(4 * a * ps + j);
                c0.sub(c2).store(q, wd);
                c1.add(c2).store(q.add(ps), wd);
                c2.sub(c1).store(q.add(2 * ps), wd);
                c1.sub(c3).store(q.add(3 * ps), wd);
            }
        });
    }
}

/// A gy Aᵀ of the 2x2 tiles of one `2th x 2tw` plane into the 16 point rows at `dst + p·ps`.
///
/// # Safety
/// AVX2 is available; `g` holds `4·th·tw` floats; `dst + p·ps` has `th·tw` writable floats
/// for each `p < 16`; `split` holds `4·tw` floats.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transform_grad_plane(
    g: &[f32],
    th: usize,
    tw: usize,
    dst: *mut f32,
    ps: usize,
    split: &mut [f32],
) {
    let w = 2 * tw;
    assert!(g.len() >= 2 * th * w && split.len() >= 4 * tw);
    for ty in 0..th {
        // even / odd columns of the tile row's two rows: e0, o0, e1, o1
        for r in 0..2 {
            let row = &g[(2 * ty + r) * w..][..w];
            let (e, o) = split[2 * r * tw..][..2 * tw].split_at_mut(tw);
            for j in 0..tw {
                e[j] = row[2 * j];
                o[j] = row[2 * j + 1];
            }
        }
        let sp = split.as_ptr();
        let out = dst.add(ty * tw);
        lanes!(tw, |j, wd| {
            let e0 = V::load(sp.add(j), wd);
            let o0 = V::load(sp.add(tw + j), wd);
            let e1 = V::load(sp.add(2 * tw + j), wd);
            let o1 = V::load(sp.add(3 * tw + j), wd);
            let zero = V(_mm256_setzero_ps());
            // A over rows: h0 = r0, h1 = r0 + r1, h2 = r0 - r1, h3 = -r1 (even, odd)
            let rows = [
                (e0, o0),
                (e0.add(e1), o0.add(o1)),
                (e0.sub(e1), o0.sub(o1)),
                (zero.sub(e1), zero.sub(o1)),
            ];
            for (a, (he, ho)) in rows.into_iter().enumerate() {
                let q = out.add(4 * a * ps + j);
                he.store(q, wd);
                he.add(ho).store(q.add(ps), wd);
                he.sub(ho).store(q.add(2 * ps), wd);
                zero.sub(ho).store(q.add(3 * ps), wd);
            }
        });
    }
}

/// Aᵀ m A of the products of one output plane (16 point rows at `m + p·ps`), with `bias` and
/// `slope`, into `y` (`2th x 2tw`).
///
/// # Safety
/// AVX2 is available; `m + p·ps` has `th·tw` readable floats for each `p < 16`; `y` has
/// `4·th·tw` writable floats.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn finish_plane(
    m: *const f32,
    ps: usize,
    th: usize,
    tw: usize,
    y: *mut f32,
    bias: f32,
    slope: f32,
) {
    let w = 2 * tw;
    let (vb, vs, zero) = (
        _mm256_set1_ps(bias),
        _mm256_set1_ps(slope),
        _mm256_setzero_ps(),
    );
    let one = _mm256_set1_ps(1.0);
    let act = |v: V| {
        let t = _mm256_add_ps(v.0, vb);
        // a select, not a branch
        let f = _mm256_blendv_ps(vs, one, _mm256_cmp_ps::<_CMP_GT_OQ>(t, zero));
        _mm256_mul_ps(t, f)
    };
    for ty in 0..th {
        let src = m.add(ty * tw);
        let (y0, y1) = (y.add(2 * ty * w), y.add((2 * ty + 1) * w));
        lanes!(tw, |j, wd| {
            let ld = |p: usize| V::load(src.add(p * ps + j), wd);
            // Aᵀ over rows: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (per column b)
            let mut s0 = [V(zero); 4];
            let mut s1 = [V(zero); 4];
            for b in 0..4 {
                let (m0, m1, m2, m3) = (ld(b), ld(4 + b), ld(8 + b), ld(12 + b));
                s0[b] = m0.add(m1).add(m2);
                s1[b] = m1.sub(m2).sub(m3);
            }
            let mut outs = [zero; 4];
            for (k, s) in [s0, s1].into_iter().enumerate() {
                outs[2 * k] = act(s[0].add(s[1]).add(s[2]));
                outs[2 * k + 1] = act(s[1].sub(s[2]).sub(s[3]));
            }
            for (k, dst) in [y0, y1].into_iter().enumerate() {
                let (a, b) = (outs[2 * k], outs[2 * k + 1]);
                // interleaved: a0 b0 a1 b1 …
                let lo = _mm256_unpacklo_ps(a, b);
                let hi = _mm256_unpackhi_ps(a, b);
                match wd {
                    8 => {
                        _mm256_storeu_ps(dst.add(2 * j), _mm256_permute2f128_ps::<0x20>(lo, hi));
                        _mm256_storeu_ps(
                            dst.add(2 * j + 8),
                            _mm256_permute2f128_ps::<0x31>(lo, hi),
                        );
                    }
                    4 => {
                        _mm_storeu_ps(dst.add(2 * j), _mm256_castps256_ps128(lo));
                        _mm_storeu_ps(dst.add(2 * j + 4), _mm256_castps256_ps128(hi));
                    }
                    _ => {
                        *dst.add(2 * j) = _mm256_cvtss_f32(a);
                        *dst.add(2 * j + 1) = _mm256_cvtss_f32(b);
                    }
                }
            }
        });
    }
}

/// The [`Post::Residual`] / [`Post::MaskAdd`] step over one finished plane `y` of `len`
/// values, `res` / `mask` and `add` at the same offsets.
///
/// # Safety
/// AVX2 is available; `y` holds `len` floats; the slices of `post` hold `at + len`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn post_plane(y: *mut f32, len: usize, post: Post, at: usize) {
    match post {
        Post::Act(_) => {}
        Post::Residual { res, .. } => {
            let r = res[at..][..len].as_ptr();
            lanes!(len, |j, wd| {
                V::load(y.add(j), wd)
                    .add(V::load(r.add(j), wd))
                    .store(y.add(j), wd);
            });
        }
        Post::MaskAdd { mask, slope, add } => {
            let (mp, ap) = (mask[at..][..len].as_ptr(), add[at..][..len].as_ptr());
            let (vs, one, zero) = (
                _mm256_set1_ps(slope),
                _mm256_set1_ps(1.0),
                _mm256_setzero_ps(),
            );
            lanes!(len, |j, wd| {
                let m = V::load(mp.add(j), wd);
                let f = _mm256_blendv_ps(vs, one, _mm256_cmp_ps::<_CMP_GT_OQ>(m.0, zero));
                V(_mm256_mul_ps(V::load(y.add(j), wd).0, f))
                    .add(V::load(ap.add(j), wd))
                    .store(y.add(j), wd);
            });
        }
    }
}
