//! Workflows: DAG definitions with editable drafts and immutable numbered versions.
//! Executions, schedules and statistics arrive with the execution engine.

pub mod dag;
pub mod graphql;
pub mod model;
pub mod service;
pub mod store;
