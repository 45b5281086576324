//! A [`Progress`] sink that forwards to the app as [`Event::Progress`], at most every 50 ms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Event, Outbox, RequestId};
use crate::progress::Progress;

const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Forwards progress of request `req` to the app.
pub(crate) struct ChannelProgress<'a> {
    out: &'a Outbox,
    req: RequestId,
    phase: Mutex<String>,
    total: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl<'a> ChannelProgress<'a> {
    pub(crate) fn new(out: &'a Outbox, req: RequestId) -> Self {
        Self {
            out,
            req,
            phase: Mutex::new(String::new()),
            total: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Reports a phase by hand (steps that have no progress of their own).
    pub(crate) fn phase(&self, phase: &str) {
        self.start(phase, 0);
    }

    fn emit(&self, done: u64, force: bool) {
        let now = Instant::now();
        if let Ok(mut last) = self.last.lock() {
            if !force && last.is_some_and(|t| now.duration_since(t) < MIN_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let phase = self.phase.lock().map(|p| p.clone()).unwrap_or_default();
        let total = self.total.load(Ordering::Relaxed);
        self.out.send(Event::Progress {
            req: self.req,
            phase,
            done,
            total,
        });
    }
}

impl Progress for ChannelProgress<'_> {
    fn start(&self, phase: &str, total: u64) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
        self.total.store(total, Ordering::Relaxed);
        self.emit(0, true);
    }
    fn update(&self, done: u64, _message: &str) {
        self.emit(done, false);
    }
    fn finish(&self, _message: &str) {
        let total = self.total.load(Ordering::Relaxed);
        self.emit(total, true);
    }
}
