//! The optimisation step of each training kind: γ-balanced VAE, non-saturating GAN (DCGAN or
//! style generator), recoders (latent MSE, optional image-space term) and normalizing flows.

use super::{randn, softplus, unreachable_net, Run};
use crate::model::{LatentModel, Net, Result};

impl Run<'_> {
    /// γ-balanced VAE loss: Σ(x − x̂)² / (2γ²) + KL, γ² the running reconstruction MSE.
    pub(super) fn vae_step(&mut self, batch_idx: &[usize]) -> Result<(f64, f64)> {
        let x = self.real_batch(batch_idx)?;
        let (mu, logvar) = match &self.model.net {
            Net::Vae(m) => m.encode(&x)?,
            Net::Svae(m) => m.encode(&x)?,
            _ => return unreachable_net(),
        };
        let eps = randn(
            self.opts.seed,
            self.state.global_step,
            mu.dims2()?,
            self.model.device(),
        )?;
        let z = (&mu + ((&logvar * 0.5)?.exp()? * eps)?)?;
        let xr = match &self.model.net {
            Net::Vae(m) => m.decode(&z)?,
            Net::Svae(m) => m.decode(&z)?,
            _ => return unreachable_net(),
        };
        let n = batch_idx.len() as f64;
        let pixels = (x.elem_count() / batch_idx.len()) as f64;
        let rec = ((xr - &x)?.sqr()?.sum_all()? / n)?;
        let kl = (((mu.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)?
            .sum_all()?
            .affine(0.5 / n, 0.0)?;
        let mse = rec.to_scalar::<f32>()? as f64 / pixels;
        let g = &mut self.state.gamma_sq;
        *g = if *g <= 0.0 {
            mse
        } else {
            0.99 * *g + 0.01 * mse
        };
        *g = g.max(1e-4);
        let gamma_sq = *g;
        let loss = (rec.affine(1.0 / (2.0 * gamma_sq), 0.0)? + &kl)?.affine(1.0 / pixels, 0.0)?;
        let grads = loss.backward()?;
        self.opt_main.step(&grads)?;
        Ok((mse, kl.to_scalar::<f32>()? as f64))
    }

    /// Non-saturating GAN (DCGAN or style generator): one discriminator step, then one
    /// generator step.
    pub(super) fn gan_step(&mut self, batch_idx: &[usize]) -> Result<(f64, f64)> {
        let x = self.real_batch(batch_idx)?;
        let z = randn(
            self.opts.seed,
            self.state.global_step,
            (batch_idx.len(), self.model.config.latent_dim),
            self.model.device(),
        )?;
        let net = &self.model.net;
        let fake = match net {
            Net::Gan(gan) => gan.generator().forward_train(&z)?,
            Net::Style(style) => style.generate_from_z(&z)?,
            _ => return unreachable_net(),
        };
        let disc = match net {
            Net::Style(style) => style.discriminator()?,
            Net::Gan(gan) => gan.discriminator()?,
            _ => return unreachable_net(),
        };
        let d_real = disc.forward(&x)?;
        let d_fake = disc.forward(&fake.detach())?;
        let loss_d = (softplus(&d_real.neg()?)?.mean_all()? + softplus(&d_fake)?.mean_all()?)?;
        let grads_d = loss_d.backward()?;
        if let Some(opt) = self.opt_disc.as_mut() {
            opt.step(&grads_d)?;
        }
        // the generator's loss reaches it through a frozen discriminator: the discriminator's
        // weight gradients of this pass would be discarded, so they are not computed
        let loss_g = softplus(&disc.frozen().forward(&fake)?.neg()?)?.mean_all()?;
        let grads_g = loss_g.backward()?;
        self.opt_main.step(&grads_g)?;
        Ok((
            loss_g.to_scalar::<f32>()? as f64,
            loss_d.to_scalar::<f32>()? as f64,
        ))
    }

    /// Recoder: latent MSE on the generator's own samples (fresh ones every step); a style
    /// model's recoder targets `w = mapping(z)`, its Z view's `pixel_norm(z)`.
    /// With `image_loss` > 0, adds the image-space MSE of real images through recoder and
    /// generator (returned as the aux loss).
    pub(super) fn recoder_step(&mut self, batch_idx: &[usize]) -> Result<(f64, f64)> {
        let z = randn(
            self.opts.seed,
            self.state.global_step,
            (self.opts.batch_size, self.model.config.latent_dim),
            self.model.device(),
        )?;
        let (zr, target) = match &self.model.net {
            Net::Gan(m) => (m.recode(&m.generate_inference(&z)?)?, z),
            Net::Refdcgan(m) => (m.recode(&m.generate(&z)?.detach())?, z),
            Net::Style(m) => {
                let view = crate::model::style::StyleView::of(self.model.config.family)
                    .unwrap_or(crate::model::style::StyleView::W);
                let target = m.recoder_target(&z, view)?.detach();
                let x = m.generate_from_z(&z)?.detach();
                (m.recode(&x)?, target)
            }
            _ => return unreachable_net(),
        };
        let latent = (zr - &target)?.sqr()?.mean_all()?;
        let (loss, image) = if self.opts.image_loss > 0.0 {
            let x = self.real_batch(batch_idx)?;
            let xr = match &self.model.net {
                Net::Gan(m) => m.generate(&m.recode(&x)?)?,
                Net::Refdcgan(m) => m.generate(&m.recode(&x)?)?,
                Net::Style(m) => {
                    let view = crate::model::style::StyleView::of(self.model.config.family)
                        .unwrap_or(crate::model::style::StyleView::W);
                    m.decode(&m.recode(&x)?, view)?
                }
                _ => return unreachable_net(),
            };
            let image = (xr - &x)?.sqr()?.mean_all()?;
            let loss = (&latent + image.affine(self.opts.image_loss, 0.0)?)?;
            let value = image.to_scalar::<f32>()? as f64;
            (loss, value)
        } else {
            (latent.clone(), 0.0)
        };
        let grads = loss.backward()?;
        self.opt_main.step(&grads)?;
        Ok((latent.to_scalar::<f32>()? as f64, image))
    }

    /// Normalizing flow: mean NLL in bits/dim under fresh uniform dequantisation noise (its
    /// own ChaCha stream per step); the actnorms are data-initialised on the first batch and
    /// the learning rate warms up linearly over [`crate::model::flow::WARMUP_STEPS`] steps.
    pub(super) fn flow_step(&mut self, batch_idx: &[usize]) -> Result<(f64, f64)> {
        let x = self.real_batch(batch_idx)?;
        let step = self.state.global_step;
        let noise = crate::model::flow::dequant_noise(
            self.opts.seed ^ crate::model::flow::NOISE_SEED,
            step,
            x.dims4()?,
            self.model.device(),
        )?;
        let Net::Flow(flow) = &self.model.net else {
            return unreachable_net();
        };
        let init = (step == 0).then_some(&self.model.varmap);
        let (loss, prior) = flow.nll_bits_per_dim(&x, &noise, init)?;
        self.opt_main.params.lr = self.opts.lr * crate::model::flow::warmup_factor(step);
        let grads = loss.backward()?;
        self.opt_main.step(&grads)?;
        Ok((loss.to_scalar::<f32>()? as f64, prior))
    }
}
