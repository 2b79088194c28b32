//! Audit compliance features: the live tail over a websocket, `auditTrail` fields,
//! compliance reports, streaming export (and its memory bound on a real server process),
//! retention with an intact chain, and GDPR export and erasure.

use agentplane::clock::Clock as _;
use serde_json::{Value, json};

use crate::compliance_export::urlencode;
use crate::helpers::{TestApp, first_error_code, ws_authed, ws_next_json, ws_send};

const VERIFY: &str = "{ verifyAuditChain { intact checked firstBrokenSequence problem } }";

pub(crate) async fn head(app: &TestApp, token: &str) -> i64 {
    let out = app
        .gql_as(
            token,
            "{ auditLog(first: 1) { edges { node { sequence } } } }",
            json!({}),
        )
        .await;
    out["data"]["auditLog"]["edges"][0]["node"]["sequence"]
        .as_i64()
        .unwrap_or_else(|| panic!("{out}"))
}

pub(crate) async fn verify(app: &TestApp, token: &str) -> Value {
    let out = app.gql_as(token, VERIFY, json!({})).await;
    out["data"]["verifyAuditChain"].clone()
}

pub(crate) async fn create_workflow(app: &TestApp, token: &str, name: &str) -> String {
    let out = app
        .gql_as(
            token,
            "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }",
            json!({ "i": { "name": name, "definition": { "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{}" } } ] } } }),
        )
        .await;
    out["data"]["createWorkflow"]["workflow"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned()
}

/// Creates a user with `role` in the owner's tenant and signs them in with `agent` as
/// their User-Agent; returns (user id, access token).
pub(crate) async fn user_with_role(
    app: &TestApp,
    owner: &str,
    email: &str,
    role: &str,
    agent: &str,
) -> (String, String) {
    let out = app
        .gql_as(
            owner,
            "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } setPasswordToken } }",
            json!({ "i": { "email": email, "displayName": "Subject Person", "roleId": role } }),
        )
        .await;
    let p = &out["data"]["createUser"];
    assert!(p.is_object(), "{out}");
    let set = app
        .gql(
            "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
            json!({ "i": { "token": p["setPasswordToken"], "password": "subject-password-1" } }),
        )
        .await;
    assert_eq!(set["data"]["setPassword"]["ok"], true, "{set}");
    let login: Value = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("user-agent", agent)
        .json(&json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            "variables": { "i": { "email": email, "password": "subject-password-1" } },
        }))
        .send()
        .await
        .expect("login sent")
        .json()
        .await
        .expect("json");
    let token = login["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{login}"))
        .to_owned();
    (p["user"]["id"].as_str().expect("id").to_owned(), token)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_live_tail_streams_each_tenants_own_records_as_they_commit() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, a) = app.tenant_with_owner("tail-a").await;
    let (_, b) = app.tenant_with_owner("tail-b").await;
    let (a_head, b_head) = (head(&app, &a).await, head(&app, &b).await);

    let sub = "subscription($after: Int, $f: AuditEventFilter) { auditEvents(afterSequence: $after, filter: $f) { sequence action resourceType resourceId actorType outcome } }";
    let mut wa = ws_authed(&app.ws_url(), "graphql-transport-ws", &a).await;
    ws_send(&mut wa, json!({ "id": "1", "type": "subscribe", "payload": { "query": sub, "variables": { "after": a_head } } })).await;
    let mut wb = ws_authed(&app.ws_url(), "graphql-transport-ws", &b).await;
    ws_send(&mut wb, json!({ "id": "1", "type": "subscribe", "payload": { "query": sub, "variables": { "after": b_head, "f": { "actionPrefix": "workflow." } } } })).await;
    // A second tail on A's chain through the legacy protocol, from the end.
    let mut legacy = crate::helpers::ws_connect(&app.ws_url(), "graphql-ws").await;
    ws_send(
        &mut legacy,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {a}") } }),
    )
    .await;
    assert_eq!(ws_next_json(&mut legacy).await["type"], "connection_ack");
    ws_send(&mut legacy, json!({ "id": "9", "type": "start", "payload": { "query": sub, "variables": { "after": a_head } } })).await;

    // A change in A: A's tails see it, in order, with nothing skipped.
    let wf_a = create_workflow(&app, &a, "tail-a-flow").await;
    for ws in [&mut wa, &mut legacy] {
        let m = ws_next_json(ws).await;
        assert!(m["type"] == "next" || m["type"] == "data", "{m}");
        let rec = &m["payload"]["data"]["auditEvents"];
        assert_eq!(rec["sequence"], a_head + 1, "{m}");
        assert_eq!(rec["action"], "workflow.created");
        assert_eq!(rec["actorType"], "USER");
    }
    // B's tail (filtered to workflow actions) sees B's change first, never A's.
    let wf_b = create_workflow(&app, &b, "tail-b-flow").await;
    let m = ws_next_json(&mut wb).await;
    let rec = &m["payload"]["data"]["auditEvents"];
    assert_eq!(rec["action"], "workflow.created", "{m}");
    assert_ne!(
        rec["resourceId"],
        json!(crate::audit_coverage::uuid_of(&wf_a))
    );
    assert_eq!(
        rec["resourceId"],
        json!(crate::audit_coverage::uuid_of(&wf_b))
    );
    // A failed sign-in in A arrives on A's tail too.
    let bad = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "owner@tail-a.example", "password": "wrong-password-x" } }),
        )
        .await;
    assert_eq!(first_error_code(&bad).as_deref(), Some("UNAUTHENTICATED"));
    let m = ws_next_json(&mut wa).await;
    assert_eq!(
        m["payload"]["data"]["auditEvents"]["action"], "auth.login_failed",
        "{m}"
    );
    assert_eq!(m["payload"]["data"]["auditEvents"]["outcome"], "FAILURE");

    // No audit.read: the subscription is refused.
    let (_, viewer) = user_with_role(&app, &a, "viewer@tail-a.example", "VIEWER", "t").await;
    let mut wv = ws_authed(&app.ws_url(), "graphql-transport-ws", &viewer).await;
    ws_send(
        &mut wv,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": sub } }),
    )
    .await;
    let m = ws_next_json(&mut wv).await;
    let errors = if m["type"] == "error" {
        m["payload"].clone()
    } else {
        m["payload"]["errors"].clone()
    };
    assert_eq!(errors[0]["extensions"]["code"], "FORBIDDEN", "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_trail_fields_and_the_compliance_report() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("report").await;
    let wf = create_workflow(&app, &owner, "reported").await;
    let upd = app
        .gql_as(
            &owner,
            "mutation($i: UpdateWorkflowInput!) { updateWorkflow(input: $i) { workflow { id } } }",
            json!({ "i": { "workflowId": wf, "description": "changed" } }),
        )
        .await;
    assert!(upd["errors"].is_null(), "{upd}");
    let trail = app
        .gql_as(
            &owner,
            "query($id: ID!) { node(id: $id) { ... on Workflow { auditTrail(first: 10) { edges { node { action } } } } } }",
            json!({ "id": wf }),
        )
        .await;
    let actions: Vec<&str> = trail["data"]["node"]["auditTrail"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{trail}"))
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    assert_eq!(actions, ["workflow.updated", "workflow.created"]);

    // A user's trail: what was done to them and what they did.
    let (dev_id, dev) =
        user_with_role(&app, &owner, "dev@report.example", "DEVELOPER", "dev-agent").await;
    create_workflow(&app, &dev, "by-dev").await;
    let trail = app
        .gql_as(
            &owner,
            "query($id: ID!) { node(id: $id) { ... on User { auditTrail(first: 10) { edges { node { action } } } } } }",
            json!({ "id": dev_id }),
        )
        .await;
    let actions: Vec<&str> = trail["data"]["node"]["auditTrail"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{trail}"))
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "workflow.created",
            "auth.login",
            "user.password_set",
            "user.created"
        ]
    );
    // Without audit.read the field is refused.
    let denied = app
        .gql_as(
            &dev,
            "query($id: ID!) { node(id: $id) { ... on Workflow { auditTrail { edges { node { action } } } } } }",
            json!({ "id": wf }),
        )
        .await;
    assert_eq!(first_error_code(&denied).as_deref(), Some("FORBIDDEN"));

    // Two failed sign-ins.
    for _ in 0..2 {
        app.gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "owner@report.example", "password": "not-the-password" } }),
        )
        .await;
    }
    let now = app.clock.now();
    let (from, to) = (
        (now - chrono::Duration::hours(1)).to_rfc3339(),
        (now + chrono::Duration::hours(1)).to_rfc3339(),
    );
    let report_q = "query($f: DateTime!, $t: DateTime!) { complianceReport(from: $f, to: $t) { id totalEvents byAction { action count } uniqueActors topActors { actorId actorType userId count } failedLogins accessDenials criticalEvents failedEvents exportsPerformed reportsGenerated chain { intact checked } } }";
    let r1 = app
        .gql_as(&owner, report_q, json!({ "f": from, "t": to }))
        .await;
    let rep = &r1["data"]["complianceReport"];
    assert!(rep.is_object(), "{r1}");
    let total = app
        .gql_as(
            &owner,
            "query($f: AuditFilter) { auditLog(filter: $f) { totalCount } }",
            json!({ "f": { "from": from, "to": to } }),
        )
        .await["data"]["auditLog"]["totalCount"]
        .as_i64()
        .expect("count");
    // The count ran after the report, whose own record is in the period.
    assert_eq!(rep["totalEvents"], total - 1, "{rep}");
    assert_eq!(rep["failedLogins"], 2);
    assert_eq!(rep["accessDenials"], 1, "the dev's refused auditTrail");
    assert_eq!(rep["failedEvents"], 3);
    assert_eq!(rep["exportsPerformed"], 0);
    assert_eq!(rep["reportsGenerated"], 0);
    // The platform admin (created the tenant), the owner and the developer.
    assert_eq!(rep["uniqueActors"], 3, "{rep}");
    let top = &rep["topActors"][0];
    assert_eq!(top["actorType"], "USER");
    assert!(top["userId"].is_string(), "{rep}");
    let by = |a: &str| {
        rep["byAction"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["action"] == a))
            .map_or(0, |x| x["count"].as_i64().unwrap_or(0))
    };
    assert_eq!(by("workflow.created"), 2);
    assert_eq!(by("auth.login_failed"), 2);
    assert_eq!(rep["chain"]["intact"], true);
    assert_eq!(rep["chain"]["checked"], total);

    // An export, then a second report: both the export and the first report count.
    let resp = app
        .http
        .get(format!("{}/audit/export?format=ndjson", app.base))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("body");
    let r2 = app
        .gql_as(&owner, report_q, json!({ "f": from, "t": to }))
        .await;
    let rep2 = &r2["data"]["complianceReport"];
    assert_eq!(rep2["exportsPerformed"], 1, "{r2}");
    assert_eq!(rep2["reportsGenerated"], 1);
    // The report itself is in the trail, naming the report.
    let rec = app
        .gql_as(
            &owner,
            "{ auditLog(first: 1, filter: {actionPrefix: \"audit.report\"}) { edges { node { action resourceId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        rec["data"]["auditLog"]["edges"][0]["node"]["resourceId"],
        rep2["id"]
    );
    // The developer has no audit.export: the report is refused.
    let no = app
        .gql_as(&dev, report_q, json!({ "f": from, "t": to }))
        .await;
    assert_eq!(first_error_code(&no).as_deref(), Some("FORBIDDEN"));
    let bad = app
        .gql_as(&owner, report_q, json!({ "f": to, "t": from }))
        .await;
    assert_eq!(first_error_code(&bad).as_deref(), Some("BAD_USER_INPUT"));
}

#[tokio::test(flavor = "multi_thread")]
async fn export_streams_csv_and_ndjson_to_authorized_callers_only_and_is_recorded() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("exp").await;
    create_workflow(&app, &owner, "exported, \"quoted\"").await;
    let url = |q: &str| format!("{}/audit/export{q}", app.base);

    let resp = app
        .http
        .get(url("?format=ndjson"))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().ok(),
        Some("application/x-ndjson")
    );
    let last: i64 = resp.headers()["x-audit-last-sequence"]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("last sequence header");
    // The export carries a checkpoint of its last record that verifies the chain later.
    let checkpoint: Value = resp.headers()["x-audit-checkpoint"]
        .to_str()
        .ok()
        .and_then(|s| serde_json::from_str(s).ok())
        .expect("checkpoint header");
    assert_eq!(checkpoint["sequence"], last);
    let v = app
        .gql_as(
            &owner,
            "query($c: AuditCheckpointInput) { verifyAuditChain(checkpoint: $c) { intact problem } }",
            json!({ "c": { "sequence": checkpoint["sequence"], "hash": checkpoint["hash"],
                           "signature": checkpoint["signature"] } }),
        )
        .await;
    assert_eq!(v["data"]["verifyAuditChain"]["intact"], true, "{v}");
    let body = resp.text().await.expect("body");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(
        lines.len() as i64,
        last,
        "every record up to the export's own"
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["sequence"], i as i64 + 1);
        if i > 0 {
            assert_eq!(l["prevHash"], lines[i - 1]["hash"], "exported chain links");
        }
    }
    assert_eq!(lines.last().expect("one")["action"], "audit.exported");
    assert_eq!(lines.last().expect("one")["changes"]["format"], "ndjson");

    let resp = app
        .http
        .get(url("?format=csv"))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    let csv = resp.text().await.expect("body");
    let mut rows = csv.split("\r\n").filter(|l| !l.is_empty());
    assert!(
        rows.next()
            .expect("header")
            .starts_with("sequence,id,created_at,")
    );
    assert_eq!(rows.count() as i64, last + 1);
    assert!(csv.contains("workflow.created"));

    // A time window: only records inside it (none from the future).
    let future = (app.clock.now() + chrono::Duration::days(1)).to_rfc3339();
    let resp = app
        .http
        .get(url(&format!("?format=ndjson&from={}", urlencode(&future))))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "");

    // Refusals.
    let resp = app.http.get(url("")).send().await.expect("export");
    assert_eq!(resp.status(), 401);
    let (_, dev) = user_with_role(&app, &owner, "dev@exp.example", "DEVELOPER", "dev-agent").await;
    let resp = app
        .http
        .get(url(""))
        .bearer_auth(&dev)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.expect("json error");
    assert_eq!(err["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let resp = app
        .http
        .get(url("?format=xml"))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json error");
    assert_eq!(err["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    // The denial is recorded; refused or malformed requests export nothing.
    let recs = app
        .gql_as(
            &owner,
            "{ auditLog(first: 5) { edges { node { action resourceId outcome } } } }",
            json!({}),
        )
        .await;
    let edges = recs["data"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    assert_eq!(edges[0]["node"]["action"], "access.denied", "{recs}");
    assert_eq!(edges[0]["node"]["resourceId"], "/audit/export");

    // An API key with audit.export works like a token.
    let key = app
        .gql_as(
            &owner,
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            json!({ "i": { "name": "siem", "roleId": "ANALYST" } }),
        )
        .await["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let resp = app
        .http
        .get(url("?format=csv"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 200);
    let csv = resp.text().await.expect("body");
    assert!(csv.lines().last().expect("row").contains("audit.exported"));
    assert!(csv.lines().last().expect("row").contains("API_KEY"));
}
