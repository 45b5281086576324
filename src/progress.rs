//! A progress sink shared by the engine's long operations: the CLI draws a terminal bar, the
//! explorer forwards events to its window, tests pass [`NoProgress`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Receives progress of a long operation. Implementations must be cheap to call per step.
pub trait Progress: Send + Sync {
    /// Starts a phase with `total` units of work (0 when unknown).
    fn start(&self, phase: &str, total: u64);
    /// `done` units finished so far, with a short status message (loss, speed...).
    fn update(&self, done: u64, message: &str);
    /// The phase ended.
    fn finish(&self, message: &str);
}

/// Ignores all progress.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn update(&self, _: u64, _: &str) {}
    fn finish(&self, _: &str) {}
}

/// A shared cancel flag: set it (e.g. on Ctrl-C) and long operations stop at the next step,
/// keeping what they have saved.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the operation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
