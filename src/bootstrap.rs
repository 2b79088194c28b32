//! First start: the reserved system tenant and its platform admin. No default passwords:
//! the password comes from `AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD` or is generated and shown
//! once.

use crate::tenancy::service::{Credential, NewTenant, NewUser};
use secrecy::ExposeSecret as _;

use crate::app::App;
use crate::db::ids::db_time;
use crate::error::ErrorCode;
use crate::rbac::BuiltinRole;
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
    if crate::tenancy::store::find_system(&app.db)
        .await
        .map_err(crate::error::AppError::into_anyhow)?
        .is_some()
    {
        return Ok(None);
    }
    let cfg = &app.config.auth;
    let (password, generated) = match &cfg.bootstrap_admin_password {
        Some(p) => (p.expose_secret().to_owned(), false),
        None => (crate::auth::passwords::random_secret(18), true),
    };
    let hash = crate::auth::service::hash_blocking(&password)
        .await
        .map_err(crate::error::AppError::into_anyhow)?;
    // One transaction, recorded as the first record of the system tenant's chain.
    let created = match crate::tenancy::service::create_tenant(
        app,
        &crate::audit::Origin::operator(),
        NewTenant {
            slug: "system",
            name: "Platform operators",
            plan: Plan::Enterprise,
            is_system: true,
        },
        NewUser {
            email: &cfg.bootstrap_admin_email,
            display_name: "Platform admin",
            credential: Credential::Hash(hash),
        },
    )
    .await
    {
        Ok(c) => c,
        // Another replica bootstrapped at the same moment.
        Err(e) if e.code() == ErrorCode::Conflict => return Ok(None),
        Err(e) => return Err(e.into_anyhow()),
    };
    let admin = created.user;
    tracing::info!(admin.email = %admin.email, "created the system tenant and platform admin");
    Ok(Some(Bootstrapped {
        admin_email: admin.email,
        generated_password: generated.then_some(password),
    }))
}

/// One seeded demo account.
#[derive(Debug)]
pub struct DemoAccount {
    /// Sign-in e-mail.
    pub email: String,
    /// Built-in role.
    pub role: &'static str,
    /// Generated password (print once).
    pub password: String,
}

/// `serve --demo`: a `demo` tenant with one user per built-in tenant role (generated
/// passwords) and a team holding them all. `None` if the tenant already exists.
pub async fn seed_demo(app: &App) -> anyhow::Result<Option<Vec<DemoAccount>>> {
    if crate::tenancy::store::find_by_slug(&app.db, "demo")
        .await
        .map_err(crate::error::AppError::into_anyhow)?
        .is_some()
    {
        return Ok(None);
    }
    let now = db_time(app.clock.now());
    let into = crate::error::AppError::into_anyhow;
    let origin = crate::audit::Origin::operator();
    let mut accounts = Vec::new();
    let mut members = Vec::new();
    let mut tenant = None;
    // Through the same services as the API: each account is created (and recorded) in
    // one transaction, the tenant with its owner.
    for role in BuiltinRole::TENANT_ROLES {
        let email = format!("{}@demo.agentplane.local", role.as_str().to_lowercase());
        let password = crate::auth::passwords::random_secret(18);
        let new = NewUser {
            email: &email,
            display_name: role.as_str(),
            credential: Credential::Hash(
                crate::auth::service::hash_blocking(&password)
                    .await
                    .map_err(into)?,
            ),
        };
        let user = match &tenant {
            None => {
                let created = crate::tenancy::service::create_tenant(
                    app,
                    &origin,
                    NewTenant {
                        slug: "demo",
                        name: "Demo organization",
                        plan: Plan::Pro,
                        is_system: false,
                    },
                    new,
                )
                .await
                .map_err(into)?;
                tenant = created.tenant;
                created.user
            }
            Some(t) => {
                crate::tenancy::service::create_user(app, &origin, t, new, role.as_str(), false)
                    .await
                    .map_err(into)?
                    .user
            }
        };
        members.push((user.id, *role == BuiltinRole::Owner));
        accounts.push(DemoAccount {
            email,
            role: role.as_str(),
            password,
        });
    }
    let Some(tenant) = tenant else {
        return Ok(Some(accounts));
    };
    crate::tenancy::service::teams::seed(app, tenant.id, "demo-team", &members, now)
        .await
        .map_err(crate::error::AppError::into_anyhow)?;
    Ok(Some(accounts))
}

/// `admin create-tenant`: a tenant with an OWNER whose password is generated; the same
/// rules and audit record (`tenant.created`, by SYSTEM) as `createTenant`.
pub async fn create_tenant(
    app: &App,
    slug: &str,
    name: &str,
    plan: Plan,
    owner_email: &str,
    owner_name: &str,
) -> anyhow::Result<String> {
    let password = crate::auth::passwords::random_secret(18);
    let hash = crate::auth::service::hash_blocking(&password)
        .await
        .map_err(crate::error::AppError::into_anyhow)?;
    crate::tenancy::service::create_tenant(
        app,
        &crate::audit::Origin::operator(),
        NewTenant {
            slug,
            name,
            plan,
            is_system: false,
        },
        NewUser {
            email: owner_email,
            display_name: owner_name,
            credential: Credential::Hash(hash),
        },
    )
    .await
    .map_err(cli_error)?;
    Ok(password)
}

/// `admin create-user`: a user in the tenant named by slug, with a generated password;
/// recorded as `user.created` (by SYSTEM). An operator may exceed the plan's user quota.
pub async fn create_user(
    app: &App,
    tenant_slug: &str,
    email: &str,
    name: &str,
    role: BuiltinRole,
) -> anyhow::Result<String> {
    let tenant = crate::tenancy::store::find_by_slug(&app.db, tenant_slug)
        .await
        .map_err(crate::error::AppError::into_anyhow)?
        .ok_or_else(|| anyhow::anyhow!("no tenant with slug {tenant_slug}"))?;
    if role == BuiltinRole::PlatformAdmin && !tenant.is_system {
        anyhow::bail!("PLATFORM_ADMIN exists only in the system tenant");
    }
    let password = crate::auth::passwords::random_secret(18);
    let hash = crate::auth::service::hash_blocking(&password)
        .await
        .map_err(crate::error::AppError::into_anyhow)?;
    crate::tenancy::service::create_user(
        app,
        &crate::audit::Origin::operator(),
        &tenant,
        NewUser {
            email,
            display_name: name,
            credential: Credential::Hash(hash),
        },
        role.as_str(),
        false,
    )
    .await
    .map_err(cli_error)?;
    Ok(password)
}

/// An error for the command line: the message, plus the field it concerns.
fn cli_error(e: crate::error::AppError) -> anyhow::Error {
    match e.field() {
        Some(field) => anyhow::anyhow!("{field}: {}", e.message()),
        None => e.into_anyhow(),
    }
}
