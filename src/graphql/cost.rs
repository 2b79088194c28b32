//! Query cost: what an operation may cost (its requested cost, the complexity
//! async-graphql computes when it validates it: one per field, connections times the
//! page they ask for) and what it did cost (its actual cost: the fields its result
//! holds). Each tenant has a budget a minute (`queryCostPerMinute`, by plan), and each
//! client address without credentials one too
//! (`AGENTPLANE_ANONYMOUS_QUERY_COST_PER_MINUTE`): an operation is charged its requested
//! cost before it runs (over budget: `RATE_LIMITED`, `extensions.limit:
//! query_cost_per_tenant`), and settled after: what it did not use is given back, what
//! it used beyond (lists longer than the static cost assumed, introspection) is taken,
//! as a debt if need be. Every query and mutation response carries
//! `extensions.cost { requestedQueryCost actualQueryCost budget { perMinute remaining } }`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_graphql::extensions::ExtensionContext;
use async_graphql::{Name, Response, ServerError, ValidationResult, Value};

use crate::app::App;
use crate::auth::Principal;
use crate::auth::limits::{CostPayer, cost_payer};
use crate::request::ClientInfo;

/// One operation's cost: charged when it is validated, settled when it has run (the
/// schema's one extension, `extensions::Hooks`, calls both).
#[derive(Default)]
pub(super) struct Cost {
    requested: AtomicU64,
    /// Whether `requested` was charged to a budget.
    charged: AtomicBool,
    /// What the budget had left right after the charge.
    remaining: AtomicU64,
}

fn payer(ctx: &ExtensionContext<'_>) -> Option<(Arc<App>, CostPayer)> {
    let app = ctx.data_opt::<Arc<App>>()?;
    let payer = cost_payer(
        app,
        ctx.data_opt::<Principal>(),
        ctx.data_opt::<ClientInfo>().map(|c| c.ip),
    )?;
    Some((app.clone(), payer))
}

/// Fields in a result: every entry of every object, lists summed.
fn fields(v: &Value) -> u64 {
    match v {
        Value::Object(o) => o.values().map(|v| 1 + fields(v)).sum(),
        Value::List(l) => l.iter().map(fields).sum(),
        _ => 0,
    }
}

impl Cost {
    /// Charges the validated operation's complexity to its payer's budget.
    pub(super) async fn charge(
        &self,
        ctx: &ExtensionContext<'_>,
        result: &ValidationResult,
    ) -> Result<(), Vec<ServerError>> {
        let requested = u64::try_from(result.complexity).unwrap_or(u64::MAX);
        self.requested.store(requested, Ordering::Relaxed);
        if let Some((app, payer)) = payer(ctx) {
            match crate::auth::limits::charge_cost(&app, &payer, requested).await {
                Ok(left) => {
                    self.remaining.store(left.remaining, Ordering::Relaxed);
                    self.charged.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(vec![crate::graphql::errors::unplaced(e)]),
            }
        }
        Ok(())
    }

    /// Settles the charge against what the operation's result holds, and reports both
    /// in `extensions.cost`.
    pub(super) async fn settle(&self, ctx: &ExtensionContext<'_>, resp: &mut Response) {
        let requested = self.requested.load(Ordering::Relaxed);
        let actual = fields(&resp.data);
        let mut budget = Value::Null;
        if self.charged.load(Ordering::Relaxed)
            && let Some((app, payer)) = payer(ctx)
        {
            // Nothing to settle when the result cost what was charged: no call to the
            // limiter, which may be Redis.
            if actual != requested {
                crate::auth::limits::settle_cost(&app, &payer, requested, actual).await;
            }
            // What was left at the charge, settled: not what the bucket holds now, which
            // has refilled for as long as the operation ran (a clock anyone could read).
            let at_charge = self.remaining.load(Ordering::Relaxed);
            let remaining = if actual < requested {
                at_charge
                    .saturating_add(requested - actual)
                    .min(payer.quota.burst)
            } else {
                at_charge.saturating_sub(actual - requested)
            };
            budget = Value::from_json(serde_json::json!({
                "perMinute": payer.quota.per_minute,
                "remaining": remaining,
            }))
            .unwrap_or(Value::Null);
        }
        let cost = Value::from_json(serde_json::json!({
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
        }));
        if let Ok(Value::Object(mut cost)) = cost {
            cost.insert(Name::new("budget"), budget);
            resp.extensions.insert("cost".into(), Value::Object(cost));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actual_cost_counts_the_fields_of_the_result() {
        let v = Value::from_json(serde_json::json!({
            "users": { "totalCount": 2, "edges": [ { "node": { "id": "a" } }, { "node": { "id": "b" } } ] }
        }))
        .expect("value");
        // users, totalCount, edges, 2 × (node, id)
        assert_eq!(fields(&v), 7);
        assert_eq!(fields(&Value::Null), 0);
    }
}
