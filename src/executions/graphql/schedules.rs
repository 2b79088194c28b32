//! Schedules over GraphQL: the Schedule type and the schedule mutations.

use crate::db::ids::WorkflowId;
use crate::db::ids::utc;
use crate::error::{AppError, AppResult};
use crate::executions::schedules::*;
use crate::executions::service::schedules as service;
use crate::graphql::guards::Require;
use crate::graphql::principal;
use crate::graphql::relay::{NodeKind, decode_expecting, to_global_id};
use crate::graphql::{app, origin};
use crate::rbac::Permission;
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
    async fn status(&self) -> crate::graphql::enums::ScheduleStatus {
        self.0.status.into()
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

/// The schedule id of an argument.
fn schedule_id(id: &ID) -> AppResult<ScheduleId> {
    Ok(ScheduleId(decode_expecting(
        id,
        NodeKind::Schedule,
        "schedule",
    )?))
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
        let new = service::NewSchedule {
            workflow_id: WorkflowId(decode_expecting(
                &input.workflow_id,
                NodeKind::Workflow,
                "workflow",
            )?),
            cron: input.cron,
            timezone: input.timezone,
            input: input
                .input
                .map_or(Value::Object(Default::default()), |j| j.0),
        };
        let row = service::create(app(ctx)?, &origin(ctx)?, principal(ctx)?, new).await?;
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
        let id = schedule_id(&input.schedule_id)?;
        let row = service::pause(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
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
        let id = schedule_id(&input.schedule_id)?;
        let row = service::resume(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
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
        let id = schedule_id(&input.schedule_id)?;
        service::remove(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
        Ok(DeleteSchedulePayload {
            deleted_schedule_id: input.schedule_id,
        })
    }
}
