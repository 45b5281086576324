//! The process-wide switches of the Winograd kernels (`wino.rs`), and which route a shape
//! takes: benchmarks time the routes in turns, tests pin each to the others.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::super::kernels::threads;
use super::{applies, ConvGeom, Dims};

/// 0: not yet read from the environment, 1: on, 2: off.
static STATE: AtomicU8 = AtomicU8::new(0);
/// Whether the tile transforms may run vectorized (`wino_simd.rs`) where AVX2 is available.
static VECTOR: AtomicBool = AtomicBool::new(true);
/// Whether the input gradient may run on `grad_input`.
static GRAD_INPUT: AtomicBool = AtomicBool::new(true);

/// Whether 4x4 stride-2 convolutions with enough channels run on the Winograd kernels: on
/// unless `LATENT_ATLAS_NO_WINOGRAD` is set or [`set_winograd`] turned them off.
pub fn winograd_enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("LATENT_ATLAS_NO_WINOGRAD").is_none();
            STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        s => s == 1,
    }
}

/// Turns the Winograd F(2x2, 2x2) kernels for 4x4 stride-2 convolutions (`conv/wino.rs`) on or
/// off for this process (on by default; `LATENT_ATLAS_NO_WINOGRAD` in the environment turns
/// them off).
pub fn set_winograd(on: bool) {
    STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the Winograd tile transforms run vectorized over tiles (`conv/wino_simd.rs`, on
/// by default where the CPU has AVX2), else one tile at a time.
pub fn set_winograd_vector_transforms(on: bool) {
    VECTOR.store(on, Ordering::Relaxed);
}

/// Whether the Winograd tile transforms run vectorized (the CPU has AVX2 and
/// [`set_winograd_vector_transforms`] did not turn them off); the Winograd input gradient
/// runs only then.
pub fn winograd_vector_transforms() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        VECTOR.load(Ordering::Relaxed) && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the input gradients of 4x4 stride-2 convolutions (and the transposed convolutions'
/// forward) may run on the Winograd kernels (on by default, where the vector transforms run).
pub fn set_winograd_input_gradient(on: bool) {
    GRAD_INPUT.store(on, Ordering::Relaxed);
}

/// Whether [`set_winograd_input_gradient`] left the Winograd input gradient on.
pub(in crate::model::conv) fn input_gradient_enabled() -> bool {
    GRAD_INPUT.load(Ordering::Relaxed)
}

/// Whether a batch of `batch` images `[c_in, h, w]` through a convolution to `c_out` channels
/// with `geom` runs on the Winograd kernels (its forward, and its weight gradient; its input
/// gradient too where the vector transforms run): for tests and benchmarks that must know
/// which route they measure.
pub fn winograd_applies(
    batch: usize,
    c_in: usize,
    (h, w): (usize, usize),
    c_out: usize,
    geom: ConvGeom,
) -> bool {
    let d = Dims {
        c_in,
        h,
        w,
        c_out,
        ho: geom.conv_out(h),
        wo: geom.conv_out(w),
    };
    batch >= threads() && applies(&d, &geom)
}
