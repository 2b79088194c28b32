//! Schedule rules: a schedule belongs to a workflow the caller can see, fires on a valid
//! cron expression in a known time zone, and every change is audited in its own
//! transaction.

use serde_json::Value;

use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::auth::Principal;
use crate::db::ids::WorkflowId;
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::executions::schedules::{
    CronSpec, ScheduleId, ScheduleRow, ScheduleStatus, delete, find, insert, set_state,
};

/// A new schedule, as asked for.
pub struct NewSchedule {
    /// The workflow it starts.
    pub workflow_id: WorkflowId,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone the expression reads in.
    pub timezone: String,
    /// Input of each execution.
    pub input: Value,
}

/// A schedule the caller may see: its workflow's visibility covers it. `NOT_FOUND`
/// otherwise.
pub async fn visible(app: &App, p: &Principal, id: ScheduleId) -> AppResult<ScheduleRow> {
    let row = app
        .db
        .read(p.tenant_id, async |conn| find(conn, p.tenant_id, id).await)
        .await?
        .ok_or_else(|| AppError::not_found("schedule"))?;
    crate::workflows::service::visible(app, p, row.workflow_id).await?;
    Ok(row)
}

/// `FORBIDDEN` (`FEATURE_DISABLED`) unless the caller's tenant has schedules on.
async fn require_schedules(app: &App, p: &Principal) -> AppResult<()> {
    let tenant = crate::tenancy::store::find(&app.db, p.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    crate::tenancy::features::require(&tenant, crate::tenancy::features::Feature::Schedules)
}

/// Creates an ACTIVE schedule for a workflow the caller may see.
pub async fn create(
    app: &App,
    origin: &Origin,
    p: &Principal,
    new: NewSchedule,
) -> AppResult<ScheduleRow> {
    let wf = crate::workflows::service::visible(app, p, new.workflow_id).await?;
    require_schedules(app, p).await?;
    let spec = CronSpec::parse(&new.cron, &new.timezone)?;
    let now = app.clock.now();
    let next = spec
        .next_after(now)
        .ok_or_else(|| AppError::bad_input("cron", "the expression never fires"))?;
    let row = ScheduleRow {
        id: ScheduleId::new(),
        tenant_id: p.tenant_id,
        workflow_id: wf.id,
        cron: new.cron.trim().to_owned(),
        timezone: new.timezone.trim().to_owned(),
        status: ScheduleStatus::Active,
        input: new.input.to_string(),
        next_run_at: Some(db_time(next)),
        last_run_at: None,
        last_execution_id: None,
        created_by: p.actor_ref(),
        created_at: db_time(now),
        updated_at: db_time(now),
        last_error: None,
    };
    let audit = audit(origin, "schedule.created", &row, row.created_at);
    app.db
        .tx(row.tenant_id, async |conn| {
            insert(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Stops a schedule from firing.
pub async fn pause(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: ScheduleId,
) -> AppResult<ScheduleRow> {
    let row = visible(app, p, id).await?;
    set_status(
        app,
        origin,
        row,
        ScheduleStatus::Paused,
        None,
        "schedule.paused",
    )
    .await
}

/// Makes a paused schedule fire again, from the next tick after now; an active one is
/// returned as it is.
pub async fn resume(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: ScheduleId,
) -> AppResult<ScheduleRow> {
    let row = visible(app, p, id).await?;
    if row.status == ScheduleStatus::Active {
        return Ok(row);
    }
    require_schedules(app, p).await?;
    let spec = CronSpec::parse(&row.cron, &row.timezone)?;
    let next = spec.next_after(app.clock.now()).map(db_time);
    set_status(
        app,
        origin,
        row,
        ScheduleStatus::Active,
        next,
        "schedule.resumed",
    )
    .await
}

/// Writes a schedule's status and next run with its audit record.
async fn set_status(
    app: &App,
    origin: &Origin,
    mut row: ScheduleRow,
    status: ScheduleStatus,
    next: Option<chrono::NaiveDateTime>,
    action: &str,
) -> AppResult<ScheduleRow> {
    let now = db_time(app.clock.now());
    let audit = audit(origin, action, &row, now);
    app.db
        .tx(row.tenant_id, async |conn| {
            set_state(conn, &row, status, next, now).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    row.status = status;
    row.next_run_at = next;
    row.updated_at = now;
    Ok(row)
}

/// Deletes a schedule (its past executions stay); returns what was deleted.
pub async fn remove(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: ScheduleId,
) -> AppResult<ScheduleRow> {
    let row = visible(app, p, id).await?;
    let audit = audit(origin, "schedule.deleted", &row, db_time(app.clock.now()));
    app.db
        .tx(row.tenant_id, async |conn| {
            delete(conn, row.tenant_id, row.id).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// The audit record of a schedule action.
fn audit(origin: &Origin, action: &str, row: &ScheduleRow, at: chrono::NaiveDateTime) -> Entry {
    Entry::change(
        origin,
        action,
        "schedule",
        row.id,
        Some(serde_json::json!({
            "workflowId": row.workflow_id.to_string(),
            "cron": row.cron,
            "timezone": row.timezone,
        })),
        at,
    )
}
