//! Retention: each tenant's `dataRetentionDays` is enforced by a background job that
//! deletes expired audit records and finished executions, in short batches (each its
//! own transaction), so no lock is held for long.
//!
//! Audit records are deleted only as a prefix of the chain, oldest first, stopping at the
//! first record that has not expired; the chain head's checkpoint then holds the sequence
//! number and hash of the last deleted record, so verification starts from the oldest
//! retained record and still proves it links to what came before. On PostgreSQL the
//! deletes run in a transaction that declares itself the retention job
//! (`agentplane.audit_retention`), the only way past the append-only trigger. Each run that
//! deleted anything appends an `audit.retention_applied` record to the tenant's chain.
//!
//! Executions of the current calendar month are kept whatever the setting, because the
//! monthly execution quota counts them.

use crate::audit::chain::KeysOf as _;
use chrono::{Datelike as _, Duration, NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::db::DbPool;
use crate::db::ids::TenantId;
use crate::db::ids::db_time;
use crate::db::schema::{audit_heads, audit_log, executions, tenants};
use crate::error::AppResult;
use crate::executions::model::ExecutionStatus;

/// Audit records deleted per transaction.
pub const AUDIT_BATCH: i64 = 1000;
/// Executions deleted per transaction (their steps and events go with them).
pub const EXECUTION_BATCH: i64 = 200;

/// What one run did for one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Audit records deleted.
    pub audit_records: i64,
    /// Executions deleted.
    pub executions: i64,
    /// The chain's checkpoint afterwards (last deleted sequence number).
    pub checkpoint: i64,
}

/// Deletes one batch of `tenant`'s expired audit records; returns (deleted, checkpoint).
async fn audit_batch(
    db: &DbPool,
    tenant: TenantId,
    cutoff: NaiveDateTime,
) -> AppResult<(i64, i64)> {
    let pg = matches!(db, DbPool::Postgres(_));
    let t = tenant.to_string();
    let keys = db.chain_keys();
    db.tx(tenant, async |conn| {
        crate::on_conn!(conn, |conn| {
            // Lock the chain head: appends and other retention runs wait for this batch.
            let locked = diesel::update(audit_heads::table.find(&t))
                .set(audit_heads::seq.eq(audit_heads::seq))
                .execute(&mut *conn)
                .await?;
            if locked == 0 {
                return Ok((0, 0));
            }
            let checkpoint: i64 = audit_heads::table
                .find(&t)
                .select(audit_heads::checkpoint_seq)
                .first(&mut *conn)
                .await?;
            let rows: Vec<(i64, NaiveDateTime, String)> = audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.gt(checkpoint))
                .order(audit_log::seq.asc())
                .limit(AUDIT_BATCH)
                .select((audit_log::seq, audit_log::created_at, audit_log::hash))
                .load(&mut *conn)
                .await?;
            // The expired prefix, in chain order, with no gap.
            let mut last: Option<(i64, String)> = None;
            for (expect, (seq, at, hash)) in (checkpoint + 1..).zip(rows) {
                if at >= cutoff || seq != expect {
                    break;
                }
                last = Some((seq, hash));
            }
            let Some((last_seq, last_hash)) = last else {
                return Ok((0, checkpoint));
            };
            // The new checkpoint is signed: moving it without the chain key is detected.
            let sig = keys
                .as_deref()
                .and_then(super::chain::ChainKeys::current)
                .map(|k| k.tag(&super::chain::checkpoint_message(&t, last_seq, &last_hash)));
            if pg {
                // Only the guarded function may delete audit records on PostgreSQL.
                #[derive(diesel::QueryableByName)]
                struct Pruned {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let pruned: Pruned =
                    diesel::sql_query("SELECT agentplane_audit_prune($1, $2, $3) AS n")
                        .bind::<diesel::sql_types::Text, _>(&t)
                        .bind::<diesel::sql_types::BigInt, _>(last_seq)
                        .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(&sig)
                        .get_result(&mut *conn)
                        .await?;
                return Ok((pruned.n, last_seq));
            }
            let deleted = diesel::delete(
                audit_log::table
                    .filter(audit_log::tenant_id.eq(&t))
                    .filter(audit_log::seq.gt(checkpoint))
                    .filter(audit_log::seq.le(last_seq)),
            )
            .execute(&mut *conn)
            .await?;
            diesel::update(audit_heads::table.find(&t))
                .set((
                    audit_heads::checkpoint_seq.eq(last_seq),
                    audit_heads::checkpoint_hash.eq(&last_hash),
                    audit_heads::checkpoint_sig.eq(&sig),
                ))
                .execute(&mut *conn)
                .await?;
            Ok((i64::try_from(deleted).unwrap_or(0), last_seq))
        })
    })
    .await
}

/// Deletes one batch of `tenant`'s finished executions older than `cutoff` and created
/// before `keep_from`.
async fn execution_batch(
    db: &DbPool,
    tenant: TenantId,
    cutoff: NaiveDateTime,
    keep_from: NaiveDateTime,
) -> AppResult<i64> {
    let t = tenant.to_string();
    db.tx(tenant, async |conn| {
        crate::on_conn!(conn, |conn| {
            let ids: Vec<String> = executions::table
                .filter(executions::tenant_id.eq(&t))
                .filter(executions::finished_at.lt(cutoff))
                .filter(executions::created_at.lt(keep_from))
                .filter(executions::status.eq_any([
                    ExecutionStatus::Succeeded,
                    ExecutionStatus::Failed,
                    ExecutionStatus::Cancelled,
                    ExecutionStatus::TimedOut,
                ]))
                .select(executions::id)
                .limit(EXECUTION_BATCH)
                .load(&mut *conn)
                .await?;
            if ids.is_empty() {
                return Ok(0);
            }
            let n = diesel::delete(
                executions::table
                    .filter(executions::tenant_id.eq(&t))
                    .filter(executions::id.eq_any(&ids)),
            )
            .execute(&mut *conn)
            .await?;
            Ok(i64::try_from(n).unwrap_or(0))
        })
    })
    .await
}

fn month_start(now: NaiveDateTime) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(now.year(), now.month(), 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or(now)
}

/// Applies `days` of retention to `tenant` as of `now`.
pub async fn apply(
    db: &DbPool,
    tenant: TenantId,
    days: i64,
    now: NaiveDateTime,
) -> AppResult<Applied> {
    let cutoff = now - Duration::days(days);
    let mut out = Applied::default();
    loop {
        let (n, cp) = audit_batch(db, tenant, cutoff).await?;
        out.audit_records += n;
        out.checkpoint = cp;
        if n < AUDIT_BATCH {
            break;
        }
    }
    let keep_from = month_start(now);
    loop {
        let n = execution_batch(db, tenant, cutoff, keep_from).await?;
        out.executions += n;
        if n < EXECUTION_BATCH {
            break;
        }
    }
    if out.audit_records > 0 || out.executions > 0 {
        let entry = super::Entry::change(
            &super::Origin::system(tenant),
            "audit.retention_applied",
            "tenant",
            tenant,
            Some(serde_json::json!({
                "retentionDays": days,
                "cutoff": crate::db::ids::utc(cutoff).to_rfc3339(),
                "auditRecordsDeleted": out.audit_records,
                "executionsDeleted": out.executions,
                "checkpointSequence": out.checkpoint,
            })),
            now,
        );
        super::record(db, &entry).await?;
    }
    Ok(out)
}

/// One pass over every tenant.
pub async fn run_once(app: &App) -> AppResult<Vec<(TenantId, Applied)>> {
    let list: Vec<(String, i64)> = crate::db_run!(&app.db, |conn| {
        tenants::table
            .select((tenants::id, tenants::data_retention_days))
            .order(tenants::id.asc())
            .load(conn)
            .await?
    });
    let now = db_time(app.clock.now());
    let mut out = Vec::new();
    for (id, days) in list {
        let Ok(uuid) = uuid::Uuid::parse_str(&id) else {
            continue;
        };
        let tenant = TenantId(uuid);
        let applied = apply(&app.db, tenant, days.max(1), now).await?;
        if applied != Applied::default() {
            tracing::info!(
                tenant = %tenant,
                audit_records = applied.audit_records,
                executions = applied.executions,
                checkpoint = applied.checkpoint,
                "retention applied"
            );
            out.push((tenant, applied));
        }
    }
    Ok(out)
}

/// Runs [`run_once`] every `engine.retention_interval` (first pass right away) until
/// `stop`.
pub async fn retention_loop(app: std::sync::Arc<App>, stop: CancellationToken) {
    let every = app.config.engine.retention_interval;
    loop {
        if let Err(e) = run_once(&app).await {
            tracing::warn!(error = ?e, "retention pass failed");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
