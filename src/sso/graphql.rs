//! GraphQL of single sign-on: the tenant's OpenID Connect provider.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::ProviderRow;
use crate::db::ids::utc;
use crate::graphql::guards::Require;
use crate::graphql::relay::{NodeKind, to_global_id};
use crate::graphql::{app, origin, principal};
use crate::rbac::{BuiltinRole, Permission};

/// A role mapping: users whose role claim holds `claimValue` get `roleId`.
#[derive(InputObject)]
pub struct OidcRoleMappingInput {
    /// A value of the role claim (e.g. a group name).
    pub claim_value: String,
    /// A built-in role name or a custom role's ID.
    pub role_id: ID,
}

/// Input of `configureOidcProvider`.
#[derive(InputObject)]
pub struct ConfigureOidcProviderInput {
    /// The issuer URL (its `/.well-known/openid-configuration` must be readable now).
    pub issuer: String,
    /// The client id registered at the provider for this server; register
    /// `<AGENTPLANE_PUBLIC_URL>/auth/oidc/callback` as its redirect URI.
    pub client_id: String,
    /// The name of a tenant secret holding the client secret (`setSecret`); omitted for
    /// a public client (PKCE only).
    pub client_secret_name: Option<String>,
    /// E-mail domains whose users may sign in (omitted or empty: any the provider vouches
    /// for).
    pub allowed_email_domains: Option<Vec<String>>,
    /// The ID-token claim whose values map to roles (e.g. `groups`).
    pub role_claim: Option<String>,
    /// Claim values to roles, first match wins (at most 50); you can map only roles you
    /// could grant yourself.
    pub role_mappings: Option<Vec<OidcRoleMappingInput>>,
    /// The role of users no mapping matches (default `VIEWER`).
    pub default_role_id: Option<ID>,
    /// Create an account at a user's first sign-in (default false: accounts must exist).
    pub jit_provisioning: Option<bool>,
    /// Accept sign-ins (default true).
    pub enabled: Option<bool>,
}

/// A role mapping.
#[derive(SimpleObject)]
pub struct OidcRoleMapping {
    /// A value of the role claim.
    pub claim_value: String,
    /// The role it grants.
    pub role_id: ID,
}

/// The tenant's OpenID Connect identity provider.
pub struct OidcProvider {
    row: ProviderRow,
    login_url: String,
    callback_url: String,
}

fn role_id(stored: &str) -> ID {
    match (BuiltinRole::parse(stored), uuid::Uuid::parse_str(stored)) {
        (None, Ok(u)) => to_global_id(NodeKind::Role, u),
        _ => ID(stored.to_owned()),
    }
}

#[Object]
impl OidcProvider {
    /// The issuer URL.
    async fn issuer(&self) -> &str {
        &self.row.issuer
    }
    /// The client id.
    async fn client_id(&self) -> &str {
        &self.row.client_id
    }
    /// The tenant secret holding the client secret, if any (never the secret).
    async fn client_secret_name(&self) -> Option<&str> {
        self.row.client_secret_name.as_deref()
    }
    /// Allowed e-mail domains (empty: any).
    async fn allowed_email_domains(&self) -> Vec<String> {
        self.row.domains()
    }
    /// The claim mapped to roles.
    async fn role_claim(&self) -> Option<&str> {
        self.row.role_claim.as_deref()
    }
    /// Claim values to roles, first match wins.
    async fn role_mappings(&self) -> Vec<OidcRoleMapping> {
        self.row
            .mapping()
            .into_iter()
            .map(|(claim_value, role)| OidcRoleMapping {
                claim_value,
                role_id: role_id(&role),
            })
            .collect()
    }
    /// The role of users no mapping matches.
    async fn default_role_id(&self) -> ID {
        role_id(&self.row.default_role)
    }
    /// Whether unknown users get an account at their first sign-in.
    async fn jit_provisioning(&self) -> bool {
        self.row.jit_provisioning
    }
    /// Whether sign-ins are accepted.
    async fn enabled(&self) -> bool {
        self.row.enabled
    }
    /// Where the tenant's users start a sign-in (`?returnTo=/path` to come back with
    /// tokens in the URL fragment).
    async fn login_url(&self) -> &str {
        &self.login_url
    }
    /// The redirect URI to register at the provider.
    async fn callback_url(&self) -> &str {
        &self.callback_url
    }
    /// Last change.
    async fn updated_at(&self) -> DateTime<Utc> {
        utc(self.row.updated_at)
    }
}

/// Result of `configureOidcProvider`.
#[derive(SimpleObject)]
pub struct OidcProviderPayload {
    /// The provider as saved.
    pub oidc_provider: OidcProvider,
}

async fn view(ctx: &Context<'_>, row: ProviderRow) -> async_graphql::Result<OidcProvider> {
    let a = app(ctx)?;
    let slug = crate::tenancy::store::find(&a.db, row.tenant_id)
        .await?
        .map(|t| t.slug)
        .unwrap_or_default();
    Ok(OidcProvider {
        login_url: super::login_url(a, &slug),
        callback_url: super::callback_url(a),
        row,
    })
}

/// Whoever configures the provider can sign in as anyone of the tenant (it vouches for
/// their e-mail addresses): only those holding every permission of OWNER may.
fn owner_only(p: &crate::auth::Principal) -> crate::error::AppResult<()> {
    if BuiltinRole::Owner.permissions().is_subset(&p.permissions) {
        Ok(())
    } else {
        Err(crate::error::AppError::forbidden(
            "only an OWNER configures single sign-on: the provider can sign in as anyone \
             of the organization",
        )
        .with_detail("reason", "OWNER_ONLY"))
    }
}

/// Single sign-on queries.
#[derive(Default)]
pub struct SsoQuery;

#[Object]
impl SsoQuery {
    /// The tenant's OpenID Connect provider, if one is configured.
    #[graphql(guard = "Require(Permission::TenantRead)")]
    async fn oidc_provider(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<OidcProvider>> {
        match super::store::provider(&app(ctx)?.db, principal(ctx)?.tenant_id).await? {
            Some(row) => Ok(Some(view(ctx, row).await?)),
            None => Ok(None),
        }
    }
}

/// Single sign-on mutations.
#[derive(Default)]
pub struct SsoMutation;

#[Object]
impl SsoMutation {
    /// Sets the tenant's OpenID Connect provider (replacing any; OWNERs only: it can
    /// sign in as anyone of the tenant). Sign-ins start at its `loginUrl`; the tenant's
    /// `sso` feature flag must be on. The provider must send `email_verified: true`.
    #[graphql(guard = "Require(Permission::TenantUpdate)")]
    async fn configure_oidc_provider(
        &self,
        ctx: &Context<'_>,
        input: ConfigureOidcProviderInput,
    ) -> async_graphql::Result<OidcProviderPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        owner_only(p)?;
        let default_role = match &input.default_role_id {
            Some(id) => {
                crate::tenancy::graphql::resolve_role_input(a, p, id, "defaultRoleId").await?
            }
            None => BuiltinRole::Viewer.as_str().to_owned(),
        };
        let mut mapping = Vec::new();
        for m in input.role_mappings.unwrap_or_default() {
            let role =
                crate::tenancy::graphql::resolve_role_input(a, p, &m.role_id, "roleMappings")
                    .await?;
            mapping.push((m.claim_value, role));
        }
        let row = super::configure(
            a,
            &origin(ctx)?,
            p.tenant_id,
            super::Settings {
                issuer: input.issuer,
                client_id: input.client_id,
                client_secret_name: input.client_secret_name,
                allowed_domains: input.allowed_email_domains.unwrap_or_default(),
                role_claim: input.role_claim,
                role_mapping: mapping,
                default_role,
                jit_provisioning: input.jit_provisioning.unwrap_or(false),
                enabled: input.enabled.unwrap_or(true),
            },
        )
        .await?;
        Ok(OidcProviderPayload {
            oidc_provider: view(ctx, row).await?,
        })
    }

    /// Removes the tenant's OpenID Connect provider: single sign-on stops; accounts stay.
    #[graphql(guard = "Require(Permission::TenantUpdate)")]
    async fn delete_oidc_provider(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<crate::auth::graphql::OkPayload> {
        owner_only(principal(ctx)?)?;
        super::remove(app(ctx)?, &origin(ctx)?, principal(ctx)?.tenant_id).await?;
        Ok(crate::auth::graphql::OkPayload { ok: true })
    }
}
