//! The principal cache: authentication without the database on the hot path.
//!
//! A resolved [`Principal`] is kept for `auth.principal_cache_secs` under its credential
//! (an access token's `jti`, an API key's hash). A hit costs no statement: the token's
//! signature and expiry are still checked on every request, only the lookups behind them
//! (session, user, tenant, role, revocation) are remembered.
//!
//! The cache is only used while this process hears every authentication change. Database
//! triggers (migration `000013_auth_changes`) announce each change of a session, user,
//! role, API key or tenant status, whoever wrote it (this process, another replica, the
//! CLI): on PostgreSQL with `NOTIFY agentplane_auth` ([`follow_postgres`]), on SQLite as
//! rows of `auth_changes` that every process follows ([`follow_sqlite`]). A change drops
//! the tenant's entries and tells the tenant's open websockets to re-check
//! ([`PrincipalCache::subscribe`]). The service that made a change also announces it
//! in-process at once ([`crate::app::App::rights_changed`]), so a sign-out or revocation
//! takes effect on the very next request here. While the follower is not connected the
//! cache is off and every request reads the database (one statement).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Principal;
use crate::db::ids::TenantId;

/// PostgreSQL channel the `auth_changed` triggers notify (payload: the tenant id).
pub const AUTH_CHANNEL: &str = "agentplane_auth";

/// How often a process reads SQLite's `auth_changes` log.
pub const SQLITE_POLL: Duration = Duration::from_millis(200);

/// What changed: one tenant's principals, or (after a gap in what this process heard)
/// possibly anyone's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthChange {
    /// A session, user, role, API key or the status of this tenant changed.
    Tenant(TenantId),
    /// Changes may have been missed: everything is suspect.
    All,
}

impl AuthChange {
    /// Whether a principal of `tenant` is affected.
    pub fn touches(self, tenant: TenantId) -> bool {
        match self {
            Self::Tenant(t) => t == tenant,
            Self::All => true,
        }
    }
}

struct Entry {
    principal: Principal,
    /// Real time after which the entry is read again from the database.
    fresh_until: Instant,
    /// When the credential itself stops being valid (an API key's expiry).
    not_after: Option<DateTime<Utc>>,
}

/// Principals by credential, with the change feed that keeps them honest.
pub struct PrincipalCache {
    ttl: Duration,
    max_entries: usize,
    /// A follower hears every change now.
    live: AtomicBool,
    /// Bumped by every change; an entry read before a change is not stored after it.
    generation: AtomicU64,
    entries: Mutex<HashMap<String, Entry>>,
    changes: broadcast::Sender<AuthChange>,
}

impl PrincipalCache {
    /// A cache keeping entries for `ttl` (zero: no caching), at most `max_entries`.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            entries: Mutex::default(),
            changes: broadcast::channel(1024).0,
        }
    }

    /// Whether cached principals may be used (a follower is live and caching is on).
    pub fn is_live(&self) -> bool {
        !self.ttl.is_zero() && self.live.load(Ordering::SeqCst)
    }

    /// Marks the change feed as heard (or lost: then everything cached is dropped).
    pub fn set_live(&self, live: bool) {
        // Stored before the change is announced: a websocket watcher woken by it must see
        // that it has to poll from now on.
        self.live.store(live, Ordering::SeqCst);
        if !live {
            self.invalidate(AuthChange::All);
        }
    }

    /// The principal cached under `key`, when still fresh and valid at `now`.
    pub fn get(&self, key: &str, now: DateTime<Utc>) -> Option<Principal> {
        if !self.is_live() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|e| e.fresh_until > Instant::now() && e.not_after.is_none_or(|t| t > now))
            .map(|e| e.principal.clone())
    }

    /// The generation to pass to [`PrincipalCache::insert`]: read it before the
    /// database, so a change that lands meanwhile keeps the stale answer out.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Remembers `principal` under `key`, unless something changed since `generation`.
    pub fn insert(
        &self,
        key: String,
        principal: Principal,
        not_after: Option<DateTime<Utc>>,
        generation: u64,
    ) {
        if !self.is_live() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let now = Instant::now();
        if entries.len() >= self.max_entries {
            entries.retain(|_, e| e.fresh_until > now);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(
            key,
            Entry {
                principal,
                fresh_until: now + self.ttl,
                not_after,
            },
        );
    }

    /// Forgets what `change` may have made stale and tells the websockets it touches.
    pub fn invalidate(&self, change: AuthChange) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            match change {
                AuthChange::All => entries.clear(),
                AuthChange::Tenant(t) => entries.retain(|_, e| e.principal.tenant_id != t),
            }
        }
        let _ = self.changes.send(change);
    }

    /// The change feed (a lagging receiver must treat the gap as [`AuthChange::All`]).
    pub fn subscribe(&self) -> broadcast::Receiver<AuthChange> {
        self.changes.subscribe()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn heard(&self, payload: &str) {
        match uuid::Uuid::parse_str(payload.trim()) {
            Ok(t) => self.invalidate(AuthChange::Tenant(TenantId(t))),
            Err(_) => self.invalidate(AuthChange::All),
        }
    }
}

/// PostgreSQL: listens on [`AUTH_CHANNEL`] and invalidates what each notification names,
/// reconnecting with backoff until `stop`. The cache is live only while listening.
pub async fn follow_postgres(
    url: String,
    db: crate::db::DbPool,
    cache: std::sync::Arc<PrincipalCache>,
    stop: CancellationToken,
) {
    use diesel_async::{AsyncConnection as _, AsyncPgConnection};
    let mut backoff = Duration::from_millis(200);
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = AsyncPgConnection::establish(&url) => c,
        };
        let listening = match conn {
            Ok(mut conn) => {
                match crate::events::listen_all(&db, &mut conn, &[AUTH_CHANNEL]).await {
                    Ok(_) => Some(conn),
                    Err(e) => {
                        tracing::warn!(code = e.code().as_str(), error = ?e, "LISTEN {AUTH_CHANNEL} failed; retrying");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "auth change listener cannot connect; retrying");
                None
            }
        };
        let Some(mut conn) = listening else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        };
        backoff = Duration::from_millis(200);
        // Whatever changed while nobody listened was dropped by `set_live(false)`.
        cache.set_live(true);
        let mut stream = std::pin::pin!(conn.notifications_stream());
        loop {
            let n = tokio::select! {
                () = stop.cancelled() => {
                    cache.set_live(false);
                    return;
                }
                n = stream.next() => n,
            };
            match n {
                Some(Ok(n)) => cache.heard(&n.payload),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "auth change listener lost; reconnecting");
                    break;
                }
                None => break,
            }
        }
        cache.set_live(false);
    }
}

/// SQLite: follows `auth_changes` by id every [`SQLITE_POLL`] on a connection of its own
/// and invalidates what each row names; prunes rows older than ten minutes. The cache is
/// live only while reads succeed.
pub async fn follow_sqlite(
    url: crate::config::DatabaseUrl,
    cache: std::sync::Arc<PrincipalCache>,
    stop: CancellationToken,
) {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        tenant_id: String,
    }
    // Its own pool: polling neither queues behind requests nor counts in
    // `App::statements`.
    let Some(db) = crate::db::DbPool::connect_until(&url, &stop, "the auth change follower").await
    else {
        return;
    };
    let crate::db::DbPool::Sqlite(pool) = &db else {
        return;
    };
    let mut last: Option<i64> = None;
    let mut pruned = Instant::now();
    loop {
        let read = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            let rows: Vec<Row> = match last {
                None => diesel::sql_query(
                    "SELECT COALESCE(MAX(id), 0) AS id, '' AS tenant_id FROM auth_changes",
                )
                .load(&mut *conn)
                .await
                .map_err(|e| e.to_string())?,
                Some(after) => diesel::sql_query(
                    "SELECT id, tenant_id FROM auth_changes WHERE id > ? ORDER BY id LIMIT 1000",
                )
                .bind::<BigInt, _>(after)
                .load(&mut *conn)
                .await
                .map_err(|e| e.to_string())?,
            };
            if pruned.elapsed() > Duration::from_secs(60) {
                pruned = Instant::now();
                diesel::sql_query(
                    "DELETE FROM auth_changes WHERE changed_at < datetime('now', '-10 minutes')",
                )
                .execute(&mut *conn)
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(rows)
        };
        match read.await {
            Ok(rows) if last.is_none() => {
                last = Some(rows.as_slice().first().map_or(0, |r| r.id));
                cache.set_live(true);
            }
            Ok(rows) => {
                for r in rows {
                    last = Some(r.id);
                    cache.heard(&r.tenant_id);
                }
            }
            Err(e) => {
                if cache.is_live() {
                    tracing::warn!(error = %e, "reading auth changes failed; cache off until it works");
                }
                cache.set_live(false);
                last = None;
            }
        }
        tokio::select! {
            () = stop.cancelled() => {
                cache.set_live(false);
                return;
            }
            () = tokio::time::sleep(SQLITE_POLL) => {}
        }
    }
}
