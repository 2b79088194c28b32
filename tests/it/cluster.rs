//! Cluster: node registration and telemetry, GPU placement with quotas, failover when a
//! node dies, drain, and the node-health subscriptions. Worker processes report fake
//! GPUs (`AGENTPLANE_FAKE_GPUS`); this machine has no NVML, which is the other path.

use std::time::Duration;

use serde_json::{Value, json};

use crate::executions::{
    finished, published, start, step, step_status, wait_for, worker_process_with,
};
use crate::helpers::{TestApp, bin, first_error_code, ws_authed, ws_next_json, ws_send};

const HEARTBEAT: (&str, &str) = ("AGENTPLANE_HEARTBEAT_MS", "200");
const OFFLINE: (&str, &str) = ("AGENTPLANE_NODE_OFFLINE_AFTER_MS", "2000");

const NODES: &str = "{ cluster { nodes { totalCount edges { node { id name kind status healthScore draining workerSlots labels lastHeartbeatAt gpus { index name memoryTotalMb memoryReservedMb } } } } } }";
const ALLOCATIONS: &str =
    "{ cluster { allocations { id nodeName gpuIndex memoryMb executionId stepId reason } } }";

/// Polls the admin's node list until `pred` holds.
async fn wait_nodes(
    app: &TestApp,
    admin: &str,
    secs: u64,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let out = app.gql_as(admin, NODES, json!({})).await;
        let nodes: Vec<Value> = out["data"]["cluster"]["nodes"]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{out}"))
            .iter()
            .map(|e| e["node"].clone())
            .collect();
        if pred(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes not as expected within {secs} s: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(nodes: &'a [Value], name: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["name"] == name)
}

fn is_live(nodes: &[Value], name: &str) -> bool {
    named(nodes, name).is_some_and(|n| matches!(n["status"].as_str(), Some("HEALTHY" | "DEGRADED")))
}

async fn allocations(app: &TestApp, token: &str) -> Vec<Value> {
    let out = app.gql_as(token, ALLOCATIONS, json!({})).await;
    out["data"]["cluster"]["allocations"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .clone()
}

fn gpu_workflow(mb: u64, ms: u64) -> Value {
    json!({ "steps": [
        { "id": "prep", "kind": "transform", "config": { "template": "{\"ok\": true}" } },
        { "id": "infer", "kind": "delay", "dependsOn": ["prep"], "config": { "ms": ms },
          "resources": { "gpuMemoryMb": mb, "gpuCount": 1 } },
    ]})
}

async fn set_gpu_quota(app: &TestApp, admin: &str, tenant: &str, mb: i64) {
    let out = app
        .gql_as(
            admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": tenant, "plan": "CUSTOM", "quotas": { "maxGpuMemoryMb": mb } } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
}

async fn waiting_reason(app: &TestApp, token: &str, id: &str) -> Option<String> {
    let out = app
        .gql_as(
            token,
            "query($id: ID!) { execution(id: $id) { status waitingReason } }",
            json!({ "id": id }),
        )
        .await;
    out["data"]["execution"]["waitingReason"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_reason(app: &TestApp, token: &str, id: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = waiting_reason(app, token, id).await;
        if let Some(r) = r.as_deref().filter(|r| r.contains(needle)) {
            return r.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no waiting reason with {needle:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn id_of(v: &Value) -> String {
    v["execution"]["id"].as_str().expect("id").to_owned()
}

/// An API-only server and two worker processes: `small` (one 24 GiB GPU) and `big` (one
/// 80 GiB GPU), both live. Returns the app, the workers, an admin token and the nodes.
async fn api_and_two_gpu_workers() -> (
    TestApp,
    tokio::process::Child,
    tokio::process::Child,
    String,
    Vec<Value>,
) {
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0"), HEARTBEAT, OFFLINE]).await;
    let worker = |name: &'static str, gpus: &'static str| {
        let url = app.db.url.clone();
        async move {
            worker_process_with(
                &url,
                &[
                    HEARTBEAT,
                    OFFLINE,
                    ("AGENTPLANE_NODE_NAME", name),
                    ("AGENTPLANE_FAKE_GPUS", gpus),
                ],
            )
            .await
        }
    };
    let small = worker("small", "A10:24576").await;
    let big = worker("big", "H100:81920").await;
    let admin = app.admin_token().await;
    let nodes = wait_nodes(&app, &admin, 20, |n| {
        is_live(n, "small") && is_live(n, "big")
    })
    .await;
    (app, small, big, admin, nodes)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_is_a_node_and_tenants_see_only_the_summary() {
    let app = TestApp::spawn_with(&[
        HEARTBEAT,
        OFFLINE,
        ("AGENTPLANE_NODE_NAME", "api-1"),
        ("AGENTPLANE_NODE_LABELS", "zone=test,pool=cpu"),
    ])
    .await;
    let admin = app.admin_token().await;
    let nodes = wait_nodes(&app, &admin, 10, |n| is_live(n, "api-1")).await;
    let node = named(&nodes, "api-1").expect("api node");
    assert_eq!(node["kind"], "API");
    assert_eq!(node["workerSlots"], 4);
    assert_eq!(node["labels"], json!({ "zone": "test", "pool": "cpu" }));
    let nvml_absent = agentplane::cluster::gpu::NvmlProbe::new()
        .unavailable_reason()
        .is_some();
    if nvml_absent {
        // No driver here: zero GPUs, and the node still runs normally.
        assert_eq!(node["gpus"], json!([]));
        let out = std::process::Command::new(bin())
            .arg("gpu-info")
            .output()
            .expect("gpu-info runs");
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NVML unavailable"), "{text}");
    }
    let node_id = node["id"].as_str().expect("id").to_owned();
    // Telemetry accumulates for charts.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let q = "query($id: ID!) { node(id: $id) { ... on ClusterNode { name memoryTotalMb telemetry(last: 5) { at healthScore cpuPercent memoryUsedMb } } } }";
    let out = app.gql_as(&admin, q, json!({ "id": node_id })).await;
    let samples = out["data"]["node"]["telemetry"]
        .as_array()
        .expect("samples");
    assert!(samples.len() >= 2 && samples.len() <= 5, "{out}");
    let summary_q = "{ cluster { summary { nodesByStatus { status count } gpusTotal gpuMemoryTotalMb gpuMemoryReservedMb queueDepth oldestQueuedSeconds } } }";
    let out = app.gql_as(&admin, summary_q, json!({})).await;
    let s = &out["data"]["cluster"]["summary"];
    assert_eq!(
        s["nodesByStatus"].as_array().map(Vec::len),
        Some(5),
        "{out}"
    );
    assert_eq!(s["queueDepth"], 0);
    let scale = app
        .gql_as(
            &admin,
            "{ cluster { scalingRecommendation { currentWorkers desiredWorkers reason } } }",
            json!({}),
        )
        .await;
    let rec = &scale["data"]["cluster"]["scalingRecommendation"];
    assert_eq!(rec["currentWorkers"], 1, "{scale}");
    assert_eq!(rec["desiredWorkers"], 1, "{scale}");

    // A tenant user sees the summary and nothing that names a node.
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = app.gql_as(&owner, summary_q, json!({})).await;
    assert!(out["errors"].is_null(), "{out}");
    for q in [
        "{ cluster { nodes { totalCount } } }",
        "{ cluster { scalingRecommendation { desiredWorkers } } }",
    ] {
        let out = app.gql_as(&owner, q, json!({})).await;
        assert_eq!(
            first_error_code(&out).as_deref(),
            Some("FORBIDDEN"),
            "{q}: {out}"
        );
    }
    let out = app.gql_as(&owner, q, json!({ "id": node_id })).await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("NOT_FOUND"),
        "{out}"
    );
    let out = app
        .gql_as(
            &owner,
            "mutation($i: NodeIdInput!) { drainNode(input: $i) { node { status } } }",
            json!({ "i": { "nodeId": node_id } }),
        )
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("FORBIDDEN"),
        "{out}"
    );

    // Clear errors for wrong inputs.
    let unknown = agentplane::graphql::relay::to_global_id(
        agentplane::graphql::relay::NodeKind::ClusterNode,
        uuid::Uuid::now_v7(),
    );
    let out = app
        .gql_as(
            &admin,
            "mutation($i: NodeIdInput!) { drainNode(input: $i) { node { status } } }",
            json!({ "i": { "nodeId": unknown } }),
        )
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("NOT_FOUND"),
        "{out}"
    );
    if nvml_absent {
        let out = app
            .gql_as(
                &admin,
                "mutation($i: AllocateGpuInput!) { allocateGpu(input: $i) { allocation { id } } }",
                json!({ "i": { "nodeId": node_id, "memoryMb": 1024, "reason": "test" } }),
            )
            .await;
        assert_eq!(
            first_error_code(&out).as_deref(),
            Some("BAD_USER_INPUT"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_steps_go_to_the_best_fitting_node_within_the_tenant_quota() {
    let (app, mut small, mut big, admin, nodes) = api_and_two_gpu_workers().await;
    let big_id = named(&nodes, "big").expect("big")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (tenant, owner) = app.tenant_with_owner("acme").await;
    set_gpu_quota(&app, &admin, &tenant, 60_000).await;
    let fits_both = published(&app, &owner, "fits-both", gpu_workflow(16_000, 1500)).await;
    let big_only = published(&app, &owner, "big-only", gpu_workflow(40_000, 1500)).await;

    // Best fit: 16 GB goes to the 24 GB GPU, 40 GB to the 80 GB one.
    let e1 = id_of(&start(&app, &owner, json!({ "workflowId": fits_both })).await);
    let e2 = id_of(&start(&app, &owner, json!({ "workflowId": big_only })).await);
    wait_for(&app, &owner, &e1, 20, step_status("infer", "RUNNING")).await;
    wait_for(&app, &owner, &e2, 20, step_status("infer", "RUNNING")).await;
    let allocs = allocations(&app, &owner).await;
    let on = |exec: &str| -> Vec<(String, i64)> {
        allocs
            .iter()
            .filter(|a| a["executionId"] == exec)
            .map(|a| {
                (
                    a["nodeName"].as_str().unwrap_or("").to_owned(),
                    a["memoryMb"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(on(&e1), vec![("small".to_owned(), 16_000)], "{allocs:?}");
    assert_eq!(on(&e2), vec![("big".to_owned(), 40_000)], "{allocs:?}");
    let usage = app
        .gql_as(
            &owner,
            "{ tenant { usage { gpuMemoryReservedMb maxGpuMemoryMb runningExecutions } } }",
            json!({}),
        )
        .await;
    let u = &usage["data"]["tenant"]["usage"];
    assert_eq!(u["gpuMemoryReservedMb"], 56_000, "{usage}");
    assert_eq!(u["maxGpuMemoryMb"], 60_000, "{usage}");
    // Another tenant sees none of it.
    let (_, stranger) = app.tenant_with_owner("other").await;
    assert!(allocations(&app, &stranger).await.is_empty());
    let out = app
        .gql_as(
            &stranger,
            "{ cluster { summary { queueDepth gpuMemoryReservedMb } } }",
            json!({}),
        )
        .await;
    assert_eq!(out["data"]["cluster"]["summary"]["queueDepth"], 0, "{out}");

    // Quota: 56 GB held of 60 GB, so another 40 GB waits and says why.
    let e3 = id_of(&start(&app, &owner, json!({ "workflowId": big_only })).await);
    let reason = wait_reason(&app, &owner, &e3, "maxGpuMemoryMb").await;
    assert!(reason.contains("60000"), "{reason}");
    for e in [&e1, &e2, &e3] {
        let done = wait_for(&app, &owner, e, 30, finished).await;
        assert_eq!(done["status"], "SUCCEEDED", "{done}");
    }
    assert!(
        allocations(&app, &owner).await.is_empty(),
        "released after success"
    );

    // A maintenance reservation takes the big GPU: 40 GB must wait for capacity.
    let out = app
        .gql_as(
            &admin,
            "mutation($i: AllocateGpuInput!) { allocateGpu(input: $i) { allocation { id nodeName gpuIndex memoryMb reason } } }",
            json!({ "i": { "nodeId": big_id, "memoryMb": 70_000, "reason": "driver update" } }),
        )
        .await;
    let alloc = out["data"]["allocateGpu"]["allocation"].clone();
    assert_eq!(alloc["nodeName"], "big", "{out}");
    assert_eq!(alloc["reason"], "driver update");
    assert!(
        allocations(&app, &owner).await.is_empty(),
        "tenants see only their own"
    );
    assert_eq!(allocations(&app, &admin).await.len(), 1);
    let e4 = id_of(&start(&app, &owner, json!({ "workflowId": big_only })).await);
    wait_reason(&app, &owner, &e4, "waiting for GPU capacity").await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: ReleaseGpuInput!) { releaseGpu(input: $i) { memoryMb } }",
            json!({ "i": { "allocationId": alloc["id"] } }),
        )
        .await;
    assert_eq!(out["data"]["releaseGpu"]["memoryMb"], 70_000, "{out}");
    let done = wait_for(&app, &owner, &e4, 30, finished).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    // Both maintenance actions are in the platform's audit trail.
    let out = app
        .gql_as(
            &admin,
            "{ auditLog(filter: { actionPrefix: \"gpu.\" }) { edges { node { action resourceType changes } } } }",
            json!({}),
        )
        .await;
    let acts: Vec<&str> = out["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .filter_map(|e| e["node"]["action"].as_str())
        .collect();
    assert_eq!(acts, ["gpu.released", "gpu.allocated"], "{out}");

    // Larger than the quota: refused at start. Larger than any GPU: waits, and says so.
    let huge = published(&app, &owner, "huge", gpu_workflow(100_000, 10)).await;
    let out = app
        .gql_as(
            &owner,
            "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
            json!({ "i": { "workflowId": huge } }),
        )
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{out}"
    );
    set_gpu_quota(&app, &admin, &tenant, 200_000).await;
    let e5 = id_of(&start(&app, &owner, json!({ "workflowId": huge })).await);
    let reason = wait_reason(&app, &owner, &e5, "no node can fit").await;
    assert!(reason.contains("81920"), "{reason}");
    let out = app
        .gql_as(
            &admin,
            "mutation($i: AllocateGpuInput!) { allocateGpu(input: $i) { allocation { id } } }",
            json!({ "i": { "nodeId": big_id, "memoryMb": 200_000, "reason": "too big" } }),
        )
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("BAD_USER_INPUT"),
        "{out}"
    );
    small.kill().await.expect("kill");
    big.kill().await.expect("kill");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_goes_offline_and_its_gpu_work_finishes_on_another() {
    let (app, small, big, admin, nodes) = api_and_two_gpu_workers().await;
    let (_, owner) = app.tenant_with_owner("acme").await;

    // An operator dashboard and a tenant dashboard are watching.
    let mut ops = ws_authed(&app.ws_url(), "graphql-transport-ws", &admin).await;
    ws_send(
        &mut ops,
        json!({ "id": "h", "type": "subscribe", "payload": {
            "query": "subscription { nodeHealth { kind previousStatus node { name status } } }" } }),
    )
    .await;
    let mut dash = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut dash,
        json!({ "id": "s", "type": "subscribe", "payload": {
            "query": "subscription { clusterSummary { nodesByStatus { status count } gpusTotal } }" } }),
    )
    .await;
    let first = ws_next_json(&mut dash).await;
    assert_eq!(
        first["payload"]["data"]["clusterSummary"]["gpusTotal"], 2,
        "{first}"
    );

    let wf = published(&app, &owner, "gpu", gpu_workflow(16_000, 2500)).await;
    let id = id_of(&start(&app, &owner, json!({ "workflowId": wf })).await);
    wait_for(&app, &owner, &id, 20, step_status("infer", "RUNNING")).await;
    let held = allocations(&app, &owner).await;
    assert_eq!(held.len(), 1, "{held:?}");
    // Best fit is the small GPU, but health weighs in too, and health follows the host's
    // CPU load, which a busy CI machine moves: kill whichever node holds the work.
    let (victim, mut dead, mut survivor, survivor_name) = if held[0]["nodeName"] == "small" {
        ("small", small, big, "big")
    } else {
        ("big", big, small, "small")
    };
    let victim_id = named(&nodes, victim).expect("victim")["id"].clone();
    let survivor_id = named(&nodes, survivor_name).expect("survivor")["id"].clone();

    dead.kill().await.expect("SIGKILL");
    let killed = tokio::time::Instant::now();
    // The operator sees it go OFFLINE within the timeout (plus a heartbeat or two).
    loop {
        let msg = ws_next_json(&mut ops).await;
        assert_eq!(msg["type"], "next", "{msg}");
        let ev = &msg["payload"]["data"]["nodeHealth"];
        if ev["node"]["name"] == victim && ev["node"]["status"] == "OFFLINE" {
            assert_eq!(ev["kind"], "STATUS_CHANGED");
            assert!(ev["previousStatus"].is_string(), "{ev}");
            break;
        }
    }
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "{:?}",
        killed.elapsed()
    );
    // The summary subscriber saw the change too.
    loop {
        let msg = ws_next_json(&mut dash).await;
        let s = &msg["payload"]["data"]["clusterSummary"];
        let offline = s["nodesByStatus"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["status"] == "OFFLINE"))
            .map(|x| x["count"].clone());
        if offline == Some(json!(1)) {
            assert_eq!(s["gpusTotal"], 1, "{s}");
            break;
        }
    }
    // Its reservation is gone, and the execution finishes on the other node.
    let e = wait_for(&app, &owner, &id, 30, finished).await;
    assert_eq!(e["status"], "SUCCEEDED", "{e}");
    assert_eq!(e["claims"], 2, "{e}");
    assert_eq!(step(&e, "prep")["attempt"], 1, "finished steps are kept");
    assert_eq!(
        step(&e, "infer")["attempt"],
        2,
        "the interrupted step ran again"
    );
    assert!(allocations(&app, &admin).await.is_empty());

    // Draining an OFFLINE node is refused; a draining node claims nothing new.
    let drain = "mutation($i: NodeIdInput!) { drainNode(input: $i) { node { status draining } } }";
    let out = app
        .gql_as(&admin, drain, json!({ "i": { "nodeId": victim_id } }))
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("CONFLICT"), "{out}");
    let out = app
        .gql_as(&admin, drain, json!({ "i": { "nodeId": survivor_id } }))
        .await;
    assert_eq!(
        out["data"]["drainNode"]["node"]["status"], "DRAINING",
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plain = published(
        &app,
        &owner,
        "plain",
        json!({ "steps": [ { "id": "t", "kind": "transform", "config": { "template": "{\"v\": 1}" } } ]}),
    )
    .await;
    let p = id_of(&start(&app, &owner, json!({ "workflowId": plain })).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let still = wait_for(&app, &owner, &p, 5, |_| true).await;
    assert_eq!(still["status"], "QUEUED", "{still}");
    let out = app
        .gql_as(
            &admin,
            "mutation($i: NodeIdInput!) { undrainNode(input: $i) { node { draining } } }",
            json!({ "i": { "nodeId": survivor_id } }),
        )
        .await;
    assert_eq!(
        out["data"]["undrainNode"]["node"]["draining"], false,
        "{out}"
    );
    let done = wait_for(&app, &owner, &p, 20, finished).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");

    // A clean stop (SIGTERM) leaves at once, and only itself: the API node stays up.
    let pid = survivor.id().expect("running");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let nodes = wait_nodes(&app, &admin, 10, |n| {
        named(n, survivor_name).is_some_and(|b| b["status"] == "OFFLINE")
    })
    .await;
    // It left (its heartbeat is set to the epoch on the way out) rather than timing out.
    let gone = named(&nodes, survivor_name).expect("survivor");
    assert!(
        gone["lastHeartbeatAt"]
            .as_str()
            .is_some_and(|t| t.starts_with("1970-01-01")),
        "{gone}"
    );
    let api = nodes.iter().find(|n| n["kind"] == "API").expect("api node");
    assert_ne!(api["status"], "OFFLINE", "{api}");
    let _ = survivor.wait().await;
}

/// A node row as a worker process would register it, with one GPU of `mb` MiB.
fn fake_node(
    name: &str,
    mb: u64,
    at: chrono::NaiveDateTime,
) -> agentplane::cluster::model::NodeRow {
    let gpus = json!([{ "index": 0, "uuid": format!("GPU-{name}"), "name": "H100",
        "memoryTotalMb": mb, "memoryUsedMb": 0, "memoryFreeMb": mb, "utilizationPercent": 0,
        "temperatureC": 40, "powerDrawW": 100.0, "migEnabled": null }]);
    agentplane::cluster::model::NodeRow {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_owned(),
        kind: "WORKER".to_owned(),
        version: "test".to_owned(),
        address: None,
        labels: "{}".to_owned(),
        worker_slots: 4,
        started_at: at,
        last_heartbeat_at: at,
        status: agentplane::cluster::model::NodeStatus::Healthy,
        draining: false,
        health_score: 1.0,
        cpu_percent: 0.0,
        memory_used_mb: 0,
        memory_total_mb: 65_536,
        load1: 0.0,
        in_flight: 0,
        step_error_rate: 0.0,
        gpus: gpus.to_string(),
        offline_at: None,
        updated_at: at,
    }
}

/// A GPU execution whose driver holds its lease but has not written RUNNING yet (it runs
/// the inline `prep` step first and holds that write back) has started on its node:
/// draining that node leaves it there, as it leaves RUNNING work (the placer used to read
/// it as QUEUED and moved its placement to another node while it ran).
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_gpu_execution_keeps_its_node_while_that_node_drains() {
    use agentplane::cluster::{agent::place_pending, store};
    let app = TestApp::spawn_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let admin = app.admin_token().await;
    let (tenant, owner) = app.tenant_with_owner("held").await;
    set_gpu_quota(&app, &admin, &tenant, 60_000).await;
    let wf = published(&app, &owner, "gpu", gpu_workflow(16_000, 1000)).await;
    let core = &app.state.app;
    // Node liveness is on the wall clock, leases on the app's.
    let wall = chrono::Utc::now();
    let at = agentplane::db::ids::db_time(core.clock.now());
    for name in ["left", "right"] {
        store::register(&core.db, &fake_node(name, 81_920, wall.naive_utc()))
            .await
            .expect("register");
    }
    start(&app, &owner, json!({ "workflowId": wf })).await;
    // The tenant's one execution.
    let placed_on = || async {
        let open = store::open_placements(&core.db, at)
            .await
            .expect("placements");
        assert_eq!(open.len(), 1, "{open:?}");
        open[0].0.node_id.clone()
    };
    let place = || async {
        let nodes = store::all_nodes(&core.db).await.expect("nodes");
        place_pending(&core.db, &nodes, wall, at, &core.config.cluster)
            .await
            .expect("place");
    };
    place().await;
    let node = placed_on().await.expect("placed on a GPU node");
    // The node's driver claims it; it is still QUEUED in the database.
    let until = at + chrono::Duration::seconds(60);
    let claimed = agentplane::executions::store::claim(&core.db, "test:gpu", &node, at, until)
        .await
        .expect("claim")
        .expect("the placed execution is claimed by its node");
    assert_eq!(claimed.status.as_str(), "QUEUED");
    core.db
        .tx("", async |c| {
            store::set_draining(c, &node, true, wall.naive_utc()).await
        })
        .await
        .expect("drain");
    place().await;
    assert_eq!(
        placed_on().await.as_deref(),
        Some(node.as_str()),
        "a claimed execution's placement moved off its draining node"
    );
    // Unclaimed, it is queued work again and moves off the draining node.
    agentplane::executions::store::release(&core.db, claimed.id, "test:gpu")
        .await
        .expect("release");
    place().await;
    let moved = placed_on().await.expect("placed");
    assert_ne!(moved, node, "queued work stays on a draining node");
}
