//! Someone with write access to the database — a leaked application credential, a
//! restored backup — tries to make the audit trail say something else. With a master key
//! configured none of it verifies; on PostgreSQL the application role cannot delete or
//! edit records at all.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::executions::tenant_uuid;
use crate::helpers::{TestApp, TestDb};
use agentplane::audit::RecordRow;
use agentplane::db::schema::audit_log;

const VERIFY: &str = "query($c: AuditCheckpointInput) { verifyAuditChain(checkpoint: $c) { intact checked firstBrokenSequence problem checkpoint { sequence hash signature } } }";
const CREATE: &str =
    "mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }";

async fn some_records(app: &TestApp, token: &str, n: usize) {
    for i in 0..n {
        let out = app
            .gql_as(
                token,
                CREATE,
                json!({ "i": { "name": format!("wf-{i}"), "definition": { "steps": [
                    { "id": "t", "kind": "transform", "config": { "template": "1" } } ] } } }),
            )
            .await;
        assert!(out["errors"].is_null(), "{out}");
    }
}

async fn verify(app: &TestApp, token: &str, checkpoint: Value) -> Value {
    let out = app.gql_as(token, VERIFY, json!({ "c": checkpoint })).await;
    assert!(out["errors"].is_null(), "{out}");
    out["data"]["verifyAuditChain"].clone()
}

/// Runs raw SQL as the database owner with the append-only triggers out of the way.
pub async fn as_owner_without_triggers(app: &TestApp, statements: Vec<String>) {
    let pg = TestDb::is_postgres();
    let db = &app.state.app.db;
    let res: Result<(), agentplane::error::AppError> = async {
        agentplane::db_run!(db, |conn| {
            if pg {
                diesel::sql_query("SET session_replication_role = replica")
                    .execute(conn)
                    .await?;
            } else {
                diesel::sql_query("DROP TRIGGER IF EXISTS audit_log_no_update")
                    .execute(conn)
                    .await?;
                diesel::sql_query("DROP TRIGGER IF EXISTS audit_log_no_delete")
                    .execute(conn)
                    .await?;
            }
            for s in &statements {
                diesel::sql_query(s.as_str()).execute(conn).await?;
            }
            if pg {
                diesel::sql_query("SET session_replication_role = origin")
                    .execute(conn)
                    .await?;
            }
        });
        Ok(())
    }
    .await;
    res.expect("tampering statements run");
}

async fn records(app: &TestApp, tenant: &str) -> Vec<RecordRow> {
    let t = tenant.to_owned();
    let db = &app.state.app.db;
    let res: Result<Vec<RecordRow>, agentplane::error::AppError> = async {
        Ok(agentplane::db_run!(db, |conn| {
            audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .order(audit_log::seq.asc())
                .select(RecordRow::as_select())
                .load(conn)
                .await?
        }))
    }
    .await;
    res.expect("records")
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_writer_cannot_forge_a_keyed_chain() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_WORKERS", "0"),
        ("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1),
        ("AGENTPLANE_MASTER_KEY_ID", "k1"),
    ])
    .await;

    // 1. Rewrite a record and rehash everything after it (without the key).
    let (gid, owner) = app.tenant_with_owner("rewrite").await;
    let tenant = tenant_uuid(&gid).to_string();
    some_records(&app, &owner, 4).await;
    let all = records(&app, &tenant).await;
    assert!(
        all.iter().all(|r| r.hash.starts_with("hmac:k1:")),
        "records are keyed"
    );
    assert_eq!(verify(&app, &owner, Value::Null).await["intact"], true);
    let target = all[2].seq;
    let mut prev = all[1].hash.clone();
    let mut statements = Vec::new();
    for r in all.iter().skip(2) {
        let mut r = r.clone();
        if r.seq == target {
            r.reason = Some("nothing happened here".into());
        }
        r.prev_hash = prev.clone();
        r.hash = r.compute_hash();
        prev = r.hash.clone();
        statements.push(format!(
            "UPDATE audit_log SET reason = {}, prev_hash = {}, hash = {} WHERE id = {}",
            r.reason.as_deref().map_or("NULL".into(), q),
            q(&r.prev_hash),
            q(&r.hash),
            q(&r.id)
        ));
    }
    statements.push(format!(
        "UPDATE audit_heads SET hash = {} WHERE tenant_id = {}",
        q(&prev),
        q(&tenant)
    ));
    as_owner_without_triggers(&app, statements).await;
    let v = verify(&app, &owner, Value::Null).await;
    assert_eq!(v["intact"], false, "{v}");
    assert_eq!(v["firstBrokenSequence"], target, "{v}");

    // 2. Cut the tail off and move the head back.
    let (gid, owner) = app.tenant_with_owner("truncate").await;
    let tenant = tenant_uuid(&gid).to_string();
    some_records(&app, &owner, 4).await;
    let kept = verify(&app, &owner, Value::Null).await["checkpoint"].clone();
    assert!(
        kept["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("hmac:k1:")),
        "{kept}"
    );
    agentplane::audit::chain::publish(&app.state.app)
        .await
        .expect("published");
    let all = records(&app, &tenant).await;
    let keep = &all[all.len() - 3];
    as_owner_without_triggers(
        &app,
        vec![
            format!(
                "DELETE FROM audit_log WHERE tenant_id = {} AND seq > {}",
                q(&tenant),
                keep.seq
            ),
            format!(
                "UPDATE audit_heads SET seq = {}, hash = {} WHERE tenant_id = {}",
                keep.seq,
                q(&keep.hash),
                q(&tenant)
            ),
        ],
    )
    .await;
    let v = verify(&app, &owner, Value::Null).await;
    assert_eq!(
        v["intact"], false,
        "the published checkpoint catches it: {v}"
    );
    assert!(
        v["problem"]
            .as_str()
            .is_some_and(|p| p.contains("were removed")),
        "{v}"
    );
    // A checkpoint kept by the client catches it too; a forged one is refused.
    let checkpoint = json!({ "sequence": kept["sequence"], "hash": kept["hash"], "signature": kept["signature"] });
    let v = verify(&app, &owner, checkpoint.clone()).await;
    assert_eq!(v["intact"], false, "{v}");
    let mut forged = checkpoint;
    forged["sequence"] = json!(keep.seq);
    let out = app.gql_as(&owner, VERIFY, json!({ "c": forged })).await;
    assert_eq!(
        out["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{out}"
    );

    // 3. Delete the oldest records and move the retention checkpoint after them.
    let (gid, owner) = app.tenant_with_owner("prefix").await;
    let tenant = tenant_uuid(&gid).to_string();
    some_records(&app, &owner, 4).await;
    let all = records(&app, &tenant).await;
    let cut = &all[2];
    as_owner_without_triggers(
        &app,
        vec![
            format!(
                "DELETE FROM audit_log WHERE tenant_id = {} AND seq <= {}",
                q(&tenant),
                cut.seq
            ),
            format!(
                "UPDATE audit_heads SET checkpoint_seq = {}, checkpoint_hash = {} WHERE tenant_id = {}",
                cut.seq,
                q(&cut.hash),
                q(&tenant)
            ),
        ],
    )
    .await;
    let v = verify(&app, &owner, Value::Null).await;
    assert_eq!(v["intact"], false, "{v}");
    assert!(
        v["problem"]
            .as_str()
            .is_some_and(|p| p.contains("retention checkpoint")),
        "{v}"
    );
    // The chains nobody touched still verify.
    let (_, owner) = app.tenant_with_owner("untouched").await;
    some_records(&app, &owner, 2).await;
    assert_eq!(verify(&app, &owner, Value::Null).await["intact"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_application_role_cannot_delete_or_edit_audit_records() {
    if !TestDb::is_postgres() {
        return; // SQLite has no roles: whoever can write the file owns it.
    }
    let app = TestApp::spawn_as_app_role().await;
    let (gid, owner) = app.tenant_with_owner("role").await;
    let tenant = tenant_uuid(&gid);
    some_records(&app, &owner, 2).await;
    let t = tenant.to_string();
    let db = &app.state.app.db;
    // The session settings that used to open the trigger no longer do.
    for (setting, value) in [
        ("agentplane.audit_retention", "on"),
        ("agentplane.audit_erasure", "on"),
        ("agentplane.audit_guard", "prune"),
        ("agentplane.audit_guard", "erase"),
    ] {
        for statement in [
            format!("DELETE FROM audit_log WHERE tenant_id = {}", q(&t)),
            format!(
                "UPDATE audit_log SET ip = NULL, user_agent = NULL, context_salt = NULL WHERE tenant_id = {}",
                q(&t)
            ),
        ] {
            let res: Result<(), agentplane::error::AppError> = db
                .tx(tenant, async |conn| {
                    agentplane::on_conn!(conn, |conn| {
                        diesel::sql_query(format!(
                            "SELECT set_config('{setting}', '{value}', true)"
                        ))
                        .execute(&mut *conn)
                        .await?;
                        diesel::sql_query(statement.as_str())
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
                .await;
            assert!(
                res.is_err(),
                "{setting}={value}: {statement} must be refused"
            );
        }
    }
    // The guarded erasure refuses a person who was not erased.
    let res: Result<(), agentplane::error::AppError> = db
        .tx(tenant, async |conn| {
            agentplane::on_conn!(conn, |conn| {
                let me = "00000000-0000-0000-0000-000000000000";
                diesel::sql_query(format!(
                    "SELECT agentplane_audit_erase({}, '{me}', now()::timestamp)",
                    q(&t)
                ))
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await;
    assert!(res.is_err(), "only erased people are erased");
    assert_eq!(verify(&app, &owner, Value::Null).await["intact"], true);
    assert_eq!(
        verify(&app, &owner, Value::Null).await["checked"],
        records(&app, &t).await.len()
    );
}
