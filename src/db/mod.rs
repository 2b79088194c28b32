//! Storage: one pool type over two backends, chosen at run time from `DATABASE_URL`.
//!
//! Queries are written once against [`schema`] and expanded for each backend by
//! [`db_run!`](crate::db_run): the macro binds `conn` to a `&mut AsyncPgConnection` in one
//! arm and to a `&mut SyncConnectionWrapper<SqliteConnection>` in the other, so the same
//! diesel expression type-checks against both. Where the dialects truly differ the two
//! bodies stand side by side with a `match` on [`DbPool`].

mod cached;
mod checkpoint;
pub mod conn;
pub mod ids;
mod instrument;
pub mod migrate;
mod outage;
pub mod page;
pub mod schema;
mod spawn;

use std::sync::Arc;

use crate::error::AppError;
use anyhow::Context as _;
use diesel::SqliteConnection;
use diesel::sql_types::Integer;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::FutureExt as _;
use secrecy::ExposeSecret;

use crate::config::DatabaseUrl;
pub use cached::{Cached, cached};
pub use conn::{Conn, sqlite_immediate};
pub use instrument::DbCounters;
use instrument::statement_counter;
use outage::OUT_OF_SPACE;
pub use outage::{outage_kind, unreachable_message, write_probe};

/// The async SQLite connection: diesel's sync connection, its statements run on a
/// blocking thread except inside a write transaction's body (see [`spawn`]).
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection, spawn::Spawner>;

/// An error taking a connection from the pool.
pub type PoolError = bb8::RunError<diesel_async::pooled_connection::PoolError>;

/// Which engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A connection pool over one of the two backends.
#[derive(Clone)]
pub enum DbPool {
    /// PostgreSQL pool (tokio-postgres underneath).
    Postgres(FastPool<AsyncDieselConnectionManager<AsyncPgConnection>>),
    /// SQLite pool (WAL, foreign keys, busy timeout set per connection).
    Sqlite(FastPool<AsyncDieselConnectionManager<SqliteConn>>),
}

/// A bb8 pool whose checkout fails at once when the database refuses a new connection,
/// instead of waiting out the whole connection timeout (bb8 only reports connect errors
/// to its error sink; this pool listens there). Everything else derefs to the bb8 pool.
pub struct FastPool<M: bb8::ManageConnection> {
    pool: bb8::Pool<M>,
    /// The most connections it opens.
    max: u32,
    refused: Arc<Refusals>,
    /// What the audit layer keeps with the pool (see [`Signer`]).
    chain: Arc<std::sync::OnceLock<Signer>>,
    /// Bumped after every committed write transaction (wakes live audit tails).
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    /// Whether row-level security applies to this pool's role (PostgreSQL, a role that
    /// neither owns the tables nor bypasses RLS). Only then do tenant-scoped reads need
    /// their `BEGIN; set_config(…); …; COMMIT` wrapper: for an owner it changes nothing
    /// and costs three statements.
    rls: bool,
    /// This process's writers take turns here (SQLite): one database file has one writer
    /// at a time, and a writer that finds it locked sleeps in SQLite's busy handler
    /// (1, 2, 5, 10 … ms), so writers queued here instead start the moment the last one
    /// commits. Other processes still meet the busy timeout.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// When a write transaction last failed for want of disk space (see
    /// [`write_probe`]).
    out_of_space: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// What the pool's connections count into (statements, commits): for transactions
    /// diesel's transaction manager does not see ([`conn::PipelinedTx`]).
    counters: DbCounters,
}

impl<M: bb8::ManageConnection> Clone for FastPool<M> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            max: self.max,
            refused: self.refused.clone(),
            chain: self.chain.clone(),
            commits: self.commits.clone(),
            rls: self.rls,
            writer: self.writer.clone(),
            out_of_space: self.out_of_space.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<M: bb8::ManageConnection> FastPool<M> {
    /// Whether row-level security applies to this pool's connections.
    pub fn row_security(&self) -> bool {
        self.rls
    }
}

/// How long a writer waits for its turn before it is told the database is busy (as long
/// as SQLite's own busy timeout).
const WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl DbPool {
    /// On SQLite, this process's turn to write (held until dropped): take it before
    /// beginning a write, and before checking out the connection, so a queued writer
    /// holds no connection a reader could use. `None` on PostgreSQL, whose writers lock
    /// rows, not the database.
    pub async fn writer_turn(
        &self,
    ) -> crate::error::AppResult<Option<tokio::sync::OwnedMutexGuard<()>>> {
        match self {
            DbPool::Postgres(_) => Ok(None),
            DbPool::Sqlite(p) => tokio::time::timeout(WRITER_WAIT, p.writer.clone().lock_owned())
                .await
                .map(Some)
                .map_err(|e| AppError::unavailable("the database is busy", e)),
        }
    }
}

impl<M: bb8::ManageConnection> std::ops::Deref for FastPool<M> {
    type Target = bb8::Pool<M>;
    fn deref(&self) -> &bb8::Pool<M> {
        &self.pool
    }
}

impl<M> FastPool<M>
where
    M: bb8::ManageConnection<Error = diesel_async::pooled_connection::PoolError>,
{
    /// A connection from the pool; `Err` at once when opening one was just refused.
    pub async fn get(&self) -> Result<bb8::PooledConnection<'_, M>, PoolError> {
        self.or_refused(self.pool.get()).await
    }

    /// Like [`FastPool::get`], for a connection that may outlive the borrow of the pool
    /// (a transaction rolled back on a task of its own when its request is cancelled).
    pub async fn get_owned(&self) -> Result<bb8::PooledConnection<'static, M>, PoolError> {
        self.or_refused(self.pool.get_owned()).await
    }

    /// Waits for `checkout`, or fails as soon as the database refuses a new connection.
    async fn or_refused<T>(
        &self,
        checkout: impl std::future::Future<Output = Result<T, PoolError>>,
    ) -> Result<T, PoolError> {
        let refused = self.refused.notify.notified();
        tokio::pin!(refused);
        refused.as_mut().enable();
        let started = std::time::Instant::now();
        let out = tokio::select! {
            biased;
            conn = checkout => conn,
            () = &mut refused => Err(bb8::RunError::User(
                diesel_async::pooled_connection::PoolError::ConnectionError(
                    diesel::ConnectionError::BadConnection(self.refused.last()),
                ),
            )),
        };
        crate::metrics::pool_wait(started.elapsed(), out.is_ok());
        out
    }
}

/// The pool's error sink: remembers the last connect error and wakes waiting checkouts.
#[derive(Debug, Default)]
struct Refusals {
    notify: tokio::sync::Notify,
    last: std::sync::Mutex<String>,
}

impl Refusals {
    fn last(&self) -> String {
        self.last
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|_| "the database refused the connection".into())
    }
}

#[derive(Debug, Clone)]
struct RefusalSink(Arc<Refusals>);

impl<E: std::fmt::Display + 'static> bb8::ErrorSink<E> for RefusalSink {
    fn sink(&self, error: E) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = error.to_string();
        }
        self.0.notify.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<E>> {
        Box::new(self.clone())
    }
}

/// Runs the same diesel-async body on whichever backend the pool holds.
///
/// ```text
/// db_run!(pool, |conn| { tenants::table.count().get_result::<i64>(conn).await })
/// ```
/// `?` inside the macro converts a pool error with `From`, so the enclosing function's
/// error type must implement `From<PoolError>` (both `AppError` and `anyhow::Error` do).
#[macro_export]
macro_rules! db_run {
    ($pool:expr, |$conn:ident| $body:expr) => {{
        match $pool {
            $crate::db::DbPool::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let $conn: &mut diesel_async::AsyncPgConnection = &mut *pooled;
                $body
            }
            $crate::db::DbPool::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let $conn: &mut $crate::db::SqliteConn = &mut *pooled;
                $body
            }
        }
    }};
}

/// Creates the SQLite file's folder if missing and returns the path as a string.
pub(crate) fn prepare_sqlite_path(path: &std::path::Path) -> anyhow::Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating database folder {}", dir.display()))?;
    }
    Ok(path
        .to_str()
        .context("the SQLite path is not valid UTF-8")?
        .to_owned())
}

/// Like [`db_run!`](crate::db_run), for queries scoped to one tenant: on PostgreSQL the
/// body runs in a transaction that first sets `agentplane.tenant_id`, so row-level
/// security hides every other tenant's rows as a second wall behind the query's own
/// `tenant_id` filter. On SQLite it is `db_run!`.
#[macro_export]
macro_rules! db_run_tenant {
    ($pool:expr, $tenant:expr, |$conn:ident| $body:expr) => {{
        match $pool {
            $crate::db::DbPool::Postgres(pool) if !pool.row_security() => {
                let mut pooled = pool.get().await?;
                let $conn: &mut diesel_async::AsyncPgConnection = &mut *pooled;
                $body
            }
            $crate::db::DbPool::Postgres(pool) => {
                use diesel_async::AsyncConnection as _;
                let mut pooled = pool.get().await?;
                let tenant_setting: String = $tenant.to_string();
                let tx: &mut diesel_async::AsyncPgConnection = &mut *pooled;
                tx.transaction(async |$conn| -> Result<_, $crate::error::AppError> {
                    $crate::db::set_tenant($conn, &tenant_setting).await?;
                    Ok($body)
                })
                .await?
            }
            $crate::db::DbPool::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let $conn: &mut $crate::db::SqliteConn = &mut *pooled;
                $body
            }
        }
    }};
}

/// Sets the transaction's tenant for row-level security (PostgreSQL).
pub async fn set_tenant(conn: &mut AsyncPgConnection, tenant: &str) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT set_config('agentplane.tenant_id', $1, true)")
        .bind::<diesel::sql_types::Text, _>(tenant)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Whether row-level security binds this pool's role on the tenant tables: they have
/// RLS enabled and the role is neither a superuser, nor `BYPASSRLS`, nor (without
/// `FORCE ROW LEVEL SECURITY`) a holder of the owner's privileges. When unsure (tables
/// not there yet, the catalog unreadable), it answers `true`: the wrapper is kept.
async fn row_security_applies(
    pool: &FastPool<AsyncDieselConnectionManager<AsyncPgConnection>>,
) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Applies {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
        applies: Option<bool>,
    }
    let Ok(mut conn) = pool.get().await else {
        return true;
    };
    let row = diesel::sql_query(
        "SELECT c.relrowsecurity \
                AND NOT r.rolsuper AND NOT r.rolbypassrls \
                AND (c.relforcerowsecurity OR NOT pg_has_role(r.oid, c.relowner, 'USAGE')) \
                AS applies \
         FROM pg_class c, pg_roles r \
         WHERE c.oid = to_regclass('users') AND r.rolname = current_user",
    )
    .get_result::<Applies>(&mut *conn)
    .await;
    match row {
        Ok(Applies { applies: Some(a) }) => a,
        _ => true,
    }
}

/// An opaque value the audit layer keeps with a pool (its chain keys), so that every
/// connection the pool lends can sign the records appended on it. `db` never looks
/// inside: it knows no domain.
pub type Signer = Arc<dyn std::any::Any + Send + Sync>;

impl DbPool {
    /// Sets the signer of this pool (and its clones); the first call wins.
    pub fn set_signer(&self, signer: Signer) {
        let _ = self.chain_cell().set(signer);
    }

    /// The signer set on this pool, if any.
    pub fn signer(&self) -> Option<Signer> {
        self.chain_cell().get().cloned()
    }

    fn chain_cell(&self) -> &std::sync::OnceLock<Signer> {
        match self {
            Self::Postgres(p) => &p.chain,
            Self::Sqlite(p) => &p.chain,
        }
    }

    fn commits_sender(&self) -> &Arc<tokio::sync::watch::Sender<u64>> {
        match self {
            Self::Postgres(p) => &p.commits,
            Self::Sqlite(p) => &p.commits,
        }
    }

    fn out_of_space(&self) -> &std::sync::Mutex<Option<std::time::Instant>> {
        match self {
            Self::Postgres(p) => &p.out_of_space,
            Self::Sqlite(p) => &p.out_of_space,
        }
    }

    /// Called when a write transaction on this pool failed ([`DbPool::tx`]): a failure
    /// for want of disk space is remembered for [`write_probe`].
    pub(crate) fn write_failed(&self, e: &AppError) {
        if e.code() == crate::error::ErrorCode::Unavailable && e.message().starts_with(OUT_OF_SPACE)
        {
            if let Ok(mut at) = self.out_of_space().lock() {
                *at = Some(std::time::Instant::now());
            }
        }
    }

    /// Whether a write transaction failed for want of disk space within `window`.
    fn out_of_space_within(&self, window: std::time::Duration) -> bool {
        self.out_of_space()
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Called after every committed write transaction on this pool ([`DbPool::tx`]).
    pub fn committed(&self) {
        self.commits_sender()
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes on commits of this pool (and of pools that [`DbPool::share_with`] it).
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits_sender().subscribe()
    }

    /// A second pool to the same database (the cluster agent's) signs audit records with
    /// `main`'s keys and wakes `main`'s audit tails when it commits.
    pub fn share_with(&mut self, main: &DbPool) {
        if let Some(keys) = main.signer() {
            self.set_signer(keys);
        }
        let sender = main.commits_sender().clone();
        match self {
            Self::Postgres(p) => p.commits = sender,
            Self::Sqlite(p) => p.commits = sender,
        }
    }

    /// Connects (creating the SQLite file and its folder if missing) and checks one
    /// connection works.
    pub async fn connect(url: &DatabaseUrl) -> anyhow::Result<Self> {
        Self::connect_counted(
            url,
            DbCounters::default(),
            &crate::config::PoolConfig::default(),
        )
        .await
    }

    /// Like [`DbPool::connect`], counting every SQL statement any pooled connection runs
    /// and every transaction it commits into `counters` (the statement-count tests and
    /// `/metrics` read them).
    pub async fn connect_counted(
        url: &DatabaseUrl,
        counters: DbCounters,
        sizing: &crate::config::PoolConfig,
    ) -> anyhow::Result<Self> {
        match url {
            DatabaseUrl::Sqlite(path) => {
                let path = prepare_sqlite_path(path)?;
                // WAL is a property of the file: set it once, on a plain connection.
                {
                    let mut conn = SqliteConn::establish(&path)
                        .await
                        .with_context(|| format!("opening SQLite database {path}"))?;
                    conn.batch_execute("PRAGMA journal_mode = WAL;")
                        .await
                        .context("enabling WAL")?;
                }
                let mut cfg = ManagerConfig::<SqliteConn>::default();
                // No `SELECT 1` on every checkout: a broken connection fails its first
                // query and bb8 drops it. Halves the round trips of short requests.
                cfg.recycling_method = RecyclingMethod::Fast;
                let counter = counters.clone();
                cfg.custom_setup = Box::new(move |url| {
                    let url = url.to_owned();
                    let counter = counter.clone();
                    async move {
                        let mut conn = SqliteConn::establish(&url).await?;
                        conn.set_instrumentation(statement_counter(counter, false));
                        conn.batch_execute(
                            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                             PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;",
                        )
                        .await
                        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    }
                    .boxed()
                });
                let mgr =
                    AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path.clone(), cfg);
                let refused = Arc::new(Refusals::default());
                let pool = Pool::builder()
                    .error_sink(Box::new(RefusalSink(refused.clone())))
                    .max_size(sizing.max_size.unwrap_or(8))
                    .connection_timeout(sizing.timeout)
                    // A database that refuses connections fails requests at once
                    // (UNAVAILABLE) instead of after the whole connection timeout.
                    .retry_connection(false)
                    // The connection returned last is handed out first: with one writer
                    // at a time, writes keep to one connection whose page cache is still
                    // valid, instead of each finding the pages another connection changed
                    // and reading them again.
                    .queue_strategy(bb8::QueueStrategy::Lifo)
                    .build(mgr)
                    .await
                    .context("building the SQLite pool")?;
                let commits = Arc::new(tokio::sync::watch::channel(0).0);
                if !path.starts_with(":memory:") && !path.starts_with("file::memory:") {
                    checkpoint::start(path, commits.subscribe());
                }
                let pool = Self::Sqlite(FastPool {
                    pool,
                    max: sizing.max_size.unwrap_or(8),
                    refused,
                    chain: Arc::default(),
                    commits,
                    rls: false,
                    writer: Arc::default(),
                    out_of_space: Arc::default(),
                    counters: counters.clone(),
                });
                pool.ping().await?;
                Ok(pool)
            }
            DatabaseUrl::Postgres(secret) => {
                let mut cfg = ManagerConfig::<AsyncPgConnection>::default();
                cfg.recycling_method = RecyclingMethod::Fast;
                let setup_counters = counters.clone();
                cfg.custom_setup = Box::new(move |url| {
                    let url = url.to_owned();
                    let counter = setup_counters.clone();
                    async move {
                        let mut conn = AsyncPgConnection::establish(&url).await?;
                        conn.set_instrumentation(statement_counter(counter, true));
                        Ok(conn)
                    }
                    .boxed()
                });
                let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
                    secret.expose_secret(),
                    cfg,
                );
                let refused = Arc::new(Refusals::default());
                let pool = Pool::builder()
                    .error_sink(Box::new(RefusalSink(refused.clone())))
                    .max_size(sizing.max_size.unwrap_or(16))
                    .connection_timeout(sizing.timeout)
                    .retry_connection(false)
                    .build(mgr)
                    .await
                    .context("building the PostgreSQL pool")?;
                let fast = FastPool {
                    pool,
                    max: sizing.max_size.unwrap_or(16),
                    refused,
                    chain: Arc::default(),
                    commits: Arc::new(tokio::sync::watch::channel(0).0),
                    rls: true,
                    writer: Arc::default(),
                    out_of_space: Arc::default(),
                    counters: counters.clone(),
                };
                Self::Postgres(fast.clone())
                    .ping()
                    .await
                    .with_context(|| unreachable_message(url))?;
                let rls = row_security_applies(&fast).await;
                Ok(Self::Postgres(FastPool { rls, ..fast }))
            }
        }
    }

    /// Opens a pool of its own for a background follower (`who` names it in the log),
    /// retrying every second until it opens; `None` once `stop` is cancelled.
    pub async fn connect_until(
        url: &DatabaseUrl,
        stop: &tokio_util::sync::CancellationToken,
        who: &str,
    ) -> Option<Self> {
        loop {
            match Self::connect(url).await {
                Ok(db) => return Some(db),
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "{who} cannot open the database; retrying"
                    );
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// The pool's connections: `(idle, in use, most it opens)`.
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let (state, max) = match self {
            Self::Postgres(p) => (p.state(), p.max),
            Self::Sqlite(p) => (p.state(), p.max),
        };
        (
            state.idle_connections,
            state.connections.saturating_sub(state.idle_connections),
            max,
        )
    }

    /// The engine behind this pool.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs `SELECT 1`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        #[derive(diesel::QueryableByName)]
        struct One {
            #[diesel(sql_type = Integer)]
            #[expect(dead_code, reason = "only the round trip matters")]
            one: i32,
        }
        db_run!(self, |conn| {
            diesel::sql_query("SELECT 1 AS one")
                .get_result::<One>(conn)
                .await
                .context("database did not answer SELECT 1")?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn outages_are_unavailable_with_a_retry_hint() {
        use diesel::result::{DatabaseErrorKind, Error};
        let timed_out: AppError = PoolError::TimedOut.into();
        let lost: AppError = Error::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand,
            Box::new("connection closed".to_owned()),
        )
        .into();
        let full: AppError = Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("database or disk is full".to_owned()),
        )
        .into();
        let bug: AppError = Error::NotFound.into();
        for e in [timed_out, lost, full] {
            assert_eq!(e.code(), ErrorCode::Unavailable, "{e:?}");
            assert_eq!(e.code().http_status(), 503);
        }
        assert_eq!(bug.code(), ErrorCode::Internal);
    }
}
