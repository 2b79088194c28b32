//! `GET /audit/export?from=…&to=…&format=csv|ndjson`: the caller's tenant's audit trail
//! as a streamed download. Authorized like GraphQL (`Authorization: Bearer` with an
//! access token or an API key) and by the `audit.export` permission; every export is
//! itself recorded (`audit.exported`) before the first byte is sent.

use crate::audit::chain::KeysOf as _;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::AppState;
use super::caller::Caller;
use crate::audit::export::{Format, Range};
use crate::audit::{Entry, Severity};
use crate::auth::Principal;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::graphql::{ClientInfo, RequestId};
use crate::rbac::Permission;

struct Params {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    format: Format,
}

fn params(uri: &Uri) -> AppResult<Params> {
    let mut p = Params {
        from: None,
        to: None,
        format: Format::Ndjson,
    };
    let time = |name: &str, v: &str| {
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                AppError::bad_input(
                    name,
                    format!("`{name}` must be an RFC 3339 time (2026-01-31T00:00:00Z)"),
                )
            })
    };
    for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "from" => p.from = Some(time("from", &v)?),
            "to" => p.to = Some(time("to", &v)?),
            "format" => {
                p.format = Format::parse(&v).ok_or_else(|| {
                    AppError::bad_input("format", "`format` must be csv or ndjson")
                })?;
            }
            other => {
                return Err(AppError::bad_input(
                    other,
                    format!("unknown parameter `{other}` (from, to, format)"),
                ));
            }
        }
    }
    if let (Some(f), Some(t)) = (p.from, p.to) {
        if f > t {
            return Err(AppError::bad_input("to", "`to` must not be before `from`"));
        }
    }
    Ok(p)
}

/// The handler.
pub async fn export(State(state): State<AppState>, caller: Caller, uri: Uri) -> Response {
    let Caller {
        principal,
        client,
        request_id,
        ..
    } = caller;
    let result = match principal {
        Some(p) => run(&state, &p, &client, &request_id, &uri).await,
        None => Err(AppError::unauthenticated(
            "use Authorization: Bearer <token>",
        )),
    };
    result.unwrap_or_else(|e| super::caller::refusal(e, &request_id))
}

async fn run(
    state: &AppState,
    p: &Principal,
    client: &ClientInfo,
    request_id: &RequestId,
    uri: &Uri,
) -> AppResult<Response> {
    let app = &state.app;
    let origin = p.origin(Some(client), Some(request_id));
    let now = db_time(app.clock.now());
    if p.second_factor_missing {
        return Err(crate::graphql::guards::mfa_required_by_tenant());
    }
    if !p.permissions.contains(&Permission::AuditExport) {
        let denied = Entry::change(
            &origin,
            "access.denied",
            "endpoint",
            "/audit/export",
            Some(serde_json::json!({ "permission": Permission::AuditExport.as_str() })),
            now,
        )
        .severity(Severity::Warning)
        .failed("missing the audit.export permission");
        if let Err(e) = crate::audit::record(&app.db, &denied).await {
            tracing::warn!(error = ?e, "could not record a denied export");
        }
        return Err(
            AppError::forbidden("this requires the audit.export permission")
                .with_detail("permission", Permission::AuditExport.as_str()),
        );
    }
    let tenant = crate::tenancy::store::find(&app.db, p.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    crate::tenancy::features::require(&tenant, crate::tenancy::features::Feature::AuditExport)?;
    let q = params(uri)?;
    crate::auth::limits::check_request(app, Some(p), client.ip, 1)
        .await
        .map_err(|refusal| refusal.error())?;
    crate::auth::limits::check_expensive(app, p).await?;
    let entry = Entry::change(
        &origin,
        "audit.exported",
        "audit_log",
        "",
        Some(serde_json::json!({
            "from": q.from.map(|t| t.to_rfc3339()),
            "to": q.to.map(|t| t.to_rfc3339()),
            "format": q.format.extension(),
        })),
        now,
    );
    let rec = crate::audit::record(&app.db, &entry).await?;
    let range = Range {
        tenant: p.tenant_id,
        from: q.from.map(db_time),
        to: q.to.map(db_time),
        upto: rec.seq,
    };
    let body = Body::from_stream(crate::audit::export::stream(
        app.db.clone(),
        range,
        q.format,
    ));
    let filename = format!(
        "audit-{}-{}.{}",
        p.tenant_id,
        now.format("%Y%m%dT%H%M%SZ"),
        q.format.extension()
    );
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(q.format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&rec.seq.to_string()) {
        h.insert("x-audit-last-sequence", v);
    }
    // The export's last record as a signed checkpoint: keep it with the file, and pass
    // it to `verifyAuditChain(checkpoint:)` later to prove nothing up to it changed.
    let checkpoint = crate::audit::chain::Checkpoint::sign(
        app.db.chain_keys().as_deref(),
        &rec.tenant_id.to_string(),
        rec.seq,
        &rec.hash,
        app.clock.now().to_rfc3339(),
    );
    if let Some(v) = serde_json::to_string(&checkpoint)
        .ok()
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        h.insert("x-audit-checkpoint", v);
    }
    Ok(resp)
}
