//! `cluster`: heartbeats, node name and labels, fake GPUs, telemetry samples.

use super::ConfigError;
use super::layers::{Layers, err, parse_num, toml_scalar};
use serde::Deserialize;
use std::time::Duration;

/// Node registration, heartbeats and GPU telemetry.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How often a node heartbeats (and runs the reaper and placer).
    pub heartbeat: Duration,
    /// A node without a heartbeat for this long is OFFLINE; its work moves elsewhere.
    pub offline_after: Duration,
    /// This node's display name (default: host name and process id).
    pub node_name: Option<String>,
    /// Labels shown with the node (`zone=eu-1,pool=gpu`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Tests and demos only: report these GPUs (`NAME:MIB,…`) instead of reading NVML.
    pub fake_gpus: Option<String>,
    /// Telemetry samples kept per node for charts.
    pub telemetry_samples: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    pub(super) heartbeat_ms: Option<toml::Value>,
    pub(super) offline_after_ms: Option<toml::Value>,
    pub(super) node_name: Option<String>,
    pub(super) labels: Option<String>,
    pub(super) fake_gpus: Option<String>,
    pub(super) telemetry_samples: Option<toml::Value>,
}

/// Parses a fake GPU list, `NAME:MIB,NAME:MIB` (e.g. `A10:24576,H100:81920`).
pub fn parse_fake_gpus(spec: &str) -> Option<Vec<(String, u64)>> {
    let mut gpus = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, mb) = part.rsplit_once(':')?;
        let mb: u64 = mb.trim().parse().ok()?;
        if mb == 0 || name.trim().is_empty() {
            return None;
        }
        gpus.push((name.trim().to_owned(), mb));
    }
    (!gpus.is_empty()).then_some(gpus)
}

/// Reads the section from its layers.
pub(super) fn load(layers: &Layers<'_>, fc: FileCluster) -> Result<ClusterConfig, ConfigError> {
    let heartbeat = Duration::from_millis(parse_num(
        layers.pick(
            "AGENTPLANE_HEARTBEAT_MS",
            "cluster.heartbeat_ms",
            toml_scalar(fc.heartbeat_ms),
        ),
        5000u64,
        50,
        60_000,
        "milliseconds between 50 and 60000",
    )?);
    let offline_raw = layers.pick(
        "AGENTPLANE_NODE_OFFLINE_AFTER_MS",
        "cluster.offline_after_ms",
        toml_scalar(fc.offline_after_ms),
    );
    let offline_key = offline_raw.as_ref().map_or_else(
        || "AGENTPLANE_NODE_OFFLINE_AFTER_MS".to_owned(),
        |r| r.key.clone(),
    );
    let offline_after = Duration::from_millis(parse_num(
        offline_raw,
        30_000u64,
        100,
        3_600_000,
        "milliseconds between 100 and 3600000",
    )?);
    if offline_after < heartbeat * 2 {
        return Err(err(
            &offline_key,
            format!(
                "{} ms is less than two heartbeats ({} ms each)",
                offline_after.as_millis(),
                heartbeat.as_millis()
            ),
            "at least twice AGENTPLANE_HEARTBEAT_MS",
        ));
    }
    let labels = match layers.pick("AGENTPLANE_NODE_LABELS", "cluster.labels", fc.labels) {
        None => std::collections::BTreeMap::new(),
        Some(raw) => {
            let mut out = std::collections::BTreeMap::new();
            for part in raw
                .value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let (k, v) = part.split_once('=').ok_or_else(|| {
                    err(
                        &raw.key,
                        format!("{part:?} is not KEY=VALUE"),
                        "comma-separated KEY=VALUE pairs",
                    )
                })?;
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            out
        }
    };
    let fake_gpus = match layers.pick("AGENTPLANE_FAKE_GPUS", "cluster.fake_gpus", fc.fake_gpus) {
        None => None,
        Some(raw) => {
            if parse_fake_gpus(&raw.value).is_none() {
                return Err(err(
                    &raw.key,
                    "not a GPU list",
                    "NAME:MIB pairs, comma-separated, e.g. A10:24576,H100:81920",
                ));
            }
            Some(raw.value)
        }
    };
    let cluster = ClusterConfig {
        heartbeat,
        offline_after,
        node_name: layers
            .pick("AGENTPLANE_NODE_NAME", "cluster.node_name", fc.node_name)
            .map(|r| r.value)
            .filter(|v| !v.trim().is_empty()),
        labels,
        fake_gpus,
        telemetry_samples: parse_num(
            layers.pick(
                "AGENTPLANE_TELEMETRY_SAMPLES",
                "cluster.telemetry_samples",
                toml_scalar(fc.telemetry_samples),
            ),
            360usize,
            10,
            100_000,
            "a number between 10 and 100000",
        )?,
    };

    Ok(cluster)
}
