//! Tenant secrets: write-only through the API, encrypted at rest, bound to their tenant,
//! rotatable.

use agentplane::server::AppState;
use diesel_async::RunQueryDsl;
use secrecy::ExposeSecret as _;
use serde_json::json;

use crate::helpers::{TestApp, config_for, first_error_code};

pub const KEY1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes
const KEY2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="; // 32 bytes
const SET: &str =
    "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name keyId } } }";

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_disabled_without_a_master_key() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = app
        .gql_as(
            &owner,
            SET,
            json!({ "i": { "name": "LLM_KEY", "value": "sk-123" } }),
        )
        .await;
    assert_eq!(first_error_code(&out).as_deref(), Some("FORBIDDEN"));
    assert_eq!(out["errors"][0]["extensions"]["reason"], "SECRETS_DISABLED");
}

#[tokio::test(flavor = "multi_thread")]
async fn values_are_write_only_encrypted_and_tenant_bound() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_MASTER_KEY", KEY1)]).await;
    let (a_id, a) = app.tenant_with_owner("alpha").await;
    let (_, b) = app.tenant_with_owner("bravo").await;
    let value = "sk-live-very-secret-value";
    let out = app
        .gql_as(
            &a,
            SET,
            json!({ "i": { "name": "LLM_KEY", "value": value } }),
        )
        .await;
    assert_eq!(
        out["data"]["setSecret"]["secret"],
        json!({ "name": "LLM_KEY", "keyId": "k1" }),
        "{out}"
    );
    let list = app
        .gql_as(
            &a,
            "{ secrets { name keyId createdAt updatedAt } }",
            json!({}),
        )
        .await;
    assert_eq!(list["data"]["secrets"][0]["name"], "LLM_KEY");
    assert!(!list.to_string().contains(value) && !out.to_string().contains(value));
    // No field of the schema can return a value.
    let t = app
        .gql(
            "{ __type(name: \"SecretInfo\") { fields { name } } }",
            json!({}),
        )
        .await;
    assert!(!t.to_string().contains("\"value\""), "{t}");

    // At rest the value is not there in any form a query would find.
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        ciphertext: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        nonce: String,
    }
    let db = &app.state.app.db;
    let rows: Vec<Row> = async {
        Ok::<_, agentplane::db::PoolError>(agentplane::db_run!(db, |conn| {
            diesel::sql_query("SELECT ciphertext, nonce FROM secrets")
                .load::<Row>(conn)
                .await
                .expect("select")
        }))
    }
    .await
    .expect("pool");
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].ciphertext.contains(value));

    let tenant_a = agentplane::tenancy::TenantId(
        uuid::Uuid::parse_str(
            std::str::from_utf8(
                &base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    a_id.as_str(),
                )
                .expect("b64"),
            )
            .expect("utf8")
            .trim_start_matches("Tenant:"),
        )
        .expect("uuid"),
    );
    let revealed = agentplane::secrets::reveal(&app.state.app, tenant_a, "LLM_KEY")
        .await
        .expect("reveal");
    assert_eq!(revealed.expose_secret(), value);

    // Tenant B neither sees nor deletes it, and the same name is independent for B.
    let other = app.gql_as(&b, "{ secrets { name } }", json!({})).await;
    assert_eq!(other["data"]["secrets"], json!([]));
    let del = app
        .gql_as(
            &b,
            "mutation { deleteSecret(input: {name: \"LLM_KEY\"}) { deletedName } }",
            json!({}),
        )
        .await;
    assert_eq!(first_error_code(&del).as_deref(), Some("NOT_FOUND"));

    // A ciphertext copied under another tenant does not decrypt (tenant and name are bound).
    app.gql_as(
        &b,
        SET,
        json!({ "i": { "name": "LLM_KEY", "value": "b-value" } }),
    )
    .await;
    let copy = format!(
        "UPDATE secrets SET ciphertext = '{}', nonce = '{}' WHERE tenant_id <> '{}'",
        rows[0].ciphertext, rows[0].nonce, tenant_a
    );
    async {
        agentplane::db_run!(db, |conn| {
            diesel::sql_query(&copy)
                .execute(conn)
                .await
                .expect("update");
        });
        Ok::<_, agentplane::db::PoolError>(())
    }
    .await
    .expect("pool");
    let b_tenant = app.gql_as(&b, "{ tenant { id } }", json!({})).await["data"]["tenant"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let tenant_b = agentplane::tenancy::TenantId(
        uuid::Uuid::parse_str(
            std::str::from_utf8(
                &base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    b_tenant.as_str(),
                )
                .expect("b64"),
            )
            .expect("utf8")
            .trim_start_matches("Tenant:"),
        )
        .expect("uuid"),
    );
    let err = agentplane::secrets::reveal(&app.state.app, tenant_b, "LLM_KEY")
        .await
        .expect_err("bound to A");
    assert_eq!(err.code(), agentplane::error::ErrorCode::Internal);

    let del = app
        .gql_as(
            &a,
            "mutation { deleteSecret(input: {name: \"LLM_KEY\"}) { deletedName } }",
            json!({}),
        )
        .await;
    assert_eq!(del["data"]["deleteSecret"]["deletedName"], "LLM_KEY");
}

#[tokio::test(flavor = "multi_thread")]
async fn master_keys_rotate_without_losing_secrets() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_MASTER_KEY", KEY1)]).await;
    let (_, a) = app.tenant_with_owner("alpha").await;
    app.gql_as(&a, SET, json!({ "i": { "name": "K", "value": "v1" } }))
        .await;
    assert_eq!(app.state.app.config.master_keys.len(), 1);

    // A second process with k2 current and k1 retired reads, then re-encrypts.
    let old = format!("k1:{KEY1}");
    let cfg = config_for(
        &app.db,
        &[
            ("AGENTPLANE_MASTER_KEY", KEY2),
            ("AGENTPLANE_MASTER_KEY_ID", "k2"),
            ("AGENTPLANE_OLD_MASTER_KEYS", old.as_str()),
        ],
    );
    let rotated = AppState::new(cfg).await.expect("state");
    assert_eq!(
        agentplane::secrets::rotate(&rotated.app)
            .await
            .expect("rotate"),
        1
    );
    assert_eq!(
        agentplane::secrets::rotate(&rotated.app)
            .await
            .expect("rotate"),
        0
    );

    // Now k2 alone suffices.
    let cfg = config_for(
        &app.db,
        &[
            ("AGENTPLANE_MASTER_KEY", KEY2),
            ("AGENTPLANE_MASTER_KEY_ID", "k2"),
        ],
    );
    let only_new = AppState::new(cfg).await.expect("state");
    let list = app
        .gql_as(&a, "{ secrets { keyId } tenant { id } }", json!({}))
        .await;
    assert_eq!(list["data"]["secrets"][0]["keyId"], "k2");
    let id = list["data"]["tenant"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        id.as_str(),
    )
    .expect("b64");
    let tenant = agentplane::tenancy::TenantId(
        uuid::Uuid::parse_str(
            std::str::from_utf8(&raw)
                .expect("utf8")
                .trim_start_matches("Tenant:"),
        )
        .expect("uuid"),
    );
    let v = agentplane::secrets::reveal(&only_new.app, tenant, "K")
        .await
        .expect("reveal");
    assert_eq!(v.expose_secret(), "v1");
}

/// The stored private halves of the token-signing keys.
async fn stored_signing_keys(app: &TestApp) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        private_pem: String,
    }
    let rows: anyhow::Result<Vec<Row>> = async {
        Ok(agentplane::db_run!(&app.state.app.db, |conn| {
            diesel::sql_query("SELECT private_pem FROM signing_keys")
                .load::<Row>(conn)
                .await?
        }))
    }
    .await;
    rows.expect("rows")
        .into_iter()
        .map(|r| r.private_pem)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_are_sealed_under_the_master_key() {
    // Without a master key the key is stored as it is (and the server warns).
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let stored = stored_signing_keys(&app).await;
    assert!(
        stored.iter().all(|p| p.contains("PRIVATE KEY")),
        "{stored:?}"
    );

    // A process started with a master key seals it; tokens signed before still verify.
    let extra = [
        ("AGENTPLANE_MASTER_KEY", KEY1),
        ("AGENTPLANE_MASTER_KEY_ID", "k1"),
    ];
    let sealed = AppState::new(config_for(&app.db, &extra))
        .await
        .expect("state");
    let stored = stored_signing_keys(&app).await;
    assert!(!stored.is_empty());
    for p in &stored {
        assert!(p.starts_with("sealed:v1:k1:"), "{p}");
        assert!(!p.contains("PRIVATE KEY"), "{p}");
        // What a database copy holds does not sign.
        assert!(jsonwebtoken::EncodingKey::from_ed_pem(p.as_bytes()).is_err());
    }
    let auth = &sealed.app.config.auth;
    let claims = sealed
        .app
        .keys
        .verify(&token, auth, chrono::Utc::now())
        .expect("an earlier token verifies");
    // The sealed key signs in the process that holds the master key.
    let again = sealed.app.keys.sign(&claims).expect("signs");
    assert!(
        app.state
            .app
            .keys
            .verify(&again, auth, chrono::Utc::now())
            .is_ok()
    );

    // Without the master key a process says why it cannot start.
    let err = AppState::new(config_for(&app.db, &[]))
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("sealed under master key k1, which is not configured"),
        "{err:#}"
    );

    // Keys generated with a master key configured are sealed from the start.
    let fresh = TestApp::spawn_with(&extra).await;
    let stored = stored_signing_keys(&fresh).await;
    assert!(
        stored.iter().all(|p| p.starts_with("sealed:v1:k1:")),
        "{stored:?}"
    );
    let _ = fresh.admin_token().await;
}
