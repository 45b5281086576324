//! The channels-last stacks' per-thread activation buffers (`nhwc.rs`), kept between calls.

use super::pack::Layer;

/// A thread's activations: `bufs[l]` holds layer `l`'s input (zero border included) for a
/// group of images, the last one the stack's output `[n][Ho][Wo][C]`. Only interiors are
/// written, so the borders stay zero from the allocation on.
pub(super) struct Scratch {
    pub(super) bufs: Vec<Vec<f32>>,
}

impl Scratch {
    pub(super) fn new(layers: &[Layer], sides: &[(usize, usize)], n: usize) -> Self {
        let mut bufs: Vec<Vec<f32>> = layers
            .iter()
            .zip(sides)
            .map(|(l, (h, w))| {
                let p = l.geom.padding;
                vec![0f32; n * (h + 2 * p) * (w + 2 * p) * l.c_in]
            })
            .collect();
        let (ho, wo) = sides[sides.len() - 1];
        bufs.push(vec![0f32; n * ho * wo * layers[layers.len() - 1].c_out]);
        Self { bufs }
    }
}

/// Kept scratches per thread: each stack and group size, up to [`KEPT`] of them, so that a
/// generator's or decoder's inference does not zero-fill megabytes of fresh buffers every
/// call (2 % of a recoder training step, session 20). A scratch taken again has zero borders
/// still: nothing writes them.
const KEPT: usize = 4;

thread_local! {
    static KEPT_SCRATCH: std::cell::RefCell<Vec<(Vec<usize>, Scratch)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch taken from this thread's kept ones (or new), returned to them when dropped.
pub(super) struct Cached {
    key: Vec<usize>,
    sc: Option<Scratch>,
}

impl Cached {
    pub(super) fn take(layers: &[Layer], sides: &[(usize, usize)], n: usize) -> Self {
        // every buffer's geometry: a kept scratch with the same key has its borders where
        // this stack's are
        let mut key = vec![n];
        for (l, (h, w)) in layers.iter().zip(sides) {
            key.extend([l.c_in, l.c_out, *h, *w, l.geom.padding]);
        }
        key.extend(sides.last().map_or([0, 0], |&(h, w)| [h, w]));
        let kept = KEPT_SCRATCH.with(|k| {
            let mut k = k.borrow_mut();
            let at = k.iter().position(|(kk, _)| *kk == key)?;
            Some(k.remove(at).1)
        });
        let sc = kept.unwrap_or_else(|| Scratch::new(layers, sides, n));
        Self { key, sc: Some(sc) }
    }

    pub(super) fn get(&mut self) -> &mut Scratch {
        self.sc.as_mut().expect("taken until dropped")
    }
}

impl Drop for Cached {
    fn drop(&mut self) {
        // a stack that panicked may have left its borders written: not kept
        if std::thread::panicking() {
            return;
        }
        if let Some(sc) = self.sc.take() {
            let key = std::mem::take(&mut self.key);
            KEPT_SCRATCH.with(|k| {
                let mut k = k.borrow_mut();
                k.push((key, sc));
                if k.len() > KEPT {
                    k.remove(0);
                }
            });
        }
    }
}
