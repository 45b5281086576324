//! The Winograd input transform (`wino.rs`) vectorized over tiles: AVX for 8 tiles at a time,
//! SSE for 4.
//!
//! The scalar transform reads each tile's 3x3 phase values 2 pixels apart and writes them one
//! float at a time to the 9 points' rows (18 thread-cycles per tile and phase). Here each
//! padded plane is first split by row and column residue mod 4 into "class rows": the values
//! a tile reads at one of its 3 row and 3 column offsets, for every tile of the image in
//! tile order. Then a point's row for 8 consecutive tiles is a few vector loads, subtractions
//! and one vector store.
//!
//! Classes: padded pixel `(R, C)` has row class `mr = R mod 4` at tile row `ty = R div 4` and
//! column class `mc = C mod 4` at tile column `j = C div 4`. A tile `(ty, tx)` of phase
//! `(by, bx)` reads padded rows `4ty + by` (class `by`, tile row `ty`), `4ty + by + 2`
//! (class `by + 2`, `ty`) and `4ty + by + 4` (class `by`, `ty + 1`), and padded columns
//! `4tx + bx` (class `bx`, `tx`), `4tx + bx + 2` (class `bx + 2`, `tx`) and `4tx + bx + 4`
//! (class `bx` at `tx + 1`: kept as a shifted copy, column kind 4 + bx, so that all three
//! are at index `tx`). A class row holds `tw` values per tile row, `th + 1` tile rows, so that
//! a tile's index `ty·tw + tx` is its position in all of them and the third row is `tw` on.

use std::arch::x86_64::*;

/// Which tiles a [`Classes`] serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Windows {
    /// The phase planes of a 4x4 stride-2 convolution's padded input: classes mod 4, column
    /// kinds: the 4 classes and the shifted copies of classes 0, 1.
    Strided,
    /// 3x3 windows every 2 pixels of a padded plane, starting at even or odd pixels (the
    /// input gradient's four output phases): classes mod 2 (even E, odd O), column kinds E,
    /// O and their shifted copies Es (`E[j + 1]`), Os.
    Pairs,
}
/// Floats before and after each class row's values: the vector splits below write one value
/// past either end of a tile row (fixed up afterwards), and the first / last tile row's
/// neighbours are these margins.
const MARGIN: usize = 8;

#[inline(always)]
unsafe fn scalar_load(p: *const f32) -> f32 {
    *p
}
#[inline(always)]
unsafe fn scalar_store(p: *mut f32, v: f32) {
    *p = v
}
#[inline(always)]
fn scalar_sub(a: f32, b: f32) -> f32 {
    a - b
}
#[inline(always)]
fn scalar_add(a: f32, b: f32) -> f32 {
    a + b
}

/// The class rows of one padded plane.
pub(super) struct Classes {
    /// `[row classes][kinds][MARGIN + (th + 1)·tw + MARGIN]`
    q: Vec<f32>,
    th: usize,
    tw: usize,
    windows: Windows,
    kinds: usize,
}

impl Classes {
    /// Floats of one class row.
    fn len(&self) -> usize {
        2 * MARGIN + (self.th + 1) * self.tw
    }
    /// Index of tile row `ty`'s first value in row class `mr`, column kind `kind`.
    fn at(&self, mr: usize, kind: usize, ty: usize) -> usize {
        (mr * self.kinds + kind) * self.len() + MARGIN + ty * self.tw
    }

    /// Zeroed class rows for planes of `h x w` in `q`'s memory (sides multiples of 4 for
    /// [`Windows::Strided`], of 2 for [`Windows::Pairs`]): the padding's positions stay
    /// zero, since each plane writes the same interior ones.
    pub(super) fn new(mut q: Vec<f32>, h: usize, w: usize, windows: Windows) -> Self {
        let (m, kinds) = match windows {
            Windows::Strided => (4, 6),
            Windows::Pairs => (2, 4),
        };
        assert!(h.is_multiple_of(m) && w.is_multiple_of(m) && h > 0 && w > 0);
        let (th, tw) = (h / m, w / m);
        let len = m * kinds * (2 * MARGIN + (th + 1) * tw);
        q.clear();
        q.resize(len, 0.0);
        Classes {
            q,
            th,
            tw,
            windows,
            kinds,
        }
    }

    pub(super) fn into_buffer(self) -> Vec<f32> {
        self.q
    }

    /// Splits one `h x w` plane (padding 1 on every side) into the class rows.
    ///
    /// # Safety
    /// AVX2 is available; `src` holds `h·w` floats for the `h`, `w` of [`Self::new`].
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn split(&mut self, src: &[f32]) {
        if self.windows == Windows::Pairs {
            return self.split_pairs(src);
        }
        let (th, tw) = (self.th, self.tw);
        let w = 4 * tw;
        assert!(src.len() >= 4 * th * w);
        let q = self.q.as_mut_ptr();
        for (y, row) in src.chunks_exact(w).take(4 * th).enumerate() {
            let (mr, ty) = ((y + 1) % 4, (y + 1) / 4);
            let base = |kind: usize| self.at(mr, kind, ty);
            let (b0, b1, b2, b3, b4, b5) = (base(0), base(1), base(2), base(3), base(4), base(5));
            let s = row.as_ptr();
            // source pixel x is padded column x + 1: group g (pixels 4g..4g + 3) goes to
            // classes 1, 2, 3 at g and class 0 at g + 1 (its shifted copy at g); class 1's
            // shifted copy at g - 1
            let mut g = 0;
            while g + 4 <= tw {
                let a0 = _mm_loadu_ps(s.add(4 * g));
                let a1 = _mm_loadu_ps(s.add(4 * g + 4));
                let a2 = _mm_loadu_ps(s.add(4 * g + 8));
                let a3 = _mm_loadu_ps(s.add(4 * g + 12));
                let t0 = _mm_unpacklo_ps(a0, a1);
                let t1 = _mm_unpacklo_ps(a2, a3);
                let t2 = _mm_unpackhi_ps(a0, a1);
                let t3 = _mm_unpackhi_ps(a2, a3);
                let x0 = _mm_movelh_ps(t0, t1);
                let x1 = _mm_movehl_ps(t1, t0);
                let x2 = _mm_movelh_ps(t2, t3);
                let x3 = _mm_movehl_ps(t3, t2);
                // SAFETY (all stores): b_k + g + 4 <= the row's end + 1, inside the margin;
                // b5 + g - 1 >= MARGIN - 1
                _mm_storeu_ps(q.add(b1 + g), x0);
                _mm_storeu_ps(q.add(b5 + g).sub(1), x0);
                _mm_storeu_ps(q.add(b2 + g), x1);
                _mm_storeu_ps(q.add(b3 + g), x2);
                _mm_storeu_ps(q.add(b0 + g + 1), x3);
                _mm_storeu_ps(q.add(b4 + g), x3);
                g += 4;
            }
            while g < tw {
                let x = s.add(4 * g);
                *q.add(b1 + g) = *x;
                *q.add(b5 + g).sub(1) = *x;
                *q.add(b2 + g) = *x.add(1);
                *q.add(b3 + g) = *x.add(2);
                *q.add(b0 + g + 1) = *x.add(3);
                *q.add(b4 + g) = *x.add(3);
                g += 1;
            }
        }
        // padded column w + 1 is class 1 at tw: its shifted copy (kind 5) at tw - 1
        self.zero_edges(5);
    }

    /// Zeroes padded column 0 (kind 0 at 0) and padded column `w + 1` (kind `last` at
    /// `tw - 1`) in every tile row of every row class: the splits' vector stores wrote the
    /// neighbouring tile row's values there.
    fn zero_edges(&mut self, last: usize) {
        let row_classes = self.q.len() / (self.kinds * self.len());
        for mr in 0..row_classes {
            for ty in 0..=self.th {
                let (z0, z1) = (self.at(mr, 0, ty), self.at(mr, last, ty) + self.tw - 1);
                self.q[z0] = 0.0;
                self.q[z1] = 0.0;
            }
        }
    }

    /// Splits one `h x w` plane of [`Windows::Pairs`] (padding 1) into the class rows.
    ///
    /// # Safety
    /// As [`Self::split`].
    #[target_feature(enable = "avx2")]
    unsafe fn split_pairs(&mut self, src: &[f32]) {
        let (th, tw) = (self.th, self.tw);
        let w = 2 * tw;
        assert!(src.len() >= 2 * th * w);
        let q = self.q.as_mut_ptr();
        for (y, row) in src.chunks_exact(w).take(2 * th).enumerate() {
            // padded row y + 1
            let r = y + 1;
            let (mr, ty) = (r % 2, r / 2);
            let base = |kind: usize| self.at(mr, kind, ty);
            let (be, bo, bes, bos) = (base(0), base(1), base(2), base(3));
            let s = row.as_ptr();
            // source pixel x is padded column x + 1: pair g (pixels 2g, 2g + 1) goes to O at
            // g (its shifted copy at g - 1) and E at g + 1 (its shifted copy at g)
            let mut g = 0;
            while g + 4 <= tw {
                let a0 = _mm_loadu_ps(s.add(2 * g));
                let a1 = _mm_loadu_ps(s.add(2 * g + 4));
                let even = _mm_shuffle_ps::<0b10_00_10_00>(a0, a1);
                let odd = _mm_shuffle_ps::<0b11_01_11_01>(a0, a1);
                // SAFETY: as in split, one value past either end at most
                _mm_storeu_ps(q.add(bo + g), even);
                _mm_storeu_ps(q.add(bos + g).sub(1), even);
                _mm_storeu_ps(q.add(be + g + 1), odd);
                _mm_storeu_ps(q.add(bes + g), odd);
                g += 4;
            }
            while g < tw {
                let x = s.add(2 * g);
                *q.add(bo + g) = *x;
                *q.add(bos + g).sub(1) = *x;
                *q.add(be + g + 1) = *x.add(1);
                *q.add(bes + g) = *x.add(1);
                g += 1;
            }
        }
        // padded column w + 1 is O at tw: its shifted copy Os (kind 3) at tw - 1
        self.zero_edges(3);
    }

    /// Bᵀ d B of every tile of phase `(by, bx)` (of the strided input's phase planes, or of
    /// the windows starting at padded pixel `(2ty + by, 2tx + bx)` for [`Windows::Pairs`])
    /// into the 9 points' rows `out`, `out + ps`, … (`th·tw` consecutive floats each).
    ///
    /// # Safety
    /// AVX2 is available; [`Self::split`] filled the classes; `out + 8·ps` is followed by
    /// `th·tw` writable floats, and the 9 rows do not overlap.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transform(&self, by: usize, bx: usize, out: *mut f32, ps: usize) {
        let tiles = self.th * self.tw;
        let q = self.q.as_ptr();
        let next = self.tw;
        // rows r0, r1, r2 of a tile's window, each as its 3 columns' class rows
        let at = |mr: usize, kinds: [usize; 3], dt: usize| {
            kinds.map(|kind| q.add(self.at(mr, kind, 0) + dt))
        };
        let (r0, r1, r2) = match self.windows {
            // rows: class by, class by + 2, class by at the next tile row; columns: class bx,
            // class bx + 2, the shifted class bx
            Windows::Strided => {
                let kinds = [bx, bx + 2, 4 + bx];
                (at(by, kinds, 0), at(by + 2, kinds, 0), at(by, kinds, next))
            }
            // rows from padded row 2ty + by, columns from 2tx + bx: E O Es or O Es Os
            Windows::Pairs => {
                let kinds = if bx == 0 { [0, 1, 2] } else { [1, 2, 3] };
                if by == 0 {
                    (at(0, kinds, 0), at(1, kinds, 0), at(0, kinds, next))
                } else {
                    (at(1, kinds, 0), at(0, kinds, next), at(1, kinds, next))
                }
            }
        };
        let mut t = 0;
        // (no closures: they would be separate functions without the target feature)
        macro_rules! tiles {
            ($load:ident, $store:ident, $sub:ident) => {{
                // Bᵀ over the rows of column k: (r0 - r1, r1, r2 - r1)
                macro_rules! col {
                    ($k:expr) => {{
                        let m = $load(r1[$k].add(t));
                        (
                            $sub($load(r0[$k].add(t)), m),
                            m,
                            $sub($load(r2[$k].add(t)), m),
                        )
                    }};
                }
                let (a, b, c) = (col!(0), col!(1), col!(2));
                // then over the columns: point 3·row + column
                let o = out.add(t);
                $store(o, $sub(a.0, b.0));
                $store(o.add(ps), b.0);
                $store(o.add(2 * ps), $sub(c.0, b.0));
                $store(o.add(3 * ps), $sub(a.1, b.1));
                $store(o.add(4 * ps), b.1);
                $store(o.add(5 * ps), $sub(c.1, b.1));
                $store(o.add(6 * ps), $sub(a.2, b.2));
                $store(o.add(7 * ps), b.2);
                $store(o.add(8 * ps), $sub(c.2, b.2));
            }};
        }
        while t + 8 <= tiles {
            tiles!(_mm256_loadu_ps, _mm256_storeu_ps, _mm256_sub_ps);
            t += 8;
        }
        while t + 4 <= tiles {
            tiles!(_mm_loadu_ps, _mm_storeu_ps, _mm_sub_ps);
            t += 4;
        }
        while t < tiles {
            tiles!(scalar_load, scalar_store, scalar_sub);
            t += 1;
        }
    }
}

/// Bᵀ d B of every tile of `cnt` images of `planes` planes of `h x w` in `src` (image-major)
/// for `windows`: phase `ph` of plane `c` of image `i` into the 9 rows at
/// `v + (4c + ph)·ld + i·tiles`, `ps` apart. Channel outside, images inside: the writes to
/// each channel's rows run along the tiles, so every line of v is finished while in L1.
/// Each plane is split while the previous one is transformed (two class buffers in turns; a
/// precaution against the transform's wide loads waiting on the split's narrower stores,
/// which measured within the noise).
///
/// # Safety
/// AVX2 is available; the sides suit `windows` ([`Classes::new`]); every row written lies in
/// `v`'s allocation and no two overlap.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transform_planes(
    src: &[f32],
    (cnt, planes): (usize, usize),
    (h, w): (usize, usize),
    windows: Windows,
    (vp, ld, ps): (*mut f32, usize, usize),
    bufs: &mut [Vec<f32>; 2],
) {
    let plane = h * w;
    assert!(src.len() >= cnt * planes * plane);
    let mut cl = [
        Classes::new(std::mem::take(&mut bufs[0]), h, w, windows),
        Classes::new(std::mem::take(&mut bufs[1]), h, w, windows),
    ];
    let tiles = cl[0].th * cl[0].tw;
    let total = planes * cnt;
    for j in 0..=total {
        if j < total {
            // plane j: channel j / cnt of image j % cnt
            let (c, i) = (j / cnt, j % cnt);
            let s = &src[(i * planes + c) * plane..][..plane];
            // the next plane is a batch stride away (no hardware prefetcher follows that
            // far): its lines are requested now
            if j + 1 < total {
                let (nc, ni) = ((j + 1) / cnt, (j + 1) % cnt);
                prefetch(&src[(ni * planes + nc) * plane..][..plane]);
            }
            cl[j % 2].split(s);
        }
        if j == 0 {
            continue;
        }
        let (c, i) = ((j - 1) / cnt, (j - 1) % cnt);
        for ph in 0..4 {
            let rows = vp.add((4 * c + ph) * ld + i * tiles);
            cl[(j - 1) % 2].transform(ph / 2, ph % 2, rows, ps);
        }
    }
    let [a, b] = cl;
    bufs[0] = a.into_buffer();
    bufs[1] = b.into_buffer();
}

/// Asks for the cache lines of `data` (into L1).
pub(super) fn prefetch(data: &[f32]) {
    for line in data.chunks(16) {
        // SAFETY: prefetching is a hint; the address lies in `data`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast::<i8>()) }
    }
}

/// `(v + bias)` times 1 where positive, else `slope`, 8 lanes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn leaky8(v: __m256, bias: __m256, slope: __m256) -> __m256 {
    let t = _mm256_add_ps(v, bias);
    let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(t, _mm256_setzero_ps());
    _mm256_blendv_ps(_mm256_mul_ps(t, slope), t, pos)
}

/// [`leaky8`], 4 lanes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn leaky4(v: __m128, bias: __m128, slope: __m128) -> __m128 {
    let t = _mm_add_ps(v, bias);
    _mm_blendv_ps(_mm_mul_ps(t, slope), t, _mm_cmpgt_ps(t, _mm_setzero_ps()))
}

/// Stores 4 tiles `(ty, tx0..tx0 + 4)` of the 4 phases (`o[2py + px]` = the tiles' values
/// at `(r, c)` = (0, 0), (0, 1), (1, 0), (1, 1)) into the plane `gx` of width `w`: output
/// pixel `(4ty + 2r + py, 4tx + 2c + px)`, so each of the 4 rows gets 16 contiguous floats.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_tiles(gx: *mut f32, w: usize, ty: usize, tx0: usize, o: &[[__m128; 4]; 4]) {
    for py in 0..2 {
        for r in 0..2 {
            let (e, f) = (&o[2 * py], &o[2 * py + 1]);
            // per tile, 4 pixels: (c, px) = (0, 0), (0, 1), (1, 0), (1, 1)
            let (a, b, c, d) = (e[2 * r], f[2 * r], e[2 * r + 1], f[2 * r + 1]);
            let t0 = _mm_unpacklo_ps(a, b);
            let t1 = _mm_unpacklo_ps(c, d);
            let t2 = _mm_unpackhi_ps(a, b);
            let t3 = _mm_unpackhi_ps(c, d);
            let row = gx.add((4 * ty + 2 * r + py) * w + 4 * tx0);
            _mm_storeu_ps(row, _mm_movelh_ps(t0, t1));
            _mm_storeu_ps(row.add(4), _mm_movehl_ps(t1, t0));
            _mm_storeu_ps(row.add(8), _mm_movelh_ps(t2, t3));
            _mm_storeu_ps(row.add(12), _mm_movehl_ps(t3, t2));
        }
    }
}

/// Aᵀ m A of the input gradient's 4 output phases for one channel of one image, then
/// `bias` and `slope` (as [`leaky8`]): point `p` of phase `ph` for tile `t` at
/// `m + p·ms + ph·phs + t`; phase `(py, px)`'s 2x2 tile `(ty, tx)` is gx pixels
/// `(4ty + 2r + py, 4tx + 2c + px)` of the `4th x 4tw` plane `gx`.
///
/// # Safety
/// AVX2 is available; `m` is readable at every such offset for `t < th·tw`; `gx` holds
/// `16·th·tw` writable floats.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn finish_phases(
    m: *const f32,
    ms: usize,
    phs: usize,
    (th, tw): (usize, usize),
    gx: *mut f32,
    bias: f32,
    slope: f32,
) {
    let (tiles, w) = (th * tw, 4 * tw);
    let mut t = 0;
    // Aᵀ m A of phase ph at tile t: the tiles' (0, 0), (0, 1), (1, 0), (1, 1) values
    macro_rules! tile {
        ($load:ident, $add:ident, $ph:expr) => {{
            let b = m.add($ph * phs + t);
            let m0 = $load(b);
            let m1 = $load(b.add(ms));
            let m2 = $load(b.add(2 * ms));
            let m3 = $load(b.add(3 * ms));
            let m4 = $load(b.add(4 * ms));
            let m5 = $load(b.add(5 * ms));
            let m6 = $load(b.add(6 * ms));
            let m7 = $load(b.add(7 * ms));
            let m8 = $load(b.add(8 * ms));
            let (a0, a1, a2) = ($add(m0, m3), $add(m1, m4), $add(m2, m5));
            let (c0, c1, c2) = ($add(m3, m6), $add(m4, m7), $add(m5, m8));
            [$add(a0, a1), $add(a1, a2), $add(c0, c1), $add(c1, c2)]
        }};
    }
    // whole groups of 4 tiles lie in one tile row when tw is a multiple of 4
    if tw.is_multiple_of(4) {
        let (b8, s8) = (_mm256_set1_ps(bias), _mm256_set1_ps(slope));
        while t + 8 <= tiles {
            let mut lo = [[_mm_setzero_ps(); 4]; 4];
            let mut hi = lo;
            for ph in 0..4 {
                let o = tile!(_mm256_loadu_ps, _mm256_add_ps, ph);
                for j in 0..4 {
                    let v = leaky8(o[j], b8, s8);
                    lo[ph][j] = _mm256_castps256_ps128(v);
                    hi[ph][j] = _mm256_extractf128_ps::<1>(v);
                }
            }
            store_tiles(gx, w, t / tw, t % tw, &lo);
            store_tiles(gx, w, (t + 4) / tw, (t + 4) % tw, &hi);
            t += 8;
        }
        let (b4, s4) = (_mm_set1_ps(bias), _mm_set1_ps(slope));
        while t + 4 <= tiles {
            let mut o4 = [[_mm_setzero_ps(); 4]; 4];
            for (ph, op) in o4.iter_mut().enumerate() {
                let o = tile!(_mm_loadu_ps, _mm_add_ps, ph);
                for j in 0..4 {
                    op[j] = leaky4(o[j], b4, s4);
                }
            }
            store_tiles(gx, w, t / tw, t % tw, &o4);
            t += 4;
        }
    }
    while t < tiles {
        let (ty, tx) = (t / tw, t % tw);
        for ph in 0..4 {
            let o = tile!(scalar_load, scalar_add, ph);
            let (py, px) = (ph / 2, ph % 2);
            for (j, &v) in o.iter().enumerate() {
                let (r, c) = (j / 2, j % 2);
                let v = v + bias;
                *gx.add((4 * ty + 2 * r + py) * w + 4 * tx + 2 * c + px) =
                    v * if v > 0.0 { 1.0 } else { slope };
            }
        }
        t += 1;
    }
}

/// Aᵀ m A of the forward's products for one output channel of one image, then `bias` and
/// `slope` (as [`leaky8`]): point `p` of tile `t` at `m + p·ms + t`; tile `(ty, tx)` is
/// output pixels `(2ty + r, 2tx + c)` of the `2th x 2tw` plane `y`.
///
/// # Safety
/// AVX2 is available; `m` is readable at every such offset for `t < th·tw`; `y` holds
/// `4·th·tw` writable floats.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn finish_tiles(
    m: *const f32,
    ms: usize,
    (th, tw): (usize, usize),
    y: *mut f32,
    bias: f32,
    slope: f32,
) {
    let (tiles, w) = (th * tw, 2 * tw);
    let mut t = 0;
    // Aᵀ m A at tile t: the tiles' (0, 0), (0, 1), (1, 0), (1, 1) values
    macro_rules! tile {
        ($load:ident, $add:ident) => {{
            let b = m.add(t);
            let m0 = $load(b);
            let m1 = $load(b.add(ms));
            let m2 = $load(b.add(2 * ms));
            let m3 = $load(b.add(3 * ms));
            let m4 = $load(b.add(4 * ms));
            let m5 = $load(b.add(5 * ms));
            let m6 = $load(b.add(6 * ms));
            let m7 = $load(b.add(7 * ms));
            let m8 = $load(b.add(8 * ms));
            let (a0, a1, a2) = ($add(m0, m3), $add(m1, m4), $add(m2, m5));
            let (c0, c1, c2) = ($add(m3, m6), $add(m4, m7), $add(m5, m8));
            [$add(a0, a1), $add(a1, a2), $add(c0, c1), $add(c1, c2)]
        }};
    }
    // 4 tiles (ty, tx0..tx0 + 4): each of the 2 rows gets 8 contiguous floats
    macro_rules! store4 {
        ($t:expr, $o:expr) => {{
            let (o, ty, tx0) = ($o, $t / tw, $t % tw);
            for r in 0..2 {
                let (a, b) = (o[2 * r], o[2 * r + 1]);
                let row = y.add((2 * ty + r) * w + 2 * tx0);
                _mm_storeu_ps(row, _mm_unpacklo_ps(a, b));
                _mm_storeu_ps(row.add(4), _mm_unpackhi_ps(a, b));
            }
        }};
    }
    // whole groups of 4 tiles lie in one tile row when tw is a multiple of 4
    if tw.is_multiple_of(4) {
        let (b8, s8) = (_mm256_set1_ps(bias), _mm256_set1_ps(slope));
        while t + 8 <= tiles {
            let o = tile!(_mm256_loadu_ps, _mm256_add_ps);
            let mut lo = [_mm_setzero_ps(); 4];
            let mut hi = lo;
            for j in 0..4 {
                let v = leaky8(o[j], b8, s8);
                lo[j] = _mm256_castps256_ps128(v);
                hi[j] = _mm256_extractf128_ps::<1>(v);
            }
            store4!(t, lo);
            store4!(t + 4, hi);
            t += 8;
        }
        let (b4, s4) = (_mm_set1_ps(bias), _mm_set1_ps(slope));
        while t + 4 <= tiles {
            let o = tile!(_mm_loadu_ps, _mm_add_ps);
            let mut o4 = [_mm_setzero_ps(); 4];
            for j in 0..4 {
                o4[j] = leaky4(o[j], b4, s4);
            }
            store4!(t, o4);
            t += 4;
        }
    }
    while t < tiles {
        let (ty, tx) = (t / tw, t % tw);
        let o = tile!(scalar_load, scalar_add);
        for (j, &v) in o.iter().enumerate() {
            let v = v + bias;
            *y.add((2 * ty + j / 2) * w + 2 * tx + j % 2) = v * if v > 0.0 { 1.0 } else { slope };
        }
        t += 1;
    }
}
