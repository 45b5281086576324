//! The candle port of the gan-face-generate 1.1.1 generator reproduces PyTorch's output
//! (tests/fixtures/refdcgan_reference.safetensors, made by tools/make_refdcgan_reference.py
//! with the package's own model code) within 1/255 on fixed latents.

use std::path::Path;

use candle_core::Device;
use latent_atlas::model::{load_model, Net};

#[test]
fn port_matches_pytorch_reference_within_one_grey_level() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = load_model(&root.join("assets/models/refdcgan"), &Device::Cpu)
        .expect("shipped refdcgan loads");
    let fixture = candle_core::safetensors::load(
        root.join("tests/fixtures/refdcgan_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (z, expected) = (&fixture["z"], &fixture["out"]);
    assert_eq!(z.dims(), &[8, 100]);
    let Net::Refdcgan(net) = &model.net else {
        panic!("refdcgan has the wrong family")
    };
    let ours = net.generate_tanh(z).unwrap();
    assert_eq!(ours.dims(), expected.dims());
    // compare on the [0, 1] image scale that the app uses: |Δ| / 2 ≤ 1/255
    let max_abs = (ours - expected)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / 2.0;
    assert!(
        max_abs <= 1.0 / 255.0,
        "max abs difference {max_abs} exceeds 1/255"
    );
    // and it is not trivially satisfied: outputs span the range
    let spread = expected
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        - expected
            .flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    assert!(spread > 1.5);
}
