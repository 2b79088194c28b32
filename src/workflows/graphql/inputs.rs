//! Inputs, filters, ordering and payloads of the workflow fields.

use super::*;
use crate::graphql::enums::{Environment, Visibility};

/// Filters for `workflows`.
#[derive(InputObject, Default)]
pub struct WorkflowFilter {
    /// Has this tag.
    pub tag: Option<String>,
    /// In this environment.
    pub environment: Option<Environment>,
    /// Name contains this (case-insensitive).
    pub name_contains: Option<String>,
}

/// Sort field for `workflows`.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum WorkflowOrderField {
    /// By name.
    Name,
    /// By creation time.
    CreatedAt,
    /// By last change.
    UpdatedAt,
}

/// Sort direction.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum OrderDirection {
    /// Ascending.
    Asc,
    /// Descending.
    Desc,
}

/// Ordering of `workflows`.
#[derive(InputObject)]
pub struct WorkflowOrder {
    /// Field.
    pub field: WorkflowOrderField,
    /// Direction.
    #[graphql(default_with = "OrderDirection::Asc")]
    pub direction: OrderDirection,
}

/// Input of `createWorkflow`.
#[derive(InputObject)]
pub struct CreateWorkflowInput {
    /// Display name.
    pub name: String,
    /// Free text.
    #[graphql(default)]
    pub description: String,
    /// Tags (a-z 0-9 - _ . :).
    #[graphql(default)]
    pub tags: Vec<String>,
    /// Where it is meant to run.
    #[graphql(default_with = "Environment::Development")]
    pub environment: Environment,
    /// Who may see it.
    #[graphql(default_with = "Visibility::Tenant")]
    pub visibility: Visibility,
    /// The team, for TEAM visibility.
    pub team_id: Option<ID>,
    /// `{ "steps": [ { id, kind, config, dependsOn, retry, timeoutSeconds, resources } ] }`.
    pub definition: Json<Value>,
}

/// Input of `updateWorkflow` (drafts only; versions are immutable).
#[derive(InputObject)]
pub struct UpdateWorkflowInput {
    /// The workflow's ID.
    pub workflow_id: ID,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New environment.
    pub environment: Option<Environment>,
    /// New visibility.
    pub visibility: Option<Visibility>,
    /// New team.
    pub team_id: Option<ID>,
    /// New draft definition.
    pub definition: Option<Json<Value>>,
}

/// Input of `deleteWorkflow` and `publishWorkflow`.
#[derive(InputObject)]
pub struct WorkflowIdInput {
    /// The workflow's ID.
    pub workflow_id: ID,
}

/// Result of workflow changes.
#[derive(SimpleObject)]
pub struct WorkflowPayload {
    /// The workflow after the change.
    pub workflow: Workflow,
    /// What was saved but will not work as it is yet (e.g. an `apiKeySecret` that does
    /// not exist); empty when nothing is amiss.
    pub warnings: Vec<DefinitionWarning>,
}

/// Something in a saved definition that is valid but will fail when it runs unless it
/// changes (the definition is saved anyway).
#[derive(SimpleObject, Debug, Clone, PartialEq, Eq)]
pub struct DefinitionWarning {
    /// The step.
    pub step: String,
    /// The field, e.g. `definition.steps[1].config.apiKeySecret`.
    pub field: String,
    /// What is amiss and what to do.
    pub message: String,
}

/// Result of `publishWorkflow`.
#[derive(SimpleObject)]
pub struct PublishWorkflowPayload {
    /// The workflow.
    pub workflow: Workflow,
    /// The new version.
    pub version: WorkflowVersion,
    /// What the published version will trip over when it runs (see `WorkflowPayload`).
    pub warnings: Vec<DefinitionWarning>,
}

/// Result of `deleteWorkflow`.
#[derive(SimpleObject)]
pub struct DeleteWorkflowPayload {
    /// The deleted workflow's ID.
    pub deleted_workflow_id: ID,
}
