//! HTTP surface: routes, request ids, tracing spans, limits and CORS.

pub mod caller;
mod export;
mod graphiql;
mod graphql;
mod health;
mod oidc;
pub mod socket;
mod state;

pub use state::AppState;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument as _;

use crate::graphql::RequestId;

/// The response (and accepted request) header carrying the request id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The router of the metrics-only listener (`AGENTPLANE_METRICS_LISTEN`): `/metrics` and
/// `/healthz`, with the same request metrics and spans as the main router.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

/// Builds the router with every route and layer.
pub fn router(state: AppState) -> Router {
    let http = &state.app.config.http;
    // Work that reads or writes the database waits for an admission slot.
    let admitted = Router::new()
        .route(
            "/graphql",
            get(graphql::get_handler).post(graphql::post_handler),
        )
        .route("/audit/export", get(export::export))
        .route("/auth/oidc/{tenant}/login", get(oidc::login))
        .route("/auth/oidc/callback", get(oidc::callback))
        .route_layer(middleware::from_fn_with_state(state.clone(), admission));
    let mut router = Router::new()
        .merge(admitted)
        .route("/graphql/ws", get(socket::ws_handler))
        .route("/graphql/assets/{file}", get(graphiql::asset))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/.well-known/jwks.json", get(health::jwks))
        .layer(RequestBodyLimitLayer::new(http.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            http.request_timeout,
        ));
    if let Some(cors) = cors_layer(&http.cors_origins) {
        router = router.layer(cors);
    }
    router
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                REQUEST_ID_HEADER,
            ])
            .expose_headers([REQUEST_ID_HEADER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Admission control: at most `http.max_in_flight` requests are served at once; the rest
/// wait in line up to `http.queue_timeout` and are then answered 503 with `Retry-After`
/// at once, instead of queueing on the database pool until its timeout (overload becomes
/// back-pressure a client can act on, not a 10-second wait and an internal error).
async fn admission(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let wait = state.app.config.http.queue_timeout;
    let permit = match state.in_flight.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) if wait.is_zero() => None,
        Err(_) => tokio::time::timeout(wait, state.in_flight.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
    };
    let Some(_permit) = permit else {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string()));
        tracing::warn!("overloaded: a request waited its queue timeout for a slot");
        crate::metrics::overloaded();
        return caller::refusal(
            crate::error::AppError::unavailable(
                "the server is at capacity",
                anyhow::anyhow!("no admission slot within the queue timeout"),
            ),
            &request_id,
        );
    };
    next.run(req).await
}

/// Accepts a client's `x-request-id` if it is short and plain, otherwise makes one.
fn request_id_from(req: &Request) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// Assigns the request id, opens the `http.request` span, logs the outcome and echoes
/// the id in the response header.
async fn request_context(mut req: Request, next: Next) -> Response {
    let request_id = request_id_from(&req);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!(
        "http.request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    // A client's W3C trace context continues here (`traceparent`, `tracestate`).
    {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        match header("traceparent") {
            Some(tp) => crate::telemetry::extract(&span, tp, header("tracestate")),
            None => crate::telemetry::record_ids(&span),
        }
    }
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    crate::metrics::http_request(&route, &method, status, started.elapsed());
    span.in_scope(|| {
        tracing::info!(
            status,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}
