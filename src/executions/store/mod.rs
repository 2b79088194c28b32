//! Execution queries, written once for both backends. Every write that changes an
//! execution or a step bumps the execution's `seq` and stores the matching event in the
//! same transaction, so the event log has no gaps and no event without its change.

use chrono::{Duration as ChronoDuration, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamp};
use diesel_async::RunQueryDsl;

use super::model::{
    EventKind, EventRow, ExecutionEvent, ExecutionHead, ExecutionId, ExecutionRow, ExecutionState,
    ExecutionStatus, StepRunRow, StepStatus,
};
use crate::db::ids::TenantId;
use crate::db::ids::WorkflowId;
use crate::db::schema::{execution_events, execution_steps, executions};
use crate::db::{Conn, DbPool, ids::utc};
use crate::error::{AppError, AppResult, ErrorCode};

mod apply;
mod queue;
mod reads;
pub use apply::*;
pub use queue::*;
pub use reads::*;

/// What `enqueue` writes.
pub struct NewExecution {
    /// The execution row (status QUEUED, seq 0).
    pub row: ExecutionRow,
    /// One PENDING row per step.
    pub steps: Vec<StepRunRow>,
    /// Where it may run, when a step needs GPUs.
    pub placement: Option<crate::cluster::model::PlacementRow>,
    /// Its audit record (written only when the execution is created).
    pub audit: crate::audit::Entry,
    /// Monthly quota, checked in the same transaction.
    pub max_per_month: i64,
    /// Start of the current month (UTC).
    pub month_start: NaiveDateTime,
}

/// Result of `enqueue`.
pub enum Enqueued {
    /// A new execution and its QUEUED event.
    Created(Box<ExecutionRow>, Box<ExecutionEvent>),
    /// The idempotency key matched an execution of the last 24 h.
    Existing(Box<ExecutionRow>),
}

fn event_row(ev: &ExecutionEvent) -> AppResult<EventRow> {
    Ok(EventRow {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: ev.tenant_id,
        execution_id: ev.execution_id,
        seq: ev.seq,
        payload: serde_json::to_string(ev).map_err(AppError::internal)?,
        created_at: crate::db::ids::db_time(ev.at),
    })
}

/// Inside `on_conn!`: counts one more execution of `$tenant` in `$month` unless that
/// reaches `$max`; evaluates to 1 when counted, 0 when the month is full or has no
/// counter row yet. (`$N` placeholders: SQLite reads them as numbered names too.)
macro_rules! count_start {
    ($conn:expr, $tenant:expr, $month:expr, $max:expr) => {
        $crate::db::cached(
            diesel::sql_query(
                "UPDATE tenant_usage SET executions = executions + 1 \
                 WHERE tenant_id = $1 AND month = $2 AND executions < $3",
            )
            .bind::<Text, _>($tenant)
            .bind::<Text, _>($month)
            .bind::<diesel::sql_types::BigInt, _>($max),
        )
        .execute($conn)
        .await?
    };
}

/// Inserts an execution, its step rows and its first event, unless the idempotency key
/// matches an execution created in the last 24 hours (then that one is returned).
/// Enforces the monthly quota in the same transaction.
pub async fn enqueue(
    conn: &mut Conn<'_>,
    new: NewExecution,
    now: NaiveDateTime,
    envelope: &(dyn Fn(&ExecutionEvent) -> String + Sync),
) -> AppResult<Enqueued> {
    let tenant = new.row.tenant_id;
    let window = now - ChronoDuration::hours(24);
    let ev = ExecutionEvent {
        tenant_id: tenant,
        execution_id: new.row.id,
        workflow_id: new.row.workflow_id,
        seq: 1,
        kind: EventKind::StatusChanged,
        status: ExecutionStatus::Queued,
        step_id: None,
        step_status: None,
        attempt: None,
        error: None,
        at: utc(now),
    };
    let mut row = new.row;
    row.seq = 1;
    let payload = envelope(&ev);
    crate::on_conn!(conn, |conn| {
        if let Some(key) = &row.idempotency_key {
            let existing = executions::table
                .filter(executions::tenant_id.eq(tenant))
                .filter(executions::idempotency_key.eq(key))
                .select(ExecutionRow::as_select())
                .first(conn)
                .await
                .optional()?;
            if let Some(e) = existing {
                if e.created_at > window {
                    if e.workflow_id != row.workflow_id {
                        return Err(key_used_elsewhere());
                    }
                    return Ok(Enqueued::Existing(Box::new(e)));
                }
                // Older than 24 h: the key is free again.
                diesel::update(executions::table.filter(executions::id.eq(e.id)))
                    .set(executions::idempotency_key.eq(None::<String>))
                    .execute(conn)
                    .await?;
            }
        }
        // The month's counter, taken under its row lock; seeded from the month's
        // executions the first time (then read, never counted again).
        let month = new.month_start.format("%Y-%m").to_string();
        let mut counted = count_start!(&mut *conn, tenant, &month, new.max_per_month);
        if counted == 0 {
            diesel::sql_query(
                "INSERT INTO tenant_usage (tenant_id, month, executions) \
                 SELECT $1, $2, COUNT(*) FROM executions \
                 WHERE tenant_id = $1 AND created_at >= $3 \
                 ON CONFLICT (tenant_id, month) DO NOTHING",
            )
            .bind::<Text, _>(tenant)
            .bind::<Text, _>(&month)
            .bind::<Timestamp, _>(new.month_start)
            .execute(&mut *conn)
            .await?;
            counted = count_start!(&mut *conn, tenant, &month, new.max_per_month);
        }
        if counted == 0 {
            return Err(AppError::new(
                ErrorCode::QuotaExceeded,
                format!("the plan allows {} executions per month", new.max_per_month),
            )
            .with_detail("quota", "maxExecutionsPerMonth"));
        }
    });
    let event = event_row(&ev)?;
    // The rows: the execution, its steps (one statement each: diesel's multi-row INSERT
    // is PostgreSQL-only here), its placement, its first event.
    macro_rules! inserts {
        ($c:expr, $run:ident) => {{
            let mut sent = vec![$run!(
                diesel::insert_into(executions::table).values(&row),
                $c
            )];
            for step in &new.steps {
                sent.push($run!(
                    diesel::insert_into(execution_steps::table).values(step),
                    $c
                ));
            }
            if let Some(p) = &new.placement {
                sent.push($run!(
                    diesel::insert_into(crate::db::schema::execution_placements::table).values(p),
                    $c
                ));
            }
            sent.push($run!(
                diesel::insert_into(execution_events::table).values(&event),
                $c
            ));
            sent
        }};
    }
    match crate::db::Conn::inner(&mut *conn) {
        // In one round trip (pipelined): the server runs them in order.
        crate::db::conn::Inner::Postgres(pgm) => {
            let pgm: &mut diesel_async::AsyncPgConnection = pgm;
            let pg: &diesel_async::AsyncPgConnection = pgm;
            macro_rules! send {
                ($q:expr, $c:expr) => {
                    $q.execute(&mut &*$c)
                };
            }
            futures_util::future::try_join_all(inserts!(pg, send)).await?;
            notify_pg(pgm, &payload).await?;
        }
        crate::db::conn::Inner::Sqlite(lite) => {
            let lite: &mut crate::db::SqliteConn = lite;
            macro_rules! run {
                ($q:expr, $c:expr) => {
                    $q.execute(&mut *$c).await?
                };
            }
            let _: Vec<usize> = inserts!(lite, run);
        }
    }
    // Last, so the tenant's chain lock (its head row) is held only until the commit.
    crate::audit::append(conn, &new.audit).await?;
    Ok(Enqueued::Created(Box::new(row), Box::new(ev)))
}

/// `CONFLICT` for an idempotency key that started another workflow's execution.
pub fn key_used_elsewhere() -> AppError {
    AppError::conflict(
        "this idempotency key already started an execution of another workflow in the last \
         24 hours; use a key per workflow",
    )
    .with_detail("field", "idempotencyKey")
}

/// `pg_notify` for both channels on PostgreSQL; a no-op on SQLite.
trait Notifier {
    async fn notify(&mut self, channel: &str, payload: &str) -> QueryResult<()>;
}

impl Notifier for diesel_async::AsyncPgConnection {
    async fn notify(&mut self, channel: &str, payload: &str) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_notify(agentplane_channel($1), $2)")
            .bind::<Text, _>(channel)
            .bind::<Text, _>(payload)
            .execute(self)
            .await
            .map(|_| ())
    }
}

impl Notifier for crate::db::SqliteConn {
    async fn notify(&mut self, _channel: &str, _payload: &str) -> QueryResult<()> {
        Ok(())
    }
}

/// Relays an event (and a queue wake-up when it is a QUEUED event) to other processes.
async fn notify_pg<C: Notifier>(conn: &mut C, envelope: &str) -> QueryResult<()> {
    // Empty: Redis carries this event (after the commit), not NOTIFY.
    if envelope.is_empty() {
        return Ok(());
    }
    conn.notify(crate::events::EVENTS_CHANNEL, envelope).await?;
    if envelope.contains("\"status\":\"QUEUED\"") {
        conn.notify(crate::events::QUEUE_CHANNEL, "").await?;
    }
    Ok(())
}

/// Sends an event by NOTIFY outside any transaction: the path of an event the Redis
/// fan-out could not take (it was committed already, so this only tells other processes).
pub async fn notify_committed(db: &crate::db::DbPool, envelope: &str) -> AppResult<()> {
    crate::db_run!(db, |conn| notify_pg(conn, envelope).await?);
    Ok(())
}

/// Sends events to other processes by NOTIFY after they committed (PostgreSQL): drains
/// `rx`, up to 500 envelopes per statement, in publish order, each statement a
/// transaction of its own that does not wait for its commit record to reach disk (it
/// changes no data). A failed send is logged and dropped: the stored log has the events.
pub async fn pg_notify_loop(
    db: crate::db::DbPool,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    use diesel::sql_types::Array;
    let crate::db::DbPool::Postgres(pool) = &db else {
        return;
    };
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < 500 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut channels = Vec::new();
        let mut payloads = Vec::new();
        for envelope in batch {
            if envelope.contains("\"status\":\"QUEUED\"") {
                channels.push(crate::events::QUEUE_CHANNEL);
                payloads.push(String::new());
            }
            channels.push(crate::events::EVENTS_CHANNEL);
            payloads.push(envelope);
        }
        let sent: AppResult<()> = async {
            let mut conn = pool.get().await?;
            diesel::sql_query(
                "SELECT set_config('synchronous_commit', 'off', true), \
                 pg_notify(agentplane_channel(c), p) \
                 FROM unnest($1::text[], $2::text[]) AS t(c, p)",
            )
            .bind::<Array<Text>, _>(&channels)
            .bind::<Array<Text>, _>(&payloads)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        .await;
        if let Err(e) = sent {
            tracing::warn!(
                code = e.code().as_str(),
                events = payloads.len(),
                "NOTIFY of committed events failed; other processes read them from the stored log"
            );
        }
    }
}

/// Who may write: a worker holding the lease, or anyone (users cancelling).
#[derive(Clone, Copy, Debug)]
pub enum Guard<'a> {
    /// Only while this worker holds the lease.
    Lease(&'a str),
    /// Regardless of lease.
    Any,
}

/// Extra columns a transition writes.
#[derive(Default, Debug, Clone)]
pub struct Patch {
    /// Output JSON (on success).
    pub output: Option<String>,
    /// Error text (on failure, timeout, cancellation).
    pub error: Option<String>,
    /// The deadline, when starting to run.
    pub deadline_at: Option<NaiveDateTime>,
    /// An audit record to write with the change (user actions such as cancel).
    pub audit: Option<crate::audit::Entry>,
}

/// THE transition function's storage half: moves an execution to `to` if its current
/// status may become `to` (see [`ExecutionStatus::may_become`]) and the guard holds. On a
/// terminal status, unfinished steps end too (running ones CANCELLED, pending ones
/// SKIPPED) with their own events, and the lease is dropped. Returns the events written,
/// or `None` when the transition did not apply (already moved on, or lease lost).
pub async fn transition(
    conn: &mut Conn<'_>,
    id: ExecutionId,
    to: ExecutionStatus,
    guard: Guard<'_>,
    patch: Patch,
    now: NaiveDateTime,
    envelope: &(dyn Fn(&ExecutionEvent) -> String + Sync),
) -> AppResult<Option<(ExecutionRow, Vec<ExecutionEvent>)>> {
    let sources: Vec<&str> = ExecutionStatus::sources_of(to)
        .into_iter()
        .map(ExecutionStatus::as_str)
        .collect();
    let owner = match guard {
        Guard::Lease(o) => Some(o.to_owned()),
        Guard::Any => None,
    };
    let (row, events) = crate::on_conn!(conn, |conn| {
        // Lock the row and check the guard first (the write lock comes with it).
        let q = diesel::update(
            executions::table
                .filter(executions::id.eq(id))
                .filter(executions::status.eq_any(&sources)),
        )
        .set(executions::updated_at.eq(now));
        let locked = match &owner {
            Some(o) => crate::db::cached(
                diesel::update(
                    executions::table
                        .filter(executions::id.eq(id))
                        .filter(executions::status.eq_any(&sources))
                        .filter(executions::lease_owner.eq(o)),
                )
                .set(executions::updated_at.eq(now))
                .returning(ExecutionRow::as_returning()),
            )
            .get_result(conn)
            .await
            .optional()?,
            None => q
                .returning(ExecutionRow::as_returning())
                .get_result(conn)
                .await
                .optional()?,
        };
        let Some(row) = locked else {
            return Ok(None);
        };
        let mut seq = row.seq;
        let mut events = Vec::new();
        let base = |seq: i64| ExecutionEvent {
            tenant_id: row.tenant_id,
            execution_id: row.id,
            workflow_id: row.workflow_id,
            seq,
            kind: EventKind::StepChanged,
            status: row.status,
            step_id: None,
            step_status: None,
            attempt: None,
            error: None,
            at: utc(now),
        };
        if to.is_terminal() {
            let open: Vec<StepRunRow> = execution_steps::table
                .filter(execution_steps::execution_id.eq(id))
                .select(StepRunRow::as_select())
                .order(execution_steps::position.asc())
                .load(conn)
                .await?
                .into_iter()
                .filter(|s| !s.status.is_terminal())
                .collect();
            for s in open {
                let new_status = match s.status {
                    StepStatus::Pending => StepStatus::Skipped,
                    _ => StepStatus::Cancelled,
                };
                diesel::update(execution_steps::table.filter(execution_steps::id.eq(s.id)))
                    .set((
                        execution_steps::status.eq(new_status.as_str()),
                        execution_steps::finished_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                seq += 1;
                let mut ev = base(seq);
                ev.step_id = Some(s.step_id.clone());
                ev.step_status = Some(new_status);
                ev.attempt = Some(s.attempt);
                events.push(ev);
            }
        }
        seq += 1;
        let mut ev = base(seq);
        ev.kind = EventKind::StatusChanged;
        ev.status = to;
        ev.error = patch.error.clone();
        for e in &mut events {
            e.status = if to.is_terminal() { to } else { e.status };
        }
        events.push(ev);
        let terminal = to.is_terminal();
        let row = crate::db::cached(
            diesel::update(executions::table.filter(executions::id.eq(id)))
                .set((
                    executions::status.eq(to.as_str()),
                    executions::seq.eq(seq),
                    executions::updated_at.eq(now),
                    executions::error.eq(patch.error.clone().or(row.error.clone())),
                    executions::output.eq(patch.output.clone().or(row.output.clone())),
                    executions::started_at.eq(row
                        .started_at
                        .or((to == ExecutionStatus::Running).then_some(now))),
                    executions::deadline_at.eq(patch.deadline_at.or(row.deadline_at)),
                    executions::finished_at.eq(terminal.then_some(now).or(row.finished_at)),
                    executions::lease_owner.eq(if terminal {
                        None
                    } else {
                        row.lease_owner.clone()
                    }),
                    executions::lease_expires_at.eq(if terminal {
                        None
                    } else {
                        row.lease_expires_at
                    }),
                ))
                .returning(ExecutionRow::as_returning()),
        )
        .get_result(conn)
        .await?;
        let rows = events
            .iter()
            .map(event_row)
            .collect::<AppResult<Vec<_>>>()?;
        for r in &rows {
            diesel::insert_into(execution_events::table)
                .values(r)
                .execute(conn)
                .await?;
        }
        (row, events)
    });
    if let Some(a) = &patch.audit {
        crate::audit::append(conn, a).await?;
    }
    crate::on_conn!(conn, |conn| {
        for e in &events {
            notify_pg(conn, &envelope(e)).await?;
        }
    });
    Ok(Some((row, events)))
}

/// A step's new state, written by the worker that holds the lease.
#[derive(Debug, Clone)]
pub struct StepChange {
    /// The step.
    pub step_id: String,
    /// New status.
    pub status: StepStatus,
    /// Attempt number.
    pub attempt: i64,
    /// Start of this attempt (when starting).
    pub started_at: Option<NaiveDateTime>,
    /// End (when finishing).
    pub finished_at: Option<NaiveDateTime>,
    /// Output JSON.
    pub output: Option<String>,
    /// Error text.
    pub error: Option<String>,
    /// Tokens and cost of this attempt.
    pub prompt_tokens: i64,
    /// Tokens.
    pub completion_tokens: i64,
    /// USD.
    pub cost_usd: f64,
    /// LLM calls without a price (their cost is unknown).
    pub unpriced_calls: i64,
}

impl StepChange {
    /// A change of `step_id` to `status` in `attempt`, with no times, output, error,
    /// tokens or cost yet (set the fields that apply).
    pub fn new(step_id: impl Into<String>, status: StepStatus, attempt: i64) -> Self {
        Self {
            step_id: step_id.into(),
            status,
            attempt,
            started_at: None,
            finished_at: None,
            output: None,
            error: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            unpriced_calls: 0,
        }
    }
}

/// Records a step change while `owner` holds the lease of a RUNNING execution: step row,
/// execution totals, seq and event in one transaction. `None` means the lease is lost
/// (or the execution ended): the worker must stop.
pub async fn record_step(
    conn: &mut Conn<'_>,
    id: ExecutionId,
    owner: &str,
    change: &StepChange,
    now: NaiveDateTime,
    envelope: &(dyn Fn(&ExecutionEvent) -> String + Sync),
) -> AppResult<Option<ExecutionEvent>> {
    crate::on_conn!(conn, |conn| {
        let row = crate::db::cached(
            diesel::update(
                executions::table
                    .filter(executions::id.eq(id))
                    .filter(executions::status.eq(ExecutionStatus::Running))
                    .filter(executions::lease_owner.eq(owner)),
            )
            .set((
                executions::seq.eq(executions::seq + 1),
                executions::prompt_tokens.eq(executions::prompt_tokens + change.prompt_tokens),
                executions::completion_tokens
                    .eq(executions::completion_tokens + change.completion_tokens),
                executions::cost_usd.eq(executions::cost_usd + change.cost_usd),
                executions::unpriced_calls.eq(executions::unpriced_calls + change.unpriced_calls),
                executions::updated_at.eq(now),
            ))
            .returning(ExecutionRow::as_returning()),
        )
        .get_result(conn)
        .await
        .optional()?;
        let Some(row) = row else { return Ok(None) };
        let target = execution_steps::table
            .filter(execution_steps::execution_id.eq(id))
            .filter(execution_steps::step_id.eq(&change.step_id));
        // One UPDATE per change: its columns depend on whether it starts or finishes an
        // attempt (a change that does both takes two).
        let status = execution_steps::status.eq(change.status.as_str());
        let attempt = execution_steps::attempt.eq(change.attempt);
        let error = execution_steps::error.eq(&change.error);
        let finish = |t: NaiveDateTime| {
            (
                execution_steps::finished_at.eq(t),
                execution_steps::output.eq(&change.output),
                execution_steps::prompt_tokens
                    .eq(execution_steps::prompt_tokens + change.prompt_tokens),
                execution_steps::completion_tokens
                    .eq(execution_steps::completion_tokens + change.completion_tokens),
                execution_steps::cost_usd.eq(execution_steps::cost_usd + change.cost_usd),
                execution_steps::unpriced_calls
                    .eq(execution_steps::unpriced_calls + change.unpriced_calls),
            )
        };
        match (change.started_at, change.finished_at) {
            (Some(start), finished) => {
                diesel::update(target)
                    .set((
                        status,
                        attempt,
                        error,
                        execution_steps::started_at.eq(start),
                        execution_steps::finished_at.eq(None::<NaiveDateTime>),
                    ))
                    .execute(conn)
                    .await?;
                if let Some(t) = finished {
                    diesel::update(target).set(finish(t)).execute(conn).await?;
                }
            }
            (None, Some(t)) => {
                diesel::update(target)
                    .set((status, attempt, error, finish(t)))
                    .execute(conn)
                    .await?;
            }
            (None, None) => {
                diesel::update(target)
                    .set((status, attempt, error))
                    .execute(conn)
                    .await?;
            }
        }
        let ev = ExecutionEvent {
            tenant_id: row.tenant_id,
            execution_id: id,
            workflow_id: row.workflow_id,
            seq: row.seq,
            kind: EventKind::StepChanged,
            status: row.status,
            step_id: Some(change.step_id.clone()),
            step_status: Some(change.status),
            attempt: Some(change.attempt),
            error: change.error.clone(),
            at: utc(now),
        };
        diesel::insert_into(execution_events::table)
            .values(&event_row(&ev)?)
            .execute(conn)
            .await?;
        notify_pg(conn, &envelope(&ev)).await?;
        Ok(Some(ev))
    })
}

/// Most events one [`tenant_events_since`] read returns.
pub const TENANT_EVENTS_LIMIT: i64 = 10_000;
