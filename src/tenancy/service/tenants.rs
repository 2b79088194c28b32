//! Tenant rules for platform administrators and tenant owners: status (the system tenant
//! is never suspended), plan and quotas (never negative), feature flags and settings
//! (well-formed names and IP ranges), and the repair of a tenant left without an owner.
//! Every change is recorded in the changed tenant's own chain, in the change's
//! transaction.

use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::rbac::BuiltinRole;
use crate::tenancy::model::{
    Plan, TenantId, TenantRow, TenantStatus, UserId, UserRow, UserStatus, plan_quotas, tenant_view,
};
use crate::tenancy::store;

/// A tenant by id, or `NOT_FOUND`.
pub async fn get(app: &App, id: TenantId) -> AppResult<TenantRow> {
    store::find(&app.db, id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))
}

/// Suspends a tenant (every principal of it is then refused with `TENANT_SUSPENDED`)
/// with a reason its users see, or reactivates it (`reason` is then ignored).
pub async fn set_status(
    app: &App,
    origin: &Origin,
    id: TenantId,
    status: TenantStatus,
    reason: &str,
) -> AppResult<TenantRow> {
    let mut t = get(app, id).await?;
    let (action, severity) = match status {
        TenantStatus::Suspended => {
            if t.is_system {
                return Err(AppError::bad_input(
                    "tenantId",
                    "the system tenant cannot be suspended",
                ));
            }
            ("tenant.suspended", Severity::Critical)
        }
        TenantStatus::Active => ("tenant.reactivated", Severity::Warning),
    };
    let original = t.clone();
    t.status = status;
    t.status_reason =
        (status == TenantStatus::Suspended).then(|| reason.trim().chars().take(500).collect());
    t.updated_at = db_time(app.clock.now());
    write(app, origin, action, &original, &t, severity).await?;
    app.rights_changed(t.id);
    Ok(t)
}

/// Quotas to set with a plan; `None` takes the plan's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quotas {
    /// Users.
    pub max_users: Option<i64>,
    /// Workflows.
    pub max_workflows: Option<i64>,
    /// Executions per calendar month.
    pub max_executions_per_month: Option<i64>,
    /// Executions running at once.
    pub max_concurrent_executions: Option<i64>,
    /// GPU memory held at once, MiB.
    pub max_gpu_memory_mb: Option<i64>,
    /// Requests a minute across the tenant (0: no limit).
    pub requests_per_minute: Option<i64>,
    /// Expensive operations a minute (0: no limit).
    pub expensive_operations_per_minute: Option<i64>,
    /// GraphQL query cost a minute (0: no limit).
    pub query_cost_per_minute: Option<i64>,
}

/// Changes a tenant's plan, its quotas (the plan's defaults where not given) and its
/// feature flags (the set given, else the plan's defaults).
pub async fn change_plan(
    app: &App,
    origin: &Origin,
    id: TenantId,
    plan: Plan,
    quotas: Quotas,
    feature_flags: Option<Vec<String>>,
) -> AppResult<TenantRow> {
    let mut t = get(app, id).await?;
    let original = t.clone();
    let (u, w, e, c, g) = plan_quotas(plan);
    let (requests, expensive, cost) = crate::tenancy::model::plan_limits(plan);
    let q = quotas;
    for (field, v) in [
        ("maxUsers", q.max_users),
        ("maxWorkflows", q.max_workflows),
        ("maxExecutionsPerMonth", q.max_executions_per_month),
        ("maxConcurrentExecutions", q.max_concurrent_executions),
        ("maxGpuMemoryMb", q.max_gpu_memory_mb),
        ("requestsPerMinute", q.requests_per_minute),
        (
            "expensiveOperationsPerMinute",
            q.expensive_operations_per_minute,
        ),
        ("queryCostPerMinute", q.query_cost_per_minute),
    ] {
        if v.is_some_and(|v| v < 0) {
            return Err(AppError::bad_input(field, "quotas cannot be negative"));
        }
    }
    t.plan = plan;
    t.max_users = q.max_users.unwrap_or(u);
    t.max_workflows = q.max_workflows.unwrap_or(w);
    t.max_executions_per_month = q.max_executions_per_month.unwrap_or(e);
    t.max_concurrent_executions = q.max_concurrent_executions.unwrap_or(c);
    t.max_gpu_memory_mb = q.max_gpu_memory_mb.unwrap_or(g);
    t.requests_per_minute = q.requests_per_minute.unwrap_or(requests);
    t.expensive_operations_per_minute = q.expensive_operations_per_minute.unwrap_or(expensive);
    t.query_cost_per_minute = q.query_cost_per_minute.unwrap_or(cost);
    for (field, v) in [
        ("requestsPerMinute", t.requests_per_minute),
        (
            "expensiveOperationsPerMinute",
            t.expensive_operations_per_minute,
        ),
        ("queryCostPerMinute", t.query_cost_per_minute),
    ] {
        if v > 60_000_000 {
            return Err(AppError::bad_input(
                field,
                "at most 60000000 a minute (0 turns the limit off)",
            ));
        }
    }
    // The set given, or the new plan's defaults.
    let flags = match feature_flags {
        Some(flags) => crate::tenancy::features::validate(&flags)?,
        None => crate::tenancy::features::plan_defaults(plan),
    };
    t.feature_flags = serde_json::to_string(&flags).map_err(AppError::internal)?;
    t.updated_at = db_time(app.clock.now());
    write(
        app,
        origin,
        "tenant.plan_changed",
        &original,
        &t,
        Severity::Info,
    )
    .await?;
    // Cached principals carry the tenant's flags and limits.
    app.rights_changed(t.id);
    Ok(t)
}

/// Changes to a tenant's own settings; `None` keeps a value.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Days execution data is kept (1 to 3650).
    pub data_retention_days: Option<i64>,
    /// Whether members must use a second factor.
    pub require_mfa: Option<bool>,
    /// The IP ranges members and API keys may connect from (empty: any).
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// Save ranges that exclude the caller's own address anyway.
    pub confirm_excluding_own_address: bool,
    /// Whether the caller's own second factor is on: turning `requireMfa` on needs it.
    pub caller_has_second_factor: bool,
    /// Whether the tenant's principals may run registered documents only.
    pub trusted_documents_only: Option<bool>,
}

/// Most ranges one tenant's `allowedIpRanges` holds.
pub const MAX_ALLOWED_IP_RANGES: usize = 100;

/// Changes a tenant's settings (its owners act on their own tenant).
pub async fn change_settings(
    app: &App,
    origin: &Origin,
    id: TenantId,
    settings: Settings,
) -> AppResult<TenantRow> {
    let mut t = get(app, id).await?;
    let original = t.clone();
    if let Some(d) = settings.data_retention_days {
        if !(1..=3650).contains(&d) {
            return Err(AppError::bad_input(
                "dataRetentionDays",
                "between 1 and 3650 days",
            ));
        }
        t.data_retention_days = d;
    }
    if let Some(m) = settings.require_mfa {
        // Requiring what the caller has not done would leave the caller able to do
        // nothing but enrol: turn your own factor on first.
        if m && !t.require_mfa && !settings.caller_has_second_factor {
            return Err(AppError::bad_input(
                "requireMfa",
                "turn on your own second factor first (enrollTotp, then confirmTotp), \
                 then require it of everyone",
            )
            .with_detail("reason", "ENROL_FIRST"));
        }
        t.require_mfa = m;
    }
    if let Some(ranges) = settings.allowed_ip_ranges {
        if ranges.len() > MAX_ALLOWED_IP_RANGES {
            return Err(AppError::bad_input(
                "allowedIpRanges",
                format!("at most {MAX_ALLOWED_IP_RANGES} ranges"),
            ));
        }
        let mut parsed = Vec::with_capacity(ranges.len());
        for r in &ranges {
            match crate::net::Cidr::parse(r) {
                Some(c) => parsed.push(c),
                None => {
                    return Err(AppError::bad_input(
                        "allowedIpRanges",
                        format!("{r:?} is not an IP range such as 10.0.0.0/8 or 203.0.113.7"),
                    ));
                }
            }
        }
        // Saving a list that excludes the caller's own address would refuse the
        // caller's very next request: only on purpose.
        let own = origin
            .ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        if let Some(own) = own {
            if !parsed.is_empty()
                && !parsed.iter().any(|c| c.contains(own))
                && !settings.confirm_excluding_own_address
            {
                return Err(AppError::bad_input(
                    "allowedIpRanges",
                    format!(
                        "your own address {own} is outside these ranges, so saving them \
                         would lock you out: add it, or set confirmExcludingOwnAddress: true"
                    ),
                )
                .with_detail("reason", "WOULD_LOCK_OUT_CALLER"));
            }
        }
        let ranges: Vec<String> = ranges.iter().map(|r| r.trim().to_owned()).collect();
        t.allowed_ip_ranges = serde_json::to_string(&ranges).map_err(AppError::internal)?;
    }
    if let Some(only) = settings.trusted_documents_only {
        t.trusted_documents_only = only;
    }
    t.updated_at = db_time(app.clock.now());
    write(
        app,
        origin,
        "tenant.settings_changed",
        &original,
        &t,
        Severity::Info,
    )
    .await?;
    // Cached principals carry the tenant's ranges: drop them here at once (other
    // processes hear it from the database trigger).
    app.rights_changed(t.id);
    Ok(t)
}

/// Platform repair: makes a user of a tenant an active OWNER again (for a tenant left
/// without a usable owner). Recorded in that tenant's trail (CRITICAL).
pub async fn restore_owner(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    user: UserId,
) -> AppResult<UserRow> {
    let t = get(app, tenant).await?;
    let mut user = store::find_user(&app.db, t.id, user)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    let now = db_time(app.clock.now());
    let mut origin = origin.clone();
    origin.tenant_id = t.id;
    let audit = Entry::change(
        &origin,
        "user.owner_restored",
        "user",
        user.id,
        Some(serde_json::json!({
            "role": { "before": user.role, "after": BuiltinRole::Owner.as_str() },
            "status": { "before": user.status, "after": UserStatus::Active.as_str() },
        })),
        now,
    )
    .severity(Severity::Critical);
    app.db
        .tx(t.id, async |conn| {
            crate::audit::append(conn, &audit).await?;
            store::restore_owner(conn, t.id, user.id, now).await
        })
        .await?;
    app.rights_changed(t.id);
    user.role = BuiltinRole::Owner.as_str().into();
    user.status = UserStatus::Active;
    user.updated_at = now;
    Ok(user)
}

/// Writes a tenant change and its record, in the tenant's own chain (a platform admin
/// acting on a tenant shows up in the tenant's trail). Only the columns this change
/// made different from `original` are written, so concurrent changes of other columns
/// (a suspension while the owner edits settings) are never overwritten with stale values.
async fn write(
    app: &App,
    origin: &Origin,
    action: &str,
    original: &TenantRow,
    t: &TenantRow,
    severity: Severity,
) -> AppResult<()> {
    let before = &tenant_view(original);
    let mut origin = origin.clone();
    origin.tenant_id = t.id;
    let audit = Entry::change(
        &origin,
        action,
        "tenant",
        t.id,
        Some(crate::audit::diff(before, &tenant_view(t))),
        t.updated_at,
    )
    .severity(severity);
    app.db
        .tx("", async |conn| {
            store::update_changed(conn, original, t).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await
}
