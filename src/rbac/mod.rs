//! Roles and permissions: the one place the permission matrix lives. The guards every
//! GraphQL field declares (`graphql::guards`) check a principal's set against it.

macro_rules! permissions {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// A `resource.action` permission.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Permission {
            $(#[doc = $doc] $variant,)*
        }

        impl Permission {
            /// Every permission, in matrix order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            /// The `resource.action` name.
            pub const fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }

            /// Parses a `resource.action` name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Permission::$variant),)* _ => None }
            }
        }
    };
}

permissions! {
    TenantRead => "tenant.read", "Read the tenant, its settings, quotas and usage.";
    TenantUpdate => "tenant.update", "Change tenant settings.";
    UsersRead => "users.read", "List and read users.";
    UsersManage => "users.manage", "Create, invite, disable users and change their roles.";
    TeamsRead => "teams.read", "List and read teams.";
    TeamsManage => "teams.manage", "Create, change and delete teams and memberships.";
    RolesManage => "roles.manage", "Create, change and delete custom roles.";
    ApikeysManage => "apikeys.manage", "Create, list and revoke API keys.";
    SecretsManage => "secrets.manage", "Set and delete tenant secrets.";
    WorkflowsRead => "workflows.read", "Read workflows and versions.";
    WorkflowsCreate => "workflows.create", "Create workflows.";
    WorkflowsUpdate => "workflows.update", "Edit workflow drafts.";
    WorkflowsDelete => "workflows.delete", "Delete workflows.";
    WorkflowsPublish => "workflows.publish", "Publish immutable workflow versions.";
    WorkflowsExecute => "workflows.execute", "Start and retry executions.";
    ExecutionsRead => "executions.read", "Read executions and subscribe to their events.";
    ExecutionsCancel => "executions.cancel", "Cancel executions.";
    SchedulesManage => "schedules.manage", "Create, pause, resume and delete schedules.";
    AuditRead => "audit.read", "Query the audit trail.";
    AuditExport => "audit.export", "Export the audit trail and compliance reports.";
    ClusterRead => "cluster.read", "Read the cluster summary and own allocations.";
    ClusterManage => "cluster.manage", "Drain nodes and reserve GPU memory (platform).";
    PlatformTenants => "platform.tenants", "Create, suspend and re-plan tenants (platform).";
}

/// A set of permissions: one bit per [`Permission`], so it is `Copy`, needs no
/// allocation and answers `contains` with one instruction. A principal carries one,
/// and a websocket keeps two for its life (the rights it was accepted with and the
/// principal of each operation): as a `BTreeSet` each was four allocations (~400 bytes a
/// socket, heaptrack) and every field guard walked a tree. Iterates in matrix order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(u32);

const _: () = assert!(
    Permission::ALL.len() <= 32,
    "PermissionSet holds 32 permissions"
);

impl PermissionSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self(0)
    }

    const fn bit(p: Permission) -> u32 {
        1 << (p as u32)
    }

    /// Whether `p` is in the set.
    pub const fn contains(&self, p: &Permission) -> bool {
        self.0 & Self::bit(*p) != 0
    }

    /// Adds `p`; `false` when it was already there.
    pub fn insert(&mut self, p: Permission) -> bool {
        let had = self.contains(&p);
        self.0 |= Self::bit(p);
        !had
    }

    /// Whether every permission of `self` is in `other`.
    pub const fn is_subset(&self, other: &Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// The permissions in both sets.
    #[must_use]
    pub const fn intersection(&self, other: &Self) -> Self {
        Self(self.0 & other.0)
    }

    /// How many permissions it holds.
    pub const fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether it holds none.
    pub const fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The permissions, in matrix order.
    pub fn iter(&self) -> impl Iterator<Item = Permission> + '_ {
        let bits = self.0;
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| bits & Self::bit(*p) != 0)
    }
}

impl std::fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = Self::new();
        set.extend(iter);
        set
    }
}

impl Extend<Permission> for PermissionSet {
    fn extend<I: IntoIterator<Item = Permission>>(&mut self, iter: I) {
        for p in iter {
            self.insert(p);
        }
    }
}

impl<const N: usize> From<[Permission; N]> for PermissionSet {
    fn from(ps: [Permission; N]) -> Self {
        ps.into_iter().collect()
    }
}

/// Built-in roles. Tenant roles apply inside one tenant; `PlatformAdmin` exists only in the
/// reserved system tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinRole {
    /// Everything in the tenant.
    Owner,
    /// Everything except changing tenant settings.
    Admin,
    /// Builds and runs workflows.
    Developer,
    /// Runs and watches workflows.
    Operator,
    /// Reads everything, including the audit trail.
    Analyst,
    /// Reads workflows and executions.
    Viewer,
    /// Platform operator: manages tenants and the cluster.
    PlatformAdmin,
}

impl BuiltinRole {
    /// Tenant roles (not `PlatformAdmin`).
    pub const TENANT_ROLES: &'static [BuiltinRole] = &[
        Self::Owner,
        Self::Admin,
        Self::Developer,
        Self::Operator,
        Self::Analyst,
        Self::Viewer,
    ];

    /// Stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "OWNER",
            Self::Admin => "ADMIN",
            Self::Developer => "DEVELOPER",
            Self::Operator => "OPERATOR",
            Self::Analyst => "ANALYST",
            Self::Viewer => "VIEWER",
            Self::PlatformAdmin => "PLATFORM_ADMIN",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Owner,
            Self::Admin,
            Self::Developer,
            Self::Operator,
            Self::Analyst,
            Self::Viewer,
            Self::PlatformAdmin,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// The permission matrix: what each built-in role may do.
    pub fn permissions(self) -> PermissionSet {
        use Permission as P;
        let tenant_all = Permission::ALL
            .iter()
            .copied()
            .filter(|p| !matches!(p, P::ClusterManage | P::PlatformTenants));
        match self {
            Self::Owner => tenant_all.collect(),
            Self::Admin => tenant_all.filter(|p| *p != P::TenantUpdate).collect(),
            Self::Developer => [
                P::TenantRead,
                P::UsersRead,
                P::TeamsRead,
                P::SecretsManage,
                P::WorkflowsRead,
                P::WorkflowsCreate,
                P::WorkflowsUpdate,
                P::WorkflowsDelete,
                P::WorkflowsPublish,
                P::WorkflowsExecute,
                P::ExecutionsRead,
                P::ExecutionsCancel,
                P::SchedulesManage,
                P::ClusterRead,
            ]
            .into(),
            Self::Operator => [
                P::TenantRead,
                P::UsersRead,
                P::TeamsRead,
                P::WorkflowsRead,
                P::WorkflowsExecute,
                P::ExecutionsRead,
                P::ExecutionsCancel,
                P::SchedulesManage,
                P::ClusterRead,
            ]
            .into(),
            Self::Analyst => [
                P::TenantRead,
                P::UsersRead,
                P::TeamsRead,
                P::WorkflowsRead,
                P::ExecutionsRead,
                P::AuditRead,
                P::AuditExport,
                P::ClusterRead,
            ]
            .into(),
            Self::Viewer => [
                P::TenantRead,
                P::TeamsRead,
                P::WorkflowsRead,
                P::ExecutionsRead,
            ]
            .into(),
            Self::PlatformAdmin => [
                P::TenantRead,
                P::TenantUpdate,
                P::UsersRead,
                P::UsersManage,
                P::ApikeysManage,
                P::AuditRead,
                P::AuditExport,
                P::ClusterRead,
                P::ClusterManage,
                P::PlatformTenants,
            ]
            .into(),
        }
    }
}

/// Parses a stored permission list (JSON array of names); unknown names are dropped.
pub fn parse_permission_list(json: &str) -> PermissionSet {
    serde_json::from_str::<Vec<String>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Permission::parse(s))
        .collect()
}

/// Root fields that need no principal. Everything else must carry a guard; the
/// guard-completeness test proves it by calling every other field without permissions.
pub const PUBLIC_FIELDS: &[&str] = &[
    "serverInfo",
    "heartbeat",
    "login",
    "refreshSession",
    "setPassword",
    "verifyMfa",
    "requestPasswordReset",
    "confirmEmailChange",
];

/// Root fields any signed-in principal may call (they act on the caller's own identity, or
/// check visibility per object, like `node`).
pub const SELF_FIELDS: &[&str] = &[
    "me",
    "node",
    "nodes",
    "logout",
    "changePassword",
    "sessions",
    "revokeSession",
    "enrollTotp",
    "confirmTotp",
    "disableTotp",
    "regenerateRecoveryCodes",
    "updateUser",
    "requestEmailChange",
];

/// The only fields a principal signed in without the second factor its tenant requires
/// may call (`requireMfa`): turn the factor on, read itself, sign out.
pub const ENROLMENT_FIELDS: &[&str] = &["me", "logout", "enrollTotp", "confirmTotp"];

/// The permission matrix as a Markdown table (printed in README).
pub fn matrix_markdown() -> String {
    let roles = [
        BuiltinRole::Owner,
        BuiltinRole::Admin,
        BuiltinRole::Developer,
        BuiltinRole::Operator,
        BuiltinRole::Analyst,
        BuiltinRole::Viewer,
        BuiltinRole::PlatformAdmin,
    ];
    let mut out = String::from("| permission |");
    for r in roles {
        out.push_str(&format!(" {} |", r.as_str()));
    }
    out.push_str("\n|---|");
    for _ in roles {
        out.push_str(":-:|");
    }
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!("| `{}` |", p.as_str()));
        for r in roles {
            out.push_str(if r.permissions().contains(p) {
                " ✓ |"
            } else {
                "   |"
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_sets_behave_as_sets_in_matrix_order() {
        let mut s = PermissionSet::new();
        assert!(s.is_empty());
        assert!(s.insert(Permission::WorkflowsRead));
        assert!(s.insert(Permission::TenantRead));
        assert!(!s.insert(Permission::WorkflowsRead), "already there");
        assert_eq!(s.len(), 2);
        assert!(s.contains(&Permission::TenantRead));
        assert!(!s.contains(&Permission::PlatformTenants));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Permission::TenantRead, Permission::WorkflowsRead]
        );
        let all: PermissionSet = Permission::ALL.iter().copied().collect();
        assert_eq!(all.len(), Permission::ALL.len());
        assert_eq!(all.iter().collect::<Vec<_>>(), Permission::ALL);
        assert!(s.is_subset(&all) && !all.is_subset(&s));
        assert!(PermissionSet::new().is_subset(&s));
        assert_eq!(s.intersection(&all), s);
        assert_eq!(
            s.intersection(&PermissionSet::from([
                Permission::TenantRead,
                Permission::AuditRead
            ])),
            PermissionSet::from([Permission::TenantRead])
        );
        // Each built-in role's row is a subset of the owner's, except the platform's.
        for r in BuiltinRole::TENANT_ROLES {
            assert!(r.permissions().is_subset(&BuiltinRole::Owner.permissions()));
        }
        assert!(
            !BuiltinRole::PlatformAdmin
                .permissions()
                .is_subset(&BuiltinRole::Owner.permissions())
        );
        assert_eq!(
            format!("{:?}", PermissionSet::from([Permission::AuditRead])),
            "{AuditRead}"
        );
    }
}
