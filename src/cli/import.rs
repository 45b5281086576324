//! `latent-atlas import-refdcgan`: PyTorch checkpoint of gan-face-generate 1.1.1 → model dir.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use sha2::{Digest, Sha256};

use crate::model::{store, Family, Model, ModelConfig};

/// Convert `gan_face_generate/weights.tar` (a PyTorch zip checkpoint holding
/// `netG_state_dict`) into a model directory with a fresh, untrained recoder.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The `weights.tar` file from the gan-face-generate 1.1.1 wheel.
    #[arg(long)]
    pub weights: PathBuf,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `import-refdcgan`.
pub fn run(a: ImportArgs) -> Result<()> {
    let bytes = std::fs::read(&a.weights)
        .with_context(|| format!("cannot read {}", a.weights.display()))?;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    let pth = candle_core::pickle::PthTensors::new(&a.weights, Some("netG_state_dict"))
        .with_context(|| {
            format!(
                "not a PyTorch checkpoint with netG_state_dict: {}",
                a.weights.display()
            )
        })?;
    let mut tensors = HashMap::new();
    for name in pth.tensor_infos().keys() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let Some(t) = pth.get(name)? else {
            bail!(
                "tensor {name} listed but unreadable in {}",
                a.weights.display()
            )
        };
        tensors.insert(format!("gen.{name}"), t.to_dtype(candle_core::DType::F32)?);
    }
    let mut config = ModelConfig::new("refdcgan", Family::Refdcgan, 100);
    config.provenance = Some(format!(
        "generator from PyPI gan-face-generate==1.1.1 (MIT), gan_face_generate/weights.tar sha256 {sha}; \
         PyTorch DCGAN tutorial generator (nz=100, ngf=64) trained on DigiFace-1M"
    ));
    let device = candle_core::Device::Cpu;
    let model = Model::new(config, &device, 0, false)?;
    // every generator tensor must match; the recoder keeps its fresh initialisation
    let mut all = store::named_tensors(&model.varmap, false)?;
    for (k, v) in &tensors {
        if !all.contains_key(k) {
            bail!("unexpected tensor `{k}` in {}", a.weights.display());
        }
        all.insert(k.clone(), v.clone());
    }
    if let Some(missing) = all
        .keys()
        .find(|k| k.starts_with("gen.") && !tensors.contains_key(*k))
    {
        bail!("tensor `{missing}` missing from {}", a.weights.display());
    }
    store::assign_checked(&model.varmap, &all, &[], &a.weights)?;
    store::save_model(&model, &a.out, false)?;
    println!(
        "imported {} generator tensors (sha256 {sha}) into {}",
        tensors.len(),
        a.out.display()
    );
    Ok(())
}
