//! The event bus: every execution event goes through here on its way to subscribers.
//!
//! In-process it is a tokio broadcast channel. Between processes (several `serve`
//! replicas and `worker` processes on one PostgreSQL) the writer also sends the event with
//! `pg_notify('agentplane_events', …)` in the transaction that stores it, and every process
//! relays what it hears into its own bus ([`relay_postgres`]), skipping its own events.
//! A Redis fan-out can later replace the relay without touching publishers or
//! subscribers. Events are also stored (`execution_events`), so a subscriber that falls
//! behind re-reads what it missed instead of losing it.

use std::sync::Arc;
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
}

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
        }
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
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(ev));
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
            continue;
        }
        backoff = Duration::from_millis(200);
        // Whatever was enqueued while we were not listening is found by polling; wake once.
        bus.queue_wake.notify_waiters();
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
