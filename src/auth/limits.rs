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
            Budget::QueryCost => "GraphQL query cost in your organization",
        };
        crate::metrics::rate_limited(self.budget.name());
        AppError::new(
            ErrorCode::RateLimited,
            format!(
                "too many {whose}: at most {} a minute (bursts of {}); try again in {secs} s",
                self.quota.per_minute, self.quota.burst
            ),
        )
        .with_detail("retryAfterSeconds", secs)
        .with_detail("limit", self.budget.name())
    }
}

/// Counts one request: the caller's own budget, then its tenant's. Anonymous callers
/// are counted per client address.
pub async fn check_request(
    app: &App,
    principal: Option<&Principal>,
    client_ip: std::net::IpAddr,
) -> Result<Headroom, Refusal> {
    let limiter = &app.rate_limiter;
    let own = limiter.quota();
    let own_key = match principal {
        Some(p) => format!("p:{}:{}", p.tenant_id, p.actor_ref()),
        None => format!("ip:{client_ip}"),
    };
    let mine = limiter
        .take(&own_key, own, 1)
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
                .take(&format!("t:{}", p.tenant_id), quota, 1)
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

/// Counts one expensive operation of the caller's tenant: `RATE_LIMITED` when its
/// `expensiveOperationsPerMinute` is spent.
pub async fn check_expensive(app: &App, principal: &Principal) -> Result<(), AppError> {
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

/// The tenant's GraphQL query-cost budget.
pub fn cost_quota(principal: &Principal) -> Quota {
    Quota::budget(principal.limits.query_cost_per_minute)
}

/// Charges `cost` to the caller's tenant's query-cost budget.
pub async fn charge_cost(app: &App, principal: &Principal, cost: u64) -> Result<Allowed, AppError> {
    let quota = cost_quota(principal);
    if quota.is_limited() && cost > quota.burst {
        crate::metrics::rate_limited(Budget::QueryCost.name());
        return Err(AppError::new(
            ErrorCode::RateLimited,
            format!(
                "this operation's cost ({cost}) is more than your organization's whole \
                 query-cost budget ({} a minute): ask for fewer items (smaller `first`) \
                 or fewer fields",
                quota.per_minute
            ),
        )
        .with_detail("limit", Budget::QueryCost.name())
        .with_detail("reason", "COST_OVER_BUDGET"));
    }
    app.rate_limiter
        .take(&format!("c:{}", principal.tenant_id), quota, cost)
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

/// Gives `unused` cost back to the caller's tenant's budget; returns what is left.
pub async fn refund_cost(app: &App, principal: &Principal, unused: u64) -> Allowed {
    app.rate_limiter
        .give_back(
            &format!("c:{}", principal.tenant_id),
            cost_quota(principal),
            unused,
        )
        .await
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
