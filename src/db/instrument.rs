//! What every pooled connection reports about itself: statements started and
//! transactions committed (the statement-count tests and `/metrics` read them), and,
//! while traces are exported, a `db.statement` span per statement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a pool's connections count: statements started and transactions committed.
#[derive(Clone, Default)]
pub struct DbCounters {
    /// SQL statements started (BEGIN and COMMIT included).
    pub statements: Arc<AtomicU64>,
    /// Transactions committed (the outermost level: each one a durable write).
    pub commits: Arc<AtomicU64>,
}

/// An instrumentation that counts statements started and transactions committed on a
/// connection and, while traces are exported and `spans` is set, opens a `db.statement`
/// span per statement (its kind only: never its text or values). Only PostgreSQL's driver
/// runs statements in the caller's task, where the span finds its parent; SQLite's run on
/// a blocking thread, so there the caller's `db.transaction` span stands for them.
pub(super) fn statement_counter(
    counters: DbCounters,
    spans: bool,
) -> impl diesel::connection::Instrumentation {
    use diesel::connection::InstrumentationEvent;
    let mut statement: Option<tracing::Span> = None;
    move |event: InstrumentationEvent<'_>| match event {
        InstrumentationEvent::StartQuery { query, .. } => {
            counters.statements.fetch_add(1, Ordering::Relaxed);
            if spans
                && tracing::enabled!(target: crate::telemetry::SQL_TARGET, tracing::Level::DEBUG)
            {
                let text = query.to_string();
                let kind = statement_kind(&text);
                // Open until the statement finishes (dropped below).
                drop(statement.replace(tracing::debug_span!(
                    target: crate::telemetry::SQL_TARGET,
                    "db.statement",
                    db.operation = kind,
                )));
            }
        }
        InstrumentationEvent::FinishQuery { .. } => {
            drop(statement.take());
        }
        InstrumentationEvent::CommitTransaction { depth, .. } if depth.get() == 1 => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// The first keyword of a statement (`SELECT`, `INSERT`, `BEGIN`, …), or `OTHER`.
fn statement_kind(sql: &str) -> &'static str {
    let word = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    const KINDS: &[&str] = &[
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "WITH",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "LISTEN",
        "NOTIFY",
        "PRAGMA",
    ];
    KINDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("OTHER")
}
