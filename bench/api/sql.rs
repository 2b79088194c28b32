//! The baselines: the fewest statements that answer what the API is asked, run from
//! the bench on the same database.

use serde_json::json;

#[derive(diesel::QueryableByName)]
#[allow(dead_code)]
pub(crate) struct WfRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    owner_id: Option<String>,
}

#[derive(diesel::QueryableByName)]
#[allow(dead_code)]
pub(crate) struct UserRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    email: String,
}

#[derive(diesel::QueryableByName)]
#[allow(dead_code)]
pub(crate) struct ExecRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    workflow_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::Timestamp)]
    created_at: chrono::NaiveDateTime,
}

/// The same answer as the nested read in the fewest statements: a page of workflows,
/// their owners, and each one's 10 newest executions (index-backed top-N).
pub(crate) async fn minimal_nested(
    db: &agentplane::db::DbPool,
    tenant: agentplane::tenancy::TenantId,
) -> anyhow::Result<usize> {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl as _;
    let t = tenant.to_string();
    let sqlite = matches!(db, agentplane::db::DbPool::Sqlite(_));
    let wfs: Vec<WfRow> = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            diesel::sql_query(
                "SELECT id, name, owner_id FROM workflows WHERE tenant_id = $1 \
             ORDER BY id DESC LIMIT 51",
            )
            .bind::<Text, _>(&t)
            .load(conn)
            .await?
        }))
    })
    .await?;
    let owners = wfs
        .iter()
        .filter_map(|w| w.owner_id.as_ref())
        .map(|o| format!("'{o}'"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>();
    let users: Vec<UserRow> = if owners.is_empty() {
        Vec::new()
    } else {
        let sql = format!(
            "SELECT id, email FROM users WHERE tenant_id = $1 AND id IN ({})",
            owners.join(",")
        );
        ok_db(async {
            Ok(agentplane::db_run!(db, |conn| {
                diesel::sql_query(sql.clone())
                    .bind::<Text, _>(&t)
                    .load(conn)
                    .await?
            }))
        })
        .await?
    };
    let ids: Vec<String> = wfs.iter().map(|w| format!("'{}'", w.id)).collect();
    let sql = if sqlite {
        ids.iter()
            .map(|w| {
                format!(
                    "SELECT * FROM (SELECT id, workflow_id, status, created_at FROM executions \
                     INDEXED BY executions_tenant_workflow_id_idx \
                     WHERE tenant_id = $1 AND workflow_id = {w} ORDER BY id DESC LIMIT 10)"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    } else {
        format!(
            "SELECT e.id, e.workflow_id, e.status, e.created_at FROM (VALUES ({})) AS w(id) \
             CROSS JOIN LATERAL (SELECT id, workflow_id, status, created_at FROM executions x \
             WHERE x.tenant_id = $1 AND x.workflow_id = w.id ORDER BY x.id DESC LIMIT 10) e",
            ids.join("), (")
        )
    };
    let execs: Vec<ExecRow> = ok_db(async {
        Ok(agentplane::db_run!(db, |conn| {
            diesel::sql_query(sql.clone())
                .bind::<Text, _>(&t)
                .load(conn)
                .await?
        }))
    })
    .await?;
    Ok(wfs.len() + users.len() + execs.len())
}

/// What `startExecution` must write at least: the execution and its first event, and
/// (PostgreSQL) the notification, in one transaction.
pub(crate) async fn minimal_start(
    db: &agentplane::db::DbPool,
    template: &agentplane::executions::model::ExecutionRow,
) -> anyhow::Result<()> {
    use agentplane::db::schema::executions;
    use diesel::sql_types::{BigInt, Text, Timestamp};
    use diesel_async::RunQueryDsl as _;
    let mut row = template.clone();
    row.id = agentplane::executions::model::ExecutionId::new();
    row.idempotency_key = None;
    let now = chrono::Utc::now().naive_utc();
    let payload = json!({ "executionId": row.id.to_string(), "seq": 1 }).to_string();
    let pg = matches!(db, agentplane::db::DbPool::Postgres(_));
    db.tx(row.tenant_id, async |conn| {
        agentplane::on_conn!(conn, |c| {
            diesel::insert_into(executions::table)
                .values(&row)
                .execute(&mut *c)
                .await?;
            diesel::sql_query(
                "INSERT INTO execution_events (id, tenant_id, execution_id, seq, payload, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind::<Text, _>(uuid::Uuid::now_v7().to_string())
            .bind::<Text, _>(row.tenant_id.to_string())
            .bind::<Text, _>(row.id.to_string())
            .bind::<BigInt, _>(1i64)
            .bind::<Text, _>(&payload)
            .bind::<Timestamp, _>(now)
            .execute(&mut *c)
            .await?;
            if pg {
                diesel::sql_query("SELECT pg_notify('agentplane_bench', $1)")
                    .bind::<Text, _>(&payload)
                    .execute(&mut *c)
                    .await?;
            }
        });
        Ok(())
    })
    .await
    .map_err(agentplane::error::AppError::into_anyhow)
}

/// Runs a block that uses `AppError` (the pool macros) and turns its error into anyhow.
pub(crate) async fn ok_db<T>(
    f: impl std::future::Future<Output = Result<T, agentplane::error::AppError>>,
) -> anyhow::Result<T> {
    f.await.map_err(agentplane::error::AppError::into_anyhow)
}
