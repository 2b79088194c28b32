//! Streaming export of a tenant's trail (`GET /audit/export`): records are read in
//! batches by sequence number and written out batch by batch, so memory stays constant
//! however many records the period holds. Each line carries the chain fields (`prevHash`,
//! `hash`, `contextHash`), so an export can be checked offline.

use axum::body::Bytes;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::Stream;

use super::RecordRow;
use crate::db::DbPool;
use crate::db::ids::TenantId;
use crate::db::schema::audit_log;
use crate::error::{AppError, AppResult};

/// Records per read.
pub const BATCH: i64 = 1000;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// Parses `csv` / `ndjson`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(Self::Csv),
            "ndjson" | "jsonl" => Some(Self::Ndjson),
            _ => None,
        }
    }

    /// The response's content type.
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    /// File extension.
    pub const fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Ndjson => "ndjson",
        }
    }
}

/// CSV columns, in order.
pub const CSV_COLUMNS: [&str; 18] = [
    "sequence",
    "id",
    "created_at",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "reason",
    "severity",
    "ip",
    "user_agent",
    "request_id",
    "changes",
    "prev_hash",
    "hash",
    "context_hash",
];

fn time(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn csv_field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

/// Appends one record as a CSV line.
pub fn csv_line(out: &mut String, r: &RecordRow) {
    let seq = r.seq.to_string();
    let at = time(r.created_at);
    let fields: [&str; 18] = [
        &seq,
        &r.id,
        &at,
        &r.actor_type,
        r.actor_id.as_deref().unwrap_or(""),
        &r.action,
        r.resource_type.as_deref().unwrap_or(""),
        r.resource_id.as_deref().unwrap_or(""),
        &r.outcome,
        r.reason.as_deref().unwrap_or(""),
        &r.severity,
        r.ip.as_deref().unwrap_or(""),
        r.user_agent.as_deref().unwrap_or(""),
        r.request_id.as_deref().unwrap_or(""),
        r.changes.as_deref().unwrap_or(""),
        &r.prev_hash,
        &r.hash,
        r.context_hash.as_deref().unwrap_or(""),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, f);
    }
    out.push_str("\r\n");
}

/// Appends one record as a JSON line.
pub fn ndjson_line(out: &mut String, r: &RecordRow) {
    let changes: serde_json::Value = r
        .changes
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(serde_json::Value::Null);
    let v = serde_json::json!({
        "sequence": r.seq,
        "id": r.id,
        "createdAt": time(r.created_at),
        "actorType": r.actor_type,
        "actorId": r.actor_id,
        "action": r.action,
        "resourceType": r.resource_type,
        "resourceId": r.resource_id,
        "outcome": r.outcome,
        "reason": r.reason,
        "severity": r.severity,
        "ip": r.ip,
        "userAgent": r.user_agent,
        "requestId": r.request_id,
        "changes": changes,
        "prevHash": r.prev_hash,
        "hash": r.hash,
        "contextHash": r.context_hash,
    });
    out.push_str(&v.to_string());
    out.push('\n');
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Range {
    /// The tenant.
    pub tenant: TenantId,
    /// Created at or after.
    pub from: Option<NaiveDateTime>,
    /// Created at or before.
    pub to: Option<NaiveDateTime>,
    /// Last sequence number included (the chain's end when the export started).
    pub upto: i64,
}

async fn batch(db: &DbPool, r: &Range, after: i64) -> AppResult<Vec<RecordRow>> {
    let t = r.tenant.to_string();
    let (from, to, upto) = (r.from, r.to, r.upto);
    Ok(crate::db_run_tenant!(db, r.tenant, |conn| {
        let mut q = audit_log::table
            .filter(audit_log::tenant_id.eq(&t))
            .filter(audit_log::seq.gt(after))
            .filter(audit_log::seq.le(upto))
            .into_boxed();
        if let Some(f) = from {
            q = q.filter(audit_log::created_at.ge(f));
        }
        if let Some(to) = to {
            q = q.filter(audit_log::created_at.le(to));
        }
        q.order(audit_log::seq.asc())
            .limit(BATCH)
            .select(RecordRow::as_select())
            .load(conn)
            .await?
    }))
}

/// The first sequence number to export (skips what lies before `from`, by index).
async fn start(db: &DbPool, r: &Range) -> AppResult<i64> {
    let Some(from) = r.from else { return Ok(0) };
    let t = r.tenant.to_string();
    Ok(crate::db_run_tenant!(db, r.tenant, |conn| {
        audit_log::table
            .filter(audit_log::tenant_id.eq(&t))
            .filter(audit_log::created_at.ge(from))
            .select(diesel::dsl::min(audit_log::seq))
            .first::<Option<i64>>(conn)
            .await?
            .map_or(r.upto, |s| s - 1)
    }))
}

/// The export body: a header (CSV), then one chunk per batch. A read error mid-way ends
/// the body with an error, so the client sees a broken transfer, not a short file.
pub fn stream(
    db: DbPool,
    range: Range,
    format: Format,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    async_stream::stream! {
        if format == Format::Csv {
            yield Ok(Bytes::from(format!("{}\r\n", CSV_COLUMNS.join(","))));
        }
        let mut last = match start(&db, &range).await {
            Ok(s) => s,
            Err(e) => {
                yield Err(io_error(&e));
                return;
            }
        };
        loop {
            let rows = match batch(&db, &range, last).await {
                Ok(rows) => rows,
                Err(e) => {
                    yield Err(io_error(&e));
                    return;
                }
            };
            let Some(end) = rows.last().map(|r| r.seq) else { return };
            let mut out = String::with_capacity(rows.len() * 512);
            for r in &rows {
                match format {
                    Format::Csv => csv_line(&mut out, r),
                    Format::Ndjson => ndjson_line(&mut out, r),
                }
            }
            last = end;
            let full = i64::try_from(rows.len()).unwrap_or(0) == BATCH;
            drop(rows);
            yield Ok(Bytes::from(out));
            if !full {
                return;
            }
        }
    }
}

fn io_error(e: &AppError) -> std::io::Error {
    tracing::error!(error = ?e, "audit export failed mid-stream");
    std::io::Error::other("audit export failed")
}
