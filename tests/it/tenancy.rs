//! Tenancy API: plans and quotas, settings, users, custom roles, teams, sessions, demo data.

use serde_json::json;

use crate::helpers::{OWNER_PASSWORD, TestApp, first_error_code, user_with_role};

const CREATE_USER: &str =
    "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } setPasswordToken } }";

#[tokio::test(flavor = "multi_thread")]
async fn plans_quotas_flags_and_settings() {
    let app = TestApp::spawn().await;
    let (tenant_id, owner) = app.tenant_with_owner("acme").await;
    let admin = app.admin_token().await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { plan quotas { maxUsers maxWorkflows } featureFlags } } }",
            json!({ "i": { "tenantId": tenant_id, "plan": "ENTERPRISE", "quotas": { "maxUsers": 2 }, "featureFlags": ["schedules", "llm_steps", "schedules"] } }),
        )
        .await;
    let t = &out["data"]["updateTenantPlan"]["tenant"];
    assert_eq!(t["plan"], "ENTERPRISE", "{out}");
    assert_eq!(t["quotas"]["maxUsers"], 2);
    assert_eq!(t["quotas"]["maxWorkflows"], 5000);
    assert_eq!(t["featureFlags"], json!(["llm_steps", "schedules"]));

    // The owner counts as one user: one more fits, the next is over quota.
    user_with_role(&app, &owner, "dev@acme.example", json!("DEVELOPER")).await;
    let over = app
        .gql_as(
            &owner,
            CREATE_USER,
            json!({ "i": { "email": "x@acme.example", "displayName": "X", "roleId": "VIEWER" } }),
        )
        .await;
    assert_eq!(
        first_error_code(&over).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{over}"
    );
    let usage = app
        .gql_as(&owner, "{ tenant { usage { users maxUsers } } }", json!({}))
        .await;
    assert_eq!(
        usage["data"]["tenant"]["usage"],
        json!({ "users": 2, "maxUsers": 2 })
    );

    let settings = "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { settings { dataRetentionDays requireMfa allowedIpRanges } } } }";
    let bad = app
        .gql_as(
            &owner,
            settings,
            json!({ "i": { "allowedIpRanges": ["10.0.0.0/33"] } }),
        )
        .await;
    assert_eq!(first_error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
    assert_eq!(bad["errors"][0]["extensions"]["field"], "allowedIpRanges");
    let ok = app
        .gql_as(
            &owner,
            settings,
            json!({ "i": { "dataRetentionDays": 90, "requireMfa": false, "allowedIpRanges": ["10.0.0.0/8", "::1", "127.0.0.0/8"] } }),
        )
        .await;
    assert_eq!(
        ok["data"]["updateTenantSettings"]["tenant"]["settings"],
        json!({ "dataRetentionDays": 90, "requireMfa": false, "allowedIpRanges": ["10.0.0.0/8", "::1", "127.0.0.0/8"] })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_roles_grant_exactly_their_permissions() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let role = app
        .gql_as(
            &owner,
            "mutation { createRole(input: {name: \"auditor\", permissions: [\"users.read\", \"audit.read\"]}) { role { id name permissions } } }",
            json!({}),
        )
        .await;
    let role_id = role["data"]["createRole"]["role"]["id"].clone();
    assert_eq!(
        role["data"]["createRole"]["role"]["permissions"],
        json!(["users.read", "audit.read"])
    );
    let (_, auditor) = user_with_role(&app, &owner, "aud@acme.example", role_id.clone()).await;
    let me = app
        .gql_as(
            &auditor,
            "{ me { role { name builtIn } } users { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        me["data"]["me"]["role"],
        json!({ "name": "auditor", "builtIn": false }),
        "{me}"
    );
    assert_eq!(me["data"]["users"]["totalCount"], 2);
    let denied = app.gql_as(&auditor, "{ tenant { slug } }", json!({})).await;
    assert_eq!(first_error_code(&denied).as_deref(), Some("FORBIDDEN"));

    // Changing the role takes effect on the holder's next request.
    let upd = app
        .gql_as(
            &owner,
            "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { role { permissions } } }",
            json!({ "i": { "roleId": role_id, "permissions": ["tenant.read"] } }),
        )
        .await;
    assert_eq!(
        upd["data"]["updateRole"]["role"]["permissions"],
        json!(["tenant.read"])
    );
    let now = app.gql_as(&auditor, "{ tenant { slug } }", json!({})).await;
    assert_eq!(now["data"]["tenant"]["slug"], "acme");

    // A held role cannot be deleted; nor can a role grant what its creator lacks.
    let del = app
        .gql_as(
            &owner,
            "mutation($i: DeleteRoleInput!) { deleteRole(input: $i) { deletedRoleId } }",
            json!({ "i": { "roleId": role_id } }),
        )
        .await;
    assert_eq!(first_error_code(&del).as_deref(), Some("CONFLICT"));
    let escalate = app
        .gql_as(&owner, "mutation { createRole(input: {name: \"ops\", permissions: [\"cluster.manage\"]}) { role { id } } }", json!({}))
        .await;
    assert_eq!(first_error_code(&escalate).as_deref(), Some("FORBIDDEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn teams_and_memberships_stay_inside_the_tenant() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("other").await;
    let (dev_id, _) = user_with_role(&app, &owner, "dev@acme.example", json!("DEVELOPER")).await;
    let other_user =
        app.gql_as(&other, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();

    let team = app
        .gql_as(&owner, "mutation { createTeam(input: {name: \"ml\", description: \"models\"}) { team { id name } } }", json!({}))
        .await;
    let team_id = team["data"]["createTeam"]["team"]["id"].clone();
    let dup = app
        .gql_as(
            &owner,
            "mutation { createTeam(input: {name: \"ml\"}) { team { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(first_error_code(&dup).as_deref(), Some("CONFLICT"));

    let add = "mutation($i: AddTeamMemberInput!) { addTeamMember(input: $i) { team { members { user { email } role } } } }";
    let out = app
        .gql_as(
            &owner,
            add,
            json!({ "i": { "teamId": team_id, "userId": dev_id, "role": "LEAD" } }),
        )
        .await;
    assert_eq!(
        out["data"]["addTeamMember"]["team"]["members"],
        json!([{ "user": { "email": "dev@acme.example" }, "role": "LEAD" }])
    );
    // Another tenant's user cannot be added; another tenant cannot see or touch the team.
    let cross = app
        .gql_as(
            &owner,
            add,
            json!({ "i": { "teamId": team_id, "userId": other_user } }),
        )
        .await;
    assert_eq!(first_error_code(&cross).as_deref(), Some("NOT_FOUND"));
    for q in [
        "mutation($id: ID!) { updateTeam(input: {teamId: $id, name: \"x\"}) { team { id } } }",
        "mutation($id: ID!) { deleteTeam(input: {teamId: $id}) { deletedTeamId } }",
        "query($id: ID!) { node(id: $id) { id } }",
    ] {
        let out = app.gql_as(&other, q, json!({ "id": team_id })).await;
        assert_eq!(
            first_error_code(&out).as_deref(),
            Some("NOT_FOUND"),
            "{q}: {out}"
        );
    }
    let teams = app.gql_as(&other, "{ teams { id } }", json!({})).await;
    assert_eq!(teams["data"]["teams"], json!([]));

    let rm = app
        .gql_as(
            &owner,
            "mutation($t: ID!, $u: ID!) { removeTeamMember(input: {teamId: $t, userId: $u}) { team { members { role } } } }",
            json!({ "t": team_id, "u": dev_id }),
        )
        .await;
    assert_eq!(rm["data"]["removeTeamMember"]["team"]["members"], json!([]));
    let del = app
        .gql_as(
            &owner,
            "mutation($id: ID!) { deleteTeam(input: {teamId: $id}) { deletedTeamId } }",
            json!({ "id": team_id }),
        )
        .await;
    assert_eq!(del["data"]["deleteTeam"]["deletedTeamId"], team_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn change_password_signs_out_other_sessions() {
    let app = TestApp::spawn().await;
    let (_, first) = app.tenant_with_owner("acme").await;
    let (second, _) = app.login("owner@acme.example", OWNER_PASSWORD).await;
    let sessions = app
        .gql_as(&second, "{ sessions { id current revokedAt } }", json!({}))
        .await;
    assert_eq!(
        sessions["data"]["sessions"].as_array().map(Vec::len),
        Some(2)
    );

    let weak = app
        .gql_as(
            &second,
            "mutation { changePassword(input: {currentPassword: \"owner-password-for-tests\", newPassword: \"short\"}) { ok } }",
            json!({}),
        )
        .await;
    assert_eq!(first_error_code(&weak).as_deref(), Some("BAD_USER_INPUT"));
    let ok = app
        .gql_as(
            &second,
            "mutation { changePassword(input: {currentPassword: \"owner-password-for-tests\", newPassword: \"a-brand-new-password\"}) { ok } }",
            json!({}),
        )
        .await;
    assert_eq!(ok["data"]["changePassword"]["ok"], true, "{ok}");
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { id } }" }), Some(&first))
        .await;
    assert_eq!(status, 401, "the other session is signed out");
    let me = app.gql_as(&second, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "owner@acme.example");
    app.login("owner@acme.example", "a-brand-new-password")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_seed_has_one_user_per_role_and_a_team() {
    let app = TestApp::spawn().await;
    let agentplane::bootstrap::Demo::Created {
        accounts,
        workflow_id,
        api_key,
    } = agentplane::bootstrap::seed_demo(&app.state.app)
        .await
        .expect("seed")
    else {
        panic!("the first seed creates the demo");
    };
    assert_eq!(accounts.len(), 6);
    // The demo workflow is published, and the printed API key can see it.
    let wf = app
        .gql_as(
            &api_key,
            "query($id: ID!) { workflow(id: $id) { name latestVersion } }",
            json!({ "id": workflow_id }),
        )
        .await;
    assert_eq!(wf["data"]["workflow"]["latestVersion"], 1, "{wf}");
    for a in &accounts {
        let token = app.login(&a.email, &a.password).await.0;
        let me = app
            .gql_as(&token, "{ me { role { name } } }", json!({}))
            .await;
        assert_eq!(me["data"]["me"]["role"]["name"], a.role);
        if a.role == "OWNER" {
            let teams = app
                .gql_as(&token, "{ teams { name members { role } } }", json!({}))
                .await;
            assert_eq!(teams["data"]["teams"][0]["name"], "demo-team");
            assert_eq!(
                teams["data"]["teams"][0]["members"]
                    .as_array()
                    .map(Vec::len),
                Some(6)
            );
            // Seeded through the same services as the API: every account is on record.
            let log = app
                .gql_as(
                    &token,
                    "{ auditLog(first: 50, filter: { actionPrefix: \"user.created\" }) { totalCount } \
                       tenant: auditLog(filter: { actionPrefix: \"tenant.created\" }) { totalCount } \
                       verifyAuditChain { intact } }",
                    json!({}),
                )
                .await;
            assert_eq!(log["data"]["auditLog"]["totalCount"], 5, "{log}");
            assert_eq!(log["data"]["tenant"]["totalCount"], 1, "{log}");
            assert_eq!(log["data"]["verifyAuditChain"]["intact"], true, "{log}");
        }
    }
    match agentplane::bootstrap::seed_demo(&app.state.app)
        .await
        .expect("seed")
    {
        agentplane::bootstrap::Demo::Exists {
            workflow_id: Some(again),
        } => assert_eq!(again, workflow_id, "seeding twice is a no-op"),
        other => panic!("seeding twice is a no-op: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_users_revoking_sessions_and_reactivating_tenants() {
    let app = TestApp::spawn().await;
    let (tenant_id, owner) = app.tenant_with_owner("acme").await;
    let (dev_id, dev) = user_with_role(&app, &owner, "dev@acme.example", json!("DEVELOPER")).await;

    // The developer ends one of their own sessions by ID.
    let (dev2, _) = app.login("dev@acme.example", "user-password-123").await;
    let sessions = app
        .gql_as(&dev, "{ sessions { id current } }", json!({}))
        .await;
    let other = sessions["data"]["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["current"] == false)
        .expect("the second session")["id"]
        .clone();
    let out = app
        .gql_as(
            &dev,
            "mutation($id: ID!) { revokeSession(input: {sessionId: $id}) { ok } }",
            json!({ "id": other }),
        )
        .await;
    assert_eq!(out["data"]["revokeSession"]["ok"], true, "{out}");
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { id } }" }), Some(&dev2))
        .await;
    assert_eq!(status, 401);
    // Nobody revokes another user's session: it is simply not found.
    let owner_sessions = app.gql_as(&owner, "{ sessions { id } }", json!({})).await;
    let owner_session = owner_sessions["data"]["sessions"][0]["id"].clone();
    let out = app
        .gql_as(
            &dev,
            "mutation($id: ID!) { revokeSession(input: {sessionId: $id}) { ok } }",
            json!({ "id": owner_session }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("NOT_FOUND"));

    // Disabling a user ends their access at once and stops sign-in.
    let out = app
        .gql_as(
            &owner,
            "mutation($id: ID!) { disableUser(input: {userId: $id}) { user { status } } }",
            json!({ "id": dev_id }),
        )
        .await;
    assert_eq!(
        out["data"]["disableUser"]["user"]["status"], "DISABLED",
        "{out}"
    );
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { id } }" }), Some(&dev))
        .await;
    assert_eq!(status, 401);
    let login = app
        .gql(
            "mutation { login(input: {email: \"dev@acme.example\", password: \"user-password-123\"}) { accessToken } }",
            json!({}),
        )
        .await;
    assert_eq!(first_error_code(&login).as_deref(), Some("UNAUTHENTICATED"));

    // Display names: one's own, or anyone's with users.manage; a viewer cannot rename
    // others; bad names are refused.
    let rename =
        "mutation($i: UpdateUserInput!) { updateUser(input: $i) { user { displayName } } }";
    let out = app
        .gql_as(
            &owner,
            rename,
            json!({ "i": { "userId": dev_id, "displayName": "  Dev Two " } }),
        )
        .await;
    assert_eq!(
        out["data"]["updateUser"]["user"]["displayName"], "Dev Two",
        "{out}"
    );
    let bad = app
        .gql_as(
            &owner,
            rename,
            json!({ "i": { "userId": dev_id, "displayName": "  " } }),
        )
        .await;
    assert_eq!(
        first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT"),
        "{bad}"
    );

    // Enabling brings sign-in back; the session that ended with the disabling stays
    // ended. A viewer may not enable anyone.
    let (_, viewer) = user_with_role(&app, &owner, "viewer@acme.example", json!("VIEWER")).await;
    let denied = app
        .gql_as(
            &viewer,
            rename,
            json!({ "i": { "userId": dev_id, "displayName": "Mallory" } }),
        )
        .await;
    assert_eq!(
        first_error_code(&denied).as_deref(),
        Some("FORBIDDEN"),
        "{denied}"
    );
    let viewer_id =
        app.gql_as(&viewer, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();
    let own = app
        .gql_as(
            &viewer,
            rename,
            json!({ "i": { "userId": viewer_id, "displayName": "Vee" } }),
        )
        .await;
    assert_eq!(
        own["data"]["updateUser"]["user"]["displayName"], "Vee",
        "{own}"
    );
    let enable = "mutation($id: ID!) { enableUser(input: {userId: $id}) { user { status } } }";
    let denied = app.gql_as(&viewer, enable, json!({ "id": dev_id })).await;
    assert_eq!(
        first_error_code(&denied).as_deref(),
        Some("FORBIDDEN"),
        "{denied}"
    );
    let out = app.gql_as(&owner, enable, json!({ "id": dev_id })).await;
    assert_eq!(
        out["data"]["enableUser"]["user"]["status"], "ACTIVE",
        "{out}"
    );
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { id } }" }), Some(&dev))
        .await;
    assert_eq!(status, 401);
    let (back, _) = app.login("dev@acme.example", "user-password-123").await;
    let me = app.gql_as(&back, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "dev@acme.example", "{me}");

    // Suspension and reactivation.
    let admin = app.admin_token().await;
    let suspend = "mutation($id: ID!) { suspendTenant(input: {tenantId: $id, reason: \"audit\"}) { tenant { status } } }";
    app.gql_as(&admin, suspend, json!({ "id": tenant_id }))
        .await;
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { id } }" }), Some(&owner))
        .await;
    assert_eq!(status, 403);
    let out = app
        .gql_as(&admin, "mutation($id: ID!) { reactivateTenant(input: {tenantId: $id}) { tenant { status statusReason } } }", json!({ "id": tenant_id }))
        .await;
    assert_eq!(
        out["data"]["reactivateTenant"]["tenant"],
        json!({ "status": "ACTIVE", "statusReason": null })
    );
    let me = app.gql_as(&owner, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], "owner@acme.example");
    let list = app
        .gql_as(
            &admin,
            "{ tenants(first: 1) { totalCount pageInfo { hasNextPage } edges { node { slug } } } }",
            json!({}),
        )
        .await;
    assert_eq!(list["data"]["tenants"]["totalCount"], 2, "{list}");
    assert_eq!(list["data"]["tenants"]["pageInfo"]["hasNextPage"], true);
}

/// Changes of a tenant's different columns at the same moment do not overwrite each
/// other: a suspension during a stream of settings changes stays, and a tightened IP
/// list sent beside retention changes is kept.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_tenant_changes_keep_each_others_columns() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0")]).await;
    let (tenant_id, owner) = app.tenant_with_owner("acme").await;
    let admin = app.admin_token().await;
    let settings = "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { id } } }";
    let mut kept = json!([]);
    for round in 0..3 {
        let ranges = json!([format!("10.{round}.0.0/16"), "127.0.0.0/8"]);
        let mut changes: Vec<_> = (0..8)
            .map(|k| {
                app.gql_as(
                    &owner,
                    settings,
                    json!({ "i": { "dataRetentionDays": 100 + k } }),
                )
            })
            .collect();
        changes.push(app.gql_as(
            &owner,
            settings,
            json!({ "i": { "allowedIpRanges": ranges } }),
        ));
        let suspend = app.gql_as(
            &admin,
            "mutation($i: SuspendTenantInput!) { suspendTenant(input: $i) { tenant { status } } }",
            json!({ "i": { "tenantId": tenant_id, "reason": "abuse" } }),
        );
        let (suspended, changed) = tokio::join!(suspend, futures_util::future::join_all(changes));
        assert_eq!(
            suspended["data"]["suspendTenant"]["tenant"]["status"], "SUSPENDED",
            "{suspended}"
        );
        let t = app
            .gql_as(
                &admin,
                "query($id: ID!) { node(id: $id) { ... on Tenant { status statusReason settings { allowedIpRanges } } } }",
                json!({ "id": tenant_id }),
            )
            .await;
        assert_eq!(
            t["data"]["node"]["status"], "SUSPENDED",
            "round {round}: {t}"
        );
        assert_eq!(t["data"]["node"]["statusReason"], "abuse", "{t}");
        // A change that arrived after the suspension is refused, and then changes
        // nothing; one that landed is kept whatever landed beside it.
        for c in &changed {
            if c["errors"].is_array() {
                assert_eq!(
                    c["errors"][0]["extensions"]["reason"], "TENANT_SUSPENDED",
                    "{c}"
                );
            }
        }
        let ranges_change = changed.last().expect("the IP list change");
        if ranges_change["errors"].is_null() {
            kept = ranges.clone();
        }
        assert_eq!(
            t["data"]["node"]["settings"]["allowedIpRanges"], kept,
            "{t}\n{changed:?}"
        );
        let back = app
            .gql_as(
                &admin,
                "mutation($i: ReactivateTenantInput!) { reactivateTenant(input: $i) { tenant { status } } }",
                json!({ "i": { "tenantId": tenant_id } }),
            )
            .await;
        assert_eq!(
            back["data"]["reactivateTenant"]["tenant"]["status"], "ACTIVE",
            "{back}"
        );
    }
}
