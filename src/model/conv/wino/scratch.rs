//! Per-thread scratch buffers of the Winograd kernels (`wino.rs`, `wino3.rs`), kept between
//! calls.

use super::{lead, point_stride};

/// Per-thread buffers: transformed inputs, products, one padded plane (or, for
/// `wino3.rs`, the even / odd split of one).
#[derive(Default)]
pub(in crate::model::conv) struct Scratch {
    pub(in crate::model::conv) v: Vec<f32>,
    pub(in crate::model::conv) m: Vec<f32>,
    pub(in crate::model::conv) planes: [Vec<f32>; 2],
}

impl Scratch {
    /// Grows the buffers for `points` transform points, `k` input and `n` output channels and
    /// `tg` tiles: `v` for the transformed inputs, `m` for the products or the transformed
    /// output gradient (only growth fills with zeros).
    fn fit(&mut self, points: usize, k: usize, n: usize, tg: usize) {
        let v = points * point_stride(k, lead(tg));
        let m = points * point_stride(n, lead(tg)).max(point_stride(tg, lead(n)));
        for (buf, len) in [(&mut self.v, v), (&mut self.m, m)] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
    }
}

thread_local! {
    /// Each thread's buffers, kept between calls: a fresh 2-4 MB buffer per layer and step
    /// is a zero fill (and page faults where glibc returns it to the system).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `f` with this thread's scratch grown to `points`, `k`, `n`, `tg` (a fresh one if it is in
/// use).
pub(in crate::model::conv) fn with_scratch<R>(
    (points, k, n, tg): (usize, usize, usize, usize),
    f: impl FnOnce(&mut Scratch) -> R,
) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            s.fit(points, k, n, tg);
            f(&mut s)
        }
        Err(_) => {
            let mut s = Scratch::default();
            s.fit(points, k, n, tg);
            f(&mut s)
        }
    })
}
