//! Slider latency: time from a slider change to both images being updated, kept in a ring.

use std::collections::VecDeque;

/// The last [`Latency::CAPACITY`] drag-to-display latencies, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    samples_ms: VecDeque<f64>,
}

impl Latency {
    /// How many samples are kept.
    pub const CAPACITY: usize = 256;

    /// Records one latency.
    pub fn record(&mut self, ms: f64) {
        if self.samples_ms.len() == Self::CAPACITY {
            self.samples_ms.pop_front();
        }
        self.samples_ms.push_back(ms);
    }

    /// The recorded latencies, oldest first.
    pub fn samples_ms(&self) -> Vec<f64> {
        self.samples_ms.iter().copied().collect()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples_ms.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples_ms.is_empty()
    }

    /// The `q` quantile (0..=1, nearest rank), None when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.samples_ms.is_empty() {
            return None;
        }
        let mut v = self.samples_ms();
        v.sort_by(f64::total_cmp);
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    }

    /// The 95th percentile.
    pub fn p95_ms(&self) -> Option<f64> {
        self.quantile_ms(0.95)
    }
}
