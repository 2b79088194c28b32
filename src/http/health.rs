//! Liveness and readiness probes.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

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

/// `GET /readyz`: 200 only when the database answers, accepts a write (a full disk or a
/// read-only database fails it) and carries exactly the migrations this binary knows;
/// 503 with a JSON reason otherwise (also while shutting down, so balancers drain us).
/// With Redis configured the body also says `"redis": "ok"` or `"degraded"`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let app = &state.app;
    if app.shutdown.is_cancelled() {
        return unavailable("shutting down".into());
    }
    let check = async {
        app.db.ping().await?;
        let migrations = crate::db::migrate::state(&app.db).await?;
        if let Some(problem) = migrations.problem() {
            return Ok(Some(problem));
        }
        Ok::<_, anyhow::Error>(crate::db::write_probe(&app.db, app.clock.now()).await.err())
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Err(_) => unavailable("database did not answer within 3 s".into()),
        Ok(Err(e)) => {
            tracing::warn!(error = format!("{e:#}"), "readiness check failed");
            unavailable("database unavailable".into())
        }
        Ok(Ok(Some(problem))) => {
            tracing::warn!(reason = %problem, "not ready");
            unavailable(problem)
        }
        Ok(Ok(None)) => {
            // Redis is an accelerator, never a dependency: its outage degrades (events
            // go by NOTIFY) but the replica stays ready.
            let body = match app.bus.redis() {
                None => json!({ "status": "ready" }),
                Some(r) => {
                    let ok = r.is_live() && r.ping().await;
                    json!({ "status": "ready", "redis": if ok { "ok" } else { "degraded" } })
                }
            };
            (StatusCode::OK, Json(body)).into_response()
        }
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
