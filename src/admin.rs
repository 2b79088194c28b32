//! Operator actions behind `agentplane admin …`.

use anyhow::Context as _;

use crate::app::App;
use crate::db::ids::db_time;

/// Sets a user's password and revokes all of their sessions.
pub async fn reset_password(app: &App, email: &str, password: &str) -> anyhow::Result<()> {
    crate::auth::passwords::check_policy(password).map_err(|m| anyhow::anyhow!(m))?;
    let email = crate::auth::passwords::normalize_email(email).map_err(|m| anyhow::anyhow!(m))?;
    let user = crate::tenancy::store::find_user_by_email(&app.db, &email)
        .await
        .map_err(crate::error::AppError::into_anyhow)?
        .with_context(|| format!("no user with e-mail {email}"))?;
    let hash = crate::auth::service::hash_blocking(password)
        .await
        .map_err(crate::error::AppError::into_anyhow)?;
    let now = db_time(app.clock.now());
    let audit = crate::audit::Entry::change(
        &crate::audit::Origin::system(user.tenant_id),
        "user.password_reset",
        "user",
        user.id,
        None,
        now,
    )
    .severity(crate::audit::Severity::Warning);
    crate::auth::service::store_password(
        app,
        user.tenant_id,
        user.id,
        &hash,
        &audit,
        Some((None, "password_reset")),
    )
    .await
    .map_err(crate::error::AppError::into_anyhow)?;
    Ok(())
}

/// Turns off a user's second factor (a lost device and no recovery codes, no admin left
/// to reset it); the user signs in with the password and enrols again.
pub async fn reset_mfa(app: &App, email: &str) -> anyhow::Result<bool> {
    let email = crate::auth::passwords::normalize_email(email).map_err(|m| anyhow::anyhow!(m))?;
    let user = crate::tenancy::store::find_user_by_email(&app.db, &email)
        .await
        .map_err(crate::error::AppError::into_anyhow)?
        .with_context(|| format!("no user with e-mail {email}"))?;
    crate::auth::service::mfa::reset_by_operator(app, &user)
        .await
        .map_err(crate::error::AppError::into_anyhow)
}

/// Empties a tenant's `allowedIpRanges` (a list that locks everyone out).
pub async fn clear_ip_ranges(app: &App, slug: &str) -> anyhow::Result<()> {
    let tenant = crate::tenancy::store::find_by_slug(&app.db, slug)
        .await
        .map_err(crate::error::AppError::into_anyhow)?
        .with_context(|| format!("no tenant with slug {slug}"))?;
    crate::tenancy::service::tenants::change_settings(
        app,
        &crate::audit::Origin::system(tenant.id),
        tenant.id,
        crate::tenancy::service::tenants::Settings {
            allowed_ip_ranges: Some(Vec::new()),
            ..Default::default()
        },
    )
    .await
    .map_err(crate::error::AppError::into_anyhow)?;
    Ok(())
}
