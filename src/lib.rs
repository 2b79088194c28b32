//! agentplane: the control plane of an AI-agent workflow platform, served as one typed
//! GraphQL schema over HTTP and WebSocket, on embedded SQLite or PostgreSQL.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and invariants.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod executions;
pub mod graphql;
pub mod health;
pub mod http;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod ratelimit;
pub mod rbac;
pub mod request;
pub mod seal;
pub mod secrets;
pub mod server;
pub mod slots;
pub mod sso;
pub mod telemetry;
pub mod tenancy;
pub mod workflows;
