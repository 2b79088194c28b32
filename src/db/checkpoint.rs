//! WAL checkpoints off the commit path (SQLite).
//!
//! By default SQLite checkpoints inside the `COMMIT` that takes the WAL past 1,000 pages:
//! that commit copies the WAL back into the database file and fsyncs both, while this
//! process's writer turn is held, so every writer queued behind it waits for the disk.
//! The pool's connections turn that off (`wal_autocheckpoint = 0`) and this task
//! checkpoints instead, on a connection of its own, a moment after commits happen.
//! A `PASSIVE` checkpoint takes no lock a writer needs: writers go on committing while
//! it copies and syncs.
//!
//! With checkpoints gone from it, a `COMMIT` (WAL mode, `synchronous = NORMAL`) only
//! appends the transaction's pages to the WAL: no fsync and no lock to wait for, so it
//! runs on the task's own thread like the statements before it (see
//! [`spawn`](super::spawn)).

use std::time::{Duration, SystemTime};

use diesel::{Connection as _, SqliteConnection, connection::SimpleConnection as _};
use tokio::sync::watch;

/// How long after a commit the checkpoint runs: commits in between share it.
const AFTER_COMMIT: Duration = Duration::from_millis(100);

/// How often the WAL is looked at for writes that bypassed [`DbPool::tx`]
/// (autocommit statements): a checkpoint runs when the file changed since the last look.
///
/// [`DbPool::tx`]: super::DbPool::tx
const FALLBACK: Duration = Duration::from_secs(5);

/// Starts the checkpointer of the SQLite database at `path`. It stops when every sender
/// of `commits` is gone (the pool was dropped).
pub(super) fn start(path: String, mut commits: watch::Receiver<u64>) {
    tokio::spawn(async move {
        let wal = format!("{path}-wal");
        let mut conn: Option<SqliteConnection> = None;
        let mut seen = modified(&wal).await;
        let mut fallback = tokio::time::interval(FALLBACK);
        fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = commits.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(AFTER_COMMIT).await;
                    commits.mark_unchanged();
                }
                _ = fallback.tick() => {
                    // (A WAL changed by commits already checkpointed costs one more
                    // checkpoint here, with nothing left to copy.)
                    let now = modified(&wal).await;
                    if std::mem::replace(&mut seen, now) == now {
                        continue;
                    }
                }
            }
            conn = checkpoint(&path, conn.take()).await;
        }
    });
}

async fn modified(file: &str) -> Option<SystemTime> {
    tokio::fs::metadata(file)
        .await
        .ok()
        .and_then(|m| m.modified().ok())
}

/// One `PASSIVE` checkpoint on a blocking thread; returns the connection to reuse (none
/// when it could not be opened or failed, to be opened again next time).
async fn checkpoint(path: &str, conn: Option<SqliteConnection>) -> Option<SqliteConnection> {
    let path = path.to_owned();
    let done = tokio::task::spawn_blocking(move || {
        let mut conn = match conn {
            Some(c) => c,
            None => {
                let mut c = SqliteConnection::establish(&path)
                    .map_err(|e| tracing::warn!(error = %e, "opening the checkpoint connection"))
                    .ok()?;
                c.batch_execute("PRAGMA synchronous = NORMAL;").ok()?;
                c
            }
        };
        match conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
            Ok(()) => Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, "checkpointing the SQLite WAL");
                None
            }
        }
    })
    .await;
    done.ok().flatten()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use diesel::{Connection as _, RunQueryDsl as _, SqliteConnection};
    use diesel_async::SimpleAsyncConnection as _;

    use crate::config::DatabaseUrl;
    use crate::db::DbPool;
    use crate::db::conn::Inner;

    /// Rows in `t` of the database file alone, without its WAL (`None`: no table yet).
    fn rows_in_file(file: &std::path::Path, dir: &std::path::Path) -> Option<i64> {
        let copy = dir.join("copy.sqlite");
        std::fs::copy(file, &copy).expect("copy the database file");
        let _ = std::fs::remove_file(dir.join("copy.sqlite-wal"));
        let mut c = SqliteConnection::establish(copy.to_str().expect("utf-8")).expect("open");
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM t)",
        ))
        .get_result(&mut c)
        .ok()
    }

    #[derive(diesel::QueryableByName)]
    struct Pages {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        wal_autocheckpoint: i32,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_reach_the_database_file_without_checkpointing_in_the_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("db.sqlite");
        let pool = DbPool::connect(&DatabaseUrl::Sqlite(file.clone()))
            .await
            .expect("pool");
        let autocheckpoint = pool
            .tx("", async |conn| {
                let Inner::Sqlite(c) = conn.inner() else {
                    unreachable!("a SQLite pool")
                };
                c.batch_execute("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);")
                    .await?;
                let pages: Pages = diesel_async::RunQueryDsl::get_result(
                    diesel::sql_query("PRAGMA wal_autocheckpoint"),
                    &mut **c,
                )
                .await?;
                Ok(pages.wal_autocheckpoint)
            })
            .await
            .expect("write");
        assert_eq!(autocheckpoint, 0, "commits on the pool never checkpoint");
        // SQLite alone would leave three rows in the WAL until 1,000 pages were written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rows_in_file(&file, dir.path()) != Some(3) {
            assert!(
                Instant::now() < deadline,
                "the commit was not checkpointed into the database file"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
