//! `engine`: workers, leases, timeouts, egress, LLM prices, step limits, audit jobs.

use super::ConfigError;
use super::layers::{Layers, err, parse_cidrs, parse_num, toml_scalar};
use serde::Deserialize;
use std::time::Duration;

/// The execution engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Executions `serve` runs at once in its embedded worker pool (0: none).
    pub workers: usize,
    /// How long a claim lasts unless renewed (renewed every third of it).
    pub lease: Duration,
    /// How often idle workers look for work when no wake-up arrives.
    pub poll_interval: Duration,
    /// Steps of one execution running at once.
    pub max_parallel_steps: usize,
    /// Steps of all executions running at once in one process.
    pub worker_max_steps: usize,
    /// Default execution-level timeout.
    pub execution_timeout: Duration,
    /// Non-public address ranges `http` and `llm` steps may reach anyway.
    pub egress_allow: Vec<crate::net::Cidr>,
    /// USD per million prompt and completion tokens, by model.
    pub llm_prices: std::collections::HashMap<String, (f64, f64)>,
    /// How often the scheduler looks for due schedules.
    pub scheduler_tick: Duration,
    /// How often the retention job deletes audit records and finished executions older
    /// than each tenant's `dataRetentionDays`.
    pub retention_interval: Duration,
    /// Largest step output (and rendered template, and `http` response) kept; a larger
    /// one fails the step.
    pub max_step_output_bytes: usize,
    /// How long one step's template rendering may take.
    pub template_timeout: Duration,
    /// How often signed checkpoints of the audit chains are published.
    pub audit_checkpoint_interval: Duration,
    /// A file (outside the database) the checkpoints are appended to as JSON lines.
    pub audit_checkpoint_file: Option<std::path::PathBuf>,
}

/// Parses `model=prompt:completion,…` (USD per million tokens).
pub(super) fn parse_prices(s: &str) -> Option<std::collections::HashMap<String, (f64, f64)>> {
    let mut out = std::collections::HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (model, prices) = part.rsplit_once('=')?;
        let (p, c) = prices.split_once(':')?;
        let (p, c): (f64, f64) = (p.trim().parse().ok()?, c.trim().parse().ok()?);
        if !(p >= 0.0 && c >= 0.0 && p.is_finite() && c.is_finite()) || model.trim().is_empty() {
            return None;
        }
        out.insert(model.trim().to_owned(), (p, c));
    }
    Some(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEngine {
    pub(super) workers: Option<toml::Value>,
    pub(super) lease_secs: Option<toml::Value>,
    pub(super) poll_ms: Option<toml::Value>,
    pub(super) max_parallel_steps: Option<toml::Value>,
    pub(super) worker_max_steps: Option<toml::Value>,
    pub(super) execution_timeout_secs: Option<toml::Value>,
    pub(super) egress_allow_cidrs: Option<Vec<String>>,
    pub(super) llm_prices: Option<String>,
    pub(super) scheduler_tick_ms: Option<toml::Value>,
    pub(super) retention_interval_ms: Option<toml::Value>,
    pub(super) max_step_output_bytes: Option<toml::Value>,
    pub(super) template_timeout_ms: Option<toml::Value>,
    pub(super) audit_checkpoint_secs: Option<toml::Value>,
    pub(super) audit_checkpoint_file: Option<String>,
}

/// Reads the section from its layers.
pub(super) fn load(layers: &Layers<'_>, fe: FileEngine) -> Result<EngineConfig, ConfigError> {
    let engine = EngineConfig {
            workers: parse_num(
                layers.pick("AGENTPLANE_WORKERS", "engine.workers", toml_scalar(fe.workers)),
                4usize,
                0,
                1024,
                "a number of workers between 0 and 1024",
            )?,
            lease: Duration::from_secs(parse_num(
                layers.pick("AGENTPLANE_LEASE_SECS", "engine.lease_secs", toml_scalar(fe.lease_secs)),
                30u64,
                1,
                3600,
                "seconds between 1 and 3600",
            )?),
            poll_interval: Duration::from_millis(parse_num(
                layers.pick("AGENTPLANE_POLL_MS", "engine.poll_ms", toml_scalar(fe.poll_ms)),
                1000u64,
                10,
                60_000,
                "milliseconds between 10 and 60000",
            )?),
            max_parallel_steps: parse_num(
                layers.pick(
                    "AGENTPLANE_MAX_PARALLEL_STEPS",
                    "engine.max_parallel_steps",
                    toml_scalar(fe.max_parallel_steps),
                ),
                8usize,
                1,
                256,
                "a number between 1 and 256",
            )?,
            worker_max_steps: parse_num(
                layers.pick(
                    "AGENTPLANE_WORKER_MAX_STEPS",
                    "engine.worker_max_steps",
                    toml_scalar(fe.worker_max_steps),
                ),
                64usize,
                1,
                4096,
                "a number between 1 and 4096",
            )?,
            execution_timeout: Duration::from_secs(parse_num(
                layers.pick(
                    "AGENTPLANE_EXECUTION_TIMEOUT_SECS",
                    "engine.execution_timeout_secs",
                    toml_scalar(fe.execution_timeout_secs),
                ),
                3600u64,
                1,
                7 * 86_400,
                "seconds between 1 and 604800",
            )?),
            egress_allow: parse_cidrs(
                layers.pick(
                    "AGENTPLANE_EGRESS_ALLOW_CIDRS",
                    "engine.egress_allow_cidrs",
                    fe.egress_allow_cidrs.map(|v| v.join(",")),
                ),
                "comma-separated CIDR ranges such as 10.0.0.0/8,127.0.0.1/32",
            )?,
            llm_prices: match layers.pick("AGENTPLANE_LLM_PRICES", "engine.llm_prices", fe.llm_prices) {
                None => std::collections::HashMap::new(),
                Some(raw) => parse_prices(&raw.value).ok_or_else(|| {
                    err(
                        &raw.key,
                        "not a price list",
                        "MODEL=PROMPT:COMPLETION pairs in USD per million tokens, comma-separated, e.g. gpt-4o=2.5:10",
                    )
                })?,
            },
            max_step_output_bytes: parse_num(
                layers.pick(
                    "AGENTPLANE_MAX_STEP_OUTPUT_BYTES",
                    "engine.max_step_output_bytes",
                    toml_scalar(fe.max_step_output_bytes),
                ),
                1024 * 1024usize,
                1024,
                64 * 1024 * 1024,
                "bytes between 1024 and 67108864",
            )?,
            audit_checkpoint_interval: Duration::from_secs(parse_num(
                layers.pick(
                    "AGENTPLANE_AUDIT_CHECKPOINT_SECS",
                    "engine.audit_checkpoint_secs",
                    toml_scalar(fe.audit_checkpoint_secs),
                ),
                60u64,
                1,
                86_400,
                "seconds between 1 and 86400",
            )?),
            audit_checkpoint_file: layers
                .pick(
                    "AGENTPLANE_AUDIT_CHECKPOINT_FILE",
                    "engine.audit_checkpoint_file",
                    fe.audit_checkpoint_file,
                )
                .map(|r| std::path::PathBuf::from(r.value))
                .filter(|p| !p.as_os_str().is_empty()),
            template_timeout: Duration::from_millis(parse_num(
                layers.pick(
                    "AGENTPLANE_TEMPLATE_TIMEOUT_MS",
                    "engine.template_timeout_ms",
                    toml_scalar(fe.template_timeout_ms),
                ),
                2000u64,
                10,
                60_000,
                "milliseconds between 10 and 60000",
            )?),
            scheduler_tick: Duration::from_millis(parse_num(
                layers.pick(
                    "AGENTPLANE_SCHEDULER_TICK_MS",
                    "engine.scheduler_tick_ms",
                    toml_scalar(fe.scheduler_tick_ms),
                ),
                1000u64,
                10,
                60_000,
                "milliseconds between 10 and 60000",
            )?),
            retention_interval: Duration::from_millis(parse_num(
                layers.pick(
                    "AGENTPLANE_RETENTION_INTERVAL_MS",
                    "engine.retention_interval_ms",
                    toml_scalar(fe.retention_interval_ms),
                ),
                3_600_000u64,
                100,
                86_400_000,
                "milliseconds between 100 and 86400000",
            )?),
        };

    Ok(engine)
}
