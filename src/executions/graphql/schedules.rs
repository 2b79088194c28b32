//! Schedules over GraphQL: the Schedule type and the schedule mutations.

use crate::auth::principal;
use crate::db::ids::{db_time, utc};
use crate::error::{AppError, AppResult};
use crate::executions::schedules::*;
use crate::graphql::app;
use crate::graphql::relay::{NodeKind, decode_expecting, to_global_id};
use crate::rbac::{Permission, Require};
use crate::workflows::model::WorkflowId;
use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// A schedule.
pub struct Schedule(pub ScheduleRow);

#[Object]
impl Schedule {
    /// Opaque global ID.
    async fn id(&self) -> ID {
        to_global_id(NodeKind::Schedule, self.0.id.0)
    }
    /// The workflow's ID.
    async fn workflow_id(&self) -> ID {
        to_global_id(NodeKind::Workflow, self.0.workflow_id.0)
    }
    /// Cron expression.
    async fn cron(&self) -> &str {
        &self.0.cron
    }
    /// IANA time zone.
    async fn timezone(&self) -> &str {
        &self.0.timezone
    }
    /// ACTIVE or PAUSED.
    async fn status(&self) -> ScheduleStatus {
        self.0.status
    }
    /// Input of each execution.
    async fn input(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.0.input).unwrap_or(Value::Null))
    }
    /// The next tick (null while paused).
    async fn next_run_at(&self) -> Option<DateTime<Utc>> {
        self.0.next_run_at.map(utc)
    }
    /// The next `count` ticks (1–20), from the next one (empty while paused).
    async fn next_run_times(
        &self,
        #[graphql(default = 5)] count: i32,
    ) -> async_graphql::Result<Vec<DateTime<Utc>>> {
        if !(1..=20).contains(&count) {
            return Err(AppError::bad_input("count", "count must be 1 to 20").into());
        }
        let Some(next) = self.0.next_run_at.map(utc) else {
            return Ok(Vec::new());
        };
        let spec = CronSpec::parse(&self.0.cron, &self.0.timezone)?;
        let mut out = vec![next];
        out.extend(spec.upcoming(next, usize::try_from(count).unwrap_or(1) - 1));
        Ok(out)
    }
    /// The last tick that fired.
    async fn last_run_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_run_at.map(utc)
    }
    /// The execution the last tick started.
    async fn last_execution_id(&self) -> Option<ID> {
        self.0
            .last_execution_id
            .map(|e| to_global_id(NodeKind::Execution, e.0))
    }
    /// Why the last tick started no execution (quota exceeded, organization suspended, no
    /// published version); null after a tick that started one.
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
}

/// Input of `createSchedule`.
#[derive(InputObject)]
pub struct CreateScheduleInput {
    /// The workflow (it needs a published version when a tick fires).
    pub workflow_id: ID,
    /// Cron expression: `min hour day month weekday`, or with seconds first.
    pub cron: String,
    /// IANA time zone, e.g. `Europe/Paris`.
    #[graphql(default_with = "\"UTC\".to_owned()")]
    pub timezone: String,
    /// Input of each execution.
    pub input: Option<Json<Value>>,
}

/// Input of `pauseSchedule`, `resumeSchedule` and `deleteSchedule`.
#[derive(InputObject)]
pub struct ScheduleIdInput {
    /// The schedule's ID.
    pub schedule_id: ID,
}

/// Result of schedule changes.
#[derive(SimpleObject)]
pub struct SchedulePayload {
    /// The schedule after the change.
    pub schedule: Schedule,
}

/// Result of `deleteSchedule`.
#[derive(SimpleObject)]
pub struct DeleteSchedulePayload {
    /// The deleted schedule's ID.
    pub deleted_schedule_id: ID,
}

/// Schedule mutations.
#[derive(Default)]
pub struct ScheduleMutation;

async fn schedule_arg(ctx: &Context<'_>, id: &ID) -> AppResult<ScheduleRow> {
    let uuid = decode_expecting(id, NodeKind::Schedule, "schedule")?;
    let p = principal(ctx)?;
    let row = find(&app(ctx)?.db, p.tenant_id, ScheduleId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("schedule"))?;
    // The workflow's visibility covers its schedules.
    crate::workflows::graphql::visible_workflow_row(ctx, row.workflow_id).await?;
    Ok(row)
}

#[Object]
impl ScheduleMutation {
    /// Creates an ACTIVE schedule for a workflow.
    #[graphql(guard = "Require(Permission::SchedulesManage)")]
    async fn create_schedule(
        &self,
        ctx: &Context<'_>,
        input: CreateScheduleInput,
    ) -> async_graphql::Result<SchedulePayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let wf = crate::workflows::graphql::visible_workflow_row(
            ctx,
            WorkflowId(decode_expecting(
                &input.workflow_id,
                NodeKind::Workflow,
                "workflow",
            )?),
        )
        .await?;
        let spec = CronSpec::parse(&input.cron, &input.timezone)?;
        let now = a.clock.now();
        let next = spec
            .next_after(now)
            .ok_or_else(|| AppError::bad_input("cron", "the expression never fires"))?;
        let input_json = input
            .input
            .map_or(Value::Object(Default::default()), |j| j.0);
        let row = ScheduleRow {
            id: ScheduleId::new(),
            tenant_id: p.tenant_id,
            workflow_id: wf.id,
            cron: input.cron.trim().to_owned(),
            timezone: input.timezone.trim().to_owned(),
            status: ScheduleStatus::Active,
            input: input_json.to_string(),
            next_run_at: Some(db_time(next)),
            last_run_at: None,
            last_execution_id: None,
            created_by: p.actor_ref(),
            created_at: db_time(now),
            updated_at: db_time(now),
            last_error: None,
        };
        let audit = schedule_audit(ctx, "schedule.created", &row, row.created_at)?;
        insert(&a.db, &row, &audit).await?;
        Ok(SchedulePayload {
            schedule: Schedule(row),
        })
    }

    /// Stops a schedule from firing.
    #[graphql(guard = "Require(Permission::SchedulesManage)")]
    async fn pause_schedule(
        &self,
        ctx: &Context<'_>,
        input: ScheduleIdInput,
    ) -> async_graphql::Result<SchedulePayload> {
        let a = app(ctx)?;
        let mut row = schedule_arg(ctx, &input.schedule_id).await?;
        let now = db_time(a.clock.now());
        let audit = schedule_audit(ctx, "schedule.paused", &row, now)?;
        set_state(&a.db, &row, ScheduleStatus::Paused, None, now, &audit).await?;
        row.status = ScheduleStatus::Paused;
        row.next_run_at = None;
        Ok(SchedulePayload {
            schedule: Schedule(row),
        })
    }

    /// Makes a paused schedule fire again, from the next tick after now.
    #[graphql(guard = "Require(Permission::SchedulesManage)")]
    async fn resume_schedule(
        &self,
        ctx: &Context<'_>,
        input: ScheduleIdInput,
    ) -> async_graphql::Result<SchedulePayload> {
        let a = app(ctx)?;
        let mut row = schedule_arg(ctx, &input.schedule_id).await?;
        if row.status == ScheduleStatus::Active {
            return Ok(SchedulePayload {
                schedule: Schedule(row),
            });
        }
        let spec = CronSpec::parse(&row.cron, &row.timezone)?;
        let next = spec.next_after(a.clock.now()).map(db_time);
        let now = db_time(a.clock.now());
        let audit = schedule_audit(ctx, "schedule.resumed", &row, now)?;
        set_state(&a.db, &row, ScheduleStatus::Active, next, now, &audit).await?;
        row.status = ScheduleStatus::Active;
        row.next_run_at = next;
        Ok(SchedulePayload {
            schedule: Schedule(row),
        })
    }

    /// Deletes a schedule (its past executions stay).
    #[graphql(guard = "Require(Permission::SchedulesManage)")]
    async fn delete_schedule(
        &self,
        ctx: &Context<'_>,
        input: ScheduleIdInput,
    ) -> async_graphql::Result<DeleteSchedulePayload> {
        let row = schedule_arg(ctx, &input.schedule_id).await?;
        let a = app(ctx)?;
        let audit = schedule_audit(ctx, "schedule.deleted", &row, db_time(a.clock.now()))?;
        delete(&a.db, row.tenant_id, row.id, &audit).await?;
        Ok(DeleteSchedulePayload {
            deleted_schedule_id: input.schedule_id,
        })
    }
}

/// The audit record of a schedule action.
fn schedule_audit(
    ctx: &Context<'_>,
    action: &str,
    row: &ScheduleRow,
    at: chrono::NaiveDateTime,
) -> AppResult<crate::audit::Entry> {
    Ok(crate::audit::Entry::change(
        &crate::audit::graphql::origin(ctx)?,
        action,
        "schedule",
        row.id,
        Some(serde_json::json!({
            "workflowId": row.workflow_id.to_string(),
            "cron": row.cron,
            "timezone": row.timezone,
        })),
        at,
    ))
}
