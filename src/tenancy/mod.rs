//! Tenants (organizations), users, roles and teams: model, storage, services and GraphQL types.

pub mod documents;
pub mod features;
pub mod model;
pub mod service;
pub mod store;
pub mod teams;

pub mod graphql;

pub use model::{RoleId, RoleRow, TenantId, TenantRow, UserId, UserRow};
