//! `latent-atlas bench --layers`: per-layer times of the fast convolutions on the shipped VAE's
//! shapes and the Split-VAE's other layers (batch 64, base width 32), each with its bias and a leaky ReLU as the models run
//! them (one fused op), forward and the two backward kernels, median of many repeats
//! (`bench/torch_layers.py` times the same layers in PyTorch). A profiling aid: it shows which layer and which kernel a change to `model::conv`
//! moves, with far less noise than a whole training step on a shared 2-core machine.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use clap::Args;

use crate::model::conv::{conv2d_bias_leaky, conv_transpose2d_bias_leaky, ConvGeom};
use crate::model::layers::LEAKY_SLOPE;

/// Options of the per-layer benchmark.
#[derive(Debug, Args)]
pub struct LayerArgs {
    /// Run the per-layer benchmark instead (VAE conv shapes, batch 64).
    #[arg(long)]
    pub layers: bool,
    /// Per-layer benchmark: batch size.
    #[arg(long, default_value_t = 64)]
    pub layers_batch: usize,
    /// Per-layer benchmark: timed repeats per figure (the median is printed).
    #[arg(long, default_value_t = 15)]
    pub layers_repeats: usize,
}

/// One layer of the VAE: name, transposed or not, input channels, output channels, input side,
/// geometry.
struct Layer {
    name: &'static str,
    transposed: bool,
    c_in: usize,
    c_out: usize,
    side: usize,
    geom: ConvGeom,
}

fn vae_layers(c: usize) -> Vec<Layer> {
    let s2 = ConvGeom {
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let out = ConvGeom {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let mut v = Vec::new();
    let enc = [
        (3, c, 64),
        (c, 2 * c, 32),
        (2 * c, 4 * c, 16),
        (4 * c, 8 * c, 8),
    ];
    let names = ["enc c0", "enc c1", "enc c2", "enc c3"];
    for (name, &(ci, co, side)) in names.iter().zip(&enc) {
        v.push(Layer {
            name,
            transposed: false,
            c_in: ci,
            c_out: co,
            side,
            geom: s2,
        });
    }
    let dec = [
        (8 * c, 4 * c, 4),
        (4 * c, 2 * c, 8),
        (2 * c, c, 16),
        (c, c / 2, 32),
    ];
    let names = ["dec t0", "dec t1", "dec t2", "dec t3"];
    for (name, &(ci, co, side)) in names.iter().zip(&dec) {
        v.push(Layer {
            name,
            transposed: true,
            c_in: ci,
            c_out: co,
            side,
            geom: s2,
        });
    }
    v.push(Layer {
        name: "dec out",
        transposed: false,
        c_in: c / 2,
        c_out: 3,
        side: 64,
        geom: out,
    });
    v
}

/// The Split-VAE's layers beyond the VAE's: its four residual blocks' 3x3 convs (one at
/// 32x32, two at 16x16, one at 8x8) and its 7-channel output conv.
fn svae_extra_layers(c: usize) -> Vec<Layer> {
    let g = ConvGeom {
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let conv = |name, c_in, c_out, side| Layer {
        name,
        transposed: false,
        c_in,
        c_out,
        side,
        geom: g,
    };
    vec![
        conv("svae res 32²", c, c, 32),
        conv("svae res 16² (x2)", 2 * c, 2 * c, 16),
        conv("svae res 8²", 4 * c, 4 * c, 8),
        conv("svae out", c / 2, 7, 64),
    ]
}

fn median_ms(repeats: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(1e3 * super::bench_ours::time_median(repeats.max(1), 1, f)?)
}

/// Prints a table: per layer, forward ms, forward + backward ms, and GFLOP/s of the pair.
pub fn run(a: &LayerArgs) -> Result<()> {
    let dev = Device::Cpu;
    let b = a.layers_batch.max(1);
    println!(
        "| layer (batch {b}) | shape | forward ms | fwd+bwd ms | GFLOP/s fwd+bwd |\n|---|---|---|---|---|"
    );
    let mut total = (0.0, 0.0);
    let (vae, extra) = (vae_layers(32), svae_extra_layers(32));
    let n_vae = vae.len();
    for (i, l) in vae.into_iter().chain(extra).enumerate() {
        if i == n_vae {
            println!("| all (VAE) | | {:.2} | {:.2} | |", total.0, total.1);
            total = (0.0, 0.0);
        }
        let x = Var::from_tensor(&Tensor::randn(
            0f32,
            1.0,
            (b, l.c_in, l.side, l.side),
            &dev,
        )?)?;
        // As in training, the first layer's input (the image batch) needs no gradient.
        let first = i == 0;
        let x_in = if first {
            x.as_tensor().detach()
        } else {
            x.as_tensor().clone()
        };
        let k = l.geom.kernel;
        let (wshape, out_side) = if l.transposed {
            ((l.c_in, l.c_out, k, k), l.geom.transposed_out(l.side))
        } else {
            ((l.c_out, l.c_in, k, k), l.geom.conv_out(l.side))
        };
        let w = Var::from_tensor(&(Tensor::randn(0f32, 1.0, wshape, &dev)? * 0.05)?)?;
        let bias = Var::from_tensor(&Tensor::zeros(l.c_out, candle_core::DType::F32, &dev)?)?;
        let fwd = || -> Result<Tensor> {
            let (w, b) = (w.as_tensor(), bias.as_tensor());
            Ok(if l.transposed {
                conv_transpose2d_bias_leaky(&x_in, w, b, l.geom, LEAKY_SLOPE)?
            } else {
                conv2d_bias_leaky(&x_in, w, b, l.geom, LEAKY_SLOPE)?
            })
        };
        let f_ms = median_ms(a.layers_repeats, || {
            fwd()?;
            Ok(())
        })?;
        let fb_ms = median_ms(a.layers_repeats, || {
            let y = fwd()?;
            let grads = y.sum_all()?.backward()?;
            anyhow::ensure!(grads.get(w.as_tensor()).is_some(), "no weight gradient");
            Ok(())
        })?;
        // multiply-adds of one pass: output pixels x c_out x c_in x k² (the smaller side's
        // pixels for a transposed conv); forward + two backward kernels = 3 passes (2 for the
        // first layer: no input gradient)
        let small_side = if l.transposed { l.side } else { out_side };
        let macs = (b * small_side * small_side * l.c_out * l.c_in * k * k) as f64;
        let passes = if first { 2.0 } else { 3.0 };
        let gflops = passes * 2.0 * macs / (fb_ms * 1e-3) / 1e9;
        total.0 += f_ms;
        total.1 += fb_ms;
        println!(
            "| {} | {}→{} ch, {}² → {}² | {f_ms:.2} | {fb_ms:.2} | {gflops:.1} |",
            l.name, l.c_in, l.c_out, l.side, out_side
        );
    }
    println!(
        "| all (Split-VAE's other layers; its step runs the 16² block twice) | | {:.2} | {:.2} | |",
        total.0, total.1
    );
    println!(
        "\ncandle threads: {}; medians of {} repeats",
        candle_core::utils::get_num_threads(),
        a.layers_repeats
    );
    Ok(())
}
