//! Fixtures shared by the training tests.

use latent_atlas::data::{Dataset, SampleInfo, Split, IMAGE_LEN};

/// 48 images of a soft coloured disc whose position and colour vary with the index.
pub fn discs() -> Dataset {
    let n = 48;
    let mut pixels = Vec::with_capacity(n * IMAGE_LEN);
    for i in 0..n {
        let (cx, cy) = (16.0 + (i % 6) as f32 * 6.0, 16.0 + (i / 6) as f32 * 4.0);
        let colour = [
            (i * 37 % 255) as f32,
            (i * 91 % 255) as f32,
            (i * 13 % 255) as f32,
        ];
        for col in colour {
            for y in 0..64 {
                for x in 0..64 {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    let w = (-d2 / 120.0).exp();
                    pixels.push((w * col + (1.0 - w) * 40.0) as u8);
                }
            }
        }
    }
    Dataset {
        id: "test:discs".into(),
        sample_ids: (0..n).map(|i| format!("disc{i}")).collect(),
        splits: (0..n)
            .map(|i| {
                if i % 4 == 0 {
                    Split::Test
                } else {
                    Split::Train
                }
            })
            .collect(),
        pixels: pixels.into(),
        info: SampleInfo::default(),
        skipped: Vec::new(),
    }
}
