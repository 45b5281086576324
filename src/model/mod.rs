//! Generative models in candle behind one trait, [`LatentModel`].
//!
//! Every model is a directory holding `config.json` ([`ModelConfig`]) and `model.safetensors`.
//! Loading builds the architecture named by the config, then checks every tensor of the file
//! against it by name and shape ([`store`]).

pub mod activation;
pub mod adam;
pub mod batchnorm_op;
pub mod channel_op;
pub mod conv;
pub mod device;
pub mod flow;
pub mod gan;
pub mod layers;
pub mod quality;
pub mod refdcgan;
pub mod store;
pub mod style;
pub mod svae;
pub mod train;
pub mod vae;
pub mod weights;

use std::fmt;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

pub use store::{load_model, save_model};

/// Errors from building, loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{action}: {source}: {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
        /// The file.
        path: PathBuf,
    },
    /// The config JSON is malformed or inconsistent.
    #[error("bad model config: {msg}: {path}")]
    Config {
        /// What is wrong.
        msg: String,
        /// The config file.
        path: PathBuf,
    },
    /// A weights file does not match the architecture.
    #[error("weights do not match the architecture: {msg}: {path}")]
    Weights {
        /// Which tensor is missing, unexpected or of the wrong shape.
        msg: String,
        /// The weights file.
        path: PathBuf,
    },
    /// Input tensor of the wrong shape, dtype or with non-finite values.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The model cannot do this yet (e.g. a GAN whose recoder is not trained).
    #[error("{0}")]
    Unavailable(String),
    /// An error inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Model family, as written in `config.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Vanilla VAE with γ-balanced loss.
    Vae,
    /// Split-VAE: output σ⊙x1 + (1−σ)⊙x2, residual blocks.
    Svae,
    /// DCGAN-style GAN; `encode` is its recoder (inversion network).
    Gan,
    /// The pretrained DCGAN of `gan-face-generate` 1.1.1, with our recoder.
    Refdcgan,
    /// Multi-scale normalizing flow (RealNVP/Glow); the latent has the image's 12,288
    /// dimensions, `encode`/`decode` are the exact flow and its inverse.
    Flow,
    /// Style-based generator (mapping network Z → W, modulated synthesis); codes in W,
    /// `encode` is its recoder into W.
    Style,
    /// The same style generator with codes in Z (the mapping network's input), its own recoder.
    StyleZ,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Family::Vae => "vae",
            Family::Svae => "svae",
            Family::Gan => "gan",
            Family::Refdcgan => "refdcgan",
            Family::Flow => "flow",
            Family::Style => "style",
            Family::StyleZ => "style-z",
        };
        f.write_str(s)
    }
}

/// Reconstruction quality on a held-out split, as stored in the config after evaluation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Quality {
    /// Dataset id the figures were measured on.
    pub dataset: String,
    /// Number of held-out images used.
    pub num_images: usize,
    /// Mean MSE between originals and reconstructions `decode(encode(x))`.
    pub r_mse: f64,
    /// Mean MSE between random pairs of images of the same set.
    pub random_pair_mse: f64,
}

impl Quality {
    /// R-MSE as a fraction of the random-pair MSE (paper's CelebA VAE: 0.063).
    pub fn ratio(&self) -> f64 {
        self.r_mse / self.random_pair_mse.max(1e-12)
    }
}

/// The JSON beside every weights file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Model name, e.g. `vae-a`.
    pub name: String,
    /// Architecture family.
    pub family: Family,
    /// Latent dimension.
    pub latent_dim: usize,
    /// Channel width of the first conv layer (the others are multiples).
    pub base_channels: usize,
    /// For GANs and the reference DCGAN: whether the recoder (`encode`) has been trained.
    #[serde(default)]
    pub recoder_trained: bool,
    /// How the model was trained (the training config), if by us.
    #[serde(default)]
    pub training: Option<serde_json::Value>,
    /// Held-out reconstruction quality, if measured.
    #[serde(default)]
    pub quality: Option<Quality>,
    /// Where the weights come from, for outside models.
    #[serde(default)]
    pub provenance: Option<String>,
    /// For flows: the architecture (levels, steps, width); `None` elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<flow::FlowArch>,
}

impl ModelConfig {
    /// A fresh config with the default widths for `family`.
    pub fn new(name: &str, family: Family, latent_dim: usize) -> Self {
        let base_channels = match family {
            Family::Refdcgan => 64,
            _ => 32,
        };
        Self {
            name: name.to_string(),
            family,
            latent_dim,
            base_channels,
            recoder_trained: false,
            training: None,
            quality: None,
            provenance: None,
            flow: None,
        }
    }
}

/// Everything a comparison needs from a generative model with an encoder.
pub trait LatentModel: Send + Sync {
    /// Model name.
    fn name(&self) -> &str;
    /// Architecture family.
    fn family(&self) -> Family;
    /// Latent dimension `d`.
    fn latent_dim(&self) -> usize;
    /// Device the weights live on.
    fn device(&self) -> &Device;
    /// Images `[n, 3, 64, 64]` in [0, 1] → codes `[n, d]` (the posterior mean for VAEs,
    /// the recoder's output for GANs).
    fn encode(&self, images: &Tensor) -> Result<Tensor>;
    /// Codes `[n, d]` → images `[n, 3, 64, 64]` in [0, 1].
    fn decode(&self, codes: &Tensor) -> Result<Tensor>;
}

/// The network of one family.
#[derive(Clone, Debug)]
pub enum Net {
    /// See [`vae::Vae`].
    Vae(vae::Vae),
    /// See [`svae::Svae`].
    Svae(svae::Svae),
    /// See [`gan::Gan`].
    Gan(gan::Gan),
    /// See [`refdcgan::RefDcgan`].
    Refdcgan(refdcgan::RefDcgan),
    /// See [`flow::Flow`].
    Flow(flow::Flow),
    /// See [`style::Style`] (families `style` and `style-z`).
    Style(style::Style),
}

impl Net {
    /// Builds the architecture of `cfg`, creating (or fetching) its variables in `vb`.
    /// `with_discriminator` adds the GAN discriminator (training only).
    pub fn build(cfg: &ModelConfig, vb: VarBuilder, with_discriminator: bool) -> Result<Net> {
        let (d, c) = (cfg.latent_dim, cfg.base_channels);
        if d == 0 || c < 2 {
            return Err(ModelError::BadInput(format!(
                "latent_dim {d} and base_channels {c} must be positive"
            )));
        }
        Ok(match cfg.family {
            Family::Vae => Net::Vae(vae::Vae::new(vb, d, c)?),
            Family::Svae => Net::Svae(svae::Svae::new(vb, d, c)?),
            Family::Gan => Net::Gan(gan::Gan::new(vb, d, c, with_discriminator)?),
            Family::Refdcgan => Net::Refdcgan(refdcgan::RefDcgan::new(vb, d, c)?),
            Family::Flow => Net::Flow(flow::Flow::for_config(cfg, vb)?),
            Family::Style | Family::StyleZ => {
                Net::Style(style::Style::new(vb, d, c, with_discriminator)?)
            }
        })
    }
}

/// A loaded model: its config, its variables and its network.
pub struct Model {
    /// The config (written back on save).
    pub config: ModelConfig,
    /// All variables, by tensor name.
    pub varmap: VarMap,
    /// The network built on `varmap`.
    pub net: Net,
    device: Device,
}

impl Model {
    /// A new model with freshly initialised weights (deterministic in `seed`).
    pub fn new(
        config: ModelConfig,
        device: &Device,
        seed: u64,
        with_discriminator: bool,
    ) -> Result<Model> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device);
        let net = Net::build(&config, vb, with_discriminator)?;
        store::init_weights(&varmap, seed)?;
        if let Net::Flow(f) = &net {
            f.identity_init(&varmap)?;
        }
        Ok(Model {
            config,
            varmap,
            net,
            device: device.clone(),
        })
    }
}

/// Checks a `[n, 3, 64, 64]` f32 image batch: shape, dtype and finiteness.
pub fn check_images(images: &Tensor) -> Result<()> {
    let dims = images.dims();
    if dims.len() != 4 || dims[1] != 3 || dims[2] != 64 || dims[3] != 64 {
        return Err(ModelError::BadInput(format!(
            "images must be [n, 3, 64, 64], got {dims:?}"
        )));
    }
    check_finite(images, "images")
}

/// Checks a `[n, d]` code batch against the latent dimension, and finiteness.
pub fn check_codes(codes: &Tensor, latent_dim: usize) -> Result<()> {
    let dims = codes.dims();
    if dims.len() != 2 || dims[1] != latent_dim {
        return Err(ModelError::BadInput(format!(
            "codes must be [n, {latent_dim}], got {dims:?}"
        )));
    }
    check_finite(codes, "codes")
}

fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != candle_core::DType::F32 {
        return Err(ModelError::BadInput(format!(
            "{what} must be f32, got {:?}",
            t.dtype()
        )));
    }
    let s = t.abs()?.sum_all()?.to_scalar::<f32>()?;
    if !s.is_finite() {
        return Err(ModelError::BadInput(format!(
            "{what} contain NaN or infinite values"
        )));
    }
    Ok(())
}

impl LatentModel for Model {
    fn name(&self) -> &str {
        &self.config.name
    }
    fn family(&self) -> Family {
        self.config.family
    }
    fn latent_dim(&self) -> usize {
        self.config.latent_dim
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn encode(&self, images: &Tensor) -> Result<Tensor> {
        check_images(images)?;
        let images = images.to_device(&self.device)?;
        let recoder_ok = self.config.recoder_trained;
        let unavailable = || {
            ModelError::Unavailable(format!(
                "model {}: its recoder is not trained yet",
                self.config.name
            ))
        };
        Ok(match &self.net {
            Net::Vae(m) => m.encode_mean(&images)?,
            Net::Svae(m) => m.encode(&images)?.0,
            Net::Gan(m) if recoder_ok => m.recode_inference(&images)?,
            Net::Refdcgan(m) if recoder_ok => m.recode_inference(&images)?,
            Net::Flow(m) => m.encode(&images)?,
            Net::Style(m) if recoder_ok => m.recode_inference(&images)?,
            Net::Gan(_) | Net::Refdcgan(_) | Net::Style(_) => return Err(unavailable()),
        })
    }
    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        check_codes(codes, self.config.latent_dim)?;
        let codes = codes.to_device(&self.device)?;
        Ok(match &self.net {
            // codes that carry a gradient (a Var, or computed from one) take the
            // differentiable layers; the rest the inference paths (channels-last, detached)
            Net::Vae(m) if codes.track_op() => m.decode(&codes)?,
            Net::Vae(m) => m.decode_inference(&codes)?,
            Net::Svae(m) => m.decode(&codes)?,
            Net::Gan(m) if codes.track_op() => m.generate(&codes)?,
            Net::Gan(m) => m.generate_inference(&codes)?,
            Net::Refdcgan(m) => m.generate(&codes)?,
            Net::Flow(m) => m.decode(&codes)?,
            Net::Style(m) => m.decode(&codes, self.style_view())?,
        })
    }
}

impl Model {
    fn style_view(&self) -> style::StyleView {
        style::StyleView::of(self.config.family).unwrap_or(style::StyleView::W)
    }
    /// Samples from the prior: draws `z ~ N(0, I)` `[n, d]` → images `[n, 3, 64, 64]`. Equals
    /// [`LatentModel::decode`] except for style models, whose codes are not the prior's: there
    /// `z` goes through the whole mapping network first (pixel norm included).
    pub fn decode_prior(&self, z: &Tensor) -> Result<Tensor> {
        match &self.net {
            Net::Style(m) => {
                check_codes(z, self.config.latent_dim)?;
                Ok(m.generate_from_z(&z.to_device(&self.device)?)?)
            }
            _ => self.decode(z),
        }
    }
}
