//! The `latent-decode` thread: decodes slider codes with the source model and, through the
//! map, with the target model. Only the newest pending request runs (coalescing).

use std::sync::mpsc::Receiver;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use candle_core::Tensor;
use nalgebra::DMatrix;

use super::{ActivePair, Command, Event, Outbox, RequestId, Shared};
use crate::data::IMAGE_SIZE;
use crate::latent::estimators::LinearMap;
use crate::model::LatentModel;

/// The thread body: runs until the command channel closes.
pub(crate) fn run(rx: Receiver<Command>, out: &Outbox, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        // Coalesce: everything queued behind `first` is newer, keep only the last one.
        let cmd = rx.try_iter().last().unwrap_or(first);
        if let Command::Decode {
            req,
            z_in_source,
            sample,
        } = cmd
        {
            let pair = shared.pair.lock().ok().and_then(|p| p.clone());
            let event = match pair {
                None => Event::Failed {
                    req,
                    error: "no models are loaded yet".into(),
                },
                Some(pair) => {
                    decode(req, &pair, &z_in_source, sample).unwrap_or_else(|e| Event::Failed {
                        req,
                        error: format!("{e:#}"),
                    })
                }
            };
            out.send(event);
        }
    }
}

fn decode(
    req: RequestId,
    pair: &Arc<ActivePair>,
    z_in_source: &[f32],
    sample: Option<usize>,
) -> Result<Event> {
    let map = pair.map.as_deref();
    let (source_rgb, mapped_rgb) =
        decode_slider(&pair.source.model, &pair.target.model, map, z_in_source)?;
    let original = sample
        .map(|i| pair.dataset.image_u8(i))
        .filter(|o| !o.is_empty());
    let source_mse = original.as_deref().map(|o| mse_chw_rgb(o, &source_rgb));
    let mapped_mse = match (original.as_deref(), &mapped_rgb) {
        (Some(o), Some(m)) => Some(mse_chw_rgb(o, m)),
        _ => None,
    };
    Ok(Event::Decoded {
        req,
        source_rgb,
        mapped_rgb,
        source_mse,
        mapped_mse,
    })
}

/// The explorer's work per slider drag: decodes one source code with the source model and,
/// through `map` (when fitted), with the target model; returns interleaved RGB bytes
/// (64 x 64 x 3) for both. `latent-atlas bench` times this function.
pub fn decode_slider(
    source: &dyn LatentModel,
    target: &dyn LatentModel,
    map: Option<&LinearMap>,
    z_in_source: &[f32],
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let d = source.latent_dim();
    if z_in_source.len() != d {
        anyhow::bail!(
            "code has {} values but {} expects {d}",
            z_in_source.len(),
            source.name()
        );
    }
    let z = Tensor::from_vec(z_in_source.to_vec(), (1, d), source.device())?;
    let decode_source = || -> Result<Vec<u8>> {
        to_rgb(
            &source
                .decode(&z)
                .context("decoding with the source model")?,
        )
    };
    let Some(map) = map else {
        return Ok((decode_source()?, None));
    };
    let z_in_target = map.apply(&DMatrix::from_row_slice(1, d, z_in_source))?;
    let values: Vec<f32> = z_in_target.row(0).iter().copied().collect();
    let zt = Tensor::from_vec(values, (1, z_in_target.ncols()), target.device())?;
    let decode_target = || -> Result<Vec<u8>> {
        to_rgb(
            &target
                .decode(&zt)
                .context("decoding with the target model")?,
        )
    };
    // both decodes at once: a batch-1 decode leaves most of a second core idle
    let (source_rgb, mapped_rgb) = rayon::join(decode_source, decode_target);
    Ok((source_rgb?, Some(mapped_rgb?)))
}

/// `[1, 3, 64, 64]` (or `[3, 64, 64]`) floats in [0, 1] -> interleaved RGB bytes, row-major.
pub(crate) fn to_rgb(images: &Tensor) -> Result<Vec<u8>> {
    let chw: Vec<f32> = images
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    if chw.len() < 3 * plane {
        anyhow::bail!(
            "decoder returned {} values, expected {}",
            chw.len(),
            3 * plane
        );
    }
    let mut rgb = Vec::with_capacity(3 * plane);
    for p in 0..plane {
        for c in 0..3 {
            rgb.push((chw[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    Ok(rgb)
}

/// Per-pixel MSE in [0, 1] units between a dataset image (CHW bytes) and an RGB image.
pub(crate) fn mse_chw_rgb(chw: &[u8], rgb: &[u8]) -> f64 {
    let plane = IMAGE_SIZE * IMAGE_SIZE;
    let mut sum = 0.0f64;
    for p in 0..plane {
        for c in 0..3 {
            let a = f64::from(chw.get(c * plane + p).copied().unwrap_or(0)) / 255.0;
            let b = f64::from(rgb.get(p * 3 + c).copied().unwrap_or(0)) / 255.0;
            sum += (a - b) * (a - b);
        }
    }
    sum / (3 * plane) as f64
}
