//! The one way model variables change in place, and a record of such changes per variable.
//!
//! The channels-last inference stacks (`conv/nhwc.rs`) keep their packed weights between
//! calls ([`super::conv::StackCache`]). Packing a generator's weights costs 2-5 ms (a fresh
//! 2 MB buffer for its first layer alone), as much as the whole batch-1 decode, so a cache
//! pays; but candle's `Var::set` rewrites a variable in place, keeping the tensor's id. Every
//! such write in this crate goes through [`assign`], which records a new version for that
//! tensor afterwards; a cache built at other versions of its weights is rebuilt. (`Var::set`
//! is banned elsewhere by `clippy.toml`.) Versions are per variable so that training one
//! network (a recoder: its Adam writes every step) leaves the packed weights of another (the
//! frozen generator feeding it) valid.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Tensor, TensorId, Var};

/// The last version written per variable, and the counter they are drawn from.
static VERSIONS: Mutex<(u64, Option<HashMap<TensorId, u64>>)> = Mutex::new((0, None));

/// The newest version among `ids` (0 for tensors never written by [`assign`]): it changes
/// whenever any of them is written.
pub fn version_of(ids: &[TensorId]) -> u64 {
    let held = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    held.1.as_ref().map_or(0, |m| {
        ids.iter()
            .filter_map(|id| m.get(id))
            .copied()
            .max()
            .unwrap_or(0)
    })
}

/// `var.set(value)`, then `var`'s version moves on. The record comes after the write: a
/// reader that packed the weights at the old version (even while they were being written)
/// finds its cache stale on the next call.
#[allow(clippy::disallowed_methods)]
pub fn assign(var: &Var, value: &Tensor) -> candle_core::Result<()> {
    let r = var.set(value);
    bump(var);
    r
}

/// A new version for `var`.
fn bump(var: &Var) {
    let mut held = VERSIONS.lock().unwrap_or_else(|e| e.into_inner());
    held.0 += 1;
    let v = held.0;
    held.1.get_or_insert_with(HashMap::new).insert(var.id(), v);
}

/// `var` rewritten in place by `op` (which reads `rhs`), then its version moves on, as
/// [`assign`].
pub fn update_in_place<C: candle_core::InplaceOp2>(
    var: &Var,
    rhs: &Tensor,
    op: &C,
) -> candle_core::Result<()> {
    let r = var.as_tensor().inplace_op2(rhs, op);
    bump(var);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A write moves the written variable's version and no other's, and every later write
    /// gives a newer one.
    #[test]
    fn versions_are_per_variable_and_grow() {
        let a = Var::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Var::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let (ia, ib) = (a.as_tensor().id(), b.as_tensor().id());
        assert_eq!(version_of(&[ia, ib]), 0, "never written");
        let one = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assign(&a, &one).unwrap();
        let va = version_of(&[ia]);
        assert!(va > 0);
        assert_eq!(version_of(&[ib]), 0, "b was not written");
        assert_eq!(version_of(&[ia, ib]), va);
        assign(&a, &one).unwrap();
        assert!(version_of(&[ia]) > va, "a second write, a newer version");
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0; 4]);
        // a failed write (wrong shape) still counts: the variable may have been touched
        let before = version_of(&[ib]);
        let wrong = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(assign(&b, &wrong).is_err());
        assert!(version_of(&[ib]) > before);
    }
}
