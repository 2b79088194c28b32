//! Schema extensions: a tracing span and a log line per GraphQL operation.

use std::sync::Arc;
use std::time::Instant;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use async_graphql::{Response, async_trait};
use tracing::Instrument as _;

use super::RequestId;

/// Wraps each operation in a `graphql.operation` span (request id, operation name) and
/// logs its duration and error count.
pub struct OperationLog;

impl ExtensionFactory for OperationLog {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationLogExtension)
    }
}

struct OperationLogExtension;

#[async_trait::async_trait]
impl Extension for OperationLogExtension {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let request_id = ctx
            .data_opt::<RequestId>()
            .map(|r| r.0.as_str())
            .unwrap_or("-");
        let op = operation_name.unwrap_or("anonymous");
        let span = tracing::info_span!("graphql.operation", request_id, operation = op);
        let started = Instant::now();
        let resp = next.run(ctx, operation_name).instrument(span.clone()).await;
        let _g = span.enter();
        tracing::info!(
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            errors = resp.errors.len(),
            "graphql operation finished"
        );
        resp
    }
}
