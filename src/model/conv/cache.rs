//! [`StackCache`]: the packed weights of a model's channels-last inference stack
//! (`conv/nhwc.rs`), kept between calls.

/// The packed weights of one model's channels-last stack ([`super::conv_stack_leaky`],
/// [`super::deconv_stack_leaky`]) kept between calls: packing costs 2-5 ms for a generator (as much
/// as a whole batch-1 decode). An entry is reused while the weight tensors are the same ones
/// (by id), none of them has been written since ([`crate::model::weights::version_of`]) and the
/// per-channel vectors (biases, folded batch-norm scales and shifts, compared by value) are
/// equal; otherwise the stack is packed again. Clones share the cache (and the variables).
#[derive(Clone, Default)]
pub struct StackCache(std::sync::Arc<std::sync::Mutex<Option<CacheEntry>>>);

// only the x86-64 stacks fill it
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct CacheEntry {
    version: u64,
    key: Vec<candle_core::TensorId>,
    small: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    packed: std::sync::Arc<super::nhwc::Packed>,
}

impl std::fmt::Debug for StackCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.0.lock().map(|e| e.is_some()).unwrap_or(false);
        write!(f, "StackCache {{ held: {held} }}")
    }
}

impl StackCache {
    /// Whether a packed stack is held (for tests and diagnostics).
    pub fn is_held(&self) -> bool {
        self.0.lock().map(|e| e.is_some()).unwrap_or(false)
    }

    /// The entry for weights `key` and per-channel vectors `small`, packed by `pack` unless a
    /// current one is held (`pack` returning `None`: the stack does not apply, nothing kept).
    #[cfg(target_arch = "x86_64")]
    pub(in crate::model::conv) fn get_or_pack(
        &self,
        key: Vec<candle_core::TensorId>,
        small: Vec<f32>,
        pack: impl FnOnce() -> candle_core::Result<Option<super::nhwc::Packed>>,
    ) -> candle_core::Result<Option<std::sync::Arc<super::nhwc::Packed>>> {
        // read before packing: a write during the packing leaves the entry stale
        let version = crate::model::weights::version_of(&key);
        {
            let held = self
                .0
                .lock()
                .map_err(|_| candle_core::Error::Msg("stack cache lock poisoned".into()))?;
            if let Some(e) = held.as_ref() {
                let same = e.version == version
                    && e.key == key
                    && e.small.len() == small.len()
                    && e.small
                        .iter()
                        .zip(&small)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                if same {
                    return Ok(Some(e.packed.clone()));
                }
            }
        }
        let Some(packed) = pack()? else {
            return Ok(None);
        };
        let packed = std::sync::Arc::new(packed);
        if let Ok(mut held) = self.0.lock() {
            *held = Some(CacheEntry {
                version,
                key,
                small,
                packed: packed.clone(),
            });
        }
        Ok(Some(packed))
    }
}
