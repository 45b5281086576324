//! The micro-kernels of the implicit-gemm and stride-phase convolutions: a 16-pixel strip
//! (`[k][16]`, packed) times a panel of weight columns (`[k][nr]`, packed) into a 16 x `nr`
//! tile of output channels, one channel's 16 pixels contiguous.
//!
//! Two kernels: gemm's own AVX2/FMA 16 x 6 kernel (`gemm_f32`), and, where the CPU has
//! AVX-512F and the layer at least 16 output columns, a 16 x 16 AVX-512 kernel: one zmm load
//! of the strip per step and 16 FMAs that take their weight straight from the panel as an
//! embedded broadcast (`vfmadd231ps zmm, zmm, [mem]{1to16}`). gemm's kernel spends 2 loads
//! and 6 separate broadcasts per 12 ymm FMAs instead.

use std::sync::OnceLock;

/// Pixels per strip (both kernels).
pub(super) const MR: usize = 16;
/// Panel width of the AVX-512 kernel.
pub(super) const WIDE: usize = 16;
/// Panel width of gemm's AVX2 kernel.
pub(super) const NARROW: usize = 6;

pub(super) fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::env::var_os("LATENT_ATLAS_NO_AVX512").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The micro-kernel for a layer with `cols` output columns (channels): the AVX-512 one from
/// 16 columns up where the CPU has it (fewer would leave most of its 16 accumulators
/// idle), else gemm's. `LATENT_ATLAS_NO_AVX512` in the environment forces gemm's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Micro {
    /// Columns per packed panel.
    pub(super) nr: usize,
}

impl Micro {
    pub(super) fn for_cols(cols: usize) -> Self {
        let nr = if cols >= WIDE && has_avx512() {
            WIDE
        } else {
            NARROW
        };
        Self { nr }
    }

    /// `dst (+)= strip · panel` for one 16 x `n` tile (`n ≤ nr`): `strip` is `[k][16]`,
    /// `panel` `[k][nr]` (zero past column `n`), and column `j` of the tile is the 16
    /// contiguous floats at `dst + j * dst_cs`. With `accumulate` the tile is added to `dst`,
    /// else stored (`dst` is not read).
    ///
    /// # Safety
    /// The CPU has FMA (and AVX-512F when `nr` is [`WIDE`]); `strip` holds `16 k` floats,
    /// `panel` `nr k`, and `dst` the whole tile.
    #[inline]
    pub(super) unsafe fn tile(
        self,
        (n, k): (usize, usize),
        dst: *mut f32,
        dst_cs: usize,
        strip: *const f32,
        panel: *const f32,
        accumulate: bool,
    ) {
        debug_assert!(n <= self.nr);
        #[cfg(target_arch = "x86_64")]
        if self.nr == WIDE {
            return tile16((MR, n, k), dst, dst_cs, (strip, MR), panel, accumulate);
        }
        super::implicit::tile(
            (MR, n, k),
            dst,
            dst_cs,
            strip,
            (panel, self.nr, 1),
            accumulate,
        );
    }
}

/// The AVX-512 16 x 16 kernel of [`Micro::tile`] for an `m x n` tile (`m, n ≤ 16`): rows
/// past `m` of `dst` are neither read nor written (masked loads and stores). The strip's
/// step `q` is the 16 floats at `strip.0 + q * strip.1`.
///
/// # Safety
/// As [`Micro::tile`], with AVX-512F; `dst` holds `m` floats at each of its `n` columns,
/// the strip 16 floats at each step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile16(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_cs: usize,
    (strip, strip_ld): (*const f32, usize),
    panel: *const f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_ps(); WIDE];
    let (mut s, mut p) = (strip, panel);
    for _ in 0..k {
        let a = _mm512_loadu_ps(s);
        // constant indices (the loop is unrolled), so the accumulators stay in registers
        for (j, acc) in c.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(a, _mm512_set1_ps(*p.add(j)), *acc);
        }
        s = s.add(strip_ld);
        p = p.add(WIDE);
    }
    let mask: __mmask16 = if m >= MR { !0 } else { (1 << m) - 1 };
    for (j, acc) in c.iter().enumerate() {
        if j < n {
            let o = dst.add(j * dst_cs);
            let v = if accumulate {
                _mm512_add_ps(*acc, _mm512_maskz_loadu_ps(mask, o))
            } else {
                *acc
            };
            _mm512_mask_storeu_ps(o, mask, v);
        }
    }
}

/// `dst (+)= strip · panel` for a 48 x `n` tile (`n ≤ 8`): 48 strip values per step
/// (contiguous, steps `strip.1` apart), the first `n` of 8 columns of a 16-wide panel (steps
/// 16 floats apart; the panel is read at all 8), column `j` the 48 contiguous floats at
/// `dst + j·dst_cs`. Three vector loads and 8 broadcasts feed 24 multiply-adds per step
/// where the 16 x 16 kernel spends 17 loads on 16: on the Xeon of sessions 17-19 it runs at
/// about 72 % of the FMA peak with its panels in L2, the 16 x 16 kernel at about 60 %.
///
/// # Safety
/// AVX-512F; the strip holds 48 floats at each of `k` steps, the panel 8 at each, `dst` the
/// `n` columns of the tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // constant indices keep the accumulators in registers
pub(super) unsafe fn tile48x8(
    (n, k): (usize, usize),
    dst: *mut f32,
    dst_cs: usize,
    (strip, strip_ld): (*const f32, usize),
    panel: *const f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_ps(); 8]; 3];
    let (mut s, mut p) = (strip, panel);
    for _ in 0..k {
        let a = [
            _mm512_loadu_ps(s),
            _mm512_loadu_ps(s.add(16)),
            _mm512_loadu_ps(s.add(32)),
        ];
        for j in 0..8 {
            let b = _mm512_set1_ps(*p.add(j));
            for r in 0..3 {
                c[r][j] = _mm512_fmadd_ps(a[r], b, c[r][j]);
            }
        }
        s = s.add(strip_ld);
        p = p.add(WIDE);
    }
    for (r, cr) in c.iter().enumerate() {
        for (j, acc) in cr.iter().enumerate().take(n) {
            let o = dst.add(j * dst_cs + 16 * r);
            let v = if accumulate {
                _mm512_add_ps(*acc, _mm512_loadu_ps(o))
            } else {
                *acc
            };
            _mm512_storeu_ps(o, v);
        }
    }
}

/// One band of 48 strip rows against `n` columns of 16-wide panels (panel `j`, columns
/// `16j..16j + 16`, at `panel(j)`): [`tile48x8`] on each half of each panel, column `c` of
/// the band at `dst + c·dst_cs`.
///
/// # Safety
/// As [`tile48x8`] for every tile: the strip holds 48 floats at each of `k` steps, each
/// panel 16 at each step, `dst` the band's `n` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn band48(
    k: usize,
    (dst, dst_cs): (*mut f32, usize),
    strip: (*const f32, usize),
    n: usize,
    panel: impl Fn(usize) -> *const f32,
    accumulate: bool,
) {
    for (j, c0) in (0..n).step_by(WIDE).enumerate() {
        let np = WIDE.min(n - c0);
        for h in 0..np.div_ceil(8) {
            let at = dst.add((c0 + 8 * h) * dst_cs);
            let cols = 8.min(np - 8 * h);
            tile48x8(
                (cols, k),
                at,
                dst_cs,
                strip,
                panel(j).add(8 * h),
                accumulate,
            );
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The reference product: `dst (+)= strip · panel` for a 16 x `n` tile.
    fn reference(n: usize, k: usize, nr: usize, strip: &[f32], panel: &[f32], dst: &mut [f32]) {
        for j in 0..n {
            for m in 0..MR {
                let s: f64 = (0..k)
                    .map(|q| strip[q * MR + m] as f64 * panel[q * nr + j] as f64)
                    .sum();
                dst[j * 24 + m] += s as f32;
            }
        }
    }

    /// Both kernels against the reference, for full and partial tiles, storing and
    /// accumulating; columns past `n` and the gap between columns are left untouched.
    #[test]
    fn kernels_match_reference() {
        if !(std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("avx2"))
        {
            return;
        }
        let mut kinds = vec![Micro { nr: NARROW }];
        if std::arch::is_x86_feature_detected!("avx512f") {
            kinds.push(Micro { nr: WIDE });
        }
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for micro in kinds {
            let nr = micro.nr;
            for (n, k) in [(nr, 256), (nr, 37), (3, 5), (1, 1), (nr - 1, 64)] {
                let strip: Vec<f32> = (0..MR * k).map(|_| next()).collect();
                let mut panel: Vec<f32> = (0..nr * k).map(|_| next()).collect();
                for q in 0..k {
                    panel[q * nr + n..(q + 1) * nr].fill(0.0);
                }
                for accumulate in [false, true] {
                    let init: Vec<f32> = (0..nr * 24).map(|_| next()).collect();
                    let mut want = init.clone();
                    if !accumulate {
                        for j in 0..n {
                            want[j * 24..j * 24 + MR].fill(0.0);
                        }
                    }
                    reference(n, k, nr, &strip, &panel, &mut want);
                    let mut got = init.clone();
                    // SAFETY: features checked above; the buffers hold the tile and operands.
                    unsafe {
                        micro.tile(
                            (n, k),
                            got.as_mut_ptr(),
                            24,
                            strip.as_ptr(),
                            panel.as_ptr(),
                            accumulate,
                        )
                    };
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "nr {nr} n {n} k {k} acc {accumulate} at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
