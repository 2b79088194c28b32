//! Deleting a tenant (`deleteTenant`, platform admins). Refused unless the tenant is
//! suspended (nothing of it runs or signs in), is not the system tenant, has no queued or
//! running execution, and the caller repeats its slug. Then:
//!
//! 1. **Export first.** The tenant and its whole audit chain (hashes included, so it can
//!    be verified offline) are written as NDJSON to
//!    `AGENTPLANE_EXPORT_DIR/tenant-<slug>-<id>.ndjson` (mode 0600): each attempt writes
//!    its own file and links it into place when complete, unless one is there already —
//!    the first complete export stands (the chain may be partly gone by a later
//!    attempt). Of two deletions at once, the one that removes the tenant row records it;
//!    the other answers `NOT_FOUND`.
//! 2. **Remove in batches.** Every table's rows of the tenant, children before parents,
//!    at most [`BATCH`] rows per statement, each statement its own transaction, so the
//!    database never holds one huge delete. The audit chain goes last but one (on
//!    PostgreSQL through `agentplane_audit_purge_tenant`, the only way audit records can
//!    be deleted there), then the tenant row.
//! 3. **Recorded in the system chain**: `tenant.deleted` (CRITICAL) with the export's
//!    path, SHA-256 and record count, and the rows removed.
//!
//! An interrupted deletion is resumed by calling `deleteTenant` again. The statements
//! name tables, not domain types: removing a tenant touches every domain's storage.

use sha2::Digest as _;

use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::db::DbPool;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::tenancy::model::{TenantId, TenantRow, TenantStatus};

/// Rows removed per statement.
pub const BATCH: i64 = 1_000;

/// What a deletion did.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The tenant as it was.
    pub tenant: TenantRow,
    /// The export file.
    pub export_path: String,
    /// Its SHA-256 (hex).
    pub export_sha256: String,
    /// Audit records in it.
    pub export_records: u64,
    /// Rows removed, all tables together.
    pub rows_deleted: u64,
}

/// Tables holding a tenant's rows, children before parents, with the condition that
/// selects them (`{p}`: the tenant id).
const TABLES: &[(&str, &str)] = &[
    ("execution_events", "tenant_id = {p}"),
    ("execution_steps", "tenant_id = {p}"),
    ("execution_placements", "tenant_id = {p}"),
    ("gpu_reservations", "tenant_id = {p}"),
    ("executions", "tenant_id = {p}"),
    ("schedules", "tenant_id = {p}"),
    ("workflow_versions", "tenant_id = {p}"),
    ("workflows", "tenant_id = {p}"),
    ("secrets", "tenant_id = {p}"),
    ("team_members", "tenant_id = {p}"),
    (
        "refresh_tokens",
        "session_id IN (SELECT id FROM sessions WHERE tenant_id = {p})",
    ),
    ("sessions", "tenant_id = {p}"),
    ("teams", "tenant_id = {p}"),
    (
        "password_tokens",
        "user_id IN (SELECT id FROM users WHERE tenant_id = {p})",
    ),
    ("email_changes", "tenant_id = {p}"),
    ("mfa_challenges", "tenant_id = {p}"),
    ("mfa_recovery_codes", "tenant_id = {p}"),
    ("mfa_factors", "tenant_id = {p}"),
    ("api_keys", "tenant_id = {p}"),
    ("trusted_documents", "tenant_id = {p}"),
    ("oidc_logins", "tenant_id = {p}"),
    ("oidc_providers", "tenant_id = {p}"),
    ("tenant_usage", "tenant_id = {p}"),
    ("users", "tenant_id = {p}"),
    ("roles", "tenant_id = {p}"),
    ("audit_actors", "tenant_id = {p}"),
];

/// Deletes suspended tenant `id` (see the module documentation).
pub async fn delete_tenant(
    app: &App,
    origin: &Origin,
    id: TenantId,
    confirm_slug: &str,
) -> AppResult<Deleted> {
    let t = super::tenants::get(app, id).await?;
    if t.is_system {
        return Err(AppError::bad_input(
            "tenantId",
            "the system tenant holds the platform's operators and cannot be deleted",
        ));
    }
    if confirm_slug.trim() != t.slug {
        return Err(AppError::bad_input(
            "confirmSlug",
            "repeat the tenant's slug to confirm: deleting it cannot be undone",
        ));
    }
    if t.status != TenantStatus::Suspended {
        return Err(AppError::conflict(
            "suspend the tenant first (suspendTenant): nothing of it may run or sign in while \
             it is removed",
        )
        .with_detail("reason", "TENANT_NOT_SUSPENDED"));
    }
    let active = scalar(
        &app.db,
        "SELECT COUNT(*) AS n FROM executions WHERE tenant_id = {p} \
         AND status IN ('QUEUED', 'RUNNING')",
        &t.id.to_string(),
    )
    .await?;
    if active > 0 {
        return Err(AppError::conflict(format!(
            "the tenant still has {active} queued or running executions: cancel them (or let \
             them finish), then delete it"
        ))
        .with_detail("reason", "EXECUTIONS_ACTIVE"));
    }
    let (export_path, export_sha256, export_records) = export_once(app, &t).await?;
    let (rows_deleted, removed) = purge(&app.db, &t.id.to_string()).await?;
    app.rights_changed(t.id);
    if !removed {
        // Another request removed it meanwhile, and recorded that.
        return Err(AppError::not_found("tenant"));
    }
    let entry = Entry::change(
        origin,
        "tenant.deleted",
        "tenant",
        t.id,
        Some(serde_json::json!({
            "slug": t.slug,
            "name": t.name,
            "export": {
                "path": export_path,
                "sha256": export_sha256,
                "auditRecords": export_records,
            },
            "rowsDeleted": rows_deleted,
        })),
        db_time(app.clock.now()),
    )
    .severity(Severity::Critical);
    crate::audit::record(&app.db, &entry).await?;
    Ok(Deleted {
        tenant: t,
        export_path,
        export_sha256,
        export_records,
        rows_deleted,
    })
}

fn sql(db: &DbPool, template: &str) -> String {
    match db {
        DbPool::Postgres(_) => template.replace("{p}", "$1"),
        DbPool::Sqlite(_) => template.replace("{p}", "?"),
    }
}

/// A one-number answer (`… AS n`).
#[derive(diesel::QueryableByName)]
struct Scalar {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The number `template` (a query answering `n`, `{p}` the tenant) answers.
async fn scalar(db: &DbPool, template: &str, tenant: &str) -> AppResult<i64> {
    let q = sql(db, template);
    let c: Scalar = crate::db_run!(db, |conn| {
        diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(&q).bind::<diesel::sql_types::Text, _>(tenant),
            conn,
        )
        .await?
    });
    Ok(c.n)
}

/// One batch of `table`'s rows matching `condition`; returns the rows deleted.
async fn delete_batch(db: &DbPool, table: &str, condition: &str, tenant: &str) -> AppResult<u64> {
    let row = match db {
        DbPool::Postgres(_) => "ctid",
        DbPool::Sqlite(_) => "rowid",
    };
    let q = sql(
        db,
        &format!(
            "DELETE FROM {table} WHERE {row} IN \
             (SELECT {row} FROM {table} WHERE {condition} LIMIT {BATCH})"
        ),
    );
    let n = crate::db_run!(db, |conn| {
        diesel_async::RunQueryDsl::execute(
            diesel::sql_query(&q).bind::<diesel::sql_types::Text, _>(tenant),
            conn,
        )
        .await?
    });
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Removes every row of `tenant`; returns the rows removed and whether this call removed
/// the tenant row itself (of two deletions at once, one does).
async fn purge(db: &DbPool, tenant: &str) -> AppResult<(u64, bool)> {
    let mut total = 0;
    for (table, condition) in TABLES {
        loop {
            let n = delete_batch(db, table, condition, tenant).await?;
            total += n;
            if n < u64::try_from(BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
    }
    // The audit chain, then its head.
    loop {
        let n = match db {
            DbPool::Postgres(_) => u64::try_from(
                scalar(
                    db,
                    &format!("SELECT agentplane_audit_purge_tenant({{p}}, {BATCH}) AS n"),
                    tenant,
                )
                .await?,
            )
            .unwrap_or(0),
            DbPool::Sqlite(_) => delete_batch(db, "audit_log", "tenant_id = {p}", tenant).await?,
        };
        total += n;
        if n < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            break;
        }
    }
    total += delete_batch(db, "audit_heads", "tenant_id = {p}", tenant).await?;
    let removed = delete_batch(db, "tenants", "id = {p}", tenant).await?;
    Ok((total + removed, removed == 1))
}

/// An export file's (path, SHA-256, audit records): every line but the header is one.
fn summary(path: &std::path::Path, bytes: &[u8]) -> (String, String, u64) {
    let records = bytes
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    (
        path.display().to_string(),
        format!("{:x}", sha2::Sha256::digest(bytes)),
        u64::try_from(records).unwrap_or(0),
    )
}

/// Writes the final export unless a complete one exists; returns (path, SHA-256,
/// audit records).
async fn export_once(app: &App, t: &TenantRow) -> AppResult<(String, String, u64)> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;

    let dir = &app.config.export_dir;
    let io = |what: &str, e: std::io::Error| {
        AppError::new(
            ErrorCode::Unavailable,
            format!(
                "could not {what} the tenant's export in {} ({e}): fix the directory \
                 (AGENTPLANE_EXPORT_DIR) and delete again",
                dir.display()
            ),
        )
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io("create the directory for", e))?;
    let path = dir.join(format!("tenant-{}-{}.ndjson", t.slug, t.id));
    if let Ok(bytes) = tokio::fs::read(&path).await {
        return Ok(summary(&path, &bytes));
    }
    // Each attempt writes its own file; the first complete one is linked into place
    // (a link never replaces a file), so two deletions at once agree on one export, and
    // one that began after the removal started never replaces it.
    let partial = dir.join(format!(
        ".tenant-{}-{}.{}.partial",
        t.slug,
        t.id,
        uuid::Uuid::now_v7().simple()
    ));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&partial).await.map_err(|e| io("write", e))?;
    let mut digest = sha2::Sha256::new();
    let header = format!(
        "{}\n",
        serde_json::json!({
            "type": "tenant",
            "id": t.id.to_string(),
            "slug": t.slug,
            "name": t.name,
            "plan": t.plan,
            "createdAt": crate::db::ids::utc(t.created_at).to_rfc3339(),
            "exportedAt": app.clock.now().to_rfc3339(),
        })
    );
    digest.update(header.as_bytes());
    file.write_all(header.as_bytes())
        .await
        .map_err(|e| io("write", e))?;
    let range = crate::audit::export::Range {
        tenant: t.id,
        from: None,
        to: None,
        upto: i64::MAX,
    };
    let mut records = 0u64;
    let mut body = std::pin::pin!(crate::audit::export::stream(
        app.db.clone(),
        range,
        crate::audit::export::Format::Ndjson,
    ));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| io("read the audit trail for", e))?;
        records += u64::try_from(chunk.iter().filter(|b| **b == b'\n').count()).unwrap_or(0);
        digest.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| io("write", e))?;
    }
    file.sync_all().await.map_err(|e| io("write", e))?;
    drop(file);
    let linked = tokio::fs::hard_link(&partial, &path).await;
    let _ = tokio::fs::remove_file(&partial).await;
    match linked {
        Ok(()) => Ok((
            path.display().to_string(),
            format!("{:x}", digest.finalize()),
            records,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes = tokio::fs::read(&path).await.map_err(|e| io("read", e))?;
            Ok(summary(&path, &bytes))
        }
        Err(e) => Err(io("write", e)),
    }
}
