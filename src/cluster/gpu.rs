//! GPU telemetry behind a small trait: NVML in production ([`NvmlProbe`]), a fixed list
//! of GPUs in tests and demos ([`FakeProbe`], selected by `AGENTPLANE_FAKE_GPUS`).
//!
//! Without a driver (no `libnvidia-ml.so.1`) NVML fails to initialize; the probe then
//! reports zero GPUs, logs the reason once, and the node runs normally.

use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// One GPU as read at one heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuReading {
    /// Index on the node (NVML order).
    pub index: u32,
    /// Stable UUID (`GPU-…`).
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Installed memory, MiB.
    pub memory_total_mb: u64,
    /// Memory in use (by anything on the GPU), MiB.
    pub memory_used_mb: u64,
    /// Memory free, MiB.
    pub memory_free_mb: u64,
    /// Kernel utilization over the last sample period, percent.
    pub utilization_percent: u32,
    /// Die temperature, °C.
    pub temperature_c: u32,
    /// Board power draw, watts.
    pub power_draw_w: f64,
    /// Whether MIG mode is on (`None` when the GPU does not support MIG).
    pub mig_enabled: Option<bool>,
}

/// Reads the GPUs of this machine.
pub trait GpuProbe: Send + Sync {
    /// Current readings; an empty list when there are no GPUs (or no driver).
    fn read(&self) -> Vec<GpuReading>;
    /// One line describing the source (for `gpu-info` and logs).
    fn describe(&self) -> String;
}

/// NVML through nvml-wrapper. The library is loaded once; if that fails the reason is
/// kept and logged once, and every read returns no GPUs.
pub struct NvmlProbe {
    nvml: OnceLock<Result<nvml_wrapper::Nvml, String>>,
    warned: Mutex<bool>,
}

impl Default for NvmlProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl NvmlProbe {
    /// A probe that initializes NVML on first use.
    pub fn new() -> Self {
        Self {
            nvml: OnceLock::new(),
            warned: Mutex::new(false),
        }
    }

    fn nvml(&self) -> Result<&nvml_wrapper::Nvml, &str> {
        self.nvml
            .get_or_init(|| nvml_wrapper::Nvml::init().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Why NVML is unavailable, if it is.
    pub fn unavailable_reason(&self) -> Option<String> {
        self.nvml().err().map(str::to_owned)
    }

    /// Driver and NVML versions, when NVML is available.
    pub fn versions(&self) -> Option<(String, String)> {
        let n = self.nvml().ok()?;
        Some((
            n.sys_driver_version()
                .unwrap_or_else(|e| format!("unknown ({e})")),
            n.sys_nvml_version()
                .unwrap_or_else(|e| format!("unknown ({e})")),
        ))
    }

    /// Reads every device; a device that cannot be read is skipped with a warning.
    pub fn try_read(&self) -> Result<Vec<GpuReading>, String> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let nvml = self.nvml().map_err(str::to_owned)?;
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let d = match nvml.device_by_index(i) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(gpu = i, error = %e, "cannot open GPU");
                    continue;
                }
            };
            let mem = d.memory_info().ok();
            let mib = |b: u64| b / (1024 * 1024);
            out.push(GpuReading {
                index: i,
                uuid: d.uuid().unwrap_or_default(),
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                memory_total_mb: mem.as_ref().map_or(0, |m| mib(m.total)),
                memory_used_mb: mem.as_ref().map_or(0, |m| mib(m.used)),
                memory_free_mb: mem.as_ref().map_or(0, |m| mib(m.free)),
                // MIG-enabled GPUs do not report utilization: 0 rather than failing.
                utilization_percent: d.utilization_rates().map_or(0, |u| u.gpu),
                temperature_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                power_draw_w: d.power_usage().map_or(0.0, |mw| f64::from(mw) / 1000.0),
                mig_enabled: d.mig_mode().ok().map(|m| m.current == 1),
            });
        }
        Ok(out)
    }
}

impl GpuProbe for NvmlProbe {
    fn read(&self) -> Vec<GpuReading> {
        match self.try_read() {
            Ok(g) => g,
            Err(reason) => {
                let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                if !*warned {
                    *warned = true;
                    tracing::info!(%reason, "NVML unavailable; this node reports no GPUs");
                }
                Vec::new()
            }
        }
    }

    fn describe(&self) -> String {
        match self.versions() {
            Some((driver, nvml)) => format!("NVML {nvml}, driver {driver}"),
            None => format!(
                "NVML unavailable: {}",
                self.unavailable_reason().unwrap_or_default()
            ),
        }
    }
}

/// A fixed set of GPUs for tests and demos (`AGENTPLANE_FAKE_GPUS`), never chosen unless
/// configured. They report no memory in use and a steady 40 °C.
pub struct FakeProbe {
    gpus: Vec<(String, u64)>,
}

impl FakeProbe {
    /// Parses `NAME:MIB,NAME:MIB` (e.g. `A10:24576,H100:81920`).
    pub fn parse(spec: &str) -> Option<Self> {
        crate::config::parse_fake_gpus(spec).map(|gpus| Self { gpus })
    }
}

impl GpuProbe for FakeProbe {
    fn read(&self) -> Vec<GpuReading> {
        self.gpus
            .iter()
            .enumerate()
            .map(|(i, (name, mb))| GpuReading {
                index: i as u32,
                uuid: format!("GPU-fake-{i:04}-{}", name.to_ascii_lowercase()),
                name: name.clone(),
                memory_total_mb: *mb,
                memory_used_mb: 0,
                memory_free_mb: *mb,
                utilization_percent: 0,
                temperature_c: 40,
                power_draw_w: 60.0,
                mig_enabled: Some(false),
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!(
            "fake GPUs (AGENTPLANE_FAKE_GPUS): {} configured",
            self.gpus.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_specs_parse_or_are_refused() {
        let p = FakeProbe::parse("A10:24576, H100:81920").expect("valid");
        let g = p.read();
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].name, "H100");
        assert_eq!(g[1].memory_total_mb, 81920);
        assert!(FakeProbe::parse("").is_none());
        assert!(FakeProbe::parse("A10").is_none());
        assert!(FakeProbe::parse("A10:0").is_none());
    }

    #[test]
    fn nvml_without_a_driver_reports_no_gpus() {
        // On machines with a driver this reads real GPUs; both outcomes must not panic.
        let p = NvmlProbe::new();
        let gpus = p.read();
        if p.unavailable_reason().is_some() {
            assert!(gpus.is_empty());
            assert!(p.describe().starts_with("NVML unavailable"));
        }
    }
}
