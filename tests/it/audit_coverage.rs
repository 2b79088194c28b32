//! Every mutation writes exactly one audit record, to the chain it belongs to.

use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::audit::*;
use crate::helpers::{TestApp, first_error_code};

/// Number of records in a tenant's chain and the newest action, read behind the API.
async fn chain(app: &TestApp, tenant: &str) -> (i64, String) {
    use agentplane::db::schema::audit_log;
    use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _};
    let db = &app.state.app.db;
    let t = tenant.to_owned();
    let res: Result<(i64, Option<String>), agentplane::error::AppError> = async {
        Ok(agentplane::db_run!(db, |conn| {
            let n: i64 = audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .count()
                .get_result(conn)
                .await?;
            let last: Option<String> = audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .order(audit_log::seq.desc())
                .select(audit_log::action)
                .first(conn)
                .await
                .optional()?;
            (n, last)
        }))
    }
    .await;
    let (n, last) = res.expect("read chain");
    (n, last.unwrap_or_default())
}

pub fn uuid_of(global: &str) -> String {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(global)
        .expect("b64");
    let text = String::from_utf8(raw).expect("utf8");
    text.split_once(':').expect("kind:uuid").1.to_owned()
}

/// Every mutation of the schema, called once; each must add exactly one record with its
/// action to the chain it belongs to. The list is checked against `schema.graphql`, so a
/// new mutation without a record (or without a line here) fails this test.
#[tokio::test(flavor = "multi_thread")]
async fn every_mutation_writes_exactly_one_record() {
    let (mail_url, mailbox) = crate::account::mailbox().await;
    let webhook = crate::account::webhook_env(&mail_url);
    let mut env: Vec<(&str, &str)> = vec![
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1),
        ("AGENTPLANE_FAKE_GPUS", "A10:24576"),
        ("AGENTPLANE_HEARTBEAT_MS", "200"),
        ("AGENTPLANE_OIDC_ALLOW_HTTP_ISSUERS", "true"),
    ];
    env.extend(webhook.iter().map(|(k, v)| (*k, v.as_str())));
    let app = TestApp::spawn_with(&env).await;
    let admin = app.admin_token().await;
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    let acme = uuid_of(&tenant);
    let system = agentplane::tenancy::store::find_system(&app.state.app.db)
        .await
        .expect("query")
        .expect("system tenant")
        .id
        .to_string();
    let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();

    // Runs one mutation and checks the chain grew by one record with `action`.
    macro_rules! step {
        ($name:literal, $chain:expr, $action:literal, $token:expr, $query:expr, $vars:expr) => {{
            let chain_id: String = $chain.to_owned();
            let before = chain(&app, &chain_id).await;
            let out = match $token {
                Some(t) => app.gql_as(t, $query, $vars).await,
                None => app.gql($query, $vars).await,
            };
            assert!(out["errors"].is_null(), "{}: {out}", $name);
            let after = chain(&app, &chain_id).await;
            assert_eq!(
                after.0,
                before.0 + 1,
                "{} wrote {} records",
                $name,
                after.0 - before.0
            );
            assert_eq!(after.1, $action, "{}", $name);
            seen.insert($name.to_owned());
            let data = out["data"][$name].clone();
            data
        }};
    }
    let o = Some(owner.as_str());
    let ad = Some(admin.as_str());

    let wf = step!("createWorkflow", acme, "workflow.created", o,
        "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }",
        json!({ "i": { "name": "walk", "definition": { "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ] } } }))["workflow"]["id"].clone();
    step!(
        "updateWorkflow",
        acme,
        "workflow.updated",
        o,
        "mutation($i: UpdateWorkflowInput!) { updateWorkflow(input: $i) { workflow { id } } }",
        json!({ "i": { "workflowId": wf, "description": "walked" } })
    );
    step!(
        "publishWorkflow",
        acme,
        "workflow.published",
        o,
        "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }",
        json!({ "i": { "workflowId": wf } })
    );
    let ex = step!(
        "startExecution",
        acme,
        "execution.started",
        o,
        "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
        json!({ "i": { "workflowId": wf } })
    )["execution"]["id"]
        .clone();
    step!(
        "cancelExecution",
        acme,
        "execution.cancelled",
        o,
        "mutation($i: ExecutionIdInput!) { cancelExecution(input: $i) { execution { id } } }",
        json!({ "i": { "executionId": ex } })
    );
    step!(
        "retryExecution",
        acme,
        "execution.retried",
        o,
        "mutation($i: ExecutionIdInput!) { retryExecution(input: $i) { execution { id } } }",
        json!({ "i": { "executionId": ex } })
    );
    let sc = step!(
        "createSchedule",
        acme,
        "schedule.created",
        o,
        "mutation($i: CreateScheduleInput!) { createSchedule(input: $i) { schedule { id } } }",
        json!({ "i": { "workflowId": wf, "cron": "0 3 * * *", "timezone": "UTC" } })
    )["schedule"]["id"]
        .clone();
    step!(
        "pauseSchedule",
        acme,
        "schedule.paused",
        o,
        "mutation($i: ScheduleIdInput!) { pauseSchedule(input: $i) { schedule { id } } }",
        json!({ "i": { "scheduleId": sc } })
    );
    step!(
        "resumeSchedule",
        acme,
        "schedule.resumed",
        o,
        "mutation($i: ScheduleIdInput!) { resumeSchedule(input: $i) { schedule { id } } }",
        json!({ "i": { "scheduleId": sc } })
    );
    step!(
        "deleteSchedule",
        acme,
        "schedule.deleted",
        o,
        "mutation($i: ScheduleIdInput!) { deleteSchedule(input: $i) { deletedScheduleId } }",
        json!({ "i": { "scheduleId": sc } })
    );
    step!(
        "setSecret",
        acme,
        "secret.set",
        o,
        "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name } } }",
        json!({ "i": { "name": "TOKEN", "value": "v" } })
    );
    step!(
        "deleteSecret",
        acme,
        "secret.deleted",
        o,
        "mutation($i: DeleteSecretInput!) { deleteSecret(input: $i) { deletedName } }",
        json!({ "i": { "name": "TOKEN" } })
    );
    let key = step!(
        "createApiKey",
        acme,
        "apikey.created",
        o,
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } } }",
        json!({ "i": { "name": "ci", "roleId": "VIEWER" } })
    )["apiKey"]["id"]
        .clone();
    step!(
        "revokeApiKey",
        acme,
        "apikey.revoked",
        o,
        "mutation($i: RevokeApiKeyInput!) { revokeApiKey(input: $i) { apiKey { id } } }",
        json!({ "i": { "apiKeyId": key } })
    );
    let team = step!(
        "createTeam",
        acme,
        "team.created",
        o,
        "mutation($i: CreateTeamInput!) { createTeam(input: $i) { team { id } } }",
        json!({ "i": { "name": "ml" } })
    )["team"]["id"]
        .clone();
    step!(
        "updateTeam",
        acme,
        "team.updated",
        o,
        "mutation($i: UpdateTeamInput!) { updateTeam(input: $i) { team { id } } }",
        json!({ "i": { "teamId": team, "description": "models" } })
    );
    let created = step!(
        "createUser",
        acme,
        "user.created",
        o,
        "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } setPasswordToken } }",
        json!({ "i": { "email": "dev@acme.example", "displayName": "Dev", "roleId": "DEVELOPER" } })
    );
    let user = created["user"]["id"].clone();
    step!(
        "addTeamMember",
        acme,
        "team.member_added",
        o,
        "mutation($i: AddTeamMemberInput!) { addTeamMember(input: $i) { team { id } } }",
        json!({ "i": { "teamId": team, "userId": user } })
    );
    step!(
        "removeTeamMember",
        acme,
        "team.member_removed",
        o,
        "mutation($i: RemoveTeamMemberInput!) { removeTeamMember(input: $i) { team { id } } }",
        json!({ "i": { "teamId": team, "userId": user } })
    );
    step!(
        "deleteTeam",
        acme,
        "team.deleted",
        o,
        "mutation($i: DeleteTeamInput!) { deleteTeam(input: $i) { deletedTeamId } }",
        json!({ "i": { "teamId": team } })
    );
    let role = step!(
        "createRole",
        acme,
        "role.created",
        o,
        "mutation($i: CreateRoleInput!) { createRole(input: $i) { role { id } } }",
        json!({ "i": { "name": "reader", "permissions": ["workflows.read"] } })
    )["role"]["id"]
        .clone();
    step!(
        "updateRole",
        acme,
        "role.updated",
        o,
        "mutation($i: UpdateRoleInput!) { updateRole(input: $i) { role { id } } }",
        json!({ "i": { "roleId": role, "permissions": ["workflows.read", "executions.read"] } })
    );
    step!(
        "updateUserRole",
        acme,
        "user.role_changed",
        o,
        "mutation($i: UpdateUserRoleInput!) { updateUserRole(input: $i) { user { id } } }",
        json!({ "i": { "userId": user, "roleId": "OPERATOR" } })
    );
    step!(
        "deleteRole",
        acme,
        "role.deleted",
        o,
        "mutation($i: DeleteRoleInput!) { deleteRole(input: $i) { deletedRoleId } }",
        json!({ "i": { "roleId": role } })
    );
    step!(
        "setPassword",
        acme,
        "user.password_set",
        None::<&str>,
        "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
        json!({ "i": { "token": created["setPasswordToken"], "password": "dev-password-one" } })
    );
    let first = step!(
        "login",
        acme,
        "auth.login",
        None::<&str>,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }",
        json!({ "i": { "email": "dev@acme.example", "password": "dev-password-one" } })
    );
    let refreshed = step!(
        "refreshSession",
        acme,
        "auth.session_refreshed",
        None::<&str>,
        "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken } }",
        json!({ "i": { "refreshToken": first["refreshToken"] } })
    );
    let dev = refreshed["accessToken"].as_str().expect("token").to_owned();
    // A second session, revoked from the first.
    let (second, _) = app.login("dev@acme.example", "dev-password-one").await;
    let sessions = app
        .gql_as(&second, "{ sessions { id current } }", json!({}))
        .await;
    let other = sessions["data"]["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["current"] == true))
        .map(|s| s["id"].clone())
        .expect("current session");
    step!(
        "revokeSession",
        acme,
        "session.revoked",
        Some(dev.as_str()),
        "mutation($i: RevokeSessionInput!) { revokeSession(input: $i) { ok } }",
        json!({ "i": { "sessionId": other } })
    );
    // The second factor: enrol, confirm, a two-step sign-in, new recovery codes, turn it
    // off; enrol again and an owner's reset. Codes come from the secret on the app clock.
    let totp = |secret: &str| {
        let raw = data_encoding::BASE32_NOPAD
            .decode(secret.as_bytes())
            .expect("base32");
        let now = agentplane::clock::Clock::now(app.clock.as_ref());
        agentplane::auth::totp::totp_code(&raw, agentplane::auth::totp::step_at(now))
    };
    let secret = step!(
        "enrollTotp",
        acme,
        "auth.mfa_enrolment_started",
        Some(dev.as_str()),
        "mutation { enrollTotp { secret } }",
        json!({})
    )["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    step!(
        "confirmTotp",
        acme,
        "auth.mfa_enabled",
        Some(dev.as_str()),
        "mutation($i: TotpCodeInput!) { confirmTotp(input: $i) { recoveryCodes } }",
        json!({ "i": { "code": totp(&secret) } })
    );
    app.clock.advance(chrono::Duration::seconds(30));
    let challenge = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "dev@acme.example", "password": "dev-password-one" } }),
        )
        .await["errors"][0]["extensions"]["mfaChallenge"]
        .clone();
    assert!(challenge.is_string(), "a challenge");
    step!(
        "verifyMfa",
        acme,
        "auth.login",
        None::<&str>,
        "mutation($i: VerifyMfaInput!) { verifyMfa(input: $i) { accessToken } }",
        json!({ "i": { "challenge": challenge, "code": totp(&secret) } })
    );
    app.clock.advance(chrono::Duration::seconds(30));
    step!(
        "regenerateRecoveryCodes",
        acme,
        "auth.mfa_recovery_codes_regenerated",
        Some(dev.as_str()),
        "mutation($i: TotpCodeInput!) { regenerateRecoveryCodes(input: $i) { recoveryCodes } }",
        json!({ "i": { "code": totp(&secret) } })
    );
    app.clock.advance(chrono::Duration::seconds(30));
    step!(
        "disableTotp",
        acme,
        "auth.mfa_disabled",
        Some(dev.as_str()),
        "mutation($i: TotpCodeInput!) { disableTotp(input: $i) { ok } }",
        json!({ "i": { "code": totp(&secret) } })
    );
    let again = app
        .gql_as(&dev, "mutation { enrollTotp { secret } }", json!({}))
        .await;
    let secret = again["data"]["enrollTotp"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let on = app
        .gql_as(
            &dev,
            "mutation($i: TotpCodeInput!) { confirmTotp(input: $i) { recoveryCodes } }",
            json!({ "i": { "code": totp(&secret) } }),
        )
        .await;
    assert!(on["errors"].is_null(), "{on}");
    step!(
        "resetUserMfa",
        acme,
        "auth.mfa_reset",
        o,
        "mutation($i: ResetUserMfaInput!) { resetUserMfa(input: $i) { user { id } } }",
        json!({ "i": { "userId": user } })
    );
    step!(
        "changePassword",
        acme,
        "user.password_changed",
        Some(dev.as_str()),
        "mutation($i: ChangePasswordInput!) { changePassword(input: $i) { ok } }",
        json!({ "i": { "currentPassword": "dev-password-one", "newPassword": "dev-password-two" } })
    );
    step!(
        "logout",
        acme,
        "auth.logout",
        Some(dev.as_str()),
        "mutation { logout { ok } }",
        json!({})
    );
    step!(
        "disableUser",
        acme,
        "user.disabled",
        o,
        "mutation($i: DisableUserInput!) { disableUser(input: $i) { user { id } } }",
        json!({ "i": { "userId": user } })
    );
    step!(
        "updateUser",
        acme,
        "user.updated",
        o,
        "mutation($i: UpdateUserInput!) { updateUser(input: $i) { user { id } } }",
        json!({ "i": { "userId": user, "displayName": "Dev Renamed" } })
    );
    step!(
        "enableUser",
        acme,
        "user.enabled",
        o,
        "mutation($i: EnableUserInput!) { enableUser(input: $i) { user { id } } }",
        json!({ "i": { "userId": user } })
    );
    step!(
        "exportUserData",
        acme,
        "user.data_exported",
        o,
        "mutation($i: ExportUserDataInput!) { exportUserData(input: $i) { document } }",
        json!({ "i": { "userId": user } })
    );
    step!(
        "eraseUser",
        acme,
        "user.erased",
        o,
        "mutation($i: EraseUserInput!) { eraseUser(input: $i) { user { id } } }",
        json!({ "i": { "userId": user } })
    );
    step!(
        "updateTenantSettings",
        acme,
        "tenant.settings_changed",
        o,
        "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { id } } }",
        json!({ "i": { "dataRetentionDays": 30 } })
    );
    // A reset is issued after the answer (so its timing tells nothing): wait for it.
    {
        let before = chain(&app, &acme).await;
        let out = app
            .gql(
                "mutation($i: RequestPasswordResetInput!) { requestPasswordReset(input: $i) { ok } }",
                json!({ "i": { "email": "owner@acme.example" } }),
            )
            .await;
        assert!(out["errors"].is_null(), "requestPasswordReset: {out}");
        let mut after = chain(&app, &acme).await;
        for _ in 0..100 {
            if after.0 > before.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            after = chain(&app, &acme).await;
        }
        assert_eq!(
            after,
            (before.0 + 1, "user.password_reset_requested".to_owned()),
            "requestPasswordReset wrote one record"
        );
        seen.insert("requestPasswordReset".into());
    }
    step!(
        "requestEmailChange",
        acme,
        "user.email_change_requested",
        o,
        "mutation($i: RequestEmailChangeInput!) { requestEmailChange(input: $i) { ok } }",
        json!({ "i": { "newEmail": "chief@acme.example", "currentPassword": crate::helpers::OWNER_PASSWORD } })
    );
    // The reset above sent the first message; the change, the second.
    let (first, second) = (
        crate::account::message(&mailbox, 0).await,
        crate::account::message(&mailbox, 1).await,
    );
    let change = if first["type"] == "email_change" {
        first
    } else {
        second
    };
    assert_eq!(change["type"], "email_change", "{change}");
    step!(
        "confirmEmailChange",
        acme,
        "user.email_changed",
        None::<&str>,
        "mutation($i: ConfirmEmailChangeInput!) { confirmEmailChange(input: $i) { email } }",
        json!({ "i": { "token": change["token"] } })
    );
    let idp = crate::sso::FakeIdp::start().await;
    step!(
        "configureOidcProvider",
        acme,
        "sso.provider_configured",
        o,
        "mutation($i: ConfigureOidcProviderInput!) { configureOidcProvider(input: $i) { oidcProvider { issuer } } }",
        json!({ "i": { "issuer": idp.issuer, "clientId": crate::sso::CLIENT_ID } })
    );
    step!(
        "deleteOidcProvider",
        acme,
        "sso.provider_deleted",
        o,
        "mutation { deleteOidcProvider { ok } }",
        json!({})
    );
    let doc = step!(
        "registerTrustedDocument",
        acme,
        "trusted_document.registered",
        o,
        "mutation($i: RegisterTrustedDocumentInput!) { registerTrustedDocument(input: $i) { trustedDocument { id } } }",
        json!({ "i": { "document": "query Me { me { id } }", "name": "me" } })
    )["trustedDocument"]["id"]
        .clone();
    step!(
        "deleteTrustedDocument",
        acme,
        "trusted_document.deleted",
        o,
        "mutation($i: DeleteTrustedDocumentInput!) { deleteTrustedDocument(input: $i) { deletedTrustedDocumentId } }",
        json!({ "i": { "trustedDocumentId": doc } })
    );
    step!(
        "deleteWorkflow",
        acme,
        "workflow.deleted",
        o,
        "mutation($i: WorkflowIdInput!) { deleteWorkflow(input: $i) { deletedWorkflowId } }",
        json!({ "i": { "workflowId": wf } })
    );

    // Platform actions: on the affected tenant's chain, or the system tenant's.
    step!(
        "updateTenantPlan",
        acme,
        "tenant.plan_changed",
        ad,
        "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
        json!({ "i": { "tenantId": tenant, "plan": "ENTERPRISE" } })
    );
    step!(
        "suspendTenant",
        acme,
        "tenant.suspended",
        ad,
        "mutation($i: SuspendTenantInput!) { suspendTenant(input: $i) { tenant { id } } }",
        json!({ "i": { "tenantId": tenant, "reason": "audit walk" } })
    );
    step!(
        "reactivateTenant",
        acme,
        "tenant.reactivated",
        ad,
        "mutation($i: ReactivateTenantInput!) { reactivateTenant(input: $i) { tenant { id } } }",
        json!({ "i": { "tenantId": tenant } })
    );
    let owner_id = app.gql_as(&owner, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();
    step!(
        "restoreTenantOwner",
        acme,
        "user.owner_restored",
        ad,
        "mutation($i: RestoreTenantOwnerInput!) { restoreTenantOwner(input: $i) { user { id } } }",
        json!({ "i": { "tenantId": tenant, "userId": owner_id } })
    );
    // createTenant starts the new tenant's own chain.
    let before = chain(&app, &system).await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { tenant { id } } }",
            json!({ "i": { "slug": "beta", "name": "Beta", "plan": "FREE",
                           "owner": { "email": "owner@beta.example", "displayName": "B" } } }),
        )
        .await;
    let beta = uuid_of(
        out["data"]["createTenant"]["tenant"]["id"]
            .as_str()
            .expect("id"),
    );
    assert_eq!(chain(&app, &beta).await, (1, "tenant.created".to_owned()));
    assert_eq!(chain(&app, &system).await, before);
    seen.insert("createTenant".into());
    // deleteTenant ends the tenant's chain and records itself in the system chain.
    let beta_id = out["data"]["createTenant"]["tenant"]["id"].clone();
    let suspended = app
        .gql_as(
            &admin,
            "mutation($i: SuspendTenantInput!) { suspendTenant(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": beta_id, "reason": "closing" } }),
        )
        .await;
    assert!(suspended["errors"].is_null(), "{suspended}");
    step!(
        "deleteTenant",
        system,
        "tenant.deleted",
        ad,
        "mutation($i: DeleteTenantInput!) { deleteTenant(input: $i) { deletedTenantId } }",
        json!({ "i": { "tenantId": beta_id, "confirmSlug": "beta" } })
    );
    assert_eq!(
        chain(&app, &beta).await.0,
        0,
        "the deleted tenant's chain is gone"
    );
    let node = {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = app
                .gql_as(
                    &admin,
                    "{ cluster { nodes { edges { node { id gpus { index } } } } } }",
                    json!({}),
                )
                .await;
            if let Some(id) = out["data"]["cluster"]["nodes"]["edges"][0]["node"]["id"].as_str() {
                break id.to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "{out}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    step!(
        "drainNode",
        system,
        "node.drained",
        ad,
        "mutation($i: NodeIdInput!) { drainNode(input: $i) { node { id } } }",
        json!({ "i": { "nodeId": node } })
    );
    step!(
        "undrainNode",
        system,
        "node.undrained",
        ad,
        "mutation($i: NodeIdInput!) { undrainNode(input: $i) { node { id } } }",
        json!({ "i": { "nodeId": node } })
    );
    let alloc = step!(
        "allocateGpu",
        system,
        "gpu.allocated",
        ad,
        "mutation($i: AllocateGpuInput!) { allocateGpu(input: $i) { allocation { id } } }",
        json!({ "i": { "nodeId": node, "memoryMb": 1024, "reason": "walk" } })
    )["allocation"]["id"]
        .clone();
    step!(
        "releaseGpu",
        system,
        "gpu.released",
        ad,
        "mutation($i: ReleaseGpuInput!) { releaseGpu(input: $i) { memoryMb } }",
        json!({ "i": { "allocationId": alloc } })
    );

    // Failures: refused before any change writes nothing; a failed sign-in is recorded as
    // a FAILURE (the one mutation whose failure is itself the event).
    let before = chain(&app, &acme).await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }",
            json!({ "i": { "name": "bad", "definition": { "steps": [] } } }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("BAD_USER_INPUT"));
    assert_eq!(chain(&app, &acme).await, before);
    let out = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "chief@acme.example", "password": "wrong-password!" } }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("UNAUTHENTICATED"));
    assert_eq!(
        chain(&app, &acme).await,
        (before.0 + 1, "auth.login_failed".to_owned())
    );

    // Every mutation in the schema was walked.
    let sdl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql");
    let body = sdl
        .split("type Mutation {")
        .nth(1)
        .and_then(|b| b.split("\n}").next())
        .expect("Mutation type");
    let all: std::collections::BTreeSet<String> = body
        .lines()
        .map(str::trim)
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .filter_map(|l| l.split(['(', ':']).next())
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .collect();
    assert!(all.len() >= 41 && all.contains("logout"), "parsed {all:?}");
    let missing: Vec<&String> = all.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "mutations without an audit check: {missing:?}"
    );
    // And the chains still verify.
    for (token, what) in [(&owner, "acme"), (&admin, "system")] {
        let out = app.gql_as(token, VERIFY, json!({})).await;
        assert_eq!(
            out["data"]["verifyAuditChain"]["intact"], true,
            "{what}: {out}"
        );
    }
}
