//! Embedded, forward-only migrations: `migrations/postgres/` and `migrations/sqlite/` are
//! compiled into the binary and applied by `serve` and `migrate`.

use anyhow::Context as _;
use diesel::migration::MigrationSource;
use diesel::sql_types::Text;
use diesel::{Connection as _, SqliteConnection};
use diesel_async::{AsyncConnection as _, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use secrecy::ExposeSecret;

use super::DbPool;
use crate::config::DatabaseUrl;

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Versions compiled into this binary, oldest first.
pub fn embedded_versions(backend: super::Backend) -> anyhow::Result<Vec<String>> {
    let mut v: Vec<String> = match backend {
        super::Backend::Postgres => MigrationSource::<diesel::pg::Pg>::migrations(&PG_MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .iter()
            .map(|m| m.name().version().to_string())
            .collect(),
        super::Backend::Sqlite => {
            MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE_MIGRATIONS)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .iter()
                .map(|m| m.name().version().to_string())
                .collect()
        }
    };
    v.sort();
    Ok(v)
}

/// Applies every pending migration; returns the versions applied.
pub async fn run_pending(url: &DatabaseUrl) -> anyhow::Result<Vec<String>> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let path = super::prepare_sqlite_path(path)?;
            tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
                let mut conn = SqliteConnection::establish(&path)
                    .with_context(|| format!("opening SQLite database {path}"))?;
                let done = conn
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|e| anyhow::anyhow!("applying SQLite migrations: {e}"))?;
                Ok(done.iter().map(ToString::to_string).collect())
            })
            .await
            .context("migration task panicked")?
        }
        DatabaseUrl::Postgres(secret) => {
            let conn = AsyncPgConnection::establish(secret.expose_secret())
                .await
                .with_context(|| super::unreachable_message(url))?;
            let mut harness = AsyncMigrationHarness::new(conn);
            let done = harness
                .run_pending_migrations(PG_MIGRATIONS)
                .map_err(|e| anyhow::anyhow!("applying PostgreSQL migrations: {e}"))?;
            Ok(done.iter().map(ToString::to_string).collect())
        }
    }
}

/// How the database's migrations compare with this binary's.
#[derive(Debug, Default)]
pub struct MigrationState {
    /// Embedded migrations not yet applied.
    pub pending: Vec<String>,
    /// Applied migrations this binary does not know: the database was migrated by a newer
    /// version, whose schema this binary may misread.
    pub unknown: Vec<String>,
}

/// Embedded migrations not yet applied to the database behind `pool`.
pub async fn pending(pool: &DbPool) -> anyhow::Result<Vec<String>> {
    Ok(state(pool).await?.pending)
}

/// Compares the migrations applied to the database behind `pool` with the embedded ones.
pub async fn state(pool: &DbPool) -> anyhow::Result<MigrationState> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let embedded = embedded_versions(pool.backend())?;
    let applied: Vec<String> = crate::db_run!(pool, |conn| {
        match diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Row>(conn)
            .await
        {
            Ok(rows) => rows.into_iter().map(|r| r.version).collect(),
            // No bookkeeping table yet: nothing has been applied.
            Err(diesel::result::Error::DatabaseError(..)) => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    });
    let mut unknown: Vec<String> = applied
        .iter()
        .filter(|v| !embedded.contains(v))
        .cloned()
        .collect();
    unknown.sort();
    Ok(MigrationState {
        pending: embedded
            .into_iter()
            .filter(|v| !applied.contains(v))
            .collect(),
        unknown,
    })
}

impl MigrationState {
    /// Why this binary should not serve this database, if it should not.
    pub fn problem(&self) -> Option<String> {
        if !self.unknown.is_empty() {
            Some(format!(
                "the database is newer than this binary: migration(s) {} were applied by a \
                 newer agentplane; upgrade this binary",
                self.unknown.join(", ")
            ))
        } else if !self.pending.is_empty() {
            Some(format!(
                "migrations pending: {}; run `agentplane migrate`",
                self.pending.join(", ")
            ))
        } else {
            None
        }
    }
}
