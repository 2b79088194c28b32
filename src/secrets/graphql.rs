//! Secrets over GraphQL: metadata only; values are write-only.

use async_graphql::{Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::SecretRow;
use super::service;
use crate::db::ids::utc;
use crate::graphql::guards::Require;
use crate::graphql::principal;
use crate::graphql::{app, origin};
use crate::rbac::Permission;

/// A secret's metadata. The value is write-only.
#[derive(SimpleObject)]
pub struct SecretInfo {
    /// Name, unique in the tenant.
    pub name: String,
    /// The master key it is encrypted under.
    pub key_id: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// The only hosts the value is sent to (empty: any).
    pub allowed_hosts: Vec<String>,
}

impl From<SecretRow> for SecretInfo {
    fn from(r: SecretRow) -> Self {
        Self {
            allowed_hosts: r.hosts(),
            name: r.name,
            key_id: r.key_id,
            created_at: utc(r.created_at),
            updated_at: utc(r.updated_at),
        }
    }
}

/// Input of `setSecret`.
#[derive(InputObject)]
pub struct SetSecretInput {
    /// 1–64 of A-Z a-z 0-9 _ - .
    pub name: String,
    /// The value (write-only; never returned).
    pub value: String,
    /// Pins the secret to these hosts (e.g. `api.openai.com`): a step that would send it
    /// anywhere else fails. Default: any host.
    #[graphql(default)]
    pub allowed_hosts: Vec<String>,
}

/// Input of `deleteSecret`.
#[derive(InputObject)]
pub struct DeleteSecretInput {
    /// The secret's name.
    pub name: String,
}

/// Result of `setSecret`.
#[derive(SimpleObject)]
pub struct SetSecretPayload {
    /// The secret's metadata.
    pub secret: SecretInfo,
}

/// Result of `deleteSecret`.
#[derive(SimpleObject)]
pub struct DeleteSecretPayload {
    /// The deleted secret's name.
    pub deleted_name: String,
}

/// Secret queries.
#[derive(Default)]
pub struct SecretQuery;

#[Object]
impl SecretQuery {
    /// The tenant's secrets (names and metadata only).
    #[graphql(guard = "Require(Permission::SecretsManage)")]
    async fn secrets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SecretInfo>> {
        let p = principal(ctx)?;
        Ok(service::list(app(ctx)?, p.tenant_id)
            .await?
            .into_iter()
            .map(SecretInfo::from)
            .collect())
    }
}

/// Secret mutations.
#[derive(Default)]
pub struct SecretMutation;

#[Object]
impl SecretMutation {
    /// Stores or replaces a secret, encrypted at rest.
    #[graphql(guard = "Require(Permission::SecretsManage)")]
    async fn set_secret(
        &self,
        ctx: &Context<'_>,
        input: SetSecretInput,
    ) -> async_graphql::Result<SetSecretPayload> {
        let p = principal(ctx)?;
        let row = service::set(
            app(ctx)?,
            &origin(ctx)?,
            p.tenant_id,
            &p.actor_ref(),
            &input.name,
            &input.value,
            &input.allowed_hosts,
        )
        .await?;
        Ok(SetSecretPayload { secret: row.into() })
    }

    /// Deletes a secret.
    #[graphql(guard = "Require(Permission::SecretsManage)")]
    async fn delete_secret(
        &self,
        ctx: &Context<'_>,
        input: DeleteSecretInput,
    ) -> async_graphql::Result<DeleteSecretPayload> {
        let p = principal(ctx)?;
        let name = service::delete(app(ctx)?, &origin(ctx)?, p.tenant_id, &input.name).await?;
        Ok(DeleteSecretPayload { deleted_name: name })
    }
}
