//! Streaming export in bounded memory, retention with an intact chain, GDPR export and erasure.

use std::time::Duration;

use serde_json::{Value, json};

use crate::compliance::*;
use crate::executions::{published, start, wait_for};
use crate::helpers::{
    ADMIN_EMAIL, ADMIN_PASSWORD, ServerProcess, TestApp, first_error_code, vm_hwm_kib,
};

pub(crate) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Exports 100k records (about 120 MB) from a real server process and checks its peak
/// resident memory grew by far less than the export's size.
#[tokio::test(flavor = "multi_thread")]
async fn exporting_100k_records_streams_in_bounded_memory() {
    const RECORDS: usize = 100_000;
    let server = ServerProcess::start(&[("AGENTPLANE_WORKERS", "0")]).await;
    let db = agentplane::db::DbPool::connect(
        &agentplane::config::DatabaseUrl::parse(&server.db.url).expect("url"),
    )
    .await
    .expect("db");
    let system = agentplane::tenancy::store::find_system(&db)
        .await
        .expect("query")
        .expect("system tenant")
        .id;
    let padding = "x".repeat(900);
    let at = agentplane::db::ids::db_time(chrono::Utc::now());
    let origin = agentplane::audit::Origin::system(system);
    for chunk in 0..(RECORDS / 10_000) {
        let entries: Vec<agentplane::audit::Entry> = (0..10_000)
            .map(|i| {
                agentplane::audit::Entry::change(
                    &origin,
                    "bench.seeded",
                    "thing",
                    format!("{chunk}-{i}"),
                    Some(json!({ "n": i, "padding": padding })),
                    at,
                )
            })
            .collect();
        agentplane::audit::append_many(&db, system, &entries)
            .await
            .expect("seed");
    }
    let http = reqwest::Client::new();
    let login: Value = http
        .post(format!("{}/graphql", server.base))
        .json(&json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            "variables": { "i": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD } },
        }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    let pid = server.child.id().expect("running");
    // Warm up (pools, first query plans), then take the baseline.
    let small = http
        .get(format!(
            "{}/audit/export?format=ndjson&from=2999-01-01T00:00:00Z",
            server.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("export");
    assert_eq!(small.status(), 200);
    small.bytes().await.expect("body");
    let before = vm_hwm_kib(pid);

    let resp = http
        .get(format!("{}/audit/export?format=ndjson", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
        .await
        .expect("export keeps flowing")
        .expect("chunk")
    {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let after = vm_hwm_kib(pid);
    assert!(lines > RECORDS, "{lines} lines");
    assert!(bytes > 100 * 1024 * 1024, "{bytes} bytes exported");
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "exported {lines} lines, {} MiB; peak RSS {} MiB before, {} MiB after",
        bytes / 1024 / 1024,
        before / 1024,
        after / 1024
    );
    assert!(
        grew_mib < 48,
        "peak memory grew {grew_mib} MiB while exporting {} MiB",
        bytes / 1024 / 1024
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_expired_records_and_executions_and_the_chain_still_verifies() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "2"),
        ("AGENTPLANE_RETENTION_INTERVAL_MS", "150"),
    ])
    .await;
    let (_, owner) = app.tenant_with_owner("keep").await;
    let wf = published(
        &app,
        &owner,
        "old",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ] }),
    )
    .await;
    let ex = start(&app, &owner, json!({ "workflowId": wf })).await["execution"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_for(&app, &owner, &ex, 20, |e| e["status"] == "SUCCEEDED").await;
    let set = app
        .gql_as(
            &owner,
            "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { id } } }",
            json!({ "i": { "dataRetentionDays": 30 } }),
        )
        .await;
    assert!(set["errors"].is_null(), "{set}");
    // An API key outlives the owner's access token across the jump in time.
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "auditor", "roleId": "ANALYST" } }),
        )
        .await["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let old_head = head(&app, &owner).await;
    assert!(old_head >= 7, "{old_head}");
    // Not yet expired: the job leaves everything alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(verify(&app, &owner).await["checked"], old_head);

    // 31 days later everything so far has expired.
    app.clock.advance(chrono::Duration::days(31));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let applied = loop {
        let out = app
            .gql_as(
                &key,
                "{ auditLog(first: 5) { totalCount edges { node { sequence action changes } } } }",
                json!({}),
            )
            .await;
        let edges = out["data"]["auditLog"]["edges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(e) = edges
            .iter()
            .find(|e| e["node"]["action"] == "audit.retention_applied")
        {
            assert_eq!(
                out["data"]["auditLog"]["totalCount"], 1,
                "only the retention record is left: {out}"
            );
            break e["node"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(applied["sequence"], old_head + 1);
    assert_eq!(applied["changes"]["auditRecordsDeleted"], old_head);
    assert_eq!(applied["changes"]["executionsDeleted"], 1);
    assert_eq!(applied["changes"]["checkpointSequence"], old_head);
    // The execution is gone; the workflow stays.
    let gone = app
        .gql_as(
            &key,
            "query($id: ID!) { execution(id: $id) { id } }",
            json!({ "id": ex }),
        )
        .await;
    assert!(gone["data"]["execution"].is_null(), "{gone}");
    // New records continue the chain from the checkpoint; it verifies.
    let owner = app
        .login("owner@keep.example", crate::helpers::OWNER_PASSWORD)
        .await
        .0;
    create_workflow(&app, &owner, "new").await;
    let v = verify(&app, &owner).await;
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["checked"], 3, "retention record, sign-in, new workflow");
    // Tampering with what is left is still found.
    let first_left = old_head + 1;
    let pg = matches!(app.state.app.db, agentplane::db::DbPool::Postgres(_));
    let db = &app.state.app.db;
    let res: Result<(), agentplane::error::AppError> = async {
        use diesel_async::RunQueryDsl;
        agentplane::db_run!(db, |conn| {
            if pg {
                diesel::sql_query("SET session_replication_role = replica").execute(conn).await?;
            } else {
                diesel::sql_query("DROP TRIGGER IF EXISTS audit_log_no_update").execute(conn).await?;
            }
            diesel::sql_query(format!(
                "UPDATE audit_log SET reason = 'x' WHERE seq = {first_left} AND action = 'audit.retention_applied'"
            ))
            .execute(conn)
            .await?;
            if pg {
                diesel::sql_query("SET session_replication_role = origin").execute(conn).await?;
            }
        });
        Ok(())
    }
    .await;
    res.expect("tamper");
    let v = verify(&app, &owner).await;
    assert_eq!(v["intact"], false, "{v}");
    assert_eq!(v["firstBrokenSequence"], first_left);
}

#[tokio::test(flavor = "multi_thread")]
async fn gdpr_export_and_erasure_keep_the_chain_verifiable() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("gdpr").await;
    let agent = "subject-browser/1.0";
    let (subject, token) =
        user_with_role(&app, &owner, "subject@gdpr.example", "DEVELOPER", agent).await;
    create_workflow(&app, &token, "mine").await;
    let team = app
        .gql_as(
            &owner,
            "mutation($i: CreateTeamInput!) { createTeam(input: $i) { team { id } } }",
            json!({ "i": { "name": "people" } }),
        )
        .await["data"]["createTeam"]["team"]["id"]
        .clone();
    let add = app
        .gql_as(
            &owner,
            "mutation($i: AddTeamMemberInput!) { addTeamMember(input: $i) { team { id } } }",
            json!({ "i": { "teamId": team, "userId": subject } }),
        )
        .await;
    assert!(add["errors"].is_null(), "{add}");
    // A failed sign-in against the account, from the subject's browser.
    app.http
        .post(format!("{}/graphql", app.base))
        .header("user-agent", agent)
        .json(&json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            "variables": { "i": { "email": "subject@gdpr.example", "password": "typo-password" } },
        }))
        .send()
        .await
        .expect("sent");

    let export_q = "mutation($i: ExportUserDataInput!) { exportUserData(input: $i) { userId generatedAt document } }";
    let out = app
        .gql_as(&owner, export_q, json!({ "i": { "userId": subject } }))
        .await;
    let doc = &out["data"]["exportUserData"]["document"];
    assert!(doc.is_object(), "{out}");
    assert_eq!(doc["profile"]["email"], "subject@gdpr.example");
    assert_eq!(doc["profile"]["displayName"], "Subject Person");
    assert_eq!(doc["memberships"][0]["teamName"], "people");
    assert_eq!(doc["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(doc["sessions"][0]["userAgent"], agent);
    let mine: Vec<&str> = doc["auditRecords"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        mine,
        ["user.password_set", "auth.login", "workflow.created"],
        "{doc}"
    );
    assert_eq!(doc["auditRecords"][1]["userAgent"], agent);
    // Only users.manage may ask.
    let no = app
        .gql_as(&token, export_q, json!({ "i": { "userId": subject } }))
        .await;
    assert_eq!(first_error_code(&no).as_deref(), Some("FORBIDDEN"));

    let erase_q = "mutation($i: EraseUserInput!) { eraseUser(input: $i) { user { email displayName status } auditRecordsPseudonymized sessionsDeleted } }";
    let out = app
        .gql_as(&owner, erase_q, json!({ "i": { "userId": subject } }))
        .await;
    let p = &out["data"]["eraseUser"];
    assert!(p.is_object(), "{out}");
    assert_eq!(p["user"]["status"], "ERASED");
    assert_eq!(p["user"]["displayName"], "Erased user");
    assert!(
        p["user"]["email"]
            .as_str()
            .expect("email")
            .ends_with("@erased.invalid")
    );
    // Their password, sign-in, workflow and refused-export records, and the failed
    // sign-in against the account.
    assert_eq!(p["auditRecordsPseudonymized"], 5, "{out}");
    assert_eq!(p["sessionsDeleted"], 1);

    // Their token is dead; the e-mail signs nobody in.
    let me = app.gql_as(&token, "{ me { id } }", json!({})).await;
    assert_eq!(
        first_error_code(&me).as_deref(),
        Some("UNAUTHENTICATED"),
        "{me}"
    );
    // Nothing in the trail carries their browser any more, nor links to them.
    let all = app
        .gql_as(
            &owner,
            "{ auditLog(first: 100) { edges { node { action actorId userAgent ip severity resourceId } } } }",
            json!({}),
        )
        .await;
    let edges = all["data"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    assert!(
        edges.iter().all(|e| e["node"]["userAgent"] != agent),
        "{all}"
    );
    let by_subject = app
        .gql_as(
            &owner,
            "query($f: AuditFilter) { auditLog(filter: $f) { totalCount } }",
            json!({ "f": { "actorId": subject } }),
        )
        .await;
    assert_eq!(
        by_subject["data"]["auditLog"]["totalCount"], 0,
        "{by_subject}"
    );
    assert_eq!(edges[0]["node"]["action"], "user.erased");
    assert_eq!(edges[0]["node"]["severity"], "CRITICAL");
    // The chain still verifies, every record included.
    let v = verify(&app, &owner).await;
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["checked"], head(&app, &owner).await);
    // After erasure the export holds no personal data.
    let out = app
        .gql_as(&owner, export_q, json!({ "i": { "userId": subject } }))
        .await;
    let doc = &out["data"]["exportUserData"]["document"];
    assert_eq!(doc["profile"]["displayName"], "Erased user");
    assert_eq!(doc["sessions"], json!([]));
    assert_eq!(doc["memberships"], json!([]));
    assert_eq!(doc["auditRecords"], json!([]));
    // Twice is a conflict; yourself is refused.
    let again = app
        .gql_as(&owner, erase_q, json!({ "i": { "userId": subject } }))
        .await;
    assert_eq!(first_error_code(&again).as_deref(), Some("CONFLICT"));
    let me_id = app.gql_as(&owner, "{ me { id } }", json!({})).await["data"]["me"]["id"].clone();
    let selfie = app
        .gql_as(&owner, erase_q, json!({ "i": { "userId": me_id } }))
        .await;
    assert_eq!(first_error_code(&selfie).as_deref(), Some("BAD_USER_INPUT"));
}
