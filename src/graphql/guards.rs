//! The guards every GraphQL field declares: [`Require`] a permission of the matrix in
//! `crate::rbac`, or [`SignedIn`]. A refusal is `FORBIDDEN` and is recorded once per
//! request as `access.denied`.

use async_graphql::{Context, Guard};

use super::principal;
use crate::error::AppError;
use crate::rbac::Permission;

/// Guard: the caller must hold `permission`.
pub struct Require(pub Permission);

impl Guard for Require {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let p = principal(ctx)?;
        if p.permissions.contains(&self.0) {
            Ok(())
        } else if p.second_factor_missing {
            Err(mfa_required_by_tenant().into())
        } else {
            // Boxed: a guard's future lives inside each guarded field's, and a
            // subscription field's for as long as its subscriber (the audit write is
            // several KiB of state that only a denial uses).
            Box::pin(record_denial(ctx, self.0)).await;
            Err(
                AppError::forbidden(format!("this requires the {} permission", self.0.as_str()))
                    .with_detail("permission", self.0.as_str())
                    .into(),
            )
        }
    }
}

/// The denials already recorded for one request (an HTTP request, batched or not, or
/// one websocket): `access.denied` is written once per (field, permission), however many
/// aliases or operations repeat it, so a caller cannot grow the trail (and hold the
/// chain lock) with one request.
#[derive(Default)]
pub struct DenialsSeen(std::sync::Mutex<std::collections::HashSet<(String, Permission)>>);

impl DenialsSeen {
    /// `true` the first time a (field, permission) pair is seen.
    fn first(&self, field: &str, permission: Permission) -> bool {
        self.0
            .lock()
            .map(|mut s| s.insert((field.to_owned(), permission)))
            .unwrap_or(true)
    }
}

/// Records `access.denied` (best effort: a failure to record is logged, and the caller
/// gets its FORBIDDEN either way).
async fn record_denial(ctx: &Context<'_>, permission: Permission) {
    let (Ok(app), Ok(origin)) = (crate::graphql::app(ctx), crate::graphql::origin(ctx)) else {
        return;
    };
    // The field itself, not the alias the client gave it.
    let field = ctx.item.node.name.node.to_string();
    if let Some(seen) = ctx.data_opt::<std::sync::Arc<DenialsSeen>>() {
        if !seen.first(&field, permission) {
            return;
        }
    }
    let entry = crate::audit::Entry::change(
        &origin,
        "access.denied",
        "field",
        field,
        Some(serde_json::json!({ "permission": permission.as_str() })),
        crate::db::ids::db_time(app.clock.now()),
    )
    .severity(crate::audit::Severity::Warning)
    .failed(format!("missing the {} permission", permission.as_str()));
    if let Err(e) = crate::audit::record(&app.db, &entry).await {
        tracing::warn!(error = ?e, "could not record a denied request");
    }
}

/// Guard: any authenticated principal.
pub struct SignedIn;

impl Guard for SignedIn {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let p = principal(ctx)?;
        // A member of a tenant that requires a second factor, signed in without one, may
        // only turn it on, read themselves and sign out.
        if p.second_factor_missing
            && !crate::rbac::ENROLMENT_FIELDS.contains(&ctx.item.node.name.node.as_str())
        {
            return Err(mfa_required_by_tenant().into());
        }
        Ok(())
    }
}

/// The refusal of a principal whose tenant requires a second factor it did not use.
pub fn mfa_required_by_tenant() -> AppError {
    AppError::forbidden(
        "your organization requires multi-factor sign-in: turn it on (enrollTotp, then \
         confirmTotp with a code) if you have not, then sign in again with a code",
    )
    .with_detail("reason", "MFA_REQUIRED_BY_TENANT")
}
