//! Rate limits by who calls: each principal has its own request budget
//! (`AGENTPLANE_RATE_LIMIT_PER_MINUTE`, burst `AGENTPLANE_RATE_LIMIT_BURST`), each tenant
//! a budget shared by all its principals (its plan's `requestsPerMinute`, overridable by
//! platform admins), and expensive operations (starting executions, audit exports,
//! compliance reports) a budget per tenant (`expensiveOperationsPerMinute`). Callers
//! without credentials are limited per client address. A refusal is `RATE_LIMITED` with
//! `extensions.retryAfterSeconds` and `extensions.limit` naming the budget; HTTP answers
//! it with 429, `Retry-After` and the `RateLimit-*` headers.

use std::time::Duration;

use crate::app::App;
use crate::error::{AppError, ErrorCode};
use crate::ratelimit::{Allowed, Limited, Quota};

use super::Principal;

/// Which budget refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The caller's own requests.
    Principal,
    /// All requests of the caller's tenant.
    Tenant,
    /// The tenant's expensive operations.
    ExpensiveOperations,
    /// The caller's own expensive operations.
    ExpensiveOperationsPerPrincipal,
    /// The tenant's GraphQL query cost.
    QueryCost,
}

impl Budget {
    /// The name clients see in `extensions.limit` and metrics see as a label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Principal => "requests_per_principal",
            Self::Tenant => "requests_per_tenant",
            Self::ExpensiveOperations => "expensive_operations_per_tenant",
            Self::ExpensiveOperationsPerPrincipal => "expensive_operations_per_principal",
            Self::QueryCost => "query_cost_per_tenant",
        }
    }
}

/// What the request's budgets leave, for the `RateLimit-*` headers: the tightest one,
/// and every policy that applied.
#[derive(Debug, Clone)]
pub struct Headroom {
    /// The tightest budget's size (`RateLimit-Limit`).
    pub limit: u64,
    /// What it has left (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Until it is full again (`RateLimit-Reset`).
    pub reset: Duration,
    /// The policies that applied (`RateLimit-Policy`).
    pub policies: Vec<Quota>,
}

/// A refused request.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Which budget.
    pub budget: Budget,
    /// Its quota.
    pub quota: Quota,
    /// When to try again.
    pub limited: Limited,
}

impl Refusal {
    /// The `RATE_LIMITED` error clients see.
    pub fn error(&self) -> AppError {
        let secs = self.limited.retry_after_secs();
        let whose = match self.budget {
            Budget::Principal => "requests from this caller",
            Budget::Tenant => "requests from your organization",
            Budget::ExpensiveOperations => {
                "expensive operations (starting executions, exports, reports) in your \
                 organization"
            }
            Budget::ExpensiveOperationsPerPrincipal => {
                "expensive operations (starting executions, exports, reports) by this caller"
            }
            Budget::QueryCost => {
                "GraphQL query cost spent (by your organization, or by your address when \
                 signed out)"
            }
        };
        crate::metrics::rate_limited(self.budget.name());
        let message = match self.budget {
            Budget::QueryCost => format!(
                "too much {whose}: at most {} a minute; try again in {secs} s, or ask for \
                 fewer items and fields",
                self.quota.per_minute
            ),
            _ => format!(
                "too many {whose}: at most {} a minute (bursts of {}); try again in {secs} s",
                self.quota.per_minute, self.quota.burst
            ),
        };
        AppError::new(ErrorCode::RateLimited, message)
            .with_detail("retryAfterSeconds", secs)
            .with_detail("limit", self.budget.name())
    }
}

/// Counts `operations` requests (a batch counts each of its operations): the caller's
/// own budget, then its tenant's. Anonymous callers are counted per client address.
pub async fn check_request(
    app: &App,
    principal: Option<&Principal>,
    client_ip: std::net::IpAddr,
    operations: u64,
) -> Result<Headroom, Refusal> {
    let limiter = &app.rate_limiter;
    let own = limiter.quota();
    let own_key = match principal {
        Some(p) => format!("p:{}:{}", p.tenant_id, p.actor_ref()),
        None => format!("ip:{client_ip}"),
    };
    let units = operations.max(1);
    let mine = limiter
        .take(&own_key, own, units)
        .await
        .map_err(|limited| Refusal {
            budget: Budget::Principal,
            quota: own,
            limited,
        })?;
    let mut headroom = Headroom::from(own, mine);
    if let Some(p) = principal {
        let quota = Quota::per_minute(p.limits.requests_per_minute);
        if quota.is_limited() {
            let theirs = limiter
                .take(&format!("t:{}", p.tenant_id), quota, units)
                .await
                .map_err(|limited| Refusal {
                    budget: Budget::Tenant,
                    quota,
                    limited,
                })?;
            headroom.add(quota, theirs);
        }
    }
    Ok(headroom)
}

/// Counts one expensive operation of the caller and of its tenant: `RATE_LIMITED` when
/// the caller's own (`AGENTPLANE_EXPENSIVE_OPERATIONS_PER_MINUTE`, so one runaway key
/// cannot spend its whole tenant's budget) or the tenant's
/// `expensiveOperationsPerMinute` is spent.
pub async fn check_expensive(app: &App, principal: &Principal) -> Result<(), AppError> {
    let own = Quota::per_minute(u64::from(app.config.http.expensive_operations_per_minute));
    app.rate_limiter
        .take(
            &format!("xp:{}:{}", principal.tenant_id, principal.actor_ref()),
            own,
            1,
        )
        .await
        .map_err(|limited| {
            Refusal {
                budget: Budget::ExpensiveOperationsPerPrincipal,
                quota: own,
                limited,
            }
            .error()
        })?;
    let quota = Quota::per_minute(principal.limits.expensive_operations_per_minute);
    app.rate_limiter
        .take(&format!("x:{}", principal.tenant_id), quota, 1)
        .await
        .map(|_| ())
        .map_err(|limited| {
            Refusal {
                budget: Budget::ExpensiveOperations,
                quota,
                limited,
            }
            .error()
        })
}

/// Whose query-cost budget an operation spends: the caller's tenant's, or for callers
/// without credentials their address's (`AGENTPLANE_ANONYMOUS_QUERY_COST_PER_MINUTE`).
#[derive(Debug, Clone)]
pub struct CostPayer {
    key: String,
    /// The budget.
    pub quota: Quota,
}

/// The payer of an operation by `principal` (or, without one, from `client_ip`); `None`
/// when no budget applies.
pub fn cost_payer(
    app: &App,
    principal: Option<&Principal>,
    client_ip: Option<std::net::IpAddr>,
) -> Option<CostPayer> {
    let payer = match (principal, client_ip) {
        (Some(p), _) => CostPayer {
            key: format!("c:{}", p.tenant_id),
            quota: Quota::budget(p.limits.query_cost_per_minute),
        },
        (None, Some(ip)) => CostPayer {
            key: format!("ca:{ip}"),
            quota: Quota::budget(app.config.graphql.anonymous_query_cost_per_minute),
        },
        (None, None) => return None,
    };
    payer.quota.is_limited().then_some(payer)
}

/// Charges an operation's requested `cost` before it runs.
pub async fn charge_cost(app: &App, payer: &CostPayer, cost: u64) -> Result<Allowed, AppError> {
    let quota = payer.quota;
    if cost > quota.burst {
        // Never fits, however long the caller waits: an input problem, not a rate.
        return Err(AppError::bad_input(
            "query",
            format!(
                "this operation's cost ({cost}) is more than the whole query-cost budget \
                 ({} a minute): ask for fewer items (smaller `first`) or fewer fields",
                quota.per_minute
            ),
        )
        .with_detail("reason", "COST_OVER_BUDGET")
        .with_detail("limit", Budget::QueryCost.name()));
    }
    app.rate_limiter
        .take(&payer.key, quota, cost)
        .await
        .map_err(|limited| {
            Refusal {
                budget: Budget::QueryCost,
                quota,
                limited,
            }
            .error()
        })
}

/// Settles an operation that was charged `charged` and whose result cost `actual`:
/// gives back what it did not use, or takes the overrun (a list longer than its static
/// cost assumed) whether or not it fits. Returns what is left.
pub async fn settle_cost(app: &App, payer: &CostPayer, charged: u64, actual: u64) -> Allowed {
    if actual < charged {
        app.rate_limiter
            .give_back(&payer.key, payer.quota, charged - actual)
            .await
    } else {
        app.rate_limiter
            .take_anyway(&payer.key, payer.quota, actual - charged)
            .await
    }
}

impl Headroom {
    fn from(quota: Quota, allowed: Allowed) -> Self {
        let mut h = Self {
            limit: u64::MAX,
            remaining: u64::MAX,
            reset: Duration::ZERO,
            policies: Vec::new(),
        };
        h.add(quota, allowed);
        h
    }

    fn add(&mut self, quota: Quota, allowed: Allowed) {
        if !quota.is_limited() {
            return;
        }
        self.policies.push(quota);
        if allowed.remaining < self.remaining {
            self.limit = quota.burst;
            self.remaining = allowed.remaining;
            self.reset = allowed.reset;
        }
    }
}
