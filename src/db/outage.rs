//! When the database cannot serve: query and pool errors as `AppError`s (outages are
//! `UNAVAILABLE`), the readiness write probe, and what start-up says when the database
//! is unreachable.

use super::{DbPool, PoolError, ids, schema};
use crate::config::DatabaseUrl;
use crate::error::AppError;
use diesel_async::RunQueryDsl as _;

// Query and pool errors become `AppError`s here, next to `outage_kind`, so the error
// type itself knows nothing of the database.
impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                AppError::conflict("an object with the same unique value already exists")
            }
            Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                AppError::conflict("a concurrent change conflicted with this one; retry")
            }
            _ => match outage_kind(&e) {
                Some(what) => AppError::unavailable(what, e),
                None => AppError::internal(e),
            },
        }
    }
}

impl From<PoolError> for AppError {
    fn from(e: PoolError) -> Self {
        let what = match &e {
            bb8::RunError::TimedOut => "the database is busy (no connection free in time)",
            bb8::RunError::User(_) => "the database is unreachable",
        };
        AppError::unavailable(what, e)
    }
}

/// What a client is told when the database has no disk space left.
pub(super) const OUT_OF_SPACE: &str = "the database is out of disk space";

/// How long after a write failed for want of disk space [`write_probe`] still reports
/// it: a full disk refuses writes that need new space, while small ones can still fit
/// in WAL space freed by a checkpoint, the probe's among them.
const OUT_OF_SPACE_REPORTED: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a query error means the database cannot serve requests right now (rather
/// than a bug or a bad request), and what to tell the client: a lost or refused
/// connection, a server shutting down or starting, a full disk, a database locked for
/// longer than the busy timeout.
pub fn outage_kind(e: &diesel::result::Error) -> Option<&'static str> {
    use diesel::result::{DatabaseErrorKind, Error};
    let Error::DatabaseError(kind, info) = e else {
        return matches!(e, Error::BrokenTransactionManager)
            .then_some("the database connection was lost");
    };
    if matches!(
        kind,
        DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
    ) {
        return Some("the database connection was lost");
    }
    let msg = info.message();
    if msg.contains("database or disk is full")
        || msg.contains("could not extend file")
        || msg.contains("No space left on device")
    {
        Some(OUT_OF_SPACE)
    } else if msg.contains("database is locked") {
        Some("the database is busy")
    } else if msg.contains("terminating connection")
        || msg.contains("the database system is")
        || msg.contains("connection closed")
    {
        Some("the database is restarting or unreachable")
    } else {
        None
    }
}

/// Writes one row (`health_probe`) in a transaction: `Err` with a client-safe reason
/// when the database takes no writes (full disk, read-only file or server), or when a
/// write failed for want of disk space in the last 5 s.
pub async fn write_probe(db: &DbPool, now: chrono::DateTime<chrono::Utc>) -> Result<(), String> {
    async fn write(db: &DbPool, now: chrono::NaiveDateTime) -> crate::error::AppResult<()> {
        use diesel::{ExpressionMethods as _, QueryDsl as _};
        use schema::health_probe;
        db.tx("", async |conn| {
            crate::on_conn!(conn, |conn| {
                diesel::update(health_probe::table.filter(health_probe::id.eq(1)))
                    .set(health_probe::checked_at.eq(now))
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }
    if db.out_of_space_within(OUT_OF_SPACE_REPORTED) {
        return Err(format!("the database takes no writes: {OUT_OF_SPACE}"));
    }
    write(db, ids::db_time(now)).await.map_err(|e| {
        let reason = format!("the database takes no writes: {}", e.message());
        if e.code() != crate::error::ErrorCode::Unavailable {
            // Logs the hidden cause once.
            drop(e.into_anyhow());
        }
        reason
    })
}

/// What start-up and the CLI say when the database cannot be reached.
pub fn unreachable_message(url: &DatabaseUrl) -> String {
    format!(
        "cannot reach the database at {}; is it running, and is DATABASE_URL right?",
        url.redacted()
    )
}
