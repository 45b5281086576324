//! Custom wgpu painting through egui_wgpu callbacks, for what egui's painter is too slow at.
//! Everything here is optional: without a wgpu render state the panels fall back to egui_plot.

pub mod scatter;

/// WGSL sources of all shaders, by file name (validated by `tests/wgsl_shaders.rs`).
pub const SHADERS: [(&str, &str); 1] = [("scatter.wgsl", scatter::SHADER)];
