//! SQLite's cross-process event path (PostgreSQL's is `events::relay_postgres`).

use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;

use super::model::ExecutionEvent;

/// How often [`follow_sqlite`] reads the event log.
pub const SQLITE_FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// SQLite's cross-process path: follows `execution_events` in row order (rows are
/// numbered in commit order under SQLite's single writer) and publishes the events other
/// processes wrote into `bus`, one interval after reading them; a QUEUED event wakes idle
/// workers. Starts at the end of the log; stops with `stop`.
pub async fn follow_sqlite(
    url: crate::config::DatabaseUrl,
    bus: Arc<crate::app::Bus>,
    stop: CancellationToken,
) {
    use diesel::sql_types::{BigInt, Text};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        pos: i64,
        #[diesel(sql_type = Text)]
        payload: String,
    }
    // Its own pool, so polling neither queues behind requests nor counts in
    // `App::statements`.
    let Some(db) = crate::db::DbPool::connect_until(&url, &stop, "the event-log follower").await
    else {
        return;
    };
    let crate::db::DbPool::Sqlite(pool) = &db else {
        return;
    };
    bus.track_local();
    let mut last: Option<i64> = None;
    // Rows that looked like another process's when read, with when they were read. This
    // process publishes its own events just after their commit, so a row can be read
    // between the two: it is published only if it is still not known as local one
    // interval later (in row order), instead of being delivered twice.
    let mut pending: std::collections::VecDeque<(std::time::Instant, ExecutionEvent)> =
        std::collections::VecDeque::new();
    loop {
        let read = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            let rows: Vec<Row> = match last {
                None => diesel::sql_query(
                    "SELECT COALESCE(MAX(rowid), 0) AS pos, '' AS payload FROM execution_events",
                )
                .load(&mut *conn)
                .await
                .map_err(|e| e.to_string())?,
                Some(after) => diesel::sql_query(
                    "SELECT rowid AS pos, payload FROM execution_events WHERE rowid > ? \
                     ORDER BY rowid LIMIT 1000",
                )
                .bind::<BigInt, _>(after)
                .load(&mut *conn)
                .await
                .map_err(|e| e.to_string())?,
            };
            Ok::<_, String>(rows)
        };
        match read.await {
            Ok(rows) if last.is_none() => {
                last = Some(rows.as_slice().first().map_or(0, |r| r.pos));
                // Work enqueued before this position is found by claiming: wake once.
                bus.queue_wake.notify_waiters();
            }
            Ok(rows) => {
                let full = rows.len() == 1000;
                for r in rows {
                    last = Some(r.pos);
                    let Ok(ev) = serde_json::from_str::<ExecutionEvent>(&r.payload) else {
                        continue;
                    };
                    if !bus.was_local(&ev) {
                        pending.push_back((std::time::Instant::now(), ev));
                    }
                }
                while pending
                    .front()
                    .is_some_and(|(read, _)| read.elapsed() >= SQLITE_FOLLOW_INTERVAL)
                {
                    let Some((_, ev)) = pending.pop_front() else {
                        break;
                    };
                    if bus.was_local(&ev) {
                        continue;
                    }
                    if ev.status == super::model::ExecutionStatus::Queued {
                        bus.queue_wake.notify_waiters();
                    }
                    bus.publish_relayed(ev);
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the event log failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SQLITE_FOLLOW_INTERVAL) => {}
        }
    }
}
