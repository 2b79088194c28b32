//! Data-subject requests over GraphQL: `exportUserData` and `eraseUser`.

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::audit::privacy;
use crate::db::ids::utc;
use crate::graphql::guards::Require;
use crate::graphql::principal;
use crate::graphql::relay::{NodeKind, decode_expecting, to_global_id};
use crate::graphql::{app, origin};
use crate::rbac::Permission;
use crate::tenancy::graphql::User;
use crate::tenancy::model::UserId;

/// `exportUserData` input.
#[derive(InputObject)]
pub struct ExportUserDataInput {
    /// The person (global user ID).
    pub user_id: ID,
}

/// `exportUserData` result.
#[derive(SimpleObject)]
pub struct ExportUserDataPayload {
    /// The person.
    pub user_id: ID,
    /// When the document was made.
    pub generated_at: DateTime<Utc>,
    /// Profile, team memberships, sessions, API key metadata, and audit records where
    /// the person is the actor.
    pub document: Json<Value>,
}

/// `eraseUser` input.
#[derive(InputObject)]
pub struct EraseUserInput {
    /// The person (global user ID).
    pub user_id: ID,
}

/// `eraseUser` result.
#[derive(SimpleObject)]
pub struct EraseUserPayload {
    /// The user as it is now (ERASED, no personal data).
    pub user: User,
    /// Audit records whose IP address and user agent were removed.
    pub audit_records_pseudonymized: i64,
    /// Sessions deleted.
    pub sessions_deleted: i64,
}

/// Data-subject request mutations.
#[derive(Default)]
pub struct PrivacyMutation;

#[Object]
impl PrivacyMutation {
    /// Everything stored about a person in the caller's tenant, as one JSON document
    /// (a data-subject access request). Recorded as `user.data_exported`.
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn export_user_data(
        &self,
        ctx: &Context<'_>,
        input: ExportUserDataInput,
    ) -> async_graphql::Result<ExportUserDataPayload> {
        let id = UserId(decode_expecting(&input.user_id, NodeKind::User, "user")?);
        let (document, at) =
            privacy::export_user_data(app(ctx)?, &origin(ctx)?, principal(ctx)?.tenant_id, id)
                .await?;
        Ok(ExportUserDataPayload {
            user_id: to_global_id(NodeKind::User, id.0),
            generated_at: utc(at),
            document: Json(document),
        })
    }

    /// Erases a person's personal data and pseudonymizes them in the audit trail; the
    /// chain still verifies. Irreversible. Recorded as `user.erased` (CRITICAL).
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn erase_user(
        &self,
        ctx: &Context<'_>,
        input: EraseUserInput,
    ) -> async_graphql::Result<EraseUserPayload> {
        let id = UserId(decode_expecting(&input.user_id, NodeKind::User, "user")?);
        let (user, done) =
            privacy::erase_user(app(ctx)?, &origin(ctx)?, principal(ctx)?, id).await?;
        Ok(EraseUserPayload {
            user: User(user),
            audit_records_pseudonymized: done.records_pseudonymized,
            sessions_deleted: done.sessions_deleted,
        })
    }
}
