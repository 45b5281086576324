//! The process-wide switches of the Winograd kernels (`wino.rs`), and which route a shape
//! takes: benchmarks time the routes in turns, tests pin each to the others.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::super::kernels::threads;
use super::{applies, ConvGeom, Dims};

/// 0: not yet read from the environment, 1: on, 2: off.
static STATE: AtomicU8 = AtomicU8::new(0);
/// Whether the tile transforms may run vectorized (`wino_simd.rs`) where AVX2 is available.
static VECTOR: AtomicBool = AtomicBool::new(true);
/// Which input gradients run on `grad_input`: 0 the CPU's default (see
/// [`winograd_input_gradient`]), else as [`set_winograd_input_gradient`] set it.
static GRAD_INPUT: AtomicU8 = AtomicU8::new(0);

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

/// Which input gradients of 4x4 stride-2 convolutions (and so which transposed convolutions'
/// forwards) run on the Winograd kernels, where the vector transforms run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputGradientRoute {
    /// Every shape the Winograd kernels take (the default without our AVX-512 kernel: on
    /// AVX2 alone, Winograd is faster for every training layer; session 16, Zen 3).
    All,
    /// Only products over at least [`WIDE_GRADIENT`] gradient channels or onto at most
    /// [`NARROW_INPUT`] input channels, the rest by stride phases (the default with our AVX-512 micro-kernel, which makes the phase kernel the
    /// faster one for narrower layers).
    Wide,
    /// None: all by stride phases.
    Off,
}

/// Fewest output-gradient channels for which [`InputGradientRoute::Wide`] runs the input
/// gradient on Winograd. Measured inside training steps on a Xeon with AVX-512 (batch 64,
/// per call): the 128 → 256 layer at 8x8 (and the 256 → 128 transposed forward) 8.8-9.1 ms
/// by Winograd against 11.3-11.8 by phases; 64 → 128 at 16x16 10.0-13.5 against 6.1-8.5;
/// 32 → 64 at 32x32 9.0-10.2 against 6.6-7.9.
pub const WIDE_GRADIENT: usize = 256;

/// Sets which input gradients run on Winograd for this process, instead of the CPU's
/// default.
pub fn set_winograd_input_gradient(route: InputGradientRoute) {
    let v = match route {
        InputGradientRoute::All => 1,
        InputGradientRoute::Wide => 2,
        InputGradientRoute::Off => 3,
    };
    GRAD_INPUT.store(v, Ordering::Relaxed);
}

/// Which input gradients run on Winograd: as [`set_winograd_input_gradient`] set it, else
/// the CPU's default ([`InputGradientRoute::Wide`] where our AVX-512 micro-kernel runs,
/// [`InputGradientRoute::All`] elsewhere).
pub fn winograd_input_gradient() -> InputGradientRoute {
    match GRAD_INPUT.load(Ordering::Relaxed) {
        0 if crate::model::conv::avx512_kernels_enabled() => InputGradientRoute::Wide,
        0 | 1 => InputGradientRoute::All,
        2 => InputGradientRoute::Wide,
        _ => InputGradientRoute::Off,
    }
}

/// Whether the route of [`winograd_input_gradient`] takes an input gradient over `c_out`
/// gradient channels onto `c_in` input channels.
///
/// [`InputGradientRoute::Wide`] also takes gradients onto at most [`NARROW_INPUT`] channels:
/// there the phase kernel packs a strip of the output gradient for a single 16-column
/// product, and the Winograd route (its weights packed once per call since session 19) is
/// faster: the 32 → 16 transposed layer at 64x64 (batch 64, Xeon with AVX-512) 6.5-6.6 ms
/// forward against 7.6 by phases, 21.6-21.8 against 22.9-23.1 forward + backward.
pub(in crate::model::conv) fn input_gradient_takes(c_out: usize, c_in: usize) -> bool {
    match winograd_input_gradient() {
        InputGradientRoute::All => true,
        InputGradientRoute::Wide => c_out >= WIDE_GRADIENT || c_in <= NARROW_INPUT,
        InputGradientRoute::Off => false,
    }
}

/// Most input channels for which [`InputGradientRoute::Wide`] runs the input gradient on
/// Winograd whatever the gradient channels (one panel of the AVX-512 kernel).
pub const NARROW_INPUT: usize = 16;

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
    let d = Dims::of(c_in, (h, w), c_out, &geom);
    batch >= threads() && applies(&d, &geom)
}
