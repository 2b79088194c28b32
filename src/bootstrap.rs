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

/// The demo workflow's name.
pub const DEMO_WORKFLOW: &str = "demo pipeline";

/// What `serve --demo` found or made.
#[derive(Debug)]
pub enum Demo {
    /// Seeded now: the accounts, the published workflow and an OPERATOR API key that can
    /// start it (all secrets shown once).
    Created {
        /// One account per built-in role.
        accounts: Vec<DemoAccount>,
        /// The published demo workflow's global ID.
        workflow_id: String,
        /// An API key (OPERATOR) of the demo tenant.
        api_key: String,
    },
    /// Seeded by an earlier start.
    Exists {
        /// The demo workflow's global ID, unless someone deleted it.
        workflow_id: Option<String>,
    },
}

/// The demo workflow: no network needed. A transform shapes the input, a condition picks
/// a branch (the other is SKIPPED), one branch waits, and a last transform joins them.
pub fn demo_definition() -> serde_json::Value {
    serde_json::json!({ "steps": [
        { "id": "greet", "kind": "transform", "config": {
            "template": "{\"greeting\": \"Hello, {{ input.name | default('agentplane') }}!\", \"items\": {{ input.items | default(3) }}}" } },
        { "id": "check", "kind": "condition", "dependsOn": ["greet"], "config": {
            "expression": "steps.greet.output.items > 2",
            "ifTrue": ["wait"], "ifFalse": ["shortcut"] } },
        { "id": "wait", "kind": "delay", "dependsOn": ["check"], "config": { "ms": 1500 } },
        { "id": "shortcut", "kind": "transform", "dependsOn": ["check"], "config": {
            "template": "{\"note\": \"few items, no wait\"}" } },
        { "id": "done", "kind": "transform", "dependsOn": ["wait", "shortcut"], "config": {
            "template": "{\"message\": \"{{ steps.greet.output.greeting }}\", \"items\": {{ steps.greet.output.items }}}" } }
    ] })
}

fn workflow_global_id(id: crate::workflows::model::WorkflowId) -> String {
    crate::graphql::relay::to_global_id(crate::graphql::relay::NodeKind::Workflow, id.0).0
}

/// `serve --demo`: a `demo` tenant with one user per built-in tenant role (generated
/// passwords), a team holding them all, a published workflow that runs without network,
/// and an API key to start it. An existing demo tenant is left as it is.
pub async fn seed_demo(app: &App) -> anyhow::Result<Demo> {
    let into = crate::error::AppError::into_anyhow;
    if let Some(t) = crate::tenancy::store::find_by_slug(&app.db, "demo")
        .await
        .map_err(into)?
    {
        let wf = app
            .db
            .run(async |conn| {
                crate::workflows::store::find_by_name(conn, t.id, DEMO_WORKFLOW).await
            })
            .await
            .map_err(into)?;
        return Ok(Demo::Exists {
            workflow_id: wf.map(|w| workflow_global_id(w.id)),
        });
    }
    let accounts = seed_demo_accounts(app).await?;
    let tenant = crate::tenancy::store::find_by_slug(&app.db, "demo")
        .await
        .map_err(into)?
        .ok_or_else(|| anyhow::anyhow!("the demo tenant vanished while it was seeded"))?;
    let owner_email = format!(
        "{}@demo.agentplane.local",
        BuiltinRole::Owner.as_str().to_lowercase()
    );
    let owner = crate::tenancy::store::find_user_by_email(&app.db, &owner_email)
        .await
        .map_err(into)?
        .ok_or_else(|| anyhow::anyhow!("the demo owner vanished while it was seeded"))?;
    let (permissions, platform_admin) =
        crate::auth::role_permissions(app, &tenant, BuiltinRole::Owner.as_str())
            .await
            .map_err(into)?;
    let principal = crate::auth::Principal {
        actor: crate::auth::Actor::User(owner.id),
        tenant_id: tenant.id,
        role: BuiltinRole::Owner.as_str().to_owned(),
        permissions,
        platform_admin,
        token: None,
        allowed_ips: crate::auth::allowed_ranges(&tenant),
        second_factor_missing: false,
        limits: crate::tenancy::model::TenantLimits::of(&tenant),
    };
    let origin = principal.origin(None, None);
    let definition = crate::workflows::dag::Definition::parse(&demo_definition())
        .map_err(|e| anyhow::anyhow!("the demo workflow does not validate: {e:?}"))?;
    let wf = crate::workflows::service::create(
        app,
        &origin,
        &principal,
        crate::workflows::service::NewWorkflow {
            name: DEMO_WORKFLOW.to_owned(),
            description: "transform → condition → delay or shortcut → transform; needs no network"
                .to_owned(),
            tags: vec!["demo".to_owned()],
            environment: crate::workflows::model::Environment::Development,
            visibility: crate::workflows::model::Visibility::Tenant,
            team_id: None,
            definition,
        },
    )
    .await
    .map_err(into)?;
    crate::workflows::service::publish(app, &origin, &principal, wf.id)
        .await
        .map_err(into)?;
    let (_, api_key) = crate::auth::service::create_api_key(
        app,
        &origin,
        &principal,
        "demo operator",
        BuiltinRole::Operator.as_str(),
        None,
    )
    .await
    .map_err(into)?;
    Ok(Demo::Created {
        accounts,
        workflow_id: workflow_global_id(wf.id),
        api_key,
    })
}

/// The demo tenant's accounts, one per built-in tenant role, and their team.
async fn seed_demo_accounts(app: &App) -> anyhow::Result<Vec<DemoAccount>> {
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
        return Ok(accounts);
    };
    crate::tenancy::service::teams::seed(app, tenant.id, "demo-team", &members, now)
        .await
        .map_err(crate::error::AppError::into_anyhow)?;
    Ok(accounts)
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
