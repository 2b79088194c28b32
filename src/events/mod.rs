//! The event bus: every execution event goes through here on its way to subscribers.
//! The bus is generic over its two event types (it knows no domain): `App` instantiates
//! it with the executions' and the cluster's events ([`crate::app::Bus`]).
//!
//! In-process it is a tokio broadcast channel. Between processes (several `serve`
//! replicas and `worker` processes on one PostgreSQL) the writer also sends the event with
//! `pg_notify('agentplane_events', …)` in the transaction that stores it, and every process
//! relays what it hears into its own bus ([`relay_postgres`]), skipping its own events.
//! On SQLite, where there is no NOTIFY, every process follows the stored event log by
//! row order instead (`executions::relay::follow_sqlite`), so a `serve` and a separate `worker` on one file
//! see each other's events (and QUEUED events wake idle workers).
//! With `REDIS_URL` on PostgreSQL, a Redis Stream carries them instead ([`redis`]), and
//! NOTIFY is the fallback while Redis is down. Events are also stored (`execution_events`), so a subscriber that falls
//! behind re-reads what it missed instead of losing it; after the relay reconnects
//! (notifications may have been lost meanwhile) the bus signals `resync`, and
//! subscribers re-read the log.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod redis;

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// What the bus carries between processes: serializable, and identified by a stream
/// (one execution) and a gap-free sequence number in it.
pub trait BusEvent: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// `(stream, sequence)`: a follower skips the events its own process published.
    fn key(&self) -> (uuid::Uuid, i64);

    /// Whether it means new work (wakes idle workers of every process).
    fn wakes_workers(&self) -> bool {
        false
    }
}

/// PostgreSQL channel that carries events between processes (its base name: see
/// [`listen_all`]).
pub const EVENTS_CHANNEL: &str = "agentplane_events";
/// PostgreSQL channel that wakes workers when work is enqueued.
pub const QUEUE_CHANNEL: &str = "agentplane_queue";

/// An event as sent between processes.
#[derive(Serialize, Deserialize)]
pub struct Envelope<E> {
    /// The sending process (its node id), so it can skip its own events.
    pub origin: String,
    /// The event.
    pub event: E,
}

/// The process's bus: events `E` (stored, relayed between processes) and notices `C`
/// (process-local: every process derives them itself).
pub struct EventBus<E, C> {
    tx: broadcast::Sender<Arc<E>>,
    /// This process's id (also its node id in the engine).
    pub origin: String,
    /// Woken when work is enqueued (locally, or by NOTIFY from another process).
    pub queue_wake: Notify,
    /// Node health changes and cluster ticks. Every process reads the shared `nodes`
    /// table on each heartbeat and publishes what changed, so no cross-process relay is
    /// needed for these.
    cluster: broadcast::Sender<Arc<C>>,
    /// Bumped when events from other processes may have been missed (the relay lost its
    /// connection): subscribers then re-read the stored log.
    pub resync: tokio::sync::watch::Sender<u64>,
    /// Events this process published, remembered while a log follower runs so it does
    /// not publish them twice.
    local: Mutex<LocalEvents>,
    track_local: AtomicBool,
    /// The Redis fan-out, when `REDIS_URL` is set on PostgreSQL.
    redis: std::sync::OnceLock<Arc<redis::RedisFanout>>,
    /// PostgreSQL: the sender of NOTIFYs after commit (see [`EventBus::use_pg_notifier`]).
    pg_notifier: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// A subscriber's end of [`EventBus::resync`].
pub type ResyncReceiver = tokio::sync::watch::Receiver<u64>;

/// Waits for the next resync signal and gives the receiver back for the wait after it
/// (`None` once the bus is gone). An owned future: a subscription stream keeps one
/// pinned across its events and replaces it only when it fires, where a `changed()`
/// created beside every `recv()` joined, then left, the signal's shared waiter list at
/// every event, for every subscriber (two turns of its lock; polling a registered wait
/// again is one, and streams poll it only when no event is waiting).
pub async fn next_resync(mut rx: ResyncReceiver) -> Option<ResyncReceiver> {
    rx.changed().await.ok().map(|()| rx)
}

/// A bounded memory of `(execution, seq)` published here.
#[derive(Default)]
struct LocalEvents {
    set: HashSet<(uuid::Uuid, i64)>,
    order: VecDeque<(uuid::Uuid, i64)>,
}

const LOCAL_EVENTS_KEPT: usize = 65_536;

impl<E: BusEvent, C> Default for EventBus<E, C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: BusEvent, C> EventBus<E, C> {
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
            redis: std::sync::OnceLock::new(),
            pg_notifier: std::sync::OnceLock::new(),
        }
    }

    /// Signals subscribers that events may have been missed.
    pub fn request_resync(&self) {
        self.resync.send_modify(|n| *n += 1);
    }

    /// Delivers a cluster event to this process's subscribers.
    pub fn publish_cluster(&self, ev: C) {
        let _ = self.cluster.send(Arc::new(ev));
    }

    /// A new cluster subscription.
    pub fn subscribe_cluster(&self) -> broadcast::Receiver<Arc<C>> {
        self.cluster.subscribe()
    }

    /// Delivers an event to this process's subscribers.
    pub fn publish(&self, ev: E) {
        if AtomicBool::load(&self.track_local, Ordering::Relaxed) {
            if let Ok(mut l) = self.local.lock() {
                let key = ev.key();
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
        if let Some(r) = self.redis.get()
            && r.is_live()
        {
            r.send(self.envelope(&ev));
        } else if let Some(n) = self.pg_notifier.get() {
            let _ = n.send(self.envelope(&ev));
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Attaches the NOTIFY sender (once, at start-up, PostgreSQL): events published here
    /// go to other processes by NOTIFY *after* their transaction committed, batched, from
    /// a transaction of their own that does not wait for its commit to reach disk. A
    /// NOTIFY inside a writer's transaction holds PostgreSQL's global notify lock through
    /// that transaction's commit and WAL flush, so every notifying writer of the cluster
    /// commits one after another (measured: the engine stopped at ~310 executions/s, its
    /// commits waiting on that lock). The stored log stays the source of truth: a
    /// notification lost to a crash between commit and send leaves a gap that
    /// subscribers fill from the log, as they do for Redis.
    pub fn use_pg_notifier(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        let _ = self.pg_notifier.set(tx);
    }

    /// Attaches the Redis fan-out (once, at start-up).
    pub fn use_redis(&self, fanout: Arc<redis::RedisFanout>) {
        let _ = self.redis.set(fanout);
    }

    /// The Redis fan-out's state: `None` without Redis, else whether it is live.
    pub fn redis_live(&self) -> Option<bool> {
        self.redis.get().map(|r| r.is_live())
    }

    /// The Redis fan-out, if any.
    pub fn redis(&self) -> Option<&Arc<redis::RedisFanout>> {
        self.redis.get()
    }

    /// Delivers an event read from another process (not remembered as local).
    pub fn publish_relayed(&self, ev: E) {
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Whether this process published `ev` itself (forgetting it: each is seen once).
    pub fn was_local(&self, ev: &E) -> bool {
        self.local
            .lock()
            .map(|mut l| l.set.remove(&ev.key()))
            .unwrap_or(false)
    }

    /// Starts remembering the events this process publishes, for a follower of the
    /// stored log that must tell them from other processes' ([`EventBus::was_local`]).
    pub fn track_local(&self) {
        AtomicBool::store(&self.track_local, true, Ordering::Relaxed);
    }

    /// A new subscription (sees events published from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<E>> {
        self.tx.subscribe()
    }

    /// The payload a writer sends with `pg_notify` in its transaction: empty (send
    /// nothing) while Redis carries events, or the NOTIFY sender sends them after commit.
    pub fn pg_envelope(&self, ev: &E) -> String {
        if self.redis.get().is_some_and(|r| r.is_live()) || self.pg_notifier.get().is_some() {
            return String::new();
        }
        self.envelope(ev)
    }

    /// The JSON an event travels in between processes.
    pub fn envelope(&self, ev: &E) -> String {
        serde_json::to_string(&Envelope {
            origin: self.origin.clone(),
            event: ev.clone(),
        })
        .unwrap_or_default()
    }
}

/// Resolves the NOTIFY channels `bases` for the schema the server's pool works in, then
/// `LISTEN`s on each over `conn`; the names, in the order of `bases`. NOTIFY channels are
/// per database: `agentplane_channel` (SQL) adds the schema to the name outside `public`,
/// so servers sharing a database in different schemas do not hear each other. Senders
/// call `pg_notify(agentplane_channel(…), …)`. The names come from the pool, not from
/// `conn`, whose URL (`AGENTPLANE_DATABASE_LISTEN_URL`) may not set the same
/// `search_path`.
pub async fn listen_all(
    db: &crate::db::DbPool,
    conn: &mut AsyncPgConnection,
    bases: &[&str],
) -> crate::error::AppResult<Vec<String>> {
    #[derive(diesel::QueryableByName)]
    struct Channel {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let crate::db::DbPool::Postgres(pool) = db else {
        return Ok(bases.iter().map(|b| (*b).to_owned()).collect());
    };
    let names: Vec<Channel> = {
        let mut pooled = pool.get().await?;
        diesel::sql_query(
            "SELECT agentplane_channel(b) AS name \
             FROM unnest($1::text[]) WITH ORDINALITY AS t(b, i) ORDER BY i",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(bases)
        .load(&mut *pooled)
        .await?
    };
    for c in &names {
        diesel::sql_query(format!("LISTEN \"{}\"", c.name.replace('"', "\"\"")))
            .execute(conn)
            .await?;
    }
    Ok(names.into_iter().map(|c| c.name).collect())
}

/// Listens on PostgreSQL for other processes' events and enqueue wake-ups and relays
/// them into `bus`, reconnecting with backoff until `stop`.
pub async fn relay_postgres<E: BusEvent, C>(
    url: String,
    db: crate::db::DbPool,
    bus: Arc<EventBus<E, C>>,
    stop: CancellationToken,
) {
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
        let queue_channel = match listen_all(&db, &mut conn, &[EVENTS_CHANNEL, QUEUE_CHANNEL]).await
        {
            // The last name is QUEUE_CHANNEL's.
            Ok(mut names) => names.pop().unwrap_or_default(),
            Err(e) => {
                tracing::warn!(code = e.code().as_str(), error = ?e, "LISTEN failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
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
                Some(Ok(n)) if n.channel == queue_channel => bus.queue_wake.notify_waiters(),
                Some(Ok(n)) => match serde_json::from_str::<Envelope<E>>(&n.payload) {
                    Ok(env) if env.origin != bus.origin => bus.publish_relayed(env.event),
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
