//! Connection-passing storage: stores take a [`Conn`], services own the transaction.
//!
//! A store function is written once against `&mut Conn<'_>` and expands its diesel
//! query for each backend with [`on_conn!`](crate::on_conn); it never opens a
//! transaction of its own. A service takes a connection from the pool and decides the
//! transaction's extent, so several stores and the audit append commit together:
//!
//! ```text
//! a.db.tx(tenant, async |conn| {
//!     let n = store::count(conn, tenant).await?;          // same transaction
//!     store::insert(conn, &row).await?;
//!     audit::append(conn, &entry).await?;
//!     Ok(row)
//! }).await
//! ```
//!
//! [`DbPool::tx`] is a write transaction (PostgreSQL: with the tenant set for row-level
//! security; SQLite: `BEGIN IMMEDIATE`, so concurrent writers queue on the busy timeout
//! instead of failing on a lock upgrade). [`DbPool::read`] scopes reads to a tenant (a
//! transaction on PostgreSQL only, for row-level security; none on SQLite).
//! [`DbPool::run`] is a plain connection for platform-wide work such as the engine's.

use diesel_async::AsyncPgConnection;
use diesel_async::TransactionManager as _;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;

use super::{DbPool, SqliteConn};
use crate::error::AppResult;

/// A connection on one of the two backends, lent to store functions.
pub struct Conn<'a> {
    inner: Inner<'a>,
    chain: Option<&'a super::Signer>,
}

/// The backend-specific connection inside a [`Conn`] (matched by [`on_conn!`](crate::on_conn)).
#[doc(hidden)]
pub enum Inner<'a> {
    Postgres(&'a mut AsyncPgConnection),
    Sqlite(&'a mut SqliteConn),
}

impl<'a> Conn<'a> {
    /// The backend connection, for [`on_conn!`](crate::on_conn).
    #[doc(hidden)]
    pub fn inner(&mut self) -> &mut Inner<'a> {
        &mut self.inner
    }

    /// The pool's [`Signer`](super::Signer): what records appended on this connection
    /// are signed with.
    pub fn signer(&self) -> Option<super::Signer> {
        self.chain.cloned()
    }
}

/// Runs the same diesel-async body on whichever backend a [`Conn`] holds: `$c` is bound
/// to a `&mut AsyncPgConnection` in one arm and a `&mut SqliteConn` in the other.
///
/// ```text
/// on_conn!(conn, |c| workflows::table.count().get_result::<i64>(c).await)
/// ```
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {{
        match $crate::db::Conn::inner(&mut *$conn) {
            $crate::db::conn::Inner::Postgres(pg) => {
                let $c: &mut diesel_async::AsyncPgConnection = &mut **pg;
                $body
            }
            $crate::db::conn::Inner::Sqlite(lite) => {
                let $c: &mut $crate::db::SqliteConn = &mut **lite;
                $body
            }
        }
    }};
}

/// `f` in a `BEGIN IMMEDIATE` transaction on a SQLite connection the caller holds:
/// committed when it returns `Ok`, rolled back when it returns `Err`. Its statements run
/// inline once the write lock is held (see [`spawn`](super::spawn)).
pub async fn sqlite_immediate<T, F>(conn: &mut SqliteConn, f: F) -> AppResult<T>
where
    F: AsyncFnOnce(&mut SqliteConn) -> AppResult<T>,
{
    begin_immediate(conn).await?;
    match super::spawn::in_write_tx(f(&mut *conn)).await {
        Ok(v) => {
            commit_sqlite(conn).await?;
            Ok(v)
        }
        Err(e) => {
            let _ = rollback_sqlite(conn).await;
            Err(e)
        }
    }
}

/// `COMMIT` of a write transaction, inline: with checkpoints done by
/// [`checkpoint`](super::checkpoint) it appends to the WAL and waits for nothing.
async fn commit_sqlite(conn: &mut SqliteConn) -> diesel::QueryResult<()> {
    super::spawn::in_write_tx(SqliteTm::commit_transaction(conn)).await
}

/// `ROLLBACK` of a write transaction, inline: it drops the transaction's pages from
/// memory.
async fn rollback_sqlite(conn: &mut SqliteConn) -> diesel::QueryResult<()> {
    super::spawn::in_write_tx(SqliteTm::rollback_transaction(conn)).await
}

/// `BEGIN IMMEDIATE`, as diesel-async's own `immediate_transaction` does it: on a
/// blocking thread, since it may wait for another process's writer.
async fn begin_immediate(conn: &mut SqliteConn) -> diesel::QueryResult<()> {
    conn.spawn_blocking(|c| {
        diesel::connection::AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
    })
    .await
}

type SqliteTm = diesel_async::sync_connection_wrapper::SyncTransactionManagerWrapper<
    diesel::connection::AnsiTransactionManager,
>;
type PgManager = AsyncDieselConnectionManager<AsyncPgConnection>;
type SqliteManager = AsyncDieselConnectionManager<SqliteConn>;

/// A connection checked out of the pool.
#[expect(
    clippy::large_enum_variant,
    reason = "one per checkout, held for one call; boxing would allocate per query"
)]
enum Pooled<'p> {
    Postgres(bb8::PooledConnection<'p, PgManager>),
    Sqlite(bb8::PooledConnection<'p, SqliteManager>),
}

impl Pooled<'_> {
    fn conn<'a>(&'a mut self, chain: Option<&'a super::Signer>) -> Conn<'a> {
        let inner = match self {
            Self::Postgres(c) => Inner::Postgres(c),
            Self::Sqlite(c) => Inner::Sqlite(c),
        };
        Conn { inner, chain }
    }
}

/// How a checkout is wrapped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No transaction.
    Plain,
    /// A read scoped to a tenant: a transaction on PostgreSQL (row-level security), none
    /// on SQLite.
    Read,
    /// A write transaction on both.
    Write,
}

impl Pooled<'static> {
    /// Rolls back the open transaction; a connection whose rollback fails stays broken
    /// and the pool discards it.
    async fn rollback(mut self) {
        let _ = match &mut self {
            Self::Postgres(c) => {
                diesel_async::AnsiTransactionManager::rollback_transaction(&mut **c).await
            }
            Self::Sqlite(c) => SqliteTm::rollback_transaction(&mut **c).await,
        };
    }
}

/// A checkout holding an open transaction. Dropped before the transaction ended (the
/// request was cancelled: its client went away, a timeout fired), it rolls back on a
/// task of its own, so the connection returns to the pool clean instead of being
/// discarded and reopened.
struct OpenTx {
    pooled: Option<Pooled<'static>>,
    /// A transaction was begun and has not ended.
    open: bool,
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if let Some(pooled) = self.pooled.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(pooled.rollback());
            }
        }
    }
}

impl DbPool {
    async fn checkout(&self) -> AppResult<Pooled<'static>> {
        Ok(match self {
            DbPool::Postgres(p) => Pooled::Postgres(p.get_owned().await?),
            DbPool::Sqlite(p) => Pooled::Sqlite(p.get_owned().await?),
        })
    }

    /// Runs `f` in one write transaction: committed when it returns `Ok`, rolled back
    /// when it returns `Err`. On PostgreSQL the transaction first sets the tenant for
    /// row-level security (`""` for platform-wide work); on SQLite it starts with
    /// `BEGIN IMMEDIATE`. Wakes live audit tails after a commit.
    pub async fn tx<T, F>(&self, tenant: impl ToString, f: F) -> AppResult<T>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> AppResult<T>,
    {
        let out = self.within(Mode::Write, &tenant.to_string(), f).await;
        match &out {
            Ok(_) => self.committed(),
            Err(e) => self.write_failed(e),
        }
        out
    }

    /// Runs `f` on a connection scoped to `tenant`: inside a transaction that sets the
    /// tenant on PostgreSQL (row-level security hides other tenants' rows), on a plain
    /// connection on SQLite. For reads; a write belongs in [`DbPool::tx`].
    pub async fn read<T, F>(&self, tenant: impl ToString, f: F) -> AppResult<T>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> AppResult<T>,
    {
        self.within(Mode::Read, &tenant.to_string(), f).await
    }

    /// Runs `f` on a plain connection: no transaction, no tenant (platform-wide reads
    /// such as the engine's, which serves every tenant).
    pub async fn run<T, F>(&self, f: F) -> AppResult<T>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> AppResult<T>,
    {
        self.within(Mode::Plain, "", f).await
    }

    async fn within<T, F>(&self, mode: Mode, tenant: &str, f: F) -> AppResult<T>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> AppResult<T>,
    {
        use tracing::Instrument as _;
        // Exported with traces (per statement too, on PostgreSQL: see `statement_counter`).
        let span = tracing::debug_span!(
            target: crate::telemetry::SQL_TARGET,
            "db.transaction",
            db.mode = match mode {
                Mode::Read => "read",
                Mode::Write => "write",
                Mode::Plain => "plain",
            },
        );
        self.within_traced(mode, tenant, f).instrument(span).await
    }

    async fn within_traced<T, F>(&self, mode: Mode, tenant: &str, f: F) -> AppResult<T>
    where
        F: AsyncFnOnce(&mut Conn<'_>) -> AppResult<T>,
    {
        let keys = self.signer();
        let rls = matches!(self, DbPool::Postgres(p) if p.row_security());
        let _turn = match mode {
            Mode::Write => self.writer_turn().await?,
            Mode::Read | Mode::Plain => None,
        };
        let mut guard = OpenTx {
            pooled: Some(self.checkout().await?),
            open: false,
        };
        let Some(pooled) = guard.pooled.as_mut() else {
            unreachable!("the checkout was just stored");
        };
        let mut conn = pooled.conn(keys.as_ref());
        let open = match (&mut conn.inner, mode) {
            (_, Mode::Plain) | (Inner::Sqlite(_), Mode::Read) => false,
            // Without row-level security in force a read needs no transaction.
            (Inner::Postgres(_), Mode::Read) if !rls => false,
            (Inner::Postgres(c), _) => {
                diesel_async::AnsiTransactionManager::begin_transaction(&mut **c).await?;
                guard.open = true;
                if rls {
                    super::set_tenant(c, tenant).await?;
                }
                true
            }
            (Inner::Sqlite(c), Mode::Write) => {
                begin_immediate(c).await?;
                guard.open = true;
                true
            }
        };
        // If this future is dropped mid-way, `guard` rolls the transaction back before
        // the connection returns to the pool: nothing half-done is ever committed.
        if !open {
            return f(&mut conn).await;
        }
        let out = if matches!(conn.inner, Inner::Sqlite(_)) {
            // An open SQLite transaction is a write one, its lock held: the body's
            // statements run inline.
            super::spawn::in_write_tx(f(&mut conn)).await
        } else {
            f(&mut conn).await
        };
        let end = match (&mut conn.inner, out) {
            (Inner::Postgres(c), Ok(v)) => {
                diesel_async::AnsiTransactionManager::commit_transaction(&mut **c).await?;
                Ok(v)
            }
            (Inner::Sqlite(c), Ok(v)) => {
                commit_sqlite(c).await?;
                Ok(v)
            }
            (Inner::Postgres(c), Err(e)) => {
                // A failed rollback leaves the manager broken: the pool drops the connection.
                let _ = diesel_async::AnsiTransactionManager::rollback_transaction(&mut **c).await;
                Err(e)
            }
            (Inner::Sqlite(c), Err(e)) => {
                let _ = rollback_sqlite(c).await;
                Err(e)
            }
        };
        // Ended (committed or rolled back): the connection goes back as it is.
        guard.open = false;
        end
    }
}

/// A PostgreSQL transaction whose `BEGIN` and `COMMIT` are statements sent in the same
/// pipeline as its body (see diesel-async's pipelining: futures polled together on one
/// `&AsyncPgConnection` go out together), so a short transaction costs one round trip
/// instead of one per statement plus two:
///
/// ```text
/// let tx = PipelinedTx::checkout(pool).await?;
/// let c = tx.conn();
/// let (began, out, ended) = futures_util::join!(tx.begin(), body(c), tx.commit());
/// tx.ended(began.is_ok() && out.is_ok() && ended.is_ok());
/// ```
///
/// Polled in that order, the statements reach the server in that order (the connection's
/// statement cache hands out its lock first come, first served). `join!`, not
/// `try_join!`: `COMMIT` must go out even when the body fails (PostgreSQL ends an aborted
/// transaction with it as with `ROLLBACK`). A checkout dropped before [`PipelinedTx::ended`]
/// (the caller was cancelled mid-pipeline) sends `ROLLBACK` on a task of its own before
/// the connection returns to the pool. diesel's transaction manager never hears of the
/// transaction: only for bodies that are plain statements, no nested `transaction`.
///
/// Only a server's error aborts the transaction and turns `COMMIT` into a rollback. A
/// statement that fails in the client before it is sent (a bind that cannot be encoded)
/// leaves the others to commit: keep the body to one writing statement (the claim) or
/// to statements whose binds cannot fail. Order also relies on no statement awaiting a
/// custom type's lookup before it queues for the statement cache (the schema has none).
pub struct PipelinedTx {
    pooled: Option<bb8::PooledConnection<'static, PgManager>>,
    /// The pool's commit counter (diesel's transaction manager counts the others).
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PipelinedTx {
    /// A connection from `pool` for one pipelined transaction.
    pub async fn checkout(pool: &super::FastPool<PgManager>) -> AppResult<Self> {
        Ok(Self {
            pooled: Some(pool.get_owned().await?),
            commits: pool.counters.commits.clone(),
        })
    }

    /// The connection, to send the body's statements on (`&mut &*conn`).
    pub fn conn(&self) -> &AsyncPgConnection {
        match &self.pooled {
            Some(c) => c,
            None => unreachable!("a PipelinedTx keeps its connection until `ended`"),
        }
    }

    /// `BEGIN`.
    pub fn begin(&self) -> futures_util::future::BoxFuture<'_, diesel::QueryResult<usize>> {
        use diesel_async::RunQueryDsl as _;
        super::cached(diesel::sql_query("BEGIN")).execute(&mut self.conn())
    }

    /// `COMMIT` (a `ROLLBACK` when a statement of the body failed).
    pub fn commit(&self) -> futures_util::future::BoxFuture<'_, diesel::QueryResult<usize>> {
        use diesel_async::RunQueryDsl as _;
        super::cached(diesel::sql_query("COMMIT")).execute(&mut self.conn())
    }

    /// The pipeline was awaited to its end: the connection goes back to the pool as it
    /// is; `committed` when every statement and the `COMMIT` succeeded.
    pub fn ended(mut self, committed: bool) {
        if committed {
            self.commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(self.pooled.take());
    }
}

impl Drop for PipelinedTx {
    fn drop(&mut self) {
        let Some(mut pooled) = self.pooled.take() else {
            return;
        };
        // Marked broken until the rollback answers: should the task never run (the
        // runtime is going away), the pool closes the connection, and with it the
        // transaction, instead of lending it to the next caller.
        <diesel_async::AnsiTransactionManager as diesel_async::TransactionManager<
            AsyncPgConnection,
        >>::transaction_manager_status_mut(&mut pooled)
        .set_in_error();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            use diesel_async::SimpleAsyncConnection as _;
            // Outside a transaction only a warning: harmless.
            if pooled.batch_execute("ROLLBACK").await.is_ok() {
                *<diesel_async::AnsiTransactionManager as diesel_async::TransactionManager<
                    AsyncPgConnection,
                >>::transaction_manager_status_mut(&mut pooled) =
                    diesel::connection::TransactionManagerStatus::default();
            }
        });
    }
}
