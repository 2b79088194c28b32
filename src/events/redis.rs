//! The cross-replica backbone on Redis (`REDIS_URL`, PostgreSQL deployments): execution
//! events travel through one Redis Stream instead of PostgreSQL NOTIFY.
//!
//! - **Publishing.** After a change commits, its events go to a single writer task that
//!   `XADD`s them in order to `<prefix>:events` ([`events_stream`], trimmed to about [`STREAM_MAXLEN`]
//!   entries). While Redis is live, writers skip `pg_notify` in their transaction
//!   ([`super::EventBus::pg_envelope`] is empty), which takes NOTIFY's global commit lock
//!   off the write path.
//! - **Following.** Each process reads the stream with a blocking `XREAD` from the last
//!   entry id it saw, so a follower that reconnects resumes where it left off instead of
//!   losing what was published meanwhile. Events of other processes go into the local
//!   bus; a QUEUED one wakes idle workers.
//! - **Degrading.** Redis is never the only copy: events are stored in the same
//!   transaction as the change. When Redis stops answering, the process logs one warning,
//!   marks the fan-out down (writers go back to `pg_notify` in the transaction; an `XADD`
//!   that failed is sent by NOTIFY instead), and `/readyz` says `redis: degraded`. When
//!   Redis answers again the fan-out is live again, and subscribers re-read the stored
//!   log once (`resync`) for anything that fell between the two paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands as _;
use redis::streams::{StreamMaxlen, StreamReadOptions, StreamReadReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BusEvent, Envelope, EventBus};

/// The stream that carries execution events between processes: `<prefix>:events`
/// (`AGENTPLANE_REDIS_KEY_PREFIX`, default `agentplane`).
pub fn events_stream(prefix: &str) -> String {
    format!("{prefix}:events")
}
/// About how many entries the stream keeps (`XADD … MAXLEN ~`): a follower away for
/// longer than that many events re-reads the stored log instead.
pub const STREAM_MAXLEN: usize = 100_000;
/// Events waiting for the writer task; beyond that they go by NOTIFY.
const QUEUE: usize = 10_000;
/// How long one blocking read waits before it asks again (and notices a stop).
const BLOCK_MS: usize = 2_000;

/// Sends an event payload the other way (PostgreSQL NOTIFY) when Redis did not take it.
pub type Fallback = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// The process's link to Redis.
pub struct RedisFanout {
    client: redis::Client,
    stream: String,
    live: AtomicBool,
    /// Set once a warning was logged for the current outage.
    warned: AtomicBool,
    tx: mpsc::Sender<String>,
    fallback: Fallback,
}

impl RedisFanout {
    /// Whether Redis carries events right now (`false` during an outage).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Hands one event payload to the writer task (or, when its queue is full, to the
    /// fallback).
    pub fn send(&self, payload: String) {
        if let Err(e) = self.tx.try_send(payload) {
            let payload = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            tokio::spawn((self.fallback)(payload));
        }
    }

    /// Answers a `PING` within a second (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let check = async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), check).await,
            Ok(Ok(_))
        )
    }

    fn down(&self, what: &str, e: &redis::RedisError) {
        self.live.store(false, Ordering::SeqCst);
        if !self.warned.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                error = %e,
                "Redis {what} failed: events go through PostgreSQL NOTIFY until it is back"
            );
        }
    }

    /// Marks Redis usable again; true when it was down.
    fn up(&self) -> bool {
        let was_down = !self.live.swap(true, Ordering::SeqCst);
        if self.warned.swap(false, Ordering::SeqCst) {
            tracing::info!("Redis is back: events go through it again");
        }
        was_down
    }
}

/// A client for `url` (`redis://`, or `rediss://` for TLS, with a password when the
/// server needs one). With `ca` (PEM), the server's certificate must chain to it instead
/// of the public web roots.
pub fn client(url: &str, ca: Option<&[u8]>) -> anyhow::Result<redis::Client> {
    let c = match ca {
        None => redis::Client::open(url),
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
    };
    c.map_err(|e| anyhow::anyhow!("REDIS_URL is not usable: {e}"))
}

/// Connects the bus to Redis: starts the writer and the follower (until `stop`) and
/// returns the link. `url` may be `redis://` or `rediss://` (TLS, verified against `ca`
/// when given), with a password.
pub fn start<E: BusEvent, C: Send + Sync + 'static>(
    url: &str,
    ca: Option<&[u8]>,
    key_prefix: &str,
    bus: Arc<EventBus<E, C>>,
    fallback: Fallback,
    stop: CancellationToken,
) -> anyhow::Result<Arc<RedisFanout>> {
    let client = client(url, ca)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let fanout = Arc::new(RedisFanout {
        client,
        stream: events_stream(key_prefix),
        // Down until the follower has connected once.
        live: AtomicBool::new(false),
        warned: AtomicBool::new(false),
        tx,
        fallback,
    });
    tokio::spawn(write(fanout.clone(), rx, stop.clone()));
    tokio::spawn(follow(fanout.clone(), bus, stop));
    Ok(fanout)
}

/// The writer: `XADD`s payloads in the order they were published.
async fn write(fanout: Arc<RedisFanout>, mut rx: mpsc::Receiver<String>, stop: CancellationToken) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        let payload = tokio::select! {
            () = stop.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let sent = async {
            // A connection left over from before an outage fails once: try again on a
            // fresh one before calling Redis down.
            for attempt in 0..2 {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(fanout.client.get_multiplexed_async_connection().await?),
                };
                let r = c
                    .xadd_maxlen::<_, _, _, _, ()>(
                        fanout.stream.as_str(),
                        StreamMaxlen::Approx(STREAM_MAXLEN),
                        "*",
                        &[("e", payload.as_str())],
                    )
                    .await;
                match r {
                    Err(e) if attempt == 0 && (e.is_io_error() || e.is_connection_dropped()) => {
                        conn = None;
                    }
                    other => return other,
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                conn = None;
                fanout.down("publishing", &e);
                (fanout.fallback)(payload).await;
            }
            Err(_) => {
                conn = None;
                fanout.down(
                    "publishing",
                    &redis::RedisError::from(std::io::Error::other("timed out after 2 s")),
                );
                (fanout.fallback)(payload).await;
            }
        }
    }
}

/// The follower: reads the stream from the last id it saw and relays other processes'
/// events into the bus; reconnects with backoff.
async fn follow<E: BusEvent, C: Send + Sync + 'static>(
    fanout: Arc<RedisFanout>,
    bus: Arc<EventBus<E, C>>,
    stop: CancellationToken,
) {
    let mut last_id = "$".to_owned();
    let mut backoff = Duration::from_millis(200);
    let opts = StreamReadOptions::default().block(BLOCK_MS).count(500);
    loop {
        // Its own connection, whose replies may take as long as a blocking read.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_millis(BLOCK_MS as u64 + 3_000)));
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = fanout.client.get_multiplexed_async_connection_with_config(&config) => c,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                fanout.down("connecting", &e);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Starting from "$" the first time: read the current last id, so what is
        // published from now on is seen even across the first reconnect.
        if last_id == "$" {
            match redis::cmd("XREVRANGE")
                .arg(&fanout.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async::<redis::streams::StreamRangeReply>(&mut conn)
                .await
            {
                Ok(r) => {
                    last_id = r
                        .ids
                        .first()
                        .map_or_else(|| "0-0".to_owned(), |i| i.id.clone())
                }
                Err(e) => {
                    fanout.down("reading", &e);
                    continue;
                }
            }
        }
        backoff = Duration::from_millis(200);
        if fanout.up() {
            // Events may have gone by NOTIFY or been missed while switching: subscribers
            // re-read the stored log, and idle workers look for work once.
            bus.request_resync();
            bus.queue_wake.notify_waiters();
        }
        loop {
            let ids = [last_id.clone()];
            let keys = [fanout.stream.as_str()];
            let read = tokio::select! {
                () = stop.cancelled() => return,
                r = conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts) => r,
            };
            let reply = match read {
                Ok(r) => r,
                Err(e) => {
                    fanout.down("reading", &e);
                    break;
                }
            };
            // Redis answers: if a publish failed meanwhile, it is live again.
            if fanout.up() {
                bus.request_resync();
                bus.queue_wake.notify_waiters();
            }
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                last_id.clone_from(&entry.id);
                let Some(payload) = entry.get::<String>("e") else {
                    continue;
                };
                match serde_json::from_str::<Envelope<E>>(&payload) {
                    Ok(env) if env.origin != bus.origin => {
                        if env.event.wakes_workers() {
                            bus.queue_wake.notify_waiters();
                        }
                        bus.publish_relayed(env.event);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed event from Redis"),
                }
            }
        }
    }
}
