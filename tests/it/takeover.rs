//! Account takeover inside a tenant: an ADMIN must not remove the OWNER, a tenant always
//! keeps an active OWNER, and an offboarded user's API keys stop working.

use serde_json::{Value, json};

use crate::helpers::{TestApp, first_error_code, user_with_role};

const SET_ROLE: &str = "mutation($i: UpdateUserRoleInput!) { updateUserRole(input: $i) { user { id role { name } } } }";
const DISABLE: &str = "mutation($i: DisableUserInput!) { disableUser(input: $i) { user { id } } }";
const ERASE: &str = "mutation($i: EraseUserInput!) { eraseUser(input: $i) { user { id } } }";
const CREATE_KEY: &str =
    "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }";

async fn my_id(app: &TestApp, token: &str) -> String {
    let me = app.gql_as(token, "{ me { id } }", json!({})).await;
    me["data"]["me"]["id"].as_str().expect("id").to_owned()
}

/// An ADMIN API key made by the holder of `token`; returns its secret.
async fn admin_key(app: &TestApp, token: &str) -> String {
    let out = app
        .gql_as(
            token,
            CREATE_KEY,
            json!({ "i": { "name": "deploy", "roleId": "ADMIN" } }),
        )
        .await;
    out["data"]["createApiKey"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned()
}

fn role(id: &str, role: &str) -> Value {
    json!({ "i": { "userId": id, "roleId": role } })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_cannot_demote_disable_or_erase_the_owner() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("keep").await;
    let owner_id = my_id(&app, &owner).await;
    let (_, admin) = user_with_role(&app, &owner, "admin@keep.test", json!("ADMIN")).await;
    let (viewer_id, _) = user_with_role(&app, &owner, "viewer@keep.test", json!("VIEWER")).await;

    for (query, vars) in [
        (SET_ROLE, role(&owner_id, "VIEWER")),
        (SET_ROLE, role(&owner_id, "ADMIN")),
        (DISABLE, json!({ "i": { "userId": owner_id } })),
        (ERASE, json!({ "i": { "userId": owner_id } })),
    ] {
        let out = app.gql_as(&admin, query, vars).await;
        assert_eq!(
            first_error_code(&out).as_deref(),
            Some("FORBIDDEN"),
            "{out}"
        );
    }
    // The owner still is one and still signs in.
    let me = app
        .gql_as(&owner, "{ me { role { name } } }", json!({}))
        .await;
    assert_eq!(me["data"]["me"]["role"]["name"], "OWNER", "{me}");
    // Users within the admin's own rights are still theirs to manage.
    let out = app
        .gql_as(&admin, SET_ROLE, role(&viewer_id, "DEVELOPER"))
        .await;
    assert!(out["errors"].is_null(), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_always_keeps_an_active_owner() {
    let app = TestApp::spawn().await;
    let (tenant_id, owner) = app.tenant_with_owner("last").await;
    let owner_id = my_id(&app, &owner).await;
    // The only owner cannot step down.
    let out = app.gql_as(&owner, SET_ROLE, role(&owner_id, "ADMIN")).await;
    assert_eq!(first_error_code(&out).as_deref(), Some("CONFLICT"), "{out}");

    // Two owners demoting each other at the same moment: one wins, one owner remains.
    let (second_id, second) =
        user_with_role(&app, &owner, "second@last.test", json!("OWNER")).await;
    let mut tries = Vec::new();
    for _ in 0..4 {
        tries.push(app.gql_as(&owner, SET_ROLE, role(&second_id, "VIEWER")));
        tries.push(app.gql_as(&second, SET_ROLE, role(&owner_id, "VIEWER")));
    }
    let outs = futures_util::future::join_all(tries).await;
    let roles = [
        app.gql_as(&owner, "{ me { role { name } } }", json!({}))
            .await,
        app.gql_as(&second, "{ me { role { name } } }", json!({}))
            .await,
    ];
    let owners = roles
        .iter()
        .filter(|r| r["data"]["me"]["role"]["name"] == "OWNER")
        .count();
    assert_eq!(owners, 1, "{roles:?} after {outs:?}");
    // The loser's demotions fail: CONFLICT when they raced the winner's inside the
    // database, FORBIDDEN when the winner's had already committed and taken the loser's
    // right to manage users. Either way nothing else comes back and something failed.
    let codes: Vec<Option<String>> = outs.iter().map(first_error_code).collect();
    assert!(
        codes
            .iter()
            .all(|c| matches!(c.as_deref(), None | Some("CONFLICT" | "FORBIDDEN"))),
        "{outs:?}"
    );
    assert!(codes.iter().any(Option::is_some), "{outs:?}");

    // A platform admin repairs a tenant whose owner was locked out of the role.
    let remaining = if roles[0]["data"]["me"]["role"]["name"] == "OWNER" {
        &owner
    } else {
        &second
    };
    let (admin_id, _) = user_with_role(&app, remaining, "ops@last.test", json!("ADMIN")).await;
    let repair = "mutation($i: RestoreTenantOwnerInput!) { restoreTenantOwner(input: $i) { user { role { name } status } } }";
    let vars = json!({ "i": { "tenantId": tenant_id, "userId": admin_id } });
    let out = app.gql_as(remaining, repair, vars.clone()).await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("FORBIDDEN"),
        "{out}"
    );
    let out = app.gql_as(&app.admin_token().await, repair, vars).await;
    assert_eq!(
        out["data"]["restoreTenantOwner"]["user"]["role"]["name"], "OWNER",
        "{out}"
    );
    let log = app
        .gql_as(
            remaining,
            "{ auditLog(first: 5, filter: { actionPrefix: \"user.owner_restored\" }) { edges { node { action } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        log["data"]["auditLog"]["edges"][0]["node"]["action"], "user.owner_restored",
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_or_erasing_a_user_revokes_the_api_keys_they_created() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("keys").await;
    for (email, offboard) in [("gone@keys.test", DISABLE), ("erased@keys.test", ERASE)] {
        let (id, admin) = user_with_role(&app, &owner, email, json!("ADMIN")).await;
        let secret = admin_key(&app, &admin).await;
        let t = app.gql_as(&secret, "{ tenant { slug } }", json!({})).await;
        assert_eq!(t["data"]["tenant"]["slug"], "keys", "{t}");

        let out = app
            .gql_as(&owner, offboard, json!({ "i": { "userId": id } }))
            .await;
        assert!(out["errors"].is_null(), "{out}");
        // The offboarded admin's ADMIN key no longer works.
        let t = app.gql_as(&secret, "{ tenant { slug } }", json!({})).await;
        assert_eq!(
            first_error_code(&t).as_deref(),
            Some("UNAUTHENTICATED"),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_does_no_more_than_its_creator_may_do_now() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("demote").await;
    let (id, admin) = user_with_role(&app, &owner, "ops@demote.test", json!("ADMIN")).await;
    let key = admin_key(&app, &admin).await;
    let create =
        |email: &str| json!({ "i": { "email": email, "displayName": "X", "roleId": "VIEWER" } });
    let create_user = "mutation($i: CreateUserInput!) { createUser(input: $i) { user { id } } }";
    let out = app
        .gql_as(&key, create_user, create("one@demote.test"))
        .await;
    assert!(out["errors"].is_null(), "{out}");

    // Demoted, the creator takes the key's extra rights down too (it kept ADMIN before).
    let out = app.gql_as(&owner, SET_ROLE, role(&id, "VIEWER")).await;
    assert!(out["errors"].is_null(), "{out}");
    let out = app
        .gql_as(&key, create_user, create("two@demote.test"))
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("FORBIDDEN"),
        "{out}"
    );
    let t = app.gql_as(&key, "{ tenant { slug } }", json!({})).await;
    assert_eq!(t["data"]["tenant"]["slug"], "demote", "{t}");
    // Promoted again, it works again.
    let out = app.gql_as(&owner, SET_ROLE, role(&id, "ADMIN")).await;
    assert!(out["errors"].is_null(), "{out}");
    let out = app
        .gql_as(&key, create_user, create("three@demote.test"))
        .await;
    assert!(out["errors"].is_null(), "{out}");
}
