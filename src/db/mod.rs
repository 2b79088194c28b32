//! Storage: one pool type over two backends, chosen at run time from `DATABASE_URL`.
//!
//! Queries are written once against [`schema`] and expanded for each backend by
//! [`db_run!`](crate::db_run): the macro binds `conn` to a `&mut AsyncPgConnection` in one
//! arm and to a `&mut SyncConnectionWrapper<SqliteConnection>` in the other, so the same
//! diesel expression type-checks against both. Where the dialects truly differ the two
//! bodies stand side by side with a `match` on [`DbPool`].

pub mod ids;
pub mod migrate;
pub mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// The async SQLite connection: diesel's sync connection run on a blocking thread.
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

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
    Postgres(Pool<AsyncPgConnection>),
    /// SQLite pool (WAL, foreign keys, busy timeout set per connection).
    Sqlite(Pool<SqliteConn>),
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

/// An instrumentation that counts statements started on a connection.
fn statement_counter(counter: Arc<AtomicU64>) -> impl diesel::connection::Instrumentation {
    move |event: diesel::connection::InstrumentationEvent<'_>| {
        if matches!(
            event,
            diesel::connection::InstrumentationEvent::StartQuery { .. }
        ) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
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

/// Runs `body` (which evaluates to `Result<T, AppError>`) in one transaction on either
/// backend: on PostgreSQL after setting `agentplane.tenant_id` to `$tenant` (an empty
/// string for platform-wide work such as the engine's), on SQLite with `BEGIN IMMEDIATE`
/// so the write lock is taken up front and concurrent writers wait (`busy_timeout`)
/// instead of failing on a lock upgrade. An `Err` rolls everything back.
#[macro_export]
macro_rules! db_tx {
    ($pool:expr, $tenant:expr, |$conn:ident| $body:expr) => {{
        let committed = match $pool {
            $crate::db::DbPool::Postgres(pool) => {
                use diesel_async::AsyncConnection as _;
                let mut pooled = pool.get().await?;
                let tenant_setting: String = $tenant.to_string();
                let tx: &mut diesel_async::AsyncPgConnection = &mut *pooled;
                tx.transaction(async |$conn| -> Result<_, $crate::error::AppError> {
                    $crate::db::set_tenant($conn, &tenant_setting).await?;
                    $body
                })
                .await
            }
            $crate::db::DbPool::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let tx: &mut $crate::db::SqliteConn = &mut *pooled;
                tx.immediate_transaction(async |$conn| -> Result<_, $crate::error::AppError> {
                    $body
                })
                .await
            }
        };
        if committed.is_ok() {
            // Wakes live audit tails: the transaction may have appended records.
            $crate::audit::tail::committed();
        }
        committed
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

impl DbPool {
    /// Connects (creating the SQLite file and its folder if missing) and checks one
    /// connection works.
    pub async fn connect(url: &DatabaseUrl) -> anyhow::Result<Self> {
        Self::connect_counted(url, Arc::default()).await
    }

    /// Like [`DbPool::connect`], counting every SQL statement any pooled connection runs
    /// into `statements` (the statement-count tests and `/metrics`-style reporting read it).
    pub async fn connect_counted(
        url: &DatabaseUrl,
        statements: Arc<AtomicU64>,
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
                let counter = statements.clone();
                cfg.custom_setup = Box::new(move |url| {
                    let url = url.to_owned();
                    let counter = counter.clone();
                    async move {
                        let mut conn = SqliteConn::establish(&url).await?;
                        conn.set_instrumentation(statement_counter(counter));
                        conn.batch_execute(
                            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                             PRAGMA synchronous = NORMAL;",
                        )
                        .await
                        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    }
                    .boxed()
                });
                let mgr = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, cfg);
                let pool = Pool::builder()
                    .max_size(8)
                    .connection_timeout(Duration::from_secs(10))
                    .build(mgr)
                    .await
                    .context("building the SQLite pool")?;
                let pool = Self::Sqlite(pool);
                pool.ping().await?;
                Ok(pool)
            }
            DatabaseUrl::Postgres(secret) => {
                let mut cfg = ManagerConfig::<AsyncPgConnection>::default();
                cfg.recycling_method = RecyclingMethod::Fast;
                cfg.custom_setup = Box::new(move |url| {
                    let url = url.to_owned();
                    let counter = statements.clone();
                    async move {
                        let mut conn = AsyncPgConnection::establish(&url).await?;
                        conn.set_instrumentation(statement_counter(counter));
                        Ok(conn)
                    }
                    .boxed()
                });
                let mgr = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
                    secret.expose_secret(),
                    cfg,
                );
                let pool = Pool::builder()
                    .max_size(16)
                    .connection_timeout(Duration::from_secs(10))
                    .build(mgr)
                    .await
                    .context("building the PostgreSQL pool")?;
                let pool = Self::Postgres(pool);
                pool.ping()
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {}", url.redacted()))?;
                Ok(pool)
            }
        }
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
