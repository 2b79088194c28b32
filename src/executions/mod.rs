//! Executions: the durable queue, the engine and its step runners, schedules, and the
//! GraphQL API that starts, cancels, retries and streams executions.

pub mod egress;
pub mod engine;
pub mod graphql;
pub mod model;
pub mod relay;
pub mod schedules;
pub mod service;
pub mod steps;
pub mod store;
pub mod templates;
