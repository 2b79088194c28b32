//! Prometheus metrics (`/metrics`): one process-wide recorder behind the `metrics`
//! facade, rendered by `metrics-exporter-prometheus`. Code that does the work records it
//! through the small functions here, so every name, label and unit is in this file.
//!
//! Labels are bounded: routes are the router's patterns, operation names are the first
//! [`OPERATION_NAMES`] distinct ones this process saw (later ones count as `other`),
//! models are the configured price table's (others count as `other`), statuses and kinds
//! are enums. No label carries an id, an e-mail or free text; nodes are named by their
//! node name and GPUs by index, as a fleet's operators know them.
//!
//! Gauges that describe shared state (queue depth, nodes, GPUs) are read from the
//! database when scraped, at most once per [`SCRAPE_CACHE`].

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Distinct GraphQL operation names kept as label values.
pub const OPERATION_NAMES: usize = 200;
/// How long database-backed gauges are reused between scrapes.
pub const SCRAPE_CACHE: Duration = Duration::from_secs(2);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static NAMES: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Latency buckets (seconds) shared by every duration histogram.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Installs the recorder (once per process; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        zero();
        gauge!("agentplane_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// The scrape: the recorder's families in Prometheus text format.
pub fn render() -> String {
    install().render()
}

fn describe() {
    describe_gauge!("agentplane_build_info", "Always 1; the version is a label.");
    describe_counter!(
        "agentplane_http_requests_total",
        "HTTP requests answered, by route pattern, method and status code."
    );
    describe_histogram!(
        "agentplane_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route pattern and method."
    );
    describe_counter!(
        "agentplane_graphql_operations_total",
        "GraphQL operations executed, by type, operation name and outcome (ok or error)."
    );
    describe_histogram!(
        "agentplane_graphql_operation_duration_seconds",
        metrics::Unit::Seconds,
        "Time to execute a GraphQL query or mutation, by type and operation name."
    );
    describe_gauge!(
        "agentplane_websocket_connections",
        "Open GraphQL websockets, by protocol."
    );
    describe_gauge!(
        "agentplane_subscriptions_active",
        "Running GraphQL subscriptions, by root field."
    );
    describe_counter!(
        "agentplane_executions_enqueued_total",
        "Executions queued, by trigger."
    );
    describe_counter!(
        "agentplane_executions_finished_total",
        "Executions that reached a final status, by status."
    );
    describe_histogram!(
        "agentplane_execution_start_latency_seconds",
        metrics::Unit::Seconds,
        "Time from enqueue to RUNNING."
    );
    describe_histogram!(
        "agentplane_execution_duration_seconds",
        metrics::Unit::Seconds,
        "Time from RUNNING to a final status, by status."
    );
    describe_gauge!(
        "agentplane_execution_queue_depth",
        "Executions waiting in the queue, by the tenant's plan."
    );
    describe_gauge!(
        "agentplane_execution_queue_oldest_age_seconds",
        "Age of the oldest queued execution, by the tenant's plan (0 when none)."
    );
    describe_gauge!(
        "agentplane_executions_running",
        "Executions RUNNING on the whole platform."
    );
    describe_counter!(
        "agentplane_step_attempts_total",
        "Step attempts finished, by step kind and outcome (succeeded, failed, timed_out, retrying)."
    );
    describe_histogram!(
        "agentplane_step_duration_seconds",
        metrics::Unit::Seconds,
        "Time one step attempt ran, by step kind."
    );
    describe_counter!(
        "agentplane_step_retries_total",
        "Step attempts that failed and will be tried again, by step kind."
    );
    describe_counter!(
        "agentplane_llm_tokens_total",
        "LLM tokens used, by model and type (prompt or completion)."
    );
    describe_gauge!(
        "agentplane_llm_cost_usd",
        "LLM spend in US dollars from the price table since start, by model; it only grows \
         (use increase() or rate() as with a counter: the facade's counters are integers)."
    );
    describe_counter!(
        "agentplane_llm_unpriced_calls_total",
        "LLM calls whose model has no price (their cost is unknown), by model."
    );
    describe_gauge!(
        "agentplane_node_health_score",
        "Health score of a cluster node, 0 to 1."
    );
    describe_gauge!(
        "agentplane_node_status",
        "1 for a node's current status (HEALTHY, DEGRADED, UNHEALTHY, DRAINING, OFFLINE), 0 for the others."
    );
    describe_gauge!(
        "agentplane_node_in_flight_executions",
        "Executions a node drives."
    );
    describe_gauge!(
        "agentplane_gpu_memory_total_bytes",
        "Installed GPU memory, per node and GPU index."
    );
    describe_gauge!(
        "agentplane_gpu_memory_used_bytes",
        "GPU memory in use, per node and GPU index (from the last heartbeat)."
    );
    describe_gauge!(
        "agentplane_gpu_memory_reserved_bytes",
        "GPU memory reserved by placements, per node and GPU index."
    );
    describe_gauge!(
        "agentplane_gpu_utilization_ratio",
        "GPU kernel utilization, 0 to 1, per node and GPU index."
    );
    describe_gauge!(
        "agentplane_gpu_temperature_celsius",
        "GPU die temperature, per node and GPU index."
    );
    describe_gauge!(
        "agentplane_db_pool_connections",
        "Database pool connections, by state (idle or in_use)."
    );
    describe_gauge!(
        "agentplane_db_pool_max_connections",
        "Largest number of connections the database pool opens."
    );
    describe_histogram!(
        "agentplane_db_pool_wait_seconds",
        metrics::Unit::Seconds,
        "Time a caller waited for a pooled database connection."
    );
    describe_counter!(
        "agentplane_db_pool_timeouts_total",
        "Callers that gave up waiting for a pooled database connection."
    );
    describe_counter!(
        "agentplane_db_statements_total",
        "SQL statements this process ran."
    );
    describe_counter!(
        "agentplane_db_commits_total",
        "Database transactions this process committed."
    );
    describe_counter!(
        "agentplane_audit_records_total",
        "Audit records appended, by severity."
    );
    describe_counter!(
        "agentplane_audit_verification_failures_total",
        "Audit chain verifications that found the chain broken."
    );
    describe_counter!(
        "agentplane_auth_failures_total",
        "Refused credentials and sign-ins, by reason."
    );
    describe_counter!(
        "agentplane_rate_limited_total",
        "Requests refused by a rate limit, by limit."
    );
    describe_counter!(
        "agentplane_notifications_total",
        "Account messages sent to the notifier webhook, by kind and outcome (delivered, failed)."
    );
    describe_counter!(
        "agentplane_overload_rejections_total",
        "Requests answered 503 because every admission slot stayed busy."
    );
}

/// Starts the counters of rare events at 0, so that every series exists from the first
/// scrape (a rate over a missing series is empty, not 0, and alerts would never see the
/// first event).
fn zero() {
    for kind in ["llm", "http", "transform", "condition", "delay"] {
        counter!("agentplane_step_retries_total", "kind" => kind).absolute(0);
    }
    for reason in [
        "TOKEN_EXPIRED",
        "TOKEN_INVALID",
        "TOKEN_REVOKED",
        "BAD_LOGIN",
    ] {
        counter!("agentplane_auth_failures_total", "reason" => reason).absolute(0);
    }
    for status in ["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"] {
        counter!("agentplane_executions_finished_total", "status" => status).absolute(0);
    }
    for limit in [
        "requests_per_principal",
        "requests_per_tenant",
        "expensive_operations_per_tenant",
        "expensive_operations_per_principal",
        "query_cost_per_tenant",
    ] {
        counter!("agentplane_rate_limited_total", "limit" => limit).absolute(0);
    }
    counter!("agentplane_overload_rejections_total").absolute(0);
    counter!("agentplane_db_pool_timeouts_total").absolute(0);
    counter!("agentplane_audit_verification_failures_total").absolute(0);
    counter!("agentplane_llm_tokens_total", "model" => "other", "type" => "prompt").absolute(0);
    counter!("agentplane_llm_tokens_total", "model" => "other", "type" => "completion").absolute(0);
    counter!("agentplane_llm_unpriced_calls_total", "model" => "other").absolute(0);
    gauge!("agentplane_llm_cost_usd", "model" => "other").set(0.0);
    gauge!("agentplane_websocket_connections", "protocol" => "graphql-transport-ws").set(0.0);
    gauge!("agentplane_websocket_connections", "protocol" => "graphql-ws").set(0.0);
}

/// An HTTP request answered (`route` is the router's pattern, or `unmatched`).
pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    let route = route.to_owned();
    let method = method.to_owned();
    counter!("agentplane_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
        .increment(1);
    histogram!("agentplane_http_request_duration_seconds", "route" => route, "method" => method)
        .record(took.as_secs_f64());
}

/// The label for an operation name: the name itself while fewer than
/// [`OPERATION_NAMES`] distinct names were seen, then `other`; `anonymous` without one.
pub fn operation_label(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".into();
    };
    let valid = name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return "other".into();
    }
    let names = NAMES.get_or_init(|| Mutex::new(HashSet::new()));
    let Ok(mut seen) = names.lock() else {
        return "other".into();
    };
    if seen.contains(name) {
        return name.to_owned();
    }
    if seen.len() < OPERATION_NAMES {
        seen.insert(name.to_owned());
        return name.to_owned();
    }
    "other".into()
}

/// A GraphQL query or mutation executed.
pub fn graphql_operation(kind: &'static str, name: &str, ok: bool, took: Duration) {
    counter!(
        "agentplane_graphql_operations_total",
        "type" => kind,
        "name" => name.to_owned(),
        "outcome" => if ok { "ok" } else { "error" }
    )
    .increment(1);
    histogram!("agentplane_graphql_operation_duration_seconds", "type" => kind, "name" => name.to_owned())
        .record(took.as_secs_f64());
}

/// Counts an open websocket until dropped.
pub struct SocketGauge(&'static str);

impl SocketGauge {
    /// A websocket of `protocol` opened.
    pub fn open(protocol: &'static str) -> Self {
        gauge!("agentplane_websocket_connections", "protocol" => protocol).increment(1.0);
        Self(protocol)
    }
}

impl Drop for SocketGauge {
    fn drop(&mut self) {
        gauge!("agentplane_websocket_connections", "protocol" => self.0).decrement(1.0);
    }
}

/// Counts a running subscription until dropped.
pub struct SubscriptionGauge(String);

impl SubscriptionGauge {
    /// A subscription to root field `field` started.
    pub fn start(field: String) -> Self {
        gauge!("agentplane_subscriptions_active", "field" => field.clone()).increment(1.0);
        Self(field)
    }
}

impl Drop for SubscriptionGauge {
    fn drop(&mut self) {
        gauge!("agentplane_subscriptions_active", "field" => self.0.clone()).decrement(1.0);
    }
}

/// An execution was queued by `trigger` (`api`, `schedule`, `retry`).
pub fn execution_enqueued(trigger: &'static str) {
    counter!("agentplane_executions_enqueued_total", "trigger" => trigger).increment(1);
}

/// An execution started RUNNING `waited` after it was queued.
pub fn execution_started(waited: Duration) {
    histogram!("agentplane_execution_start_latency_seconds").record(waited.as_secs_f64());
}

/// An execution reached final `status` after running for `ran`.
pub fn execution_finished(status: &'static str, ran: Option<Duration>) {
    counter!("agentplane_executions_finished_total", "status" => status).increment(1);
    if let Some(d) = ran {
        histogram!("agentplane_execution_duration_seconds", "status" => status)
            .record(d.as_secs_f64());
    }
}

/// One step attempt of `kind` ended with `outcome` after `took`.
pub fn step_attempt(kind: &str, outcome: &'static str, took: Duration) {
    let kind = step_kind(kind);
    counter!("agentplane_step_attempts_total", "kind" => kind, "outcome" => outcome).increment(1);
    histogram!("agentplane_step_duration_seconds", "kind" => kind).record(took.as_secs_f64());
    if outcome == "retrying" {
        counter!("agentplane_step_retries_total", "kind" => kind).increment(1);
    }
}

fn step_kind(kind: &str) -> &'static str {
    match kind {
        "llm" => "llm",
        "http" => "http",
        "transform" => "transform",
        "condition" => "condition",
        "delay" => "delay",
        _ => "other",
    }
}

/// LLM usage of one call to `model` (`priced`: the model is in the price table; other
/// names are counted as `other`).
pub fn llm_usage(model: &str, priced: bool, prompt: i64, completion: i64, cost_usd: f64) {
    let model = if priced {
        model.to_owned()
    } else {
        "other".into()
    };
    counter!("agentplane_llm_tokens_total", "model" => model.clone(), "type" => "prompt")
        .increment(u64::try_from(prompt).unwrap_or(0));
    counter!("agentplane_llm_tokens_total", "model" => model.clone(), "type" => "completion")
        .increment(u64::try_from(completion).unwrap_or(0));
    if priced {
        // The facade's counters are integers: spend is a gauge that only grows.
        gauge!("agentplane_llm_cost_usd", "model" => model).increment(cost_usd);
    } else {
        counter!("agentplane_llm_unpriced_calls_total", "model" => model).increment(1);
    }
}

/// Audit records appended, by severity.
pub fn audit_appended(severity: &'static str, n: u64) {
    counter!("agentplane_audit_records_total", "severity" => severity).increment(n);
}

/// Audit verifications that found a broken chain since this process started (also read
/// by `systemHealth`).
pub static AUDIT_VERIFICATION_FAILURES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// An audit verification found the chain broken.
pub fn audit_verification_failed() {
    AUDIT_VERIFICATION_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    counter!("agentplane_audit_verification_failures_total").increment(1);
}

/// A credential or sign-in refused for `reason` (a fixed code such as `TOKEN_EXPIRED`).
pub fn auth_failure(reason: &'static str) {
    counter!("agentplane_auth_failures_total", "reason" => reason).increment(1);
}

/// An account message of `kind` handed to the webhook: `delivered` or `failed`.
pub fn notification(kind: &'static str, outcome: &'static str) {
    counter!("agentplane_notifications_total", "kind" => kind, "outcome" => outcome).increment(1);
}

/// A request refused by rate limit `limit`.
pub fn rate_limited(limit: &'static str) {
    counter!("agentplane_rate_limited_total", "limit" => limit).increment(1);
}

/// A request answered 503 for want of an admission slot.
pub fn overloaded() {
    counter!("agentplane_overload_rejections_total").increment(1);
}

/// A caller waited `waited` for a pooled connection (`got`: it got one).
pub fn pool_wait(waited: Duration, got: bool) {
    histogram!("agentplane_db_pool_wait_seconds").record(waited.as_secs_f64());
    if !got {
        counter!("agentplane_db_pool_timeouts_total").increment(1);
    }
}

/// When the database-backed gauges were last read.
static LAST_SCRAPE: Mutex<Option<Instant>> = Mutex::new(None);

/// Whether the database-backed gauges are due for a refresh (and claims it).
pub fn refresh_due() -> bool {
    let Ok(mut last) = LAST_SCRAPE.lock() else {
        return true;
    };
    if last.is_some_and(|t| t.elapsed() < SCRAPE_CACHE) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// Queue depth and oldest queued age of tenants on `plan`.
pub fn queue(plan: &str, depth: i64, oldest_age: Duration) {
    gauge!("agentplane_execution_queue_depth", "plan" => plan.to_owned()).set(depth as f64);
    gauge!("agentplane_execution_queue_oldest_age_seconds", "plan" => plan.to_owned())
        .set(oldest_age.as_secs_f64());
}

/// RUNNING executions on the platform.
pub fn running(n: i64) {
    gauge!("agentplane_executions_running").set(n as f64);
}

/// One node's health, as of its last heartbeat.
pub fn node(name: &str, status: &'static str, health: f64, in_flight: i64) {
    for s in ["HEALTHY", "DEGRADED", "UNHEALTHY", "DRAINING", "OFFLINE"] {
        gauge!("agentplane_node_status", "node" => name.to_owned(), "status" => s)
            .set(if s == status { 1.0 } else { 0.0 });
    }
    gauge!("agentplane_node_health_score", "node" => name.to_owned()).set(health);
    gauge!("agentplane_node_in_flight_executions", "node" => name.to_owned()).set(in_flight as f64);
}

/// One GPU of a node: memory in MiB, utilization in percent.
pub fn gpu(
    node: &str,
    index: u32,
    total_mb: u64,
    used_mb: u64,
    reserved_mb: u64,
    utilization_percent: u32,
    temperature_c: u32,
) {
    const MIB: f64 = 1024.0 * 1024.0;
    let labels = [("node", node.to_owned()), ("gpu", index.to_string())];
    gauge!("agentplane_gpu_memory_total_bytes", &labels).set(total_mb as f64 * MIB);
    gauge!("agentplane_gpu_memory_used_bytes", &labels).set(used_mb as f64 * MIB);
    gauge!("agentplane_gpu_memory_reserved_bytes", &labels).set(reserved_mb as f64 * MIB);
    gauge!("agentplane_gpu_utilization_ratio", &labels).set(f64::from(utilization_percent) / 100.0);
    gauge!("agentplane_gpu_temperature_celsius", &labels).set(f64::from(temperature_c));
}

/// The database pool's connections and this process's statement and commit totals.
pub fn database(idle: u32, in_use: u32, max: u32, statements: u64, commits: u64) {
    gauge!("agentplane_db_pool_connections", "state" => "idle").set(f64::from(idle));
    gauge!("agentplane_db_pool_connections", "state" => "in_use").set(f64::from(in_use));
    gauge!("agentplane_db_pool_max_connections").set(f64::from(max));
    counter!("agentplane_db_statements_total").absolute(statements);
    counter!("agentplane_db_commits_total").absolute(commits);
}
