//! Schedules: a cron expression and an IANA time zone per workflow.
//!
//! Every engine runs [`scheduler_loop`]. A due tick's execution is enqueued under an
//! idempotency key unique to the tick, then `next_run_at` moves on by compare-and-set
//! (`UPDATE … WHERE id = ? AND next_run_at = <the due time>`): however many workers race
//! for a tick, and whichever of them dies between the two steps, the tick has exactly one
//! execution. Final refusals (quota, suspended tenant) are recorded on the schedule
//! (`lastError`) and in the audit trail; database faults leave the tick due to be retried.
//! Ticks missed while no worker ran fire once, then the schedule continues from the next
//! future tick.

use std::str::FromStr as _;

use chrono::{DateTime, NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::db::ids::ExecutionId;
use crate::db::ids::TenantId;
use crate::db::ids::WorkflowId;
use crate::db::ids::{db_time, utc};
use crate::db::schema::schedules;
use crate::db::{Conn, DbPool};
use crate::error::{AppError, AppResult};

pub use crate::db::ids::ScheduleId;

/// One row of `schedules`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = schedules)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ScheduleRow {
    /// Primary key.
    pub id: ScheduleId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The workflow it starts (its latest published version at each tick).
    pub workflow_id: WorkflowId,
    /// Cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// Whether it fires.
    pub status: ScheduleStatus,
    /// JSON input for each execution.
    pub input: String,
    /// Next tick (UTC); null while paused.
    pub next_run_at: Option<NaiveDateTime>,
    /// Last tick that fired.
    pub last_run_at: Option<NaiveDateTime>,
    /// The execution the last tick started.
    pub last_execution_id: Option<ExecutionId>,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
    /// Why the last tick could not start an execution (cleared when one starts).
    pub last_error: Option<String>,
}

/// A parsed cron expression in a time zone.
pub struct CronSpec {
    cron: croner::Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses and validates; errors name the field.
    pub fn parse(expr: &str, tz: &str) -> AppResult<Self> {
        let tz = Tz::from_str(tz.trim()).map_err(|_| {
            AppError::bad_input(
                "timezone",
                format!("{tz:?} is not an IANA time zone such as Europe/Paris or UTC"),
            )
        })?;
        let cron = croner::Cron::new(expr.trim())
            .with_seconds_optional()
            .parse()
            .map_err(|e| AppError::bad_input("cron", format!("invalid cron expression: {e}")))?;
        Ok(Self { cron, tz })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.tz.from_utc_datetime(&after.naive_utc());
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` ticks after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// Inserts a schedule.
pub(crate) async fn insert(conn: &mut Conn<'_>, row: &ScheduleRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(schedules::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// A schedule of `tenant`.
pub(crate) async fn find(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: ScheduleId,
) -> AppResult<Option<ScheduleRow>> {
    Ok(crate::on_conn!(conn, |conn| {
        schedules::table
            .filter(schedules::tenant_id.eq(tenant))
            .filter(schedules::id.eq(id))
            .select(ScheduleRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Sets a schedule's status and next run.
pub(crate) async fn set_state(
    conn: &mut Conn<'_>,
    row: &ScheduleRow,
    status: ScheduleStatus,
    next: Option<NaiveDateTime>,
    now: NaiveDateTime,
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::update(
            schedules::table
                .filter(schedules::tenant_id.eq(row.tenant_id))
                .filter(schedules::id.eq(row.id)),
        )
        .set((
            schedules::status.eq(status),
            schedules::next_run_at.eq(next),
            schedules::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Deletes a schedule (its executions stay).
pub(crate) async fn delete(conn: &mut Conn<'_>, tenant: TenantId, id: ScheduleId) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(
            schedules::table
                .filter(schedules::tenant_id.eq(tenant))
                .filter(schedules::id.eq(id)),
        )
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Schedules of several workflows (dataloader).
pub async fn by_workflows(
    db: &DbPool,
    tenant: TenantId,
    ids: &[WorkflowId],
) -> AppResult<Vec<ScheduleRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        schedules::table
            .filter(schedules::tenant_id.eq(tenant))
            .filter(schedules::workflow_id.eq_any(ids))
            .order(schedules::id.asc())
            .select(ScheduleRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Due schedules, any tenant (the scheduler).
pub(crate) async fn due(db: &DbPool, now: NaiveDateTime) -> AppResult<Vec<ScheduleRow>> {
    Ok(crate::db_run!(db, |conn| {
        schedules::table
            .filter(schedules::status.eq(ScheduleStatus::Active))
            .filter(schedules::next_run_at.le(now))
            .order(schedules::next_run_at.asc())
            .limit(100)
            .select(ScheduleRow::as_select())
            .load(conn)
            .await?
    }))
}

/// How a tick ended, written with the advance.
pub(crate) enum TickResult<'a> {
    /// Its execution exists.
    Started(ExecutionId),
    /// Refused for good (quota, suspended tenant, no published version): the reason.
    Refused(&'a str),
}

/// Moves `next_run_at` from `due` to `next` if nobody else did, recording how the tick
/// ended (and, for a refusal, an audit record in the same transaction); `true` for the
/// winner.
pub(crate) async fn advance(
    db: &DbPool,
    s: &ScheduleRow,
    due: NaiveDateTime,
    next: Option<NaiveDateTime>,
    now: NaiveDateTime,
    result: TickResult<'_>,
) -> AppResult<bool> {
    let (exec, error) = match result {
        TickResult::Started(e) => (Some(e), None),
        TickResult::Refused(r) => (s.last_execution_id, Some(r.to_owned())),
    };
    let audit = error.as_ref().map(|reason| {
        crate::audit::Entry::change(
            &crate::audit::Origin::system(s.tenant_id),
            "schedule.tick_failed",
            "schedule",
            s.id,
            Some(serde_json::json!({
                "workflowId": s.workflow_id.to_string(),
                "tick": utc(due).to_rfc3339(),
            })),
            now,
        )
        .failed(reason.clone())
        .severity(crate::audit::Severity::Warning)
    });
    db.tx(s.tenant_id, async |conn| {
        let n = crate::on_conn!(conn, |conn| {
            diesel::update(
                schedules::table
                    .filter(schedules::id.eq(s.id))
                    .filter(schedules::status.eq(ScheduleStatus::Active))
                    .filter(schedules::next_run_at.eq(due)),
            )
            .set((
                schedules::next_run_at.eq(next),
                schedules::last_run_at.eq(due),
                schedules::last_execution_id.eq(&exec),
                schedules::last_error.eq(&error),
                schedules::updated_at.eq(now),
            ))
            .execute(conn)
            .await?
        });
        if n == 1 {
            if let Some(a) = &audit {
                crate::audit::append(conn, a).await?;
            }
        }
        Ok(n == 1)
    })
    .await
}

/// Whether a refusal to start a tick's execution is final (retrying cannot help), as
/// opposed to a fault of the database or the process (the tick stays due and is retried).
pub(crate) fn is_final(e: &AppError) -> bool {
    !matches!(
        e.code(),
        crate::error::ErrorCode::Internal | crate::error::ErrorCode::Unavailable
    )
}

/// Fires every due schedule once. Returns how many executions this process started.
///
/// The tick's execution is enqueued first, under an idempotency key unique to the tick,
/// and `next_run_at` advances only after it exists. A process that dies (or a database
/// that fails) in between leaves the tick due: the next scheduler run, here or in
/// another process, enqueues with the same key, finds the execution, and advances. So
/// every tick fires exactly once.
pub async fn fire_due(app: &App) -> AppResult<usize> {
    let now_utc = app.clock.now();
    let now = db_time(now_utc);
    let mut fired = 0;
    for s in due(&app.db, now).await? {
        let Some(due_at) = s.next_run_at else {
            continue;
        };
        let next = CronSpec::parse(&s.cron, &s.timezone)
            .ok()
            .and_then(|c| c.next_after(now_utc.max(utc(due_at))))
            .map(db_time);
        let key = format!("schedule:{}:{}", s.id, utc(due_at).timestamp());
        match fire(app, &s, key).await {
            Ok((exec, created)) => {
                advance(&app.db, &s, due_at, next, now, TickResult::Started(exec)).await?;
                if created {
                    fired += 1;
                }
            }
            Err(e) if is_final(&e) => {
                tracing::warn!(schedule = %s.id, reason = e.message(), "schedule tick refused");
                advance(
                    &app.db,
                    &s,
                    due_at,
                    next,
                    now,
                    TickResult::Refused(e.message()),
                )
                .await?;
            }
            Err(e) => {
                tracing::warn!(schedule = %s.id, error = ?e, "schedule tick not started yet; retrying");
            }
        }
    }
    Ok(fired)
}

/// Starts the tick's execution; its id, and whether this call created it.
pub(crate) async fn fire(
    app: &App,
    s: &ScheduleRow,
    key: String,
) -> AppResult<(ExecutionId, bool)> {
    let (wf, version) =
        crate::workflows::service::latest_published(app, s.tenant_id, s.workflow_id).await?;
    let (row, existed) = super::service::start(
        app,
        &wf,
        super::service::StartRequest {
            version,
            input: serde_json::from_str(&s.input).unwrap_or(Value::Null),
            idempotency_key: Some(key),
            started_by: format!("schedule:{}", s.id),
            started_by_user: None,
            retry_of: None,
            schedule_id: Some(s.id.to_string()),
            timeout_seconds: None,
            origin: crate::audit::Origin::system(s.tenant_id),
        },
    )
    .await?;
    Ok((row.id, !existed))
}

/// Fires due schedules every tick until `stop`.
pub async fn scheduler_loop(app: &App, stop: &CancellationToken) {
    let tick = app.config.engine.scheduler_tick;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        if let Err(e) = fire_due(app).await {
            tracing::warn!(error = ?e, "scheduler tick failed");
        }
    }
}

crate::db_enum! {
    /// Whether a schedule fires.
    pub enum ScheduleStatus {
        /// Fires at each tick.
        Active => "ACTIVE",
        /// Does not fire.
        Paused => "PAUSED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_in_a_time_zone() {
        let spec = CronSpec::parse("0 9 * * *", "Europe/Paris").expect("valid");
        let after = Utc
            .with_ymd_and_hms(2026, 1, 10, 12, 0, 0)
            .single()
            .expect("t");
        let next = spec.next_after(after).expect("next");
        // 09:00 in Paris in winter is 08:00 UTC, on the next day.
        assert_eq!(
            next,
            Utc.with_ymd_and_hms(2026, 1, 11, 8, 0, 0)
                .single()
                .expect("t")
        );
        assert_eq!(spec.upcoming(after, 3).len(), 3);
        assert!(CronSpec::parse("61 * * * *", "UTC").is_err());
        assert!(CronSpec::parse("* * * * *", "Mars/Olympus").is_err());
    }
}
