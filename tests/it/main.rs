//! The one integration-test binary: real servers on loopback, real databases.

mod audit;
mod audit_forgery;
mod cli;
mod cluster;
mod compliance;
mod consistency;
mod edge_auth;
mod executions;
mod foundation;
mod helpers;
mod identity;
mod isolation;
mod layers;
mod query_cost;
mod reliability;
mod schema_file;
mod secrets;
mod security;
mod services;
mod socket_limits;
mod step_limits;
mod takeover;
mod tenancy;
mod typed_columns;
mod websocket;
mod workflows;
