//! The catalogue of feature flags: what each one gates, and which a plan turns on. A
//! tenant's `feature_flags` column holds its enabled set (the plan's defaults at creation
//! and on every plan change, unless a platform admin gives the set explicitly). Code that
//! uses a feature calls [`require`]; a refusal is `FORBIDDEN` with reason
//! `FEATURE_DISABLED` and the flag's name in `extensions.flag`.

use super::model::{Plan, TenantRow};
use crate::error::{AppError, AppResult};

/// A gated feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// Workflow steps of kind `llm` (publishing and starting workflows with them).
    LlmSteps,
    /// Steps that reserve GPUs (`resources.gpuCount` or `resources.gpuMemoryMb`).
    GpuSteps,
    /// Cron schedules (`createSchedule`, `resumeSchedule`, and schedules firing).
    Schedules,
    /// Exporting the audit trail (`GET /audit/export`) and compliance reports.
    AuditExport,
    /// Single sign-on through the tenant's OpenID Connect identity provider.
    Sso,
}

impl Feature {
    /// Every flag, in catalogue order.
    pub const ALL: [Self; 5] = [
        Self::LlmSteps,
        Self::GpuSteps,
        Self::Schedules,
        Self::AuditExport,
        Self::Sso,
    ];

    /// The flag's name, as stored and as clients write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::LlmSteps => "llm_steps",
            Self::GpuSteps => "gpu_steps",
            Self::Schedules => "schedules",
            Self::AuditExport => "audit_export",
            Self::Sso => "sso",
        }
    }

    /// What it gates.
    pub fn description(self) -> &'static str {
        match self {
            Self::LlmSteps => "workflow steps of kind llm (publishing and starting them)",
            Self::GpuSteps => "steps that reserve GPUs (resources.gpuCount / gpuMemoryMb)",
            Self::Schedules => "cron schedules (creating, resuming and firing them)",
            Self::AuditExport => "audit export (GET /audit/export) and compliance reports",
            Self::Sso => "single sign-on through the tenant's OpenID Connect provider",
        }
    }

    /// The flag named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name.trim())
    }

    /// Whether `plan` turns it on by default.
    pub fn in_plan(self, plan: Plan) -> bool {
        match plan {
            Plan::Free => matches!(self, Self::LlmSteps | Self::Schedules),
            Plan::Pro | Plan::Enterprise | Plan::Custom => true,
        }
    }
}

/// The flags `plan` turns on, by name, sorted.
pub fn plan_defaults(plan: Plan) -> Vec<String> {
    let mut v: Vec<String> = Feature::ALL
        .into_iter()
        .filter(|f| f.in_plan(plan))
        .map(|f| f.name().to_owned())
        .collect();
    v.sort();
    v
}

/// Checks a set of flag names a platform admin gives: each must be in the catalogue.
/// Returns the set sorted and without repeats.
pub fn validate(names: &[String]) -> AppResult<Vec<String>> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        match Feature::parse(n) {
            Some(f) => out.push(f.name().to_owned()),
            None => {
                let known: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                return Err(AppError::bad_input(
                    "featureFlags",
                    format!("{n:?} is not a feature flag; known: {}", known.join(", ")),
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether `tenant` has `feature` on.
pub fn enabled(tenant: &TenantRow, feature: Feature) -> bool {
    serde_json::from_str::<Vec<String>>(&tenant.feature_flags)
        .is_ok_and(|flags| flags.iter().any(|f| f == feature.name()))
}

/// `FORBIDDEN` (reason `FEATURE_DISABLED`, `extensions.flag`) unless `tenant` has
/// `feature` on.
pub fn require(tenant: &TenantRow, feature: Feature) -> AppResult<()> {
    if enabled(tenant, feature) {
        return Ok(());
    }
    Err(AppError::forbidden(format!(
        "{} are not enabled for this organization (feature flag {}): ask your platform \
         administrator to enable it or change the plan",
        feature.description(),
        feature.name()
    ))
    .with_detail("reason", "FEATURE_DISABLED")
    .with_detail("flag", feature.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_plans_differ() {
        for f in Feature::ALL {
            assert_eq!(Feature::parse(f.name()), Some(f));
        }
        assert_eq!(plan_defaults(Plan::Free), ["llm_steps", "schedules"]);
        assert_eq!(plan_defaults(Plan::Pro).len(), Feature::ALL.len());
        assert!(validate(&["gpu".into()]).is_err());
        assert_eq!(
            validate(&["schedules".into(), " llm_steps".into(), "schedules".into()])
                .unwrap_or_default(),
            ["llm_steps", "schedules"]
        );
    }
}
