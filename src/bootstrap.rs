//! First start: the reserved system tenant and its platform admin. No default passwords:
//! the password comes from `AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD` or is generated and shown
//! once.

use secrecy::ExposeSecret as _;

use crate::app::App;
use crate::db::ids::db_time;
use crate::error::ErrorCode;
use crate::rbac::BuiltinRole;
use crate::tenancy::graphql::{new_tenant_row, new_user_row};
use crate::tenancy::model::Plan;

/// What bootstrap created.
#[derive(Debug)]
pub struct Bootstrapped {
    /// The platform admin's e-mail.
    pub admin_email: String,
    /// The generated password, when none was configured (print it once).
    pub generated_password: Option<String>,
}

/// Creates the system tenant and platform admin on an empty database; `None` if they exist.
pub async fn ensure_platform_admin(app: &App) -> anyhow::Result<Option<Bootstrapped>> {
    let err = |e: crate::error::AppError| anyhow::anyhow!("{}", e.message());
    if crate::tenancy::store::find_system(&app.db)
        .await
        .map_err(err)?
        .is_some()
    {
        return Ok(None);
    }
    let now = db_time(app.clock.now());
    let tenant = new_tenant_row("system", "Platform operators", Plan::Enterprise, true, now);
    let cfg = &app.config.auth;
    let mut admin = new_user_row(
        tenant.id,
        &cfg.bootstrap_admin_email,
        "Platform admin",
        BuiltinRole::PlatformAdmin.as_str(),
        now,
    )
    .map_err(err)?;
    let (password, generated) = match &cfg.bootstrap_admin_password {
        Some(p) => (p.expose_secret().to_owned(), false),
        None => (crate::auth::passwords::random_secret(18), true),
    };
    admin.password_hash = Some(
        crate::auth::service::hash_blocking(&password)
            .await
            .map_err(err)?,
    );
    match crate::tenancy::store::insert(&app.db, &tenant).await {
        Ok(()) => {}
        // Another replica bootstrapped at the same moment.
        Err(e) if e.code() == ErrorCode::Conflict => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    crate::tenancy::store::insert_user(&app.db, &admin)
        .await
        .map_err(err)?;
    tracing::info!(admin.email = %admin.email, "created the system tenant and platform admin");
    Ok(Some(Bootstrapped {
        admin_email: admin.email,
        generated_password: generated.then_some(password),
    }))
}
