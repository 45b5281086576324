//! Choosing the candle device: CPU by default, CUDA when built with the `cuda` feature.

use candle_core::Device;

use super::{ModelError, Result};

/// Parses `cpu`, `cuda` or `cuda:N` into a device. CUDA needs the `cuda` feature and a GPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s.strip_prefix("cuda:").map(str::parse::<usize>).transpose();
            let ordinal = ordinal
                .map_err(|e| ModelError::BadInput(format!("bad device `{s}`: {e}")))?
                .unwrap_or(0);
            if !cfg!(feature = "cuda") {
                return Err(ModelError::BadInput(format!(
                    "device `{s}` needs a build with `--features cuda`; this binary is CPU-only"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                ModelError::BadInput(format!("cannot open CUDA device {ordinal}: {e}"))
            })
        }
        s => Err(ModelError::BadInput(format!(
            "unknown device `{s}` (use cpu, cuda or cuda:N)"
        ))),
    }
}

/// A short label for the device: `CPU` or `CUDA:N`.
pub fn device_label(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "CPU".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("CUDA:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("Metal:{gpu_id}"),
    }
}

/// Keeps freed tensor buffers in the process heap instead of returning them to the kernel
/// (glibc). Every CPU op allocates its output afresh; by default glibc serves large buffers
/// with `mmap` and trims freed memory, so each training step page-faulted and zeroed its
/// activations again (about a third of a VAE layer's forward + backward time, perf). The heap
/// then stays at its high-water mark. Call once at start-up, before other threads run.
///
/// Returns the `mmap` threshold set: 1 GiB, or 32 MiB where glibc refuses thresholds above
/// half its arena size (as some versions do); `None` off glibc or if both are refused. The
/// trim threshold is raised only once an `mmap` threshold is in place: setting it alone also
/// switches off glibc's adaptive `mmap` threshold, leaving every buffer of 128 KiB or more
/// on fresh pages (a GAN step harness with `GLIBC_TUNABLES` setting only the trim threshold:
/// 1,056,107 page faults in 8 steps against 68,523 with both, 91 against 138-157 img/s).
///
/// All threads then allocate from the one main arena: a thread other than the first gets an
/// arena of its own, made of 64 MiB heaps that glibc unmaps whenever one falls empty, whatever
/// the trim threshold, so a training loop run on a pool thread ([`on_compute_pool`])
/// page-faulted its activations again (GAN generator step's backward 74 → 87 ms, page-fault
/// samples 58 → 302 in perf). Tensors are allocated a few hundred times per step, so the
/// shared arena's lock costs nothing measurable.
pub fn keep_freed_memory() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads allocate.
    unsafe {
        let threshold = [1usize << 30, 32 << 20]
            .into_iter()
            .find(|&t| libc::mallopt(libc::M_MMAP_THRESHOLD, t as libc::c_int) == 1)?;
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        Some(threshold)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Fixes the CPU thread count for the whole process: sets `RAYON_NUM_THREADS` to candle's
/// default (the CPUs this process may use) unless the user set it. candle asks for its
/// thread count on every matmul and re-reads the CPU mask from `/proc` and `/sys` each time
/// unless that variable is set: a tenth of a batch-1 decode went to formatting `/proc` files
/// (perf).
///
/// Also shortens the spin of candle's own worker pool (`CANDLE_BARRIER_POOL_SPIN_LIMIT`,
/// unless the user set it). candle runs large elementwise ops (the gradient sums of autograd)
/// on a pool whose worker busy-waits 25,000 pause instructions after each op, about half a
/// millisecond. Our convolutions run on rayon's threads right after, so on two cores that
/// spinning worker took a share of a core from them: 4-6 % of a GAN step's samples were the
/// spin (perf), and the step ran 3-10 % slower in paired runs.
///
/// Returns the count. Call once at start-up, before other threads run.
pub fn pin_thread_count() -> usize {
    let n = candle_core::utils::get_num_threads();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", BARRIER_SPIN.to_string());
    }
    n
}

/// Runs `f` on a thread of a dedicated pool of the process's thread count (built on first
/// use, kept), so that the parallel kernels `f` calls start from a pool thread: each splits
/// its work in place and wakes one other thread, where a call from outside a pool queues the
/// job, wakes the pool's threads and sleeps until they are done (two wake-ups per kernel, a
/// few hundred kernels per training step). Discriminator backward, batch 64, alternating
/// processes: 72.7-80.5 → 71.5-77.5 ms. Runs `f` here if the pool cannot be built.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .thread_name(|i| format!("compute-{i}"))
            .build()
            .ok()
    });
    match pool {
        // already on it (nested training calls): run here
        Some(p) if p.current_thread_index().is_none() => p.install(f),
        _ => f(),
    }
}

/// Spin iterations of candle's pool workers before they park (candle's default: 25,000).
const BARRIER_SPIN: u32 = 100;

#[cfg(test)]
mod tests {
    /// `f` runs on a pool thread and its result comes back; a nested call runs in place (on
    /// the same thread, no deadlock).
    #[test]
    fn compute_pool_runs_work_on_its_threads() {
        let outer = std::thread::current().id();
        let (name, id, inner_same, sum) = super::on_compute_pool(|| {
            let me = std::thread::current();
            let nested = super::on_compute_pool(|| std::thread::current().id());
            let sum: u64 = {
                use rayon::prelude::*;
                (0..1000u64).into_par_iter().sum()
            };
            (
                me.name().map(str::to_string),
                me.id(),
                nested == me.id(),
                sum,
            )
        });
        assert_ne!(id, outer, "ran on the calling thread");
        assert!(name.is_some_and(|n| n.starts_with("compute-")));
        assert!(inner_same, "the nested call moved threads");
        assert_eq!(sum, 499_500);
    }

    /// On glibc an `mmap` threshold is accepted (1 GiB, else the 32 MiB fallback), so the
    /// trim threshold is raised alongside it, never alone.
    #[test]
    fn keeps_freed_memory_on_glibc() {
        let got = super::keep_freed_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                matches!(got, Some(t) if t == 1 << 30 || t == 32 << 20),
                "{got:?}"
            );
        } else {
            assert_eq!(got, None);
        }
    }
}
