//! latent-atlas: compare the latent spaces of generative models.
//!
//! The engine lives in [`data`] (datasets and caches), [`model`] (candle models and training)
//! and, later, `latent` (the analysis). None of them depends on the GUI.

pub mod app;
pub mod cli;
pub mod data;
pub mod grid;
pub mod latent;
pub mod model;
pub mod progress;
pub mod render;
pub mod ui;
pub mod worker;
pub mod zoo;
