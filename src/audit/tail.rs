//! The live tail behind the `auditEvents` subscription.
//!
//! A tail follows one tenant's chain by sequence number, which is gap-free and in commit
//! order (appends serialize on the chain head), so a tail never skips a record and never
//! shows one whose transaction rolled back. It reads new records when a transaction on
//! the pool commits (`DbPool::committed`, called when a `DbPool::tx` commits) and at least every
//! [`POLL`] otherwise, which covers records written by other processes sharing the
//! database (other `serve` replicas, `worker` processes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::RecordRow;
use crate::db::DbPool;
use crate::db::ids::TenantId;
use crate::db::schema::{audit_heads, audit_log};
use crate::error::AppResult;

/// Upper bound on how late a tail sees a record another process wrote.
pub const POLL: Duration = Duration::from_millis(1000);
/// Records read per query.
const BATCH: i64 = 500;

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

/// What a tenant's follower read: the records after sequence number `after` (none when
/// it only tells its starting position).
struct Batch {
    after: i64,
    records: Vec<RecordRow>,
}

/// One follower per tenant, shared by all of that tenant's `auditEvents` subscriptions in
/// this process: an idle subscription costs nothing, and the database sees one read per
/// commit (and per [`POLL`]) per tenant however many dashboards watch it.
#[derive(Default)]
pub struct TailHub {
    tails: Mutex<HashMap<TenantId, broadcast::Sender<Arc<Batch>>>>,
}

impl TailHub {
    /// Batches of `tenant`'s records as they are committed, from now on; starts the
    /// tenant's follower when it is the first subscriber.
    fn subscribe(
        self: &Arc<Self>,
        db: &DbPool,
        tenant: TenantId,
    ) -> broadcast::Receiver<Arc<Batch>> {
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = tails.get(&tenant) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(64);
        tails.insert(tenant, tx.clone());
        tokio::spawn(self.clone().run(db.clone(), tenant, tx));
        rx
    }

    /// The follower of one tenant; ends when its last subscriber is gone.
    async fn run(self: Arc<Self>, db: DbPool, tenant: TenantId, tx: broadcast::Sender<Arc<Batch>>) {
        let mut wake = db.commits();
        let mut last: Option<i64> = None;
        loop {
            {
                let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
                if tx.receiver_count() == 0 {
                    tails.remove(&tenant);
                    return;
                }
            }
            // A read that fails is tried again on the next wake-up; subscribers notice
            // nothing but a delay.
            match last {
                None => match head_seq(&db, tenant).await {
                    Ok(h) => {
                        last = Some(h);
                        // Subscribers that read less than this fill the gap themselves.
                        let _ = tx.send(Arc::new(Batch {
                            after: h,
                            records: Vec::new(),
                        }));
                    }
                    Err(e) => tracing::warn!(error = ?e, "audit tail: reading the head failed"),
                },
                Some(mut at) => loop {
                    match after(&db, tenant, at, BATCH).await {
                        Ok(records) => {
                            let n = records.len();
                            if let Some(r) = records.last() {
                                let after = at;
                                at = r.seq;
                                last = Some(at);
                                let _ = tx.send(Arc::new(Batch { after, records }));
                            }
                            if i64::try_from(n).unwrap_or(0) < BATCH {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = ?e, "audit tail: reading records failed");
                            break;
                        }
                    }
                },
            }
            tokio::select! {
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

    /// Followers running now (one per watched tenant).
    pub fn followers(&self) -> usize {
        self.tails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Every record of `tenant` after sequence number `from` that `keep` accepts, as it is
/// committed, until `stop`. Records already committed are read by this subscription;
/// new ones come from the tenant's shared follower, and a gap between the two (or a
/// subscriber that fell behind) is filled by reading again. A read error ends the stream
/// (the client re-subscribes with the last sequence number it saw).
pub fn follow(
    hub: Arc<TailHub>,
    db: DbPool,
    tenant: TenantId,
    from: i64,
    keep: impl Fn(&RecordRow) -> bool + Send + 'static,
    stop: CancellationToken,
) -> impl Stream<Item = RecordRow> + Send + 'static {
    async_stream::stream! {
        let mut live = hub.subscribe(&db, tenant);
        let mut last = from;
        let mut catch_up = true;
        loop {
            if catch_up {
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
                catch_up = false;
            }
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                b = live.recv() => b,
            };
            match batch {
                Ok(batch) => {
                    if batch.after > last {
                        // Records between what this subscription read and what the
                        // follower saw first: read them, then skip what is already sent.
                        catch_up = true;
                    } else {
                        let seen = last;
                        for r in batch.records.iter().filter(|r| r.seq > seen) {
                            last = r.seq;
                            if keep(r) {
                                yield r.clone();
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
