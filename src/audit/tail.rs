//! The live tail behind the `auditEvents` subscription.
//!
//! A tail follows one tenant's chain by sequence number, which is gap-free and in commit
//! order (appends serialize on the chain head), so a tail never skips a record and never
//! shows one whose transaction rolled back. It reads new records when a transaction in
//! this process commits ([`committed`], called by `db_tx!`) and at least every
//! [`POLL`] otherwise, which covers records written by other processes sharing the
//! database (other `serve` replicas, `worker` processes).

use std::sync::LazyLock;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::RecordRow;
use crate::db::DbPool;
use crate::db::schema::{audit_heads, audit_log};
use crate::error::AppResult;
use crate::tenancy::TenantId;

/// Upper bound on how late a tail sees a record another process wrote.
pub const POLL: Duration = Duration::from_millis(1000);
/// Records read per query.
const BATCH: i64 = 500;

static COMMITS: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Called after every committed write transaction in this process.
pub fn committed() {
    COMMITS.send_modify(|n| *n = n.wrapping_add(1));
}

/// The sequence number of `tenant`'s newest record (0 for an empty chain).
pub async fn head_seq(db: &DbPool, tenant: TenantId) -> AppResult<i64> {
    let t = tenant.to_string();
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        audit_heads::table
            .find(&t)
            .select(audit_heads::seq)
            .first::<i64>(conn)
            .await
            .optional()?
            .unwrap_or(0)
    }))
}

/// Records of `tenant` after sequence number `after`, oldest first, at most `limit`.
pub async fn after(
    db: &DbPool,
    tenant: TenantId,
    after: i64,
    limit: i64,
) -> AppResult<Vec<RecordRow>> {
    let t = tenant.to_string();
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        audit_log::table
            .filter(audit_log::tenant_id.eq(&t))
            .filter(audit_log::seq.gt(after))
            .order(audit_log::seq.asc())
            .limit(limit)
            .select(RecordRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Every record of `tenant` after sequence number `from` that `keep` accepts, as it is
/// committed, until `stop`. A read error ends the stream (the client re-subscribes with
/// the last sequence number it saw).
pub fn follow(
    db: DbPool,
    tenant: TenantId,
    from: i64,
    keep: impl Fn(&RecordRow) -> bool + Send + 'static,
    stop: CancellationToken,
) -> impl Stream<Item = RecordRow> + Send + 'static {
    async_stream::stream! {
        let mut wake = COMMITS.subscribe();
        let mut last = from;
        loop {
            // Drain everything committed so far.
            loop {
                let batch = match after(&db, tenant, last, BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = ?e, "audit tail read failed; ending the stream");
                        return;
                    }
                };
                let n = batch.len();
                for r in batch {
                    last = r.seq;
                    if keep(&r) {
                        yield r;
                    }
                }
                if i64::try_from(n).unwrap_or(0) < BATCH {
                    break;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                r = wake.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // Coalesce bursts of commits into one read.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
