//! The stride-phase input gradient of 4x4 stride-2 convolutions with the input channels in
//! the vector lanes (`conv/lanes.rs`, AVX-512) against candle's native ops and against the
//! 16-pixel phase kernel it replaces (`conv/phases.rs`): convolutions' input gradients and
//! transposed convolutions' forwards (with the fused bias + leaky ReLU). The Winograd input
//! gradient is turned off so that every shape here runs by stride phases. One test in its own
//! binary: the switches are process-wide.

mod common;
use common::{check_stride2_conv, check_stride2_transposed};

use latent_atlas::model::conv::{
    avx512_kernels_enabled, phase_lanes_enabled, set_phase_lanes, set_winograd_input_gradient,
    InputGradientRoute,
};

/// (batch, c_in, side, c_out): every tile shape (32 channels: 12 pixels x 2 vectors; 48 and
/// 40 (padded to 48): 8 x 3; 64: 6 x 4; 80: a 4- and a 1-vector block; 128: two 4-vector
/// blocks), pixel counts per phase that leave a partial tile (64 = 5 x 12 + 4, 10 x 6 + 4),
/// batches that split unevenly, 4-pixel output rows (8x8 images: two rows per transpose;
/// several images per task), and a 6-pixel output row (12x12 images) that stays on the
/// 16-pixel kernel.
const CONVS: [(usize, usize, usize, usize); 9] = [
    (5, 64, 8, 32),
    (3, 128, 8, 24),
    (3, 32, 16, 40),
    (2, 48, 32, 24),
    (2, 40, 16, 20),
    (5, 64, 16, 32),
    (2, 80, 16, 16),
    (3, 128, 16, 8),
    (2, 32, 12, 16),
];

/// (batch, c_in, side, c_out) of transposed convolutions: the forward is the input gradient
/// onto `c_out` channels.
const TRANSPOSED: [(usize, usize, usize, usize); 4] = [
    (3, 64, 8, 48),
    (2, 24, 16, 32),
    (4, 128, 8, 64),
    (3, 40, 4, 64),
];

fn check_all(lanes: bool) {
    for (i, &(b, c_in, side, c_out)) in CONVS.iter().enumerate() {
        let what = format!("lanes {lanes}: {b}x{c_in}x{side}x{side} -> {c_out}");
        check_stride2_conv(i, (b, c_in, side, c_out), &what);
    }
    for (i, &(b, c_in, side, c_out)) in TRANSPOSED.iter().enumerate() {
        let what = format!("lanes {lanes}: transposed {b}x{c_in}x{side}x{side} -> {c_out}");
        check_stride2_transposed(i, (b, c_in, side, c_out), &what);
    }
}

#[test]
fn phase_lanes_match_native_and_the_phase_kernel() {
    assert_eq!(
        phase_lanes_enabled(),
        avx512_kernels_enabled(),
        "on wherever our AVX-512 kernels run"
    );
    set_winograd_input_gradient(InputGradientRoute::Off);
    check_all(phase_lanes_enabled());
    set_phase_lanes(false);
    assert!(!phase_lanes_enabled());
    check_all(false);
    set_phase_lanes(true);
    set_winograd_input_gradient(InputGradientRoute::Wide);
}
