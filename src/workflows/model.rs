//! Workflow rows and enums.

use chrono::NaiveDateTime;

use crate::db::ids::{TenantId, UserId};
use crate::db::schema::{workflow_versions, workflows};

pub use crate::db::ids::{WorkflowId, WorkflowVersionId};

crate::db_enum! {
    /// Where a workflow is meant to run.
    pub enum Environment {
        /// Work in progress.
        Development => "DEVELOPMENT",
        /// Pre-production.
        Staging => "STAGING",
        /// Production.
        Production => "PRODUCTION",
    }
}

crate::db_enum! {
    /// Who may see a workflow inside its tenant.
    pub enum Visibility {
        /// Its owner (and user managers).
        Private => "PRIVATE",
        /// Members of its team, its owner (and user managers).
        Team => "TEAM",
        /// Everyone in the tenant with `workflows.read`.
        Tenant => "TENANT",
    }
}

/// One row of `workflows` (the editable draft).
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = workflows)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct WorkflowRow {
    /// Primary key.
    pub id: WorkflowId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// JSON array of tags.
    pub tags: String,
    /// Where it is meant to run.
    pub environment: Environment,
    /// Who may see it.
    pub visibility: Visibility,
    /// The owning user (none when an API key created it).
    pub owner_id: Option<UserId>,
    /// `user:<id>` or `apikey:<id>`.
    pub created_by: String,
    /// The team, for TEAM visibility.
    pub team_id: Option<crate::tenancy::teams::TeamId>,
    /// The draft definition (validated JSON).
    pub definition: String,
    /// Newest published version number; 0 before the first publish.
    pub latest_version: i64,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

/// One row of `workflow_versions` (immutable).
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = workflow_versions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct WorkflowVersionRow {
    /// Primary key.
    pub id: WorkflowVersionId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// 1, 2, 3, …
    pub version: i64,
    /// The definition as published.
    pub definition: String,
    /// `user:<id>` or `apikey:<id>`.
    pub published_by: String,
    /// Publication time.
    pub created_at: NaiveDateTime,
}
