//! The one way model variables change in place, and a counter of such changes.
//!
//! The channels-last inference stacks (`conv/nhwc.rs`) keep their packed weights between
//! calls ([`super::conv::StackCache`]). Packing a generator's weights costs 2-5 ms (a fresh
//! 2 MB buffer for its first layer alone), as much as the whole batch-1 decode, so a cache
//! pays; but candle's `Var::set` rewrites a variable in place, keeping the tensor's id. Every
//! such write in this crate goes through [`assign`], which bumps [`version`] afterwards; a
//! cache built at another version is rebuilt. (`Var::set` is banned elsewhere by
//! `clippy.toml`.)

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Tensor, Var};

static VERSION: AtomicU64 = AtomicU64::new(0);

/// How many in-place writes of model variables ([`assign`]) this process has made.
pub fn version() -> u64 {
    VERSION.load(Ordering::Acquire)
}

/// `var.set(value)`, then [`version`] moves on. The bump comes after the write: a reader
/// that packed the weights at the old version (even while they were being written) finds
/// its cache stale on the next call.
#[allow(clippy::disallowed_methods)]
pub fn assign(var: &Var, value: &Tensor) -> candle_core::Result<()> {
    let r = var.set(value);
    VERSION.fetch_add(1, Ordering::AcqRel);
    r
}
