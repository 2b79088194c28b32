//! Seeding: tenants and workflows through the API, history written directly.

use diesel::{ExpressionMethods as _, QueryDsl as _, SelectableHelper as _};
use serde_json::json;

use crate::OWNER_PASSWORD;
use crate::server::{gql, login};
use crate::sql::ok_db;

/// A seeded tenant: its owner's token and its workflows' global ids.
pub(crate) struct Seeded {
    pub(crate) token: String,
    pub(crate) workflows: Vec<String>,
}

pub(crate) async fn seed_tenant(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    slug: &str,
    workflows: usize,
) -> anyhow::Result<Seeded> {
    let created = gql(
        client,
        base,
        Some(admin),
        "mutation($i: CreateTenantInput!) { createTenant(input: $i) { tenant { id } setPasswordToken } }",
        json!({ "i": { "slug": slug, "name": slug, "plan": "ENTERPRISE",
                       "owner": { "email": format!("owner@{slug}.bench"), "displayName": "Owner" } } }),
    )
    .await?;
    // The benchmark measures the server, not the tenant's rate limits: off.
    gql(
        client,
        base,
        Some(admin),
        "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
        json!({ "i": { "tenantId": created["data"]["createTenant"]["tenant"]["id"], "plan": "ENTERPRISE",
                       "quotas": { "requestsPerMinute": 0, "expensiveOperationsPerMinute": 0,
                                   "queryCostPerMinute": 0 } } }),
    )
    .await?;
    gql(
        client,
        base,
        None,
        "mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }",
        json!({ "i": { "token": created["data"]["createTenant"]["setPasswordToken"],
                       "password": OWNER_PASSWORD } }),
    )
    .await?;
    let token = login(client, base, &format!("owner@{slug}.bench"), OWNER_PASSWORD).await?;
    let definition = json!({ "steps": [
        { "id": "t", "kind": "transform", "config": { "template": "{\"n\": {{ input.n }}}" } }
    ]});
    let mut ids = Vec::with_capacity(workflows);
    for i in 0..workflows {
        let wf = gql(
            client,
            base,
            Some(&token),
            "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }",
            json!({ "i": { "name": format!("wf-{i}"), "definition": definition } }),
        )
        .await?;
        let id = wf["data"]["createWorkflow"]["workflow"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        gql(
            client,
            base,
            Some(&token),
            "mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }",
            json!({ "i": { "workflowId": id } }),
        )
        .await?;
        ids.push(id);
    }
    Ok(Seeded {
        token,
        workflows: ids,
    })
}

pub(crate) async fn start_executions(
    client: &reqwest::Client,
    base: &str,
    t: &Seeded,
    per_workflow: usize,
) -> anyhow::Result<()> {
    for _ in 0..per_workflow {
        for w in &t.workflows {
            gql(
                client,
                base,
                Some(&t.token),
                "mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }",
                json!({ "i": { "workflowId": w, "input": { "n": 1 } } }),
            )
            .await?;
        }
    }
    Ok(())
}

pub(crate) async fn tenant_id(
    db: &agentplane::db::DbPool,
    slug: &str,
) -> anyhow::Result<agentplane::tenancy::TenantId> {
    use agentplane::db::schema::tenants;
    use diesel_async::RunQueryDsl as _;
    let id: agentplane::tenancy::TenantId = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            tenants::table
                .filter(tenants::slug.eq(slug))
                .select(tenants::id)
                .first(conn)
                .await?
        }))
    })
    .await?;
    Ok(id)
}

pub(crate) async fn first_execution(
    db: &agentplane::db::DbPool,
    tenant: agentplane::tenancy::TenantId,
) -> anyhow::Result<agentplane::executions::model::ExecutionRow> {
    use agentplane::db::schema::executions;
    use agentplane::executions::model::ExecutionRow;
    use diesel_async::RunQueryDsl as _;
    let row: ExecutionRow = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            executions::table
                .filter(executions::tenant_id.eq(tenant))
                .select(ExecutionRow::as_select())
                .first(conn)
                .await?
        }))
    })
    .await?;
    Ok(row)
}

/// Clones each of the tenant's executions `history` times with newer ids (still older
/// than anything started afterwards), as finished executions.
pub(crate) async fn seed_history(
    db: &agentplane::db::DbPool,
    tenant: agentplane::tenancy::TenantId,
    history: usize,
) -> anyhow::Result<()> {
    use agentplane::db::schema::executions;
    use agentplane::executions::model::{ExecutionId, ExecutionRow, ExecutionStatus};
    use diesel_async::RunQueryDsl as _;
    let templates: Vec<ExecutionRow> = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            executions::table
                .filter(executions::tenant_id.eq(tenant))
                .select(ExecutionRow::as_select())
                .load(conn)
                .await?
        }))
    })
    .await?;
    let mut rows = Vec::with_capacity(templates.len() * history);
    for k in 0..history {
        for t in &templates {
            let mut r = t.clone();
            r.id = ExecutionId::new();
            r.status = ExecutionStatus::Succeeded;
            r.idempotency_key = None;
            r.created_at = t.created_at + chrono::Duration::milliseconds(k as i64);
            rows.push(r);
        }
    }
    for chunk in rows.chunks(2000) {
        db.tx(tenant, async |conn| {
            agentplane::on_conn!(conn, |c| {
                for r in chunk {
                    diesel::insert_into(executions::table)
                        .values(r)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
        .await
        .map_err(agentplane::error::AppError::into_anyhow)?;
    }
    Ok(())
}
