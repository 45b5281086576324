//! RGB results -> egui textures, updated in place, `NEAREST` so 64x64 faces stay crisp.

use std::collections::HashMap;

use egui::{ColorImage, TextureHandle, TextureOptions};

use super::session::{chw_to_rgb, Triptych};
use crate::data::{Dataset, IMAGE_SIZE};

/// Most thumbnails kept before the cache is emptied.
const MAX_THUMBS: usize = 600;

/// The textures the panels draw.
#[derive(Default)]
pub struct Textures {
    /// Original, source reconstruction, mapped reconstruction.
    pub triptych: [Option<TextureHandle>; 3],
    version: u64,
    thumbs: HashMap<usize, TextureHandle>,
    thumbs_dataset: String,
    frames: HashMap<String, (u64, TextureHandle)>,
}

/// An RGB 64x64 image as an egui image.
pub fn color_image(rgb: &[u8]) -> ColorImage {
    ColorImage::from_rgb([IMAGE_SIZE, IMAGE_SIZE], rgb)
}

impl Textures {
    /// Updates the triptych textures when its version changed.
    pub fn sync(&mut self, ctx: &egui::Context, t: &Triptych) {
        if t.version == self.version {
            return;
        }
        self.version = t.version;
        let images = [&t.original_rgb, &t.source_rgb, &t.mapped_rgb];
        for (k, (slot, img)) in self.triptych.iter_mut().zip(images).enumerate() {
            match (slot.as_mut(), img) {
                (_, None) => *slot = None,
                (Some(h), Some(rgb)) => h.set(color_image(rgb), TextureOptions::NEAREST),
                (None, Some(rgb)) => {
                    *slot = Some(ctx.load_texture(
                        format!("triptych-{k}"),
                        color_image(rgb),
                        TextureOptions::NEAREST,
                    ))
                }
            }
        }
    }

    /// A texture of the RGB 64x64 image `rgb` kept under `key`, replaced when `version`
    /// changes (traversal strips).
    pub fn frame(
        &mut self,
        ctx: &egui::Context,
        key: &str,
        version: u64,
        rgb: &[u8],
    ) -> TextureHandle {
        if let Some((v, h)) = self.frames.get_mut(key) {
            if *v != version {
                h.set(color_image(rgb), TextureOptions::NEAREST);
                *v = version;
            }
            return h.clone();
        }
        if self.frames.len() > MAX_THUMBS {
            self.frames.clear();
        }
        let h = ctx.load_texture(key, color_image(rgb), TextureOptions::NEAREST);
        self.frames.insert(key.to_string(), (version, h.clone()));
        h
    }

    /// A thumbnail of dataset sample `i`.
    pub fn thumb(&mut self, ctx: &egui::Context, ds: &Dataset, i: usize) -> Option<TextureHandle> {
        if self.thumbs_dataset != ds.id || self.thumbs.len() > MAX_THUMBS {
            self.thumbs.clear();
            self.thumbs_dataset.clone_from(&ds.id);
        }
        if let Some(h) = self.thumbs.get(&i) {
            return Some(h.clone());
        }
        let chw = ds.image_u8(i);
        if chw.is_empty() {
            return None;
        }
        let h = ctx.load_texture(
            format!("thumb-{i}"),
            color_image(&chw_to_rgb(&chw)),
            TextureOptions::NEAREST,
        );
        self.thumbs.insert(i, h.clone());
        Some(h)
    }
}
