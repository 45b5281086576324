//! The optimisation step of each training kind: γ-balanced VAE, non-saturating GAN (DCGAN or
//! style generator), recoders (latent MSE, optional image-space term) and normalizing flows.

use super::{randn, softplus, unreachable_net, Run};
use crate::model::gan::Discriminator;
use crate::model::{LatentModel, Net, Result};
use candle_core::backprop::GradStore;
use candle_core::Tensor;

impl Run<'_> {
    /// γ-balanced VAE loss: Σ(x − x̂)² / (2γ²) + KL, γ² the running reconstruction MSE.
    ///
    /// On the CPU the batch is split in two halves, one per thread (see [`batch_halves`]):
    /// every term is per image (no batch norm in the VAEs), so the halves' sums divided by the
    /// whole batch's size add up to the batch's loss, and their gradient stores to its
    /// gradients. Forward first (both halves), then γ² from the whole batch's MSE, then the
    /// backward of both halves.
    pub(super) fn vae_step(&mut self, batch_idx: &[usize]) -> Result<(f64, f64)> {
        let x = self.real_batch(batch_idx)?;
        let n = batch_idx.len();
        let eps = randn(
            self.opts.seed,
            self.state.global_step,
            (n, self.model.config.latent_dim),
            self.model.device(),
        )?;
        let parts = batch_halves(n, self.model.device().is_cpu());
        let net = &self.model.net;
        let terms = in_parallel(&parts, true, &|&rows| vae_terms(net, &x, &eps, rows))?;
        let (mut rec, mut kl) = (0f64, 0f64);
        for (r, k) in &terms {
            rec += r.to_scalar::<f32>()? as f64;
            kl += k.to_scalar::<f32>()? as f64;
        }
        let pixels = (x.elem_count() / n) as f64;
        let mse = rec / pixels;
        let g = &mut self.state.gamma_sq;
        *g = if *g <= 0.0 {
            mse
        } else {
            0.99 * *g + 0.01 * mse
        };
        *g = g.max(1e-4);
        let gamma_sq = *g;
        let grads = vae_grads(&terms, gamma_sq, pixels)?;
        self.opt_main.step(&grads)?;
        Ok((mse, kl))
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
        if let Net::Gan(m) = &self.model.net {
            let x = match self.opts.image_loss > 0.0 {
                true => Some(self.real_batch(batch_idx)?),
                false => None,
            };
            let parallel = self.model.device().is_cpu();
            let (latent, image, grads) =
                gan_recoder_grads(m, &z, x.as_ref(), self.opts.image_loss, parallel)?;
            self.opt_main.step(&grads)?;
            return Ok((latent, image));
        }
        let (zr, target) = match &self.model.net {
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
    let branches = [(real, true), (fake, false)];
    let results = in_parallel(&branches, parallel, &|&(input, is_real)| {
        branch(input, is_real)
    })?;
    let (losses, stores): (Vec<Tensor>, Vec<GradStore>) = results.into_iter().unzip();
    Ok(((&losses[0] + &losses[1])?, sum_grads(stores)?))
}

/// The VAE terms of rows `[r0, r1)` of the batch `x` (noise `eps`): `(Σ (x − x̂)², Σ KL
/// terms / 2)`, each divided by the whole batch's size, so that the parts' terms add up to the
/// batch's.
pub(crate) fn vae_terms(
    net: &Net,
    x: &Tensor,
    eps: &Tensor,
    (r0, r1): (usize, usize),
) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)? as f64;
    let (xh, eh) = (x.narrow(0, r0, r1 - r0)?, eps.narrow(0, r0, r1 - r0)?);
    let (mu, logvar) = match net {
        Net::Vae(m) => m.encode(&xh)?,
        Net::Svae(m) => m.encode(&xh)?,
        _ => return unreachable_net(),
    };
    let z = (&mu + ((&logvar * 0.5)?.exp()? * eh)?)?;
    let xr = match net {
        Net::Vae(m) => m.decode(&z)?,
        Net::Svae(m) => m.decode(&z)?,
        _ => return unreachable_net(),
    };
    let rec = ((xr - &xh)?.sqr()?.sum_all()? / n)?;
    let kl = (((mu.sqr()? + logvar.exp()?)? - 1.0)? - &logvar)?
        .sum_all()?
        .affine(0.5 / n, 0.0)?;
    Ok((rec, kl))
}

/// The gradients of the γ-balanced loss `(rec / (2γ²) + kl) / pixels` summed over the parts'
/// [`vae_terms`], each part's backward on its own thread where there are two.
pub(crate) fn vae_grads(
    terms: &[(Tensor, Tensor)],
    gamma_sq: f64,
    pixels: f64,
) -> Result<GradStore> {
    let backward = |(rec, kl): &(Tensor, Tensor)| -> Result<GradStore> {
        let loss = (rec.affine(1.0 / (2.0 * gamma_sq), 0.0)? + kl)?.affine(1.0 / pixels, 0.0)?;
        Ok(loss.backward()?)
    };
    sum_grads(in_parallel(terms, true, &backward)?)
}

/// The row ranges a training step's batch of `n` is computed in: two halves (one per
/// thread) where `parallel` and `n ≥ 2`, else the whole batch. Kernels at batch 32 on one
/// thread each waste less than kernels at batch 64 split across two threads, which meet at
/// the end of each of the few hundred kernels of a step. In-process A/B (batch 64, best of 4
/// rounds, every round ahead): VAE step 185.5 → 177.1 ms, Split-VAE 273.0 → 265.8, recoder
/// 102.3 → 93.9 (104.6 → 91.9 in another run).
pub(crate) fn batch_halves(n: usize, parallel: bool) -> Vec<(usize, usize)> {
    if parallel && n >= 2 {
        vec![(0, n / 2), (n / 2, n)]
    } else {
        vec![(0, n)]
    }
}

/// `f` of every item: two items on two threads (`rayon::join`) where `parallel`, otherwise
/// in turn.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    parallel: bool,
    f: &(impl Fn(&T) -> Result<R> + Sync),
) -> Result<Vec<R>> {
    match items {
        [a, b] if parallel => {
            let (ra, rb) = rayon::join(|| f(a), || f(b));
            Ok(vec![ra?, rb?])
        }
        _ => items.iter().map(f).collect(),
    }
}

/// The sum of gradient stores (a weight's gradient from each; other entries kept).
fn sum_grads(stores: Vec<GradStore>) -> Result<GradStore> {
    let mut it = stores.into_iter();
    let mut sum = it.next().ok_or_else(|| {
        crate::model::ModelError::BadInput("internal: no gradients to sum".into())
    })?;
    for g in it {
        sum.extend(g)?;
    }
    Ok(sum)
}

/// The DCGAN recoder's losses (latent MSE on the generator's samples of `z`, and with
/// `image_loss` > 0 the image MSE of the real batch `x` through recoder and generator, both
/// means over the whole batch) and their gradients, the batch split in two halves computed on
/// one thread each where `parallel` ([`batch_halves`]). Every term is per image (the
/// generator runs on its running statistics, the recoder has no batch norm), so each half's
/// mean, weighted by its share of the batch, and the sum of the halves' gradient stores give
/// the whole batch's loss and gradients.
/// Returns `(latent MSE, image MSE, gradients)`.
pub(crate) fn gan_recoder_grads(
    m: &crate::model::gan::Gan,
    z: &Tensor,
    x: Option<&Tensor>,
    image_loss: f64,
    parallel: bool,
) -> Result<(f64, f64, GradStore)> {
    let (nz, nx) = (z.dim(0)?, x.map_or(Ok(0), |x| x.dim(0))?);
    // (latent share, image share, gradients) of rows [z0, z1) of z and [x0, x1) of x
    let part = |(z0, z1): (usize, usize), (x0, x1): (usize, usize)| -> Result<_> {
        let zh = z.narrow(0, z0, z1 - z0)?;
        let zr = m.recode(&m.generate_inference(&zh)?)?;
        let latent = (zr - &zh)?
            .sqr()?
            .mean_all()?
            .affine((z1 - z0) as f64 / nz as f64, 0.0)?;
        let image = match x {
            Some(x) if x1 > x0 => {
                let xh = x.narrow(0, x0, x1 - x0)?;
                let xr = m.generate(&m.recode(&xh)?)?;
                Some(
                    (xr - &xh)?
                        .sqr()?
                        .mean_all()?
                        .affine((x1 - x0) as f64 / nx as f64, 0.0)?,
                )
            }
            _ => None,
        };
        let loss = match &image {
            Some(im) => (&latent + im.affine(image_loss, 0.0)?)?,
            None => latent.clone(),
        };
        let grads = loss.backward()?;
        Ok((latent, image, grads))
    };
    let parts: Vec<_> = match (batch_halves(nz, parallel).as_slice(), nx) {
        ([(_, hz), _], nx) => vec![((0, *hz), (0, nx / 2)), ((*hz, nz), (nx / 2, nx))],
        _ => vec![((0, nz), (0, nx))],
    };
    let (mut latent, mut image, mut stores) = (0f64, 0f64, Vec::new());
    for (l, i, g) in in_parallel(&parts, true, &|&(zr, xr)| part(zr, xr))? {
        latent += l.to_scalar::<f32>()? as f64;
        if let Some(i) = i {
            image += i.to_scalar::<f32>()? as f64;
        }
        stores.push(g);
    }
    Ok((latent, image, sum_grads(stores)?))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::{batch_halves, discriminator_grads, gan_recoder_grads, softplus};
    use super::{vae_grads, vae_terms};
    use crate::model::gan::Discriminator;
    use crate::model::{Family, Model, ModelConfig, Net};
    use candle_core::backprop::GradStore;

    /// Every variable's gradient in `got` equals the one in `want` to `tol` of its largest
    /// magnitude plus `tol` of the largest of all (a nearly cancelling sum, such as a bias
    /// gradient 500 times smaller than the weights', keeps the rounding of its larger terms:
    /// 1.4e-7 against a largest gradient of 0.013 was seen), both absent where the variable
    /// is outside the graph; returns how many were compared.
    fn same_grads(vm: &VarMap, got: &GradStore, want: &GradStore, tol: f32) -> usize {
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let pairs: Vec<_> = vm
            .all_vars()
            .into_iter()
            .filter_map(|v| match (got.get(&v), want.get(&v)) {
                (Some(g), Some(w)) => Some((v.shape().clone(), g.clone(), w.clone())),
                (g, w) => {
                    assert!(g.is_none() && w.is_none(), "a gradient on one side only");
                    None
                }
            })
            .collect();
        let global = pairs
            .iter()
            .map(|(_, _, w)| max_abs(w))
            .fold(0f32, f32::max);
        for (shape, g, w) in &pairs {
            let (d, scale) = (max_abs(&(g - w).unwrap()), max_abs(w));
            assert!(
                d <= tol * (scale + global),
                "gradient of {shape:?} off by {d} (max {scale}, largest of all {global})"
            );
        }
        pairs.len()
    }

    #[test]
    fn halves_cover_the_batch() {
        assert_eq!(batch_halves(64, true), vec![(0, 32), (32, 64)]);
        assert_eq!(batch_halves(5, true), vec![(0, 2), (2, 5)]);
        assert_eq!(batch_halves(1, true), vec![(0, 1)]);
        assert_eq!(batch_halves(64, false), vec![(0, 64)]);
    }

    /// The VAE and Split-VAE losses computed in two halves (each term divided by the whole
    /// batch's size) give the whole batch's loss terms and gradients.
    #[test]
    fn vae_halves_give_the_whole_batch_gradients() {
        let dev = Device::Cpu;
        for family in [Family::Vae, Family::Svae] {
            let d = 16;
            let model = Model::new(ModelConfig::new("v", family, d), &dev, 3, false).unwrap();
            let x = Tensor::rand(0f32, 1.0, (5, 3, 64, 64), &dev).unwrap();
            let eps = Tensor::randn(0f32, 1.0, (5, d), &dev).unwrap();
            let run = |parallel: bool| {
                let parts = batch_halves(5, parallel);
                let terms: Vec<_> = parts
                    .iter()
                    .map(|&rows| vae_terms(&model.net, &x, &eps, rows).unwrap())
                    .collect();
                let total = |i: usize| -> f64 {
                    terms
                        .iter()
                        .map(|t| [&t.0, &t.1][i].to_scalar::<f32>().unwrap() as f64)
                        .sum()
                };
                let (rec, kl) = (total(0), total(1));
                (rec, kl, vae_grads(&terms, 0.01, 3.0 * 64.0 * 64.0).unwrap())
            };
            let (rec1, kl1, whole) = run(false);
            let (rec2, kl2, halves) = run(true);
            assert!((rec1 - rec2).abs() <= 1e-5 * rec1.abs(), "{rec1} vs {rec2}");
            assert!(
                (kl1 - kl2).abs() <= 1e-5 * kl1.abs().max(1e-6),
                "{kl1} vs {kl2}"
            );
            let n = same_grads(&model.varmap, &halves, &whole, 1e-4);
            assert!(n >= 18, "{family:?}: {n} gradients compared");
        }
    }

    /// The DCGAN recoder's losses (latent and image terms) in two halves on two threads give
    /// the whole batch's values and gradients.
    #[test]
    fn recoder_halves_give_the_whole_batch_gradients() {
        let dev = Device::Cpu;
        let model = Model::new(ModelConfig::new("g", Family::Gan, 8), &dev, 5, false).unwrap();
        let Net::Gan(m) = &model.net else {
            panic!("not a GAN")
        };
        let z = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let x = Tensor::rand(0f32, 1.0, (3, 3, 64, 64), &dev).unwrap();
        let (l1, i1, whole) = gan_recoder_grads(m, &z, Some(&x), 0.5, false).unwrap();
        let (l2, i2, halves) = gan_recoder_grads(m, &z, Some(&x), 0.5, true).unwrap();
        assert!((l1 - l2).abs() <= 1e-5 * l1.abs(), "latent {l1} vs {l2}");
        assert!(
            i1 > 0.0 && (i1 - i2).abs() <= 1e-5 * i1,
            "image {i1} vs {i2}"
        );
        let n = same_grads(&model.varmap, &halves, &whole, 1e-4);
        assert!(n >= 8, "{n} gradients compared");
    }

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
            let compared = same_grads(&vm, &got, &want, 1e-5);
            assert!(compared >= 12, "{compared} gradients compared");
        }
    }
}
