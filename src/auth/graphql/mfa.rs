//! GraphQL fields for the second factor (TOTP): enrolment, sign-in completion, recovery
//! codes and an administrator's reset. Rules live in `service::mfa`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::{OkPayload, SessionTokens};
use crate::auth::service::mfa;
use crate::db::ids::UserId;
use crate::graphql::guards::{Require, SignedIn};
use crate::graphql::relay::{NodeKind, decode_expecting};
use crate::graphql::{ClientInfo, app, origin, principal};
use crate::rbac::Permission;
use crate::tenancy::graphql::User;

/// A new TOTP secret, shown once: add it to an authenticator app, then `confirmTotp`.
#[derive(SimpleObject)]
pub struct TotpEnrolment {
    /// The secret in base32, for typing into an app.
    pub secret: String,
    /// `otpauth://totp/…` (RFC 6238 parameters: SHA1, 6 digits, 30 s), for a QR code.
    pub otpauth_uri: String,
}

/// One-time recovery codes, shown once: each signs in once in place of a code.
#[derive(SimpleObject)]
pub struct RecoveryCodesPayload {
    /// Ten codes, `xxxxx-xxxxx`.
    pub recovery_codes: Vec<String>,
}

/// Input of `confirmTotp`, `disableTotp` and `regenerateRecoveryCodes`.
#[derive(InputObject)]
pub struct TotpCodeInput {
    /// A 6-digit code from the authenticator app (`disableTotp` and
    /// `regenerateRecoveryCodes` also take a recovery code).
    pub code: String,
}

/// Input of `verifyMfa`.
#[derive(InputObject)]
pub struct VerifyMfaInput {
    /// `extensions.mfaChallenge` of the `login` answer (reason `MFA_REQUIRED`).
    pub challenge: String,
    /// A 6-digit code from the authenticator app, or a recovery code.
    pub code: String,
}

/// Input of `resetUserMfa`.
#[derive(InputObject)]
pub struct ResetUserMfaInput {
    /// The user whose second factor is turned off.
    pub user_id: ID,
}

/// Result of `resetUserMfa`.
#[derive(SimpleObject)]
pub struct ResetUserMfaPayload {
    /// The user, who now signs in with the password alone and enrols again.
    pub user: User,
}

/// Second-factor mutations.
#[derive(Default)]
pub struct MfaMutation;

#[Object]
impl MfaMutation {
    /// Completes a sign-in of a user with a second factor: the challenge `login` returned
    /// (`extensions.mfaChallenge`) and a code, or a recovery code. Public. Each code is
    /// good once; wrong codes lock like wrong passwords (`RATE_LIMITED`), and a challenge
    /// is burnt after 5 of them.
    async fn verify_mfa(
        &self,
        ctx: &Context<'_>,
        input: VerifyMfaInput,
    ) -> async_graphql::Result<SessionTokens> {
        Ok(mfa::verify(
            app(ctx)?,
            &input.challenge,
            &input.code,
            ctx.data_opt::<ClientInfo>(),
            ctx.data_opt::<crate::request::RequestId>()
                .map(|r| r.0.as_str()),
        )
        .await?
        .into())
    }

    /// Starts turning on a second factor for the signed-in user: a new TOTP secret (a
    /// previous unconfirmed one is replaced). Nothing changes at sign-in until
    /// `confirmTotp`. `CONFLICT` when a factor is already on.
    #[graphql(guard = "SignedIn")]
    async fn enroll_totp(&self, ctx: &Context<'_>) -> async_graphql::Result<TotpEnrolment> {
        let e = mfa::start_enrolment(app(ctx)?, principal(ctx)?, &origin(ctx)?).await?;
        Ok(TotpEnrolment {
            secret: e.secret,
            otpauth_uri: e.otpauth_uri,
        })
    }

    /// Turns the second factor on with a first code from the app; returns ten recovery
    /// codes (shown once). From the next sign-in on, `login` asks for a code.
    #[graphql(guard = "SignedIn")]
    async fn confirm_totp(
        &self,
        ctx: &Context<'_>,
        input: TotpCodeInput,
    ) -> async_graphql::Result<RecoveryCodesPayload> {
        let recovery_codes =
            mfa::confirm_enrolment(app(ctx)?, principal(ctx)?, &origin(ctx)?, &input.code).await?;
        Ok(RecoveryCodesPayload { recovery_codes })
    }

    /// Turns the signed-in user's second factor off; a code or recovery code proves it.
    #[graphql(guard = "SignedIn")]
    async fn disable_totp(
        &self,
        ctx: &Context<'_>,
        input: TotpCodeInput,
    ) -> async_graphql::Result<OkPayload> {
        mfa::disable(app(ctx)?, principal(ctx)?, &origin(ctx)?, &input.code).await?;
        Ok(OkPayload { ok: true })
    }

    /// Replaces the signed-in user's recovery codes (the old ones stop working); a code
    /// or recovery code proves it.
    #[graphql(guard = "SignedIn")]
    async fn regenerate_recovery_codes(
        &self,
        ctx: &Context<'_>,
        input: TotpCodeInput,
    ) -> async_graphql::Result<RecoveryCodesPayload> {
        let recovery_codes =
            mfa::regenerate_recovery_codes(app(ctx)?, principal(ctx)?, &origin(ctx)?, &input.code)
                .await?;
        Ok(RecoveryCodesPayload { recovery_codes })
    }

    /// Turns off another user's second factor (a lost device): they sign in with the
    /// password and enrol again. Recorded as CRITICAL.
    #[graphql(guard = "Require(Permission::UsersManage)")]
    async fn reset_user_mfa(
        &self,
        ctx: &Context<'_>,
        input: ResetUserMfaInput,
    ) -> async_graphql::Result<ResetUserMfaPayload> {
        let id = UserId(decode_expecting(&input.user_id, NodeKind::User, "user")?);
        let user = mfa::reset(app(ctx)?, principal(ctx)?, &origin(ctx)?, id).await?;
        Ok(ResetUserMfaPayload { user: User(user) })
    }
}
