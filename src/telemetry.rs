//! Logging and tracing set-up. Logs: text by default, JSON lines with
//! `AGENTPLANE_LOG_FORMAT=json`, filtered by `RUST_LOG`, on stderr (stdout carries only
//! the lines an operator must see: the listen URL, a generated password). Traces: with
//! `AGENTPLANE_OTLP_ENDPOINT`, spans go to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf; `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` for JSON), batched on a thread of
//! their own; the W3C trace context (`traceparent`) is accepted from clients and carried
//! through the queue (see [`inject`] and [`extract`]).
//!
//! Spans exported: `http.request`, `graphql.operation`, `execution.enqueue`,
//! `execution.run`, `step.run` (step kind and attempt) and `db.statement` (the statement's
//! kind, never its text or values). Their filter is separate from the log filter, so a
//! quiet log (`RUST_LOG=warn`) still exports every trace.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;

/// The target of `db.statement` spans (exported at DEBUG, so they cost nothing unless
/// traces are on).
pub const SQL_TARGET: &str = "agentplane::sql";

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[must_use = "dropping the guard stops the trace exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber: the log layer and, with `otlp` set, the OpenTelemetry
/// layer. Safe to call more than once (later calls install nothing).
pub fn init(format: LogFormat, filter: &str, otlp: Option<&url::Url>) -> Telemetry {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: never in files, pipes or log collectors
    // (and never with NO_COLOR set, https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let logs = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let provider = otlp.and_then(|url| match provider(url) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("agentplane: traces are off: the OTLP exporter for {url} failed: {e}");
            None
        }
    });
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("agentplane"))
            .with_filter(
                Targets::new()
                    .with_default(LevelFilter::OFF)
                    .with_target("agentplane", LevelFilter::INFO)
                    .with_target(SQL_TARGET, LevelFilter::DEBUG),
            )
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        tracing::info!(endpoint = %otlp.map(url::Url::as_str).unwrap_or(""), "exporting traces over OTLP");
    }
    Telemetry { provider }
}

fn provider(url: &url::Url) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let endpoint = format!("{}/v1/traces", url.as_str().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("agentplane")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The W3C trace context of `span` (`traceparent`, and `tracestate` when any) as one
/// string to store with queued work; `None` when the span is not traced.
pub fn inject(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let parent = carrier.remove("traceparent")?;
    Some(
        match carrier.remove("tracestate").filter(|s| !s.is_empty()) {
            Some(state) => format!("{parent};{state}"),
            None => parent,
        },
    )
}

/// Continues the trace stored by [`inject`] (or sent by a client as `traceparent` /
/// `tracestate`) in `span`; also records its `trace_id` on the span, so the span's log
/// lines carry it.
pub fn extract(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".into(), traceparent.to_owned());
    if let Some(s) = tracestate {
        carrier.insert("tracestate".into(), s.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    record_ids(span);
}

/// Splits a stored context back into `traceparent` and `tracestate`.
pub fn continue_stored(span: &tracing::Span, stored: &str) {
    let (parent, state) = match stored.split_once(';') {
        Some((p, s)) => (p, Some(s)),
        None => (stored, None),
    };
    extract(span, parent, state);
}

/// Records `trace_id` and `span_id` on `span` (declared `Empty` on it) when it is traced.
pub fn record_ids(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}
