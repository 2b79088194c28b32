//! Trusted documents (#19 item 5): a tenant in trusted-documents-only mode runs
//! registered documents only, and no tenant can use another's.

use serde_json::json;

use crate::access_limits::post;
use crate::helpers::*;

const SETTINGS: &str = "mutation($i: UpdateTenantSettingsInput!) { updateTenantSettings(input: $i) { tenant { settings { trustedDocumentsOnly } } } }";
const REGISTER: &str = "mutation($i: RegisterTrustedDocumentInput!) { registerTrustedDocument(input: $i) { created trustedDocument { id sha256Hash name } } }";

#[tokio::test(flavor = "multi_thread")]
async fn trusted_documents_are_per_tenant_and_can_be_required() {
    let app = TestApp::spawn_as_app_role_with(&[("AGENTPLANE_WORKERS", "0")]).await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("globex").await;
    let (_, viewer) = user_with_role(&app, &owner, "viewer@acme.example", json!("VIEWER")).await;
    let doc = "query Me { me { email } }";
    let out = app
        .gql_as(
            &owner,
            REGISTER,
            json!({ "i": { "document": doc, "name": "me" } }),
        )
        .await;
    let registered = &out["data"]["registerTrustedDocument"];
    assert_eq!(registered["created"], true, "{out}");
    let hash = registered["trustedDocument"]["sha256Hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    assert_eq!(hash.len(), 64);
    // The same text again: the first registration, nothing new.
    let again = app
        .gql_as(&owner, REGISTER, json!({ "i": { "document": doc } }))
        .await;
    assert_eq!(
        again["data"]["registerTrustedDocument"]["created"], false,
        "{again}"
    );
    assert_eq!(
        again["data"]["registerTrustedDocument"]["trustedDocument"]["id"],
        registered["trustedDocument"]["id"]
    );
    // Documents that do not parse are refused.
    let bad = app
        .gql_as(&owner, REGISTER, json!({ "i": { "document": "query {" } }))
        .await;
    assert_eq!(
        first_error_code(&bad).as_deref(),
        Some("BAD_USER_INPUT"),
        "{bad}"
    );

    // By hash alone.
    let by_hash =
        json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
    let (status, _, body) = post(&app, &owner, by_hash.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["me"]["email"], "owner@acme.example", "{body}");
    // Another tenant cannot use it, nor tell it from a hash nobody registered.
    let (_, _, theirs) = post(&app, &other, by_hash.clone()).await;
    let unknown = json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "0".repeat(64) } } });
    let (_, _, nobody) = post(&app, &other, unknown).await;
    assert_eq!(
        theirs["errors"][0]["extensions"]["reason"], "PERSISTED_QUERY_NOT_FOUND",
        "{theirs}"
    );
    assert_eq!(
        theirs["errors"][0]["message"],
        nobody["errors"][0]["message"]
    );
    assert_eq!(
        theirs["errors"][0]["extensions"]["code"],
        nobody["errors"][0]["extensions"]["code"]
    );
    let listed = app
        .gql_as(&other, "{ trustedDocuments { totalCount } }", json!({}))
        .await;
    // A registered mutation is not run by GET.
    let mutation = "mutation M { createTeam(input: {name: \"by-get\"}) { team { id } } }";
    let reg = app
        .gql_as(&owner, REGISTER, json!({ "i": { "document": mutation } }))
        .await;
    let mhash = reg["data"]["registerTrustedDocument"]["trustedDocument"]["sha256Hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    let ext = format!("{{\"persistedQuery\":{{\"version\":1,\"sha256Hash\":\"{mhash}\"}}}}");
    let get = app
        .http
        .get(format!("{}/graphql", app.base))
        .query(&[("extensions", ext.as_str())])
        .bearer_auth(&owner)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 405);
    let teams = app.gql_as(&owner, "{ teams { id } }", json!({})).await;
    assert_eq!(teams["data"]["teams"], json!([]), "{teams}");
    assert_eq!(
        listed["data"]["trustedDocuments"]["totalCount"], 0,
        "{listed}"
    );
    // A hash that is not the query's.
    let (_, _, body) = post(
        &app,
        &owner,
        json!({ "query": "{ me { id } }", "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } }),
    )
    .await;
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("BAD_USER_INPUT"),
        "{body}"
    );

    // Trusted documents only: other documents are refused, over HTTP and websockets.
    let on = app
        .gql_as(
            &owner,
            SETTINGS,
            json!({ "i": { "trustedDocumentsOnly": true } }),
        )
        .await;
    assert_eq!(
        on["data"]["updateTenantSettings"]["tenant"]["settings"]["trustedDocumentsOnly"], true,
        "{on}"
    );
    let (status, _, body) = post(&app, &owner, json!({ "query": "{ me { id } }" })).await;
    assert_eq!(status, 200);
    assert_eq!(
        first_error_code(&body).as_deref(),
        Some("FORBIDDEN"),
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "TRUSTED_DOCUMENTS_ONLY",
        "{body}"
    );
    let (_, _, body) = post(&app, &owner, by_hash.clone()).await;
    assert_eq!(body["data"]["me"]["email"], "owner@acme.example", "{body}");
    // The registered text itself is a trusted document too.
    let (_, _, body) = post(&app, &owner, json!({ "query": doc })).await;
    assert_eq!(body["data"]["me"]["email"], "owner@acme.example", "{body}");
    // Owners keep registering documents in this mode (they could switch it off anyway);
    // members without tenant.update cannot.
    let denied = app
        .gql_as(
            &viewer,
            REGISTER,
            json!({ "i": { "document": "{ workflows { totalCount } }" } }),
        )
        .await;
    assert_eq!(
        first_error_code(&denied).as_deref(),
        Some("FORBIDDEN"),
        "{denied}"
    );
    let (_, _, body) = post(&app, &viewer, json!({ "query": "{ me { id } }" })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "TRUSTED_DOCUMENTS_ONLY",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("trustedDocumentsOnly: false")),
        "{body}"
    );
    let added = app
        .gql_as(
            &owner,
            REGISTER,
            json!({ "i": { "document": "{ workflows { totalCount } }" } }),
        )
        .await;
    assert_eq!(
        added["data"]["registerTrustedDocument"]["created"], true,
        "{added}"
    );
    let ran = app
        .gql_as(&viewer, "{ workflows { totalCount } }", json!({}))
        .await;
    assert_eq!(ran["data"]["workflows"]["totalCount"], 0, "{ran}");
    // Signing out stays possible.
    let out = app
        .gql_as(&viewer, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true, "{out}");
    let mut ws = ws_authed(&app.ws_url(), "graphql-transport-ws", &owner).await;
    ws_send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { heartbeat(intervalSeconds: 1) { __typename } }" } }),
    )
    .await;
    let msg = ws_next_json(&mut ws).await;
    assert_eq!(msg["type"], "next", "{msg}");
    assert_eq!(
        msg["payload"]["errors"][0]["extensions"]["reason"], "TRUSTED_DOCUMENTS_ONLY",
        "{msg}"
    );
    // Another tenant is not held to it.
    let theirs = app.gql_as(&other, "{ me { id } }", json!({})).await;
    assert!(theirs["errors"].is_null(), "{theirs}");
    // The one way back stays open.
    let off = app
        .gql_as(
            &owner,
            SETTINGS,
            json!({ "i": { "trustedDocumentsOnly": false } }),
        )
        .await;
    assert_eq!(
        off["data"]["updateTenantSettings"]["tenant"]["settings"]["trustedDocumentsOnly"], false,
        "{off}"
    );
    let back = app.gql_as(&owner, "{ me { id } }", json!({})).await;
    assert!(back["errors"].is_null(), "{back}");

    // Deleted: its hash is unknown again.
    let del = app
        .gql_as(
            &owner,
            "mutation($i: DeleteTrustedDocumentInput!) { deleteTrustedDocument(input: $i) { deletedTrustedDocumentId } }",
            json!({ "i": { "trustedDocumentId": registered["trustedDocument"]["id"] } }),
        )
        .await;
    assert!(del["errors"].is_null(), "{del}");
    let (_, _, body) = post(&app, &owner, by_hash).await;
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "PERSISTED_QUERY_NOT_FOUND",
        "{body}"
    );
    // Another tenant cannot delete what it cannot see.
    let out = app
        .gql_as(&owner, REGISTER, json!({ "i": { "document": doc } }))
        .await;
    let id = out["data"]["registerTrustedDocument"]["trustedDocument"]["id"].clone();
    let del = app
        .gql_as(
            &other,
            "mutation($i: DeleteTrustedDocumentInput!) { deleteTrustedDocument(input: $i) { deletedTrustedDocumentId } }",
            json!({ "i": { "trustedDocumentId": id } }),
        )
        .await;
    assert_eq!(
        first_error_code(&del).as_deref(),
        Some("NOT_FOUND"),
        "{del}"
    );
}
