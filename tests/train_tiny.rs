//! Tiny training runs: the loss goes down, checkpoints resume exactly, cancel keeps a checkpoint.

mod common;
use candle_core::Device;
use common::discs;
use latent_atlas::model::train::{train, TrainKind, TrainOptions};
use latent_atlas::model::{load_model, store, LatentModel};
use latent_atlas::progress::{Cancel, NoProgress};

fn opts(kind: TrainKind, epochs: usize) -> TrainOptions {
    common::tiny_opts(kind, "tiny", epochs)
}

#[test]
fn vae_loss_goes_down_and_model_is_written() {
    let data = discs();
    let out = tempfile::tempdir().unwrap();
    let report = train(
        &opts(TrainKind::Vae, 6),
        &data,
        out.path(),
        &Device::Cpu,
        false,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    let h = &report.state.history;
    assert_eq!(h.len(), 6);
    assert!(
        h[5].loss < 0.7 * h[0].loss,
        "reconstruction MSE did not drop: {:?}",
        h.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
    // every epoch records its median step time
    for e in h {
        assert!(e.median_step_secs > 0.0 && e.median_step_secs.is_finite());
        assert!(e.images_per_sec > 0.0);
    }
    let model = load_model(out.path(), &Device::Cpu).unwrap();
    let q = model.config.quality.clone().expect("quality measured");
    assert_eq!(q.num_images, 12);
    assert!(q.r_mse > 0.0 && q.r_mse.is_finite());
    assert!(out.path().join("samples/samples_006.png").exists());
    assert!(out.path().join("samples/recon_006.png").exists());
    assert!(model.config.training.is_some());
}

#[test]
fn resume_continues_exactly_like_an_uninterrupted_run() {
    let data = discs();
    let full = tempfile::tempdir().unwrap();
    train(
        &opts(TrainKind::Svae, 2),
        &data,
        full.path(),
        &Device::Cpu,
        false,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    // stop after 5 steps (mid-epoch 2), then resume
    let split = tempfile::tempdir().unwrap();
    let mut first = opts(TrainKind::Svae, 2);
    first.max_steps = Some(5);
    common::train_quiet(&first, &data, split.path());
    train(
        &opts(TrainKind::Svae, 2),
        &data,
        split.path(),
        &Device::Cpu,
        true,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap();
    let a = store::read_tensors(&full.path().join(store::WEIGHTS_FILE), &Device::Cpu).unwrap();
    let b = store::read_tensors(&split.path().join(store::WEIGHTS_FILE), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (k, ta) in &a {
        let d = (ta - &b[k])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "tensor {k} differs by {d} after resume");
    }
}

#[test]
fn cancelled_run_keeps_a_checkpoint() {
    let data = discs();
    let out = tempfile::tempdir().unwrap();
    let cancel = Cancel::new();
    cancel.cancel();
    let report = train(
        &opts(TrainKind::Vae, 3),
        &data,
        out.path(),
        &Device::Cpu,
        false,
        &NoProgress,
        &cancel,
    )
    .unwrap();
    assert!(report.cancelled);
    assert!(out.path().join("checkpoint.json").exists());
}

#[test]
fn gan_and_recoder_train() {
    let data = discs();
    let gan_dir = tempfile::tempdir().unwrap();
    let mut o = opts(TrainKind::Gan, 1);
    o.lr = 2e-4;
    common::train_quiet(&o, &data, gan_dir.path());
    let gan = load_model(gan_dir.path(), &Device::Cpu).unwrap();
    assert!(!gan.config.recoder_trained);

    assert!(gan_dir.path().join("samples/samples_001.png").exists());

    // The recoder inverts a generator whose output varies with z (a 4-step GAN barely does):
    // a freshly initialised one, saved as a model directory.
    let mut cfg =
        latent_atlas::model::ModelConfig::new("fresh-gan", latent_atlas::model::Family::Gan, 8);
    cfg.base_channels = 8;
    let fresh = latent_atlas::model::Model::new(cfg, &Device::Cpu, 5, false).unwrap();
    // at initialisation the signal shrinks layer by layer; scale the generator's weights so
    // that, like a trained generator, its output depends strongly on z
    for (name, var) in fresh.varmap.data().lock().unwrap().iter() {
        if name.starts_with("gen.") && var.dims().len() > 1 {
            latent_atlas::model::weights::assign(var, &(var.as_tensor() * 2.2).unwrap()).unwrap();
        }
    }
    let fresh_dir = tempfile::tempdir().unwrap();
    latent_atlas::model::save_model(&fresh, fresh_dir.path(), false).unwrap();

    let rec_dir = tempfile::tempdir().unwrap();
    let mut r = opts(TrainKind::Recoder, 4);
    r.generator = Some(fresh_dir.path().to_path_buf());
    r.steps_per_epoch = Some(25);
    let report = common::train_quiet(&r, &data, rec_dir.path());
    let h = &report.state.history;
    assert!(
        h[3].loss < 0.8 * h[0].loss,
        "recoder latent MSE did not drop: {h:?}"
    );
    let model = load_model(rec_dir.path(), &Device::Cpu).unwrap();
    assert!(model.config.recoder_trained);
    assert!(model
        .config
        .training
        .as_ref()
        .unwrap()
        .get("recoder")
        .is_some());
    let x = data.batch(&[0, 1], &Device::Cpu).unwrap();
    assert_eq!(model.encode(&x).unwrap().dims(), &[2, 8]);

    // fine-tuning that recoder with the image-space term on real images: the image MSE
    // through recoder and generator (the aux loss) goes down from where the recoder started
    let ft_dir = tempfile::tempdir().unwrap();
    let mut f = opts(TrainKind::Recoder, 3);
    f.generator = Some(rec_dir.path().to_path_buf());
    f.steps_per_epoch = Some(12);
    f.keep_recoder = true;
    f.image_loss = 20.0;
    let ft = common::train_quiet(&f, &data, ft_dir.path());
    let h = &ft.state.history;
    assert!(
        h.iter().all(|e| e.aux > 0.0),
        "no image MSE reported: {h:?}"
    );
    assert!(
        h[2].aux < h[0].aux,
        "image MSE did not drop while fine-tuning: {h:?}"
    );

    // keeping a recoder the generator does not have is an error naming the directory
    let mut bad = opts(TrainKind::Recoder, 1);
    bad.generator = Some(fresh_dir.path().to_path_buf());
    bad.keep_recoder = true;
    let err = train(
        &bad,
        &data,
        tempfile::tempdir().unwrap().path(),
        &Device::Cpu,
        false,
        &NoProgress,
        &Cancel::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no trained recoder") && err.contains(&fresh_dir.path().display().to_string()),
        "{err}"
    );
}
