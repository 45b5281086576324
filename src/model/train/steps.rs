//! The optimisation step of each training kind: γ-balanced VAE, non-saturating GAN (DCGAN or
//! style generator), recoders (latent MSE, optional image-space term) and normalizing flows.

use super::{randn, softplus, unreachable_net, Run};
use crate::model::gan::Discriminator;
use crate::model::{LatentModel, Net, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;

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
        let parallel = self.model.device().is_cpu();
        let (loss_d, grads_d) = discriminator_grads(disc, &x, &fake.detach(), parallel)?;
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

/// The discriminator's loss `softplus(−D(real)) + softplus(D(fake))` (batch means) and its
/// gradients. The real and the generated batch are independent graphs (each normalised by its
/// own batch statistics; their losses only add up), so with `parallel` each runs on its own
/// thread and the two gradient stores are summed after: the same sums candle's backward of the
/// summed loss forms (one contribution per branch to each weight). Each kernel then works on
/// data its thread produced and neither thread waits at the end of every small kernel:
/// discriminator forward + backward after the generator's forward, batch 64, 130-168 → 108-138
/// ms (example harness); the GAN step 346 → 320 ms (in-process A/B, best of 4 rounds, all four
/// rounds ahead).
pub(crate) fn discriminator_grads(
    disc: &Discriminator,
    real: &Tensor,
    fake: &Tensor,
    parallel: bool,
) -> Result<(Tensor, GradStore)> {
    let branch = |input: &Tensor, is_real: bool| -> Result<(Tensor, GradStore)> {
        let logits = disc.forward(input)?;
        let logits = if is_real { logits.neg()? } else { logits };
        let loss = softplus(&logits)?.mean_all()?;
        let grads = loss.backward()?;
        Ok((loss, grads))
    };
    let (r, f) = if parallel {
        rayon::join(|| branch(real, true), || branch(fake, false))
    } else {
        (branch(real, true), branch(fake, false))
    };
    let ((loss_real, grads_real), (loss_fake, mut grads)) = (r?, f?);
    grads.extend(grads_real)?;
    Ok(((loss_real + loss_fake)?, grads))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::{discriminator_grads, softplus};
    use crate::model::gan::Discriminator;

    /// The two branches on two threads give the discriminator the gradients (and loss) of one
    /// backward pass over the summed loss, the way the step computed them before.
    #[test]
    fn parallel_discriminator_grads_match_one_backward() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let disc = Discriminator::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 16).unwrap();
        let real = Tensor::rand(0f32, 1.0, (6, 3, 64, 64), &dev).unwrap();
        let fake = Tensor::rand(0f32, 1.0, (6, 3, 64, 64), &dev).unwrap();
        let loss = (softplus(&disc.forward(&real).unwrap().neg().unwrap())
            .unwrap()
            .mean_all()
            .unwrap()
            + softplus(&disc.forward(&fake).unwrap())
                .unwrap()
                .mean_all()
                .unwrap())
        .unwrap();
        let want = loss.backward().unwrap();
        for parallel in [true, false] {
            let (l, got) = discriminator_grads(&disc, &real, &fake, parallel).unwrap();
            let (a, b) = (
                l.to_scalar::<f32>().unwrap(),
                loss.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() <= 1e-6 * b.abs(), "loss {a} vs {b}");
            let mut compared = 0;
            for v in &vm.all_vars() {
                // the biases of convolutions followed by a batch norm are not in the graph
                let (Some(g), Some(w)) = (got.get(v), want.get(v)) else {
                    assert!(got.get(v).is_none() && want.get(v).is_none());
                    continue;
                };
                compared += 1;
                let d = (g - w).unwrap().abs().unwrap().max_all().unwrap();
                let scale = w.abs().unwrap().max_all().unwrap();
                let (d, scale) = (
                    d.to_scalar::<f32>().unwrap(),
                    scale.to_scalar::<f32>().unwrap(),
                );
                assert!(
                    d <= 1e-5 * scale.max(1e-12),
                    "gradient of {:?} off by {d} (max {scale})",
                    v.shape()
                );
            }
            // 4 conv weights, c0's bias, 3 norms' γ and β, the head's weight and bias
            assert!(compared >= 12, "{compared} gradients compared");
        }
    }
}
