//! GraphQL fields for sign-in, sessions and API keys. Resolvers parse, call the service,
//! and convert; rules live in `service.rs`.

pub mod mfa;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::SessionId;
use super::model::{ApiKeyRow, SessionRow};
use super::service::{self, IssuedTokens};
use crate::db::ids::utc;
use crate::graphql::guards::{Require, SignedIn};
use crate::graphql::principal;
use crate::graphql::relay::{NodeKind, decode_expecting, to_global_id};
use crate::graphql::{ClientInfo, app};
use crate::rbac::Permission;
use crate::tenancy::graphql::{Role, User, resolve_role_input};

/// Credentials for `login`.
#[derive(InputObject)]
pub struct LoginInput {
    /// E-mail address.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Tokens for a new or refreshed session.
#[derive(SimpleObject)]
pub struct SessionTokens {
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque single-use token for `refreshSession`.
    pub refresh_token: String,
    /// When the access token expires.
    pub access_token_expires_at: DateTime<Utc>,
    /// The signed-in user.
    pub user: User,
}

impl From<IssuedTokens> for SessionTokens {
    fn from(t: IssuedTokens) -> Self {
        Self {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            access_token_expires_at: t.access_token_expires_at,
            user: User(t.user),
        }
    }
}

/// Input of `refreshSession`.
#[derive(InputObject)]
pub struct RefreshSessionInput {
    /// The current refresh token.
    pub refresh_token: String,
}

/// Input of `changePassword`.
#[derive(InputObject)]
pub struct ChangePasswordInput {
    /// The current password.
    pub current_password: String,
    /// The new password (12–256 characters).
    pub new_password: String,
}

/// Input of `requestPasswordReset`.
#[derive(InputObject)]
pub struct RequestPasswordResetInput {
    /// The account's e-mail address.
    pub email: String,
}

/// Input of `requestEmailChange`.
#[derive(InputObject)]
pub struct RequestEmailChangeInput {
    /// The address to change to; a one-time token goes there.
    pub new_email: String,
    /// The caller's current password.
    pub current_password: String,
}

/// Input of `confirmEmailChange`.
#[derive(InputObject)]
pub struct ConfirmEmailChangeInput {
    /// The one-time token sent to the new address.
    pub token: String,
}

/// Result of `confirmEmailChange`.
#[derive(SimpleObject)]
pub struct ConfirmEmailChangePayload {
    /// The account's address from now on (sign in with it).
    pub email: String,
}

/// Input of `setPassword`.
#[derive(InputObject)]
pub struct SetPasswordInput {
    /// The one-time token from `createUser`, `createTenant` or `requestPasswordReset`.
    pub token: String,
    /// The new password (12–256 characters).
    pub password: String,
}

/// Input of `revokeSession`.
#[derive(InputObject)]
pub struct RevokeSessionInput {
    /// The session's ID.
    pub session_id: ID,
}

/// Input of `createApiKey`.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// Display name.
    pub name: String,
    /// A built-in role name (e.g. `DEVELOPER`) or a custom role's ID.
    pub role_id: ID,
    /// Optional expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Input of `revokeApiKey`.
#[derive(InputObject)]
pub struct RevokeApiKeyInput {
    /// The key's ID.
    pub api_key_id: ID,
}

/// A result with no data beyond success.
#[derive(SimpleObject)]
pub struct OkPayload {
    /// Always true when no error is returned.
    pub ok: bool,
}

/// A sign-in session (refresh-token family).
pub struct Session(pub SessionRow, pub Option<SessionId>);

#[Object]
impl Session {
    /// Opaque global ID.
    async fn id(&self) -> ID {
        to_global_id(NodeKind::Session, self.0.id.0)
    }
    /// Sign-in time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// Last refresh.
    async fn last_used_at(&self) -> DateTime<Utc> {
        utc(self.0.last_used_at)
    }
    /// Absolute expiry.
    async fn expires_at(&self) -> DateTime<Utc> {
        utc(self.0.expires_at)
    }
    /// Revocation time, if revoked.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at.map(utc)
    }
    /// Address at sign-in.
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    /// User agent at sign-in.
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    /// Whether this is the session of the current request.
    async fn current(&self) -> bool {
        self.1 == Some(self.0.id)
    }
}

/// An API key (the secret is shown only once, by `createApiKey`).
pub struct ApiKey(pub ApiKeyRow);

#[Object]
impl ApiKey {
    /// Opaque global ID.
    async fn id(&self) -> ID {
        to_global_id(NodeKind::ApiKey, self.0.id.0)
    }
    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The first characters of the secret.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    /// The role the key acts with.
    async fn role(&self, ctx: &Context<'_>) -> async_graphql::Result<Role> {
        Ok(Role::resolve(ctx, &self.0.role).await?)
    }
    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// Expiry, if any.
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at.map(utc)
    }
    /// Last use.
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at.map(utc)
    }
    /// Revocation time, if revoked.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at.map(utc)
    }
}

/// Result of `createApiKey`.
#[derive(SimpleObject)]
pub struct CreateApiKeyPayload {
    /// The key's metadata.
    pub api_key: ApiKey,
    /// The secret, shown once: use it as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// Result of `revokeApiKey`.
#[derive(SimpleObject)]
pub struct RevokeApiKeyPayload {
    /// The revoked key.
    pub api_key: ApiKey,
}

/// Identity queries.
#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The signed-in user (API keys have no user: `null`).
    #[graphql(guard = "SignedIn")]
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let p = principal(ctx)?;
        let Some(uid) = p.user_id() else {
            return Ok(None);
        };
        Ok(
            crate::tenancy::store::find_user(&app(ctx)?.db, p.tenant_id, uid)
                .await?
                .map(User),
        )
    }

    /// The signed-in user's sessions, newest first.
    #[graphql(guard = "SignedIn")]
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Session>> {
        let p = principal(ctx)?;
        let Some(uid) = p.user_id() else {
            return Ok(Vec::new());
        };
        let current = p.token.as_ref().map(|t| t.session_id);
        Ok(super::store::list_sessions(&app(ctx)?.db, p.tenant_id, uid)
            .await?
            .into_iter()
            .map(|s| Session(s, current))
            .collect())
    }

    /// The tenant's API keys, newest first.
    #[graphql(guard = "Require(Permission::ApikeysManage)")]
    async fn api_keys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiKey>> {
        let p = principal(ctx)?;
        Ok(super::store::list_api_keys(&app(ctx)?.db, p.tenant_id)
            .await?
            .into_iter()
            .map(ApiKey)
            .collect())
    }
}

/// Identity mutations.
#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Signs in. Public. Unknown e-mail and wrong password give the same error; repeated
    /// failures lock the account and the address out for growing periods (`RATE_LIMITED`).
    async fn login(
        &self,
        ctx: &Context<'_>,
        input: LoginInput,
    ) -> async_graphql::Result<SessionTokens> {
        let client = ctx.data_opt::<ClientInfo>();
        Ok(service::login(
            app(ctx)?,
            &input.email,
            &input.password,
            client,
            ctx.data_opt::<crate::request::RequestId>()
                .map(|r| r.0.as_str()),
        )
        .await?
        .into())
    }

    /// Exchanges a refresh token for new tokens. Public. Presenting a used refresh token
    /// revokes the whole session.
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        input: RefreshSessionInput,
    ) -> async_graphql::Result<SessionTokens> {
        Ok(service::refresh(
            app(ctx)?,
            &input.refresh_token,
            ctx.data_opt::<ClientInfo>(),
            ctx.data_opt::<crate::request::RequestId>()
                .map(|r| r.0.as_str()),
        )
        .await?
        .into())
    }

    /// Sets a password with a one-time token (from `createUser`, `createTenant` or
    /// `requestPasswordReset`) and signs out every session of the user. Public.
    async fn set_password(
        &self,
        ctx: &Context<'_>,
        input: SetPasswordInput,
    ) -> async_graphql::Result<OkPayload> {
        service::set_password_with_token(app(ctx)?, &input.token, &input.password).await?;
        Ok(OkPayload { ok: true })
    }

    /// Asks for a password reset: when `email` belongs to an active account, a one-time
    /// token valid for an hour is sent through the notifier (`AGENTPLANE_NOTIFIER`: the
    /// server log in development, a webhook in production); `setPassword` spends it. The
    /// answer is `ok: true` either way, so it does not tell whether the account exists;
    /// at most one token a minute is sent for an account. Public.
    async fn request_password_reset(
        &self,
        ctx: &Context<'_>,
        input: RequestPasswordResetInput,
    ) -> async_graphql::Result<OkPayload> {
        service::account::request_password_reset(
            app(ctx)?,
            &input.email,
            ctx.data_opt::<ClientInfo>(),
            ctx.data_opt::<crate::request::RequestId>()
                .map(|r| r.0.as_str()),
        )?;
        Ok(OkPayload { ok: true })
    }

    /// Asks to change the caller's e-mail address: with the current password, a one-time
    /// token valid for a day goes to the new address; `confirmEmailChange` makes the
    /// change. At most one a minute (`RATE_LIMITED`).
    #[graphql(guard = "SignedIn")]
    async fn request_email_change(
        &self,
        ctx: &Context<'_>,
        input: RequestEmailChangeInput,
    ) -> async_graphql::Result<OkPayload> {
        service::account::request_email_change(
            app(ctx)?,
            principal(ctx)?,
            &crate::graphql::origin(ctx)?,
            &input.new_email,
            &input.current_password,
        )
        .await?;
        Ok(OkPayload { ok: true })
    }

    /// Confirms an e-mail change with the token sent to the new address (works signed
    /// out). An address another account took meanwhile is `CONFLICT`. Public.
    async fn confirm_email_change(
        &self,
        ctx: &Context<'_>,
        input: ConfirmEmailChangeInput,
    ) -> async_graphql::Result<ConfirmEmailChangePayload> {
        let email = service::account::confirm_email_change(
            app(ctx)?,
            &input.token,
            ctx.data_opt::<ClientInfo>(),
            ctx.data_opt::<crate::request::RequestId>()
                .map(|r| r.0.as_str()),
        )
        .await?;
        Ok(ConfirmEmailChangePayload { email })
    }

    /// Signs out: revokes this session and its access token.
    #[graphql(guard = "SignedIn")]
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<OkPayload> {
        service::logout(app(ctx)?, principal(ctx)?, &crate::graphql::origin(ctx)?).await?;
        Ok(OkPayload { ok: true })
    }

    /// Changes the caller's password and signs out every other session.
    #[graphql(guard = "SignedIn")]
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        input: ChangePasswordInput,
    ) -> async_graphql::Result<OkPayload> {
        service::change_password(
            app(ctx)?,
            principal(ctx)?,
            &crate::graphql::origin(ctx)?,
            &input.current_password,
            &input.new_password,
        )
        .await?;
        Ok(OkPayload { ok: true })
    }

    /// Revokes one of the caller's sessions.
    #[graphql(guard = "SignedIn")]
    async fn revoke_session(
        &self,
        ctx: &Context<'_>,
        input: RevokeSessionInput,
    ) -> async_graphql::Result<OkPayload> {
        let id = decode_expecting(&input.session_id, NodeKind::Session, "session")?;
        service::revoke_own_session(
            app(ctx)?,
            principal(ctx)?,
            &crate::graphql::origin(ctx)?,
            SessionId(id),
        )
        .await?;
        Ok(OkPayload { ok: true })
    }

    /// Creates an API key; the secret is returned once.
    #[graphql(guard = "Require(Permission::ApikeysManage)")]
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> async_graphql::Result<CreateApiKeyPayload> {
        let p = principal(ctx)?;
        let a = app(ctx)?;
        let role = resolve_role_input(a, p, &input.role_id, "roleId").await?;
        let (row, secret) = service::create_api_key(
            a,
            &crate::graphql::origin(ctx)?,
            p,
            &input.name,
            &role,
            input.expires_at,
        )
        .await?;
        Ok(CreateApiKeyPayload {
            api_key: ApiKey(row),
            secret,
        })
    }

    /// Revokes an API key; it stops working at once.
    #[graphql(guard = "Require(Permission::ApikeysManage)")]
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        input: RevokeApiKeyInput,
    ) -> async_graphql::Result<RevokeApiKeyPayload> {
        let id = decode_expecting(&input.api_key_id, NodeKind::ApiKey, "API key")?;
        let row = service::revoke_api_key(
            app(ctx)?,
            &crate::graphql::origin(ctx)?,
            principal(ctx)?,
            super::ApiKeyId(id),
        )
        .await?;
        Ok(RevokeApiKeyPayload {
            api_key: ApiKey(row),
        })
    }
}
