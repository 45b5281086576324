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
