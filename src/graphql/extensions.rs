//! The schema's one extension, [`Hooks`]: document limits after parsing, the batch
//! budget and the query-cost charge after validation, and per query or mutation a
//! tracing span, a log line, metrics and the cost settlement (a subscription's events,
//! executed one by one for each subscriber, get none of these).
//!
//! One extension, not one per concern: while a schema has any extension, async-graphql
//! runs every field through each extension's `resolve` hook, a boxed future apiece, so
//! each further extension costs an allocation per field of every response.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextResolve,
    NextSubscribe, NextValidation, ResolveInfo,
};
use async_graphql::futures_util::stream::BoxStream;
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection};
use async_graphql::{
    Response, ServerError, ServerResult, ValidationResult, Value, Variables, async_trait,
};
use tracing::Instrument as _;

use super::RequestId;
use super::cost::Cost;
use super::limits::DocumentLimits;

/// The schema's extension. Per operation, in this order:
/// - after parsing: the document limits ([`DocumentLimits`], unless the HTTP handler
///   checked the document already);
/// - after validation: the batch's shared complexity budget, then the query-cost charge
///   (`graphql::cost`; an operation the batch budget refuses is never charged);
/// - around the execution of a query or mutation: a `graphql.operation` span (request
///   id, operation name), a log line with its duration and error count, `/metrics` (by
///   type, name and outcome), then the cost settlement in `extensions.cost`; a
///   subscription is counted as running (by root field) while its stream lives, and its
///   events, executed one by one, get none of these;
/// - per field: resolvers that wait longer than [`SLOW_RESOLVER`] are logged.
pub struct Hooks {
    limits: DocumentLimits,
}

impl Hooks {
    /// The extension, with the document limits it enforces.
    pub fn new(limits: DocumentLimits) -> Self {
        Self { limits }
    }
}

impl ExtensionFactory for Hooks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(HooksExtension {
            limits: self.limits,
            cost: Cost::default(),
            parsed: Arc::default(),
        })
    }
}

/// A resolver slower than this is reported: an event on the operation's span (a span
/// event in its trace) and a log line, with its path and duration. Faster resolvers get
/// no span of their own, so a trace stays the size of its operation, not of its result.
pub const SLOW_RESOLVER: std::time::Duration = std::time::Duration::from_millis(100);

/// One request's operation, as parsed.
#[derive(Default)]
struct Parsed {
    /// Each operation of the document: its name and type.
    ops: Vec<(Option<String>, &'static str)>,
    /// The running subscription's gauge (by its root field), dropped with the stream.
    gauge: Option<crate::metrics::SubscriptionGauge>,
    /// Whether the operation runs as a stream (a subscription over a websocket): set
    /// when async-graphql subscribes, which only its streaming execution does.
    streaming: bool,
}

/// One operation's hooks.
struct HooksExtension {
    limits: DocumentLimits,
    cost: Cost,
    parsed: Arc<Mutex<Parsed>>,
}

fn operation_kind(t: OperationType) -> &'static str {
    match t {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

/// Holds the subscription's gauge until the stream is dropped.
struct Counted<'s> {
    inner: BoxStream<'s, Response>,
    _parsed: Arc<Mutex<Parsed>>,
}

impl async_graphql::futures_util::Stream for Counted<'_> {
    type Item = Response;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Response>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[async_trait::async_trait]
impl Extension for HooksExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        self.limits.check_parsed(ctx, &doc)?;
        if let Ok(mut p) = self.parsed.lock() {
            p.ops = doc
                .operations
                .iter()
                .map(|(name, op)| (name.map(|n| n.to_string()), operation_kind(op.node.ty)))
                .collect();
            // A subscription document runs its one operation (websocket transports
            // refuse anything else before it starts).
            let sub = doc
                .operations
                .iter()
                .map(|(_, op)| op)
                .find(|op| op.node.ty == OperationType::Subscription);
            if let Some(op) = sub {
                p.gauge = op
                    .node
                    .selection_set
                    .node
                    .items
                    .iter()
                    .find_map(|s| match &s.node {
                        Selection::Field(f) => Some(f.node.name.node.to_string()),
                        _ => None,
                    })
                    .map(crate::metrics::SubscriptionGauge::start);
            }
        }
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        super::limits::charge_batch(ctx, &result)?;
        self.cost.charge(ctx, &result).await?;
        Ok(result)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        if let Ok(mut p) = self.parsed.lock() {
            p.streaming = true;
        }
        Box::pin(Counted {
            inner: next.run(ctx, stream),
            _parsed: self.parsed.clone(),
        })
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let path = info.path_node;
        let parent = info.parent_type;
        // Most fields are answered on their first poll (a value already read): those are
        // not timed, which spares two clock reads a field of every response. A resolver
        // that waits is timed from its first wait.
        let mut run = std::pin::pin!(next.run(ctx, info));
        let mut started = None;
        let out = std::future::poll_fn(|cx| {
            let polled = run.as_mut().poll(cx);
            if polled.is_pending() && started.is_none() {
                started = Some(Instant::now());
            }
            polled
        })
        .await;
        let Some(started) = started else {
            return out;
        };
        let took = started.elapsed();
        if took >= SLOW_RESOLVER {
            tracing::info!(
                field = %path,
                parent_type = parent,
                duration_ms = took.as_secs_f64() * 1000.0,
                "slow resolver"
            );
        }
        out
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        // The operation async-graphql selected is always one of the document's; should
        // it not be found, it counts as a query (settled), never as a subscription.
        let (kind, streaming) = self
            .parsed
            .lock()
            .ok()
            .map(|p| {
                let kind = p
                    .ops
                    .iter()
                    .find(|(n, _)| n.as_deref() == operation_name)
                    .map_or("query", |(_, k)| *k);
                (kind, p.streaming)
            })
            .unwrap_or(("query", false));
        // A subscription executes once per event, for each of its subscribers. An event
        // gets no span, log line, metrics or cost settlement of its own: it runs in its
        // socket's `graphql.ws` span (which carries the request id), the subscription
        // was charged its requested cost when it started, and its gauge counts it while
        // it runs. (Settling each event refunded or charged the difference between the
        // event and the subscription's requested cost again at every event.) A
        // subscription sent where it cannot stream (an HTTP POST) is refused by
        // async-graphql in one response, which is settled (its charge given back) and
        // logged like any other.
        if kind == "subscription" && streaming {
            return next.run(ctx, operation_name).await;
        }
        let span = operation_span(ctx, operation_name);
        let started = Instant::now();
        let mut resp = next.run(ctx, operation_name).instrument(span.clone()).await;
        let took = started.elapsed();
        crate::metrics::graphql_operation(
            kind,
            &crate::metrics::operation_label(operation_name),
            resp.errors.is_empty(),
            took,
        );
        span.in_scope(|| {
            tracing::info!(
                duration_ms = took.as_secs_f64() * 1000.0,
                errors = resp.errors.len(),
                "graphql operation finished"
            )
        });
        self.cost.settle(ctx, &mut resp).await;
        resp
    }
}

/// An operation's `graphql.operation` span: its request id, operation name and, when
/// signed in, the caller's tenant (on every log line of the operation).
fn operation_span(ctx: &ExtensionContext<'_>, operation_name: Option<&str>) -> tracing::Span {
    let request_id = ctx
        .data_opt::<RequestId>()
        .map(|r| r.0.as_str())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "graphql.operation",
        request_id,
        operation = operation_name.unwrap_or("anonymous"),
        tenant = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(p) = ctx.data_opt::<crate::auth::Principal>() {
        span.record("tenant", tracing::field::display(p.tenant_id));
    }
    crate::telemetry::record_ids(&span);
    span
}
