//! Liveness and readiness probes.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;

/// `GET /healthz`: 200 while the process runs.
pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

fn unavailable(reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "unavailable", "reason": reason })),
    )
        .into_response()
}

/// `GET /readyz`: 200 only when the database answers and no migration is pending; 503
/// with a JSON reason otherwise (also while shutting down, so balancers drain us).
pub async fn readyz(State(state): State<AppState>) -> Response {
    let app = &state.app;
    if app.shutdown.is_cancelled() {
        return unavailable("shutting down".into());
    }
    let check = async {
        app.db.ping().await?;
        crate::db::migrate::pending(&app.db).await
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Err(_) => unavailable("database did not answer within 3 s".into()),
        Ok(Err(e)) => {
            tracing::warn!(error = format!("{e:#}"), "readiness check failed");
            unavailable("database unavailable".into())
        }
        Ok(Ok(pending)) if !pending.is_empty() => {
            unavailable(format!("migrations pending: {}", pending.join(", ")))
        }
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
    }
}

/// `GET /.well-known/jwks.json`: the public keys that verify access tokens (current and
/// rotated-out). Empty under HS256, whose key is a shared secret.
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut resp = (StatusCode::OK, Json(state.app.keys.jwks())).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    resp
}
