//! The GraphQL faces of the domain enums. The domains own the enums (and how they are
//! stored); here each gets its GraphQL type with `#[graphql(remote = …)]`, which derives
//! the `From` conversions both ways, so nothing below the API layer names
//! `async_graphql`. Variant docs are the schema's descriptions.

use async_graphql::Enum;

/// Built-in roles. Tenant roles apply inside one tenant; `PlatformAdmin` exists only in the
/// reserved system tenant.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "BuiltinRole", remote = "crate::rbac::BuiltinRole")]
pub enum BuiltinRole {
    /// Everything in the tenant.
    Owner,
    /// Everything except changing tenant settings.
    Admin,
    /// Builds and runs workflows.
    Developer,
    /// Runs and watches workflows.
    Operator,
    /// Reads everything, including the audit trail.
    Analyst,
    /// Reads workflows and executions.
    Viewer,
    /// Platform operator: manages tenants and the cluster.
    PlatformAdmin,
}

/// How serious an event is.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "AuditSeverity", remote = "crate::audit::Severity")]
pub enum Severity {
    /// Routine change.
    Info,
    /// Worth a look (failed sign-in, refused request).
    Warning,
    /// Needs attention (token reuse, lockout, erasure).
    Critical,
}

/// Whether the action succeeded.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "AuditOutcome", remote = "crate::audit::Outcome")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused or failed (see `reason`).
    Failure,
}

/// Subscription plan.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "Plan", remote = "crate::tenancy::model::Plan")]
pub enum Plan {
    /// Free tier.
    Free,
    /// Paid team tier.
    Pro,
    /// Enterprise tier.
    Enterprise,
    /// Negotiated quotas.
    Custom,
}

/// Whether a tenant may act.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "TenantStatus", remote = "crate::tenancy::model::TenantStatus")]
pub enum TenantStatus {
    /// Normal operation.
    Active,
    /// Every principal of the tenant is refused.
    Suspended,
}

/// Whether a user may sign in.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "UserStatus", remote = "crate::tenancy::model::UserStatus")]
pub enum UserStatus {
    /// May sign in.
    Active,
    /// May not sign in; existing sessions stop working.
    Disabled,
    /// Personal data erased (`eraseUser`); may never sign in again.
    Erased,
}

/// A member's role in a team.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "TeamRole", remote = "crate::tenancy::teams::TeamRole")]
pub enum TeamRole {
    /// Leads the team.
    Lead,
    /// A member.
    Member,
}

/// Where a workflow is meant to run.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "Environment", remote = "crate::workflows::model::Environment")]
pub enum Environment {
    /// Work in progress.
    Development,
    /// Pre-production.
    Staging,
    /// Production.
    Production,
}

/// Who may see a workflow inside its tenant.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "Visibility", remote = "crate::workflows::model::Visibility")]
pub enum Visibility {
    /// Its owner (and user managers).
    Private,
    /// Members of its team, its owner (and user managers).
    Team,
    /// Everyone in the tenant with `workflows.read`.
    Tenant,
}

/// Lifecycle of an execution.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(
    name = "ExecutionStatus",
    remote = "crate::executions::model::ExecutionStatus"
)]
pub enum ExecutionStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease and runs its steps.
    Running,
    /// Every step finished (or was skipped by a condition).
    Succeeded,
    /// A step failed after its retries.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// The execution-level timeout elapsed.
    TimedOut,
}

/// Lifecycle of one step of an execution.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "StepStatus", remote = "crate::executions::model::StepStatus")]
pub enum StepStatus {
    /// Its dependencies are not done yet.
    Pending,
    /// An attempt is running.
    Running,
    /// An attempt failed; the next one starts after the backoff.
    Retrying,
    /// Done; its output is available to later steps.
    Succeeded,
    /// Failed after its last attempt.
    Failed,
    /// Its last attempt exceeded `timeoutSeconds`.
    TimedOut,
    /// Not run: a condition chose the other branch, all its dependencies were skipped,
    /// or the execution ended before it could start.
    Skipped,
    /// Interrupted by cancellation or the execution timeout.
    Cancelled,
}

/// What happened.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "EventKind", remote = "crate::executions::model::EventKind")]
pub enum EventKind {
    /// The current state, sent first to every subscriber (not stored).
    Snapshot,
    /// The execution changed status.
    StatusChanged,
    /// A step changed status.
    StepChanged,
}

/// Whether a schedule fires.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(
    name = "ScheduleStatus",
    remote = "crate::executions::schedules::ScheduleStatus"
)]
pub enum ScheduleStatus {
    /// Fires at each tick.
    Active,
    /// Does not fire.
    Paused,
}

/// What a node runs.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "ClusterNodeKind", remote = "crate::cluster::model::NodeKind")]
pub enum NodeKind {
    /// `serve`: the API (and its embedded workers, if any).
    Api,
    /// `worker`: workers only.
    Worker,
}

/// A node's condition.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "NodeStatus", remote = "crate::cluster::model::NodeStatus")]
pub enum NodeStatus {
    /// Score ≥ 0.8.
    Healthy,
    /// 0.5 ≤ score < 0.8: still receives work.
    Degraded,
    /// Score < 0.5: receives no new GPU placements.
    Unhealthy,
    /// Finishing current work; claims nothing new.
    Draining,
    /// No heartbeat within the offline timeout: its leases and reservations were released.
    Offline,
}

/// What kind of node event.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[graphql(name = "NodeEventKind", remote = "crate::cluster::NodeEventKind")]
pub enum NodeEventKind {
    /// A new heartbeat (at most one per node per heartbeat interval).
    Heartbeat,
    /// The status changed (including a node's first appearance).
    StatusChanged,
}
