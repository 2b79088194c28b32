//! The event bus: every execution event goes through here on its way to subscribers.
//!
//! In-process it is a tokio broadcast channel. Between processes (several `serve`
//! replicas and `worker` processes on one PostgreSQL) the writer also sends the event with
//! `pg_notify('agentplane_events', …)` in the transaction that stores it, and every process
//! relays what it hears into its own bus ([`relay_postgres`]), skipping its own events.
//! On SQLite, where there is no NOTIFY, every process follows the stored event log by
//! row order instead ([`follow_sqlite`]), so a `serve` and a separate `worker` on one file
//! see each other's events (and QUEUED events wake idle workers).
//! A Redis fan-out can later replace the relay without touching publishers or
//! subscribers. Events are also stored (`execution_events`), so a subscriber that falls
//! behind re-reads what it missed instead of losing it; after the relay reconnects
//! (notifications may have been lost meanwhile) the bus signals `resync`, and
//! subscribers re-read the log.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::executions::model::ExecutionEvent;

/// PostgreSQL channel that carries events between processes.
pub const EVENTS_CHANNEL: &str = "agentplane_events";
/// PostgreSQL channel that wakes workers when work is enqueued.
pub const QUEUE_CHANNEL: &str = "agentplane_queue";

/// An event as sent between processes.
#[derive(Serialize, Deserialize)]
pub struct Envelope {
    /// The sending process (its node id), so it can skip its own events.
    pub origin: String,
    /// The event.
    pub event: ExecutionEvent,
}

/// The process's bus.
pub struct EventBus {
    tx: broadcast::Sender<Arc<ExecutionEvent>>,
    /// This process's id (also its node id in the engine).
    pub origin: String,
    /// Woken when work is enqueued (locally, or by NOTIFY from another process).
    pub queue_wake: Notify,
    /// Node health changes and cluster ticks. Every process reads the shared `nodes`
    /// table on each heartbeat and publishes what changed, so no cross-process relay is
    /// needed for these.
    cluster: broadcast::Sender<Arc<crate::cluster::ClusterEvent>>,
    /// Bumped when events from other processes may have been missed (the relay lost its
    /// connection): subscribers then re-read the stored log.
    pub resync: tokio::sync::watch::Sender<u64>,
    /// Events this process published, remembered while a log follower runs so it does
    /// not publish them twice.
    local: Mutex<LocalEvents>,
    track_local: AtomicBool,
}

/// A bounded memory of `(execution, seq)` published here.
#[derive(Default)]
struct LocalEvents {
    set: HashSet<(crate::executions::model::ExecutionId, i64)>,
    order: VecDeque<(crate::executions::model::ExecutionId, i64)>,
}

const LOCAL_EVENTS_KEPT: usize = 65_536;

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with room for 4096 undelivered events per subscriber.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (cluster, _) = broadcast::channel(1024);
        Self {
            tx,
            origin: uuid::Uuid::now_v7().to_string(),
            queue_wake: Notify::new(),
            cluster,
            resync: tokio::sync::watch::Sender::new(0),
            local: Mutex::default(),
            track_local: AtomicBool::new(false),
        }
    }

    /// Signals subscribers that events may have been missed.
    pub fn request_resync(&self) {
        self.resync.send_modify(|n| *n += 1);
    }

    /// Delivers a cluster event to this process's subscribers.
    pub fn publish_cluster(&self, ev: crate::cluster::ClusterEvent) {
        let _ = self.cluster.send(Arc::new(ev));
    }

    /// A new cluster subscription.
    pub fn subscribe_cluster(&self) -> broadcast::Receiver<Arc<crate::cluster::ClusterEvent>> {
        self.cluster.subscribe()
    }

    /// Delivers an event to this process's subscribers.
    pub fn publish(&self, ev: ExecutionEvent) {
        if AtomicBool::load(&self.track_local, Ordering::Relaxed) {
            if let Ok(mut l) = self.local.lock() {
                let key = (ev.execution_id, ev.seq);
                if l.set.insert(key) {
                    l.order.push_back(key);
                }
                while l.order.len() > LOCAL_EVENTS_KEPT {
                    if let Some(old) = l.order.pop_front() {
                        l.set.remove(&old);
                    }
                }
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Delivers an event read from another process (not remembered as local).
    fn publish_relayed(&self, ev: ExecutionEvent) {
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Whether this process published `ev` itself (forgetting it: each is seen once).
    fn was_local(&self, ev: &ExecutionEvent) -> bool {
        self.local
            .lock()
            .map(|mut l| l.set.remove(&(ev.execution_id, ev.seq)))
            .unwrap_or(false)
    }

    /// A new subscription (sees events published from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ExecutionEvent>> {
        self.tx.subscribe()
    }

    /// The JSON payload for `pg_notify`.
    pub fn envelope(&self, ev: &ExecutionEvent) -> String {
        serde_json::to_string(&Envelope {
            origin: self.origin.clone(),
            event: ev.clone(),
        })
        .unwrap_or_default()
    }
}

/// Listens on PostgreSQL for other processes' events and enqueue wake-ups and relays
/// them into `bus`, reconnecting with backoff until `stop`.
pub async fn relay_postgres(url: String, bus: Arc<EventBus>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    let mut connected_before = false;
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = AsyncPgConnection::establish(&url) => c,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "event relay cannot connect; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let listen = diesel::sql_query(format!("LISTEN {EVENTS_CHANNEL}; "))
            .execute(&mut conn)
            .await
            .and(
                diesel::sql_query(format!("LISTEN {QUEUE_CHANNEL}"))
                    .execute(&mut conn)
                    .await,
            );
        if let Err(e) = listen {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(200);
        // Whatever was enqueued while we were not listening is found by polling; wake once.
        bus.queue_wake.notify_waiters();
        // Events sent while we were not listening are in the log: subscribers re-read it.
        if connected_before {
            bus.request_resync();
        }
        connected_before = true;
        let mut stream = std::pin::pin!(conn.notifications_stream());
        loop {
            let n = tokio::select! {
                () = stop.cancelled() => return,
                n = stream.next() => n,
            };
            match n {
                Some(Ok(n)) if n.channel == QUEUE_CHANNEL => bus.queue_wake.notify_waiters(),
                Some(Ok(n)) => match serde_json::from_str::<Envelope>(&n.payload) {
                    Ok(env) if env.origin != bus.origin => bus.publish(env.event),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed event notification"),
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "event relay connection failed; reconnecting");
                    break;
                }
                None => break,
            }
        }
    }
}

/// How often [`follow_sqlite`] reads the event log.
pub const SQLITE_FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// SQLite's cross-process path: follows `execution_events` in row order (rows are
/// numbered in commit order under SQLite's single writer) and publishes the events other
/// processes wrote into `bus`; a QUEUED event wakes idle workers. Starts at the end of
/// the log; stops with `stop`.
pub async fn follow_sqlite(
    url: crate::config::DatabaseUrl,
    bus: Arc<EventBus>,
    stop: CancellationToken,
) {
    use diesel::sql_types::{BigInt, Text};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        pos: i64,
        #[diesel(sql_type = Text)]
        payload: String,
    }
    // Its own pool, so polling neither queues behind requests nor counts in
    // `App::statements`.
    let db = loop {
        match crate::db::DbPool::connect(&url).await {
            Ok(db) => break db,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "event-log follower cannot open the database; retrying"
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let crate::db::DbPool::Sqlite(pool) = &db else {
        return;
    };
    AtomicBool::store(&bus.track_local, true, Ordering::Relaxed);
    let mut last: Option<i64> = None;
    loop {
        let read = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            let rows: Vec<Row> = match last {
                None => diesel::sql_query(
                    "SELECT COALESCE(MAX(rowid), 0) AS pos, '' AS payload FROM execution_events",
                )
                .load(&mut *conn)
                .await
                .map_err(|e| e.to_string())?,
                Some(after) => diesel::sql_query(
                    "SELECT rowid AS pos, payload FROM execution_events WHERE rowid > ? \
                     ORDER BY rowid LIMIT 1000",
                )
                .bind::<BigInt, _>(after)
                .load(&mut *conn)
                .await
                .map_err(|e| e.to_string())?,
            };
            Ok::<_, String>(rows)
        };
        match read.await {
            Ok(rows) if last.is_none() => {
                last = Some(rows.as_slice().first().map_or(0, |r| r.pos));
                // Work enqueued before this position is found by claiming: wake once.
                bus.queue_wake.notify_waiters();
            }
            Ok(rows) => {
                let full = rows.len() == 1000;
                for r in rows {
                    last = Some(r.pos);
                    let Ok(ev) = serde_json::from_str::<ExecutionEvent>(&r.payload) else {
                        continue;
                    };
                    if bus.was_local(&ev) {
                        continue;
                    }
                    if ev.status == crate::executions::model::ExecutionStatus::Queued {
                        bus.queue_wake.notify_waiters();
                    }
                    bus.publish_relayed(ev);
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the event log failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SQLITE_FOLLOW_INTERVAL) => {}
        }
    }
}
