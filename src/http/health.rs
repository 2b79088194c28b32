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

/// `GET /metrics`: Prometheus text format. With `http.metrics_token` set, only requests
/// carrying `Authorization: Bearer <token>` are answered (401 otherwise).
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let app = &state.app;
    if let Some(token) = &app.config.http.metrics_token {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            crate::auth::passwords::sha256_hex(g) == crate::auth::passwords::sha256_hex(&token.0)
        });
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                "the metrics endpoint needs the scrape token: Authorization: Bearer <AGENTPLANE_METRICS_TOKEN>\n",
            )
                .into_response();
        }
    }
    if crate::metrics::refresh_due() {
        refresh_shared_gauges(app).await;
    }
    let (idle, in_use, max) = app.db.pool_state();
    crate::metrics::database(
        idle,
        in_use,
        max,
        app.statements.load(std::sync::atomic::Ordering::Relaxed),
        app.commits.load(std::sync::atomic::Ordering::Relaxed),
    );
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// Reads the gauges that describe shared state (the queue, nodes, GPUs) from the
/// database; a failed read leaves the previous values (and is logged).
async fn refresh_shared_gauges(app: &crate::app::App) {
    let now = crate::db::ids::db_time(app.clock.now());
    match crate::cluster::store::queue_by_plan(&app.db).await {
        Ok(rows) => {
            let mut seen = std::collections::HashSet::new();
            for (plan, depth, oldest) in rows {
                let age = oldest
                    .and_then(|o| (now - o).to_std().ok())
                    .unwrap_or_default();
                crate::metrics::queue(&plan, depth, age);
                seen.insert(plan);
            }
            for plan in crate::tenancy::model::Plan::ALL {
                if !seen.contains(plan.as_str()) {
                    crate::metrics::queue(plan.as_str(), 0, Duration::ZERO);
                }
            }
        }
        Err(e) => tracing::warn!(error = ?e, "reading the queue for /metrics failed"),
    }
    match crate::cluster::store::running_total(&app.db).await {
        Ok(n) => crate::metrics::running(n),
        Err(e) => tracing::warn!(error = ?e, "reading running executions for /metrics failed"),
    }
    let nodes = crate::cluster::store::all_nodes(&app.db).await;
    let reservations = crate::cluster::store::all_reservations(&app.db).await;
    match (nodes, reservations) {
        (Ok(nodes), Ok(reservations)) => {
            let reserved = crate::cluster::model::reserved_by_gpu(&reservations);
            let wall = crate::cluster::service::wall_now();
            for n in &nodes {
                // As seen now: a node that went silent degrades before the reaper runs.
                let (score, status) = crate::cluster::view(n, wall, &app.config.cluster);
                crate::metrics::node(&n.name, status.as_str(), score, n.in_flight);
                for g in n.gpus() {
                    crate::metrics::gpu(
                        &n.name,
                        g.index,
                        g.memory_total_mb,
                        g.memory_used_mb,
                        reserved.get(&(n.id.clone(), g.index)).copied().unwrap_or(0),
                        g.utilization_percent,
                        g.temperature_c,
                    );
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = ?e, "reading nodes for /metrics failed");
        }
    }
}
