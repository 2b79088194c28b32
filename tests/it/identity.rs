//! Identity and access through the real API: sign-in, sessions, tokens, API keys,
//! guards on every field, and tenant isolation.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, OWNER_PASSWORD, TestApp, first_error_code};

const REFRESH: &str =
    "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken refreshToken } }";

async fn refresh(app: &TestApp, token: &str) -> Value {
    app.gql(REFRESH, json!({ "i": { "refreshToken": token } }))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn login_me_refresh_rotation_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let (access, r1) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let me = app
        .gql_as(&access, "{ me { email role { name } } }", json!({}))
        .await;
    assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL);
    assert_eq!(me["data"]["me"]["role"]["name"], "PLATFORM_ADMIN");

    let out = refresh(&app, &r1).await;
    let r2 = out["data"]["refreshSession"]["refreshToken"]
        .as_str()
        .expect("rotated")
        .to_owned();
    let access2 = out["data"]["refreshSession"]["accessToken"]
        .as_str()
        .expect("access")
        .to_owned();
    assert_ne!(r1, r2);

    // Presenting the rotated token again revokes the whole family...
    let reuse = refresh(&app, &r1).await;
    assert_eq!(first_error_code(&reuse).as_deref(), Some("UNAUTHENTICATED"));
    assert_eq!(
        reuse["errors"][0]["extensions"]["reason"],
        "REFRESH_TOKEN_REUSE"
    );
    // ...so the newest refresh token and the session's access tokens stop working.
    let after = refresh(&app, &r2).await;
    assert_eq!(first_error_code(&after).as_deref(), Some("UNAUTHENTICATED"));
    let (status, _, body) = app
        .post_raw(&json!({ "query": "{ me { email } }" }), Some(&access2))
        .await;
    assert_eq!(status, 401);
    assert_eq!(first_error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_expire_by_idle_and_absolute_lifetime_on_the_clock() {
    let app = TestApp::spawn().await;
    let (access, r1) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    // Access tokens expire after 15 minutes (plus 60 s leeway).
    app.clock.advance(chrono::Duration::minutes(17));
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { email } }" }), Some(&access))
        .await;
    assert_eq!(status, 401);
    // The refresh token still works inside the idle window...
    let out = refresh(&app, &r1).await;
    let r2 = out["data"]["refreshSession"]["refreshToken"]
        .as_str()
        .expect("refreshed")
        .to_owned();
    // ...but not after 7 idle days.
    app.clock.advance(chrono::Duration::days(8));
    let out = refresh(&app, &r2).await;
    assert_eq!(first_error_code(&out).as_deref(), Some("UNAUTHENTICATED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_access_token_and_the_session() {
    let app = TestApp::spawn().await;
    let (access, refresh_token) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let out = app
        .gql_as(&access, "mutation { logout { ok } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["ok"], true);
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { email } }" }), Some(&access))
        .await;
    assert_eq!(status, 401);
    let out = refresh(&app, &refresh_token).await;
    assert_eq!(first_error_code(&out).as_deref(), Some("UNAUTHENTICATED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_email_and_wrong_password_look_the_same_and_failures_lock_out() {
    let app = TestApp::spawn().await;
    let q = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }";
    let unknown = app
        .gql(
            q,
            json!({ "i": { "email": "nobody@x.io", "password": "whatever-password" } }),
        )
        .await;
    let wrong = app
        .gql(
            q,
            json!({ "i": { "email": ADMIN_EMAIL, "password": "wrong-password-123" } }),
        )
        .await;
    assert_eq!(
        unknown["errors"][0]["message"],
        wrong["errors"][0]["message"]
    );
    assert_eq!(first_error_code(&wrong).as_deref(), Some("UNAUTHENTICATED"));
    for _ in 0..4 {
        app.gql(
            q,
            json!({ "i": { "email": ADMIN_EMAIL, "password": "wrong-password-123" } }),
        )
        .await;
    }
    // Locked now, even with the right password.
    let locked = app
        .gql(
            q,
            json!({ "i": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD } }),
        )
        .await;
    assert_eq!(
        first_error_code(&locked).as_deref(),
        Some("RATE_LIMITED"),
        "{locked}"
    );
    assert!(
        locked["errors"][0]["extensions"]["retryAfterSeconds"]
            .as_i64()
            .is_some()
    );
    // The lock lapses with time.
    app.clock.advance(chrono::Duration::minutes(16));
    app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_failing_on_many_accounts_is_locked_out() {
    let app = TestApp::spawn().await;
    let q = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }";
    for n in 0..20 {
        let out = app
            .gql(q, json!({ "i": { "email": format!("guess{n}@x.io"), "password": "wrong-password-123" } }))
            .await;
        assert_eq!(first_error_code(&out).as_deref(), Some("UNAUTHENTICATED"));
    }
    let out = app
        .gql(
            q,
            json!({ "i": { "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD } }),
        )
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("RATE_LIMITED"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_pem_key_signs_and_database_keys_still_verify() {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("signing.pem");
    std::fs::write(
        &path,
        key.to_pkcs8_pem(Default::default())
            .expect("pem")
            .as_bytes(),
    )
    .expect("write");
    let app = TestApp::spawn_with(&[(
        "AGENTPLANE_JWT_SIGNING_KEY_FILE",
        path.to_str().expect("utf8"),
    )])
    .await;
    let (token, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert!(
        header
            .kid
            .as_deref()
            .is_some_and(|k| k.starts_with("file-"))
    );
    // Verifiable with the file key's public half alone.
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["agentplane"]);
    jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_ed_components(&x).expect("key"),
        &v,
    )
    .expect("signed by the file key");
    let jwks = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("jwks")
        .text()
        .await
        .expect("text");
    assert!(jwks.contains(&x));
    let me = app.gql_as(&token, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL);
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_mode_signs_with_the_shared_secret_and_rejects_eddsa() {
    let secret = "0123456789abcdef0123456789abcdef-test";
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_JWT_ALGORITHM", "HS256"),
        ("AGENTPLANE_JWT_HS256_SECRET", secret),
    ])
    .await;
    let (token, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(
        jsonwebtoken::decode_header(&token).expect("header").alg,
        jsonwebtoken::Algorithm::HS256
    );
    let me = app.gql_as(&token, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL);
    // An EdDSA token (even a well-formed one) is refused: the algorithm is pinned.
    let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        other
            .to_pkcs8_pem(Default::default())
            .expect("pem")
            .to_string()
    };
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("json");
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = jsonwebtoken::decode_header(&token).expect("header").kid;
    let forged = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).expect("key"),
    )
    .expect("sign");
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ me { email } }" }), Some(&forged))
        .await;
    assert_eq!(status, 401);
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let (access, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let parts: Vec<&str> = access.split('.').collect();
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());

    let mut forged = Vec::new();
    // alg: none
    forged.push(format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT", "kid": header["kid"] })),
        parts[1]
    ));
    // tampered payload (role escalation) with the original signature
    claims["role"] = json!("OWNER");
    forged.push(format!("{}.{}.{}", parts[0], b64(&claims), parts[2]));
    // algorithm confusion: HS256 keyed with the published public key
    let jwks: Value = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = header["kid"].as_str().map(str::to_owned);
    forged.push(
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()),
        )
        .expect("hs256"),
    );
    // another Ed25519 key under the same kid
    let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        other
            .to_pkcs8_pem(Default::default())
            .expect("pem")
            .to_string()
    };
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = header["kid"].as_str().map(str::to_owned);
    let key = jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).expect("key");
    let original: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    forged.push(jsonwebtoken::encode(&h, &original, &key).expect("sign"));
    // not yet valid / expired / wrong audience, signed by the server's own key
    let keys = &app.state.app.keys;
    let now = agentplane::clock::Clock::now(app.clock.as_ref()).timestamp();
    let base: agentplane::auth::jwt::Claims =
        serde_json::from_value(original.clone()).expect("claims");
    for c in [
        agentplane::auth::jwt::Claims {
            nbf: now + 600,
            ..base.clone()
        },
        agentplane::auth::jwt::Claims {
            exp: now - 120,
            ..base.clone()
        },
        agentplane::auth::jwt::Claims {
            aud: "someone-else".into(),
            ..base.clone()
        },
        agentplane::auth::jwt::Claims {
            iss: "someone-else".into(),
            ..base.clone()
        },
    ] {
        forged.push(keys.sign(&c).expect("sign"));
    }
    for (i, t) in forged.iter().enumerate() {
        let (status, _, body) = app
            .post_raw(&json!({ "query": "{ me { email } }" }), Some(t))
            .await;
        assert_eq!(status, 401, "forgery #{i} accepted: {body}");
        assert_eq!(first_error_code(&body).as_deref(), Some("UNAUTHENTICATED"));
    }
    // The genuine token still works.
    let me = app.gql_as(&access, "{ me { email } }", json!({})).await;
    assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_signing_keys_keep_verifying_and_are_published() {
    let app = TestApp::spawn().await;
    let (old_token, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    agentplane::auth::jwt::rotate(&app.state.app.db, &app.state.app.config.master_keys)
        .await
        .expect("rotate");
    app.state
        .app
        .keys
        .reload(
            &app.state.app.db,
            &app.state.app.config.auth,
            &app.state.app.config.master_keys,
        )
        .await
        .expect("reload");
    let (new_token, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let kid = |t: &str| jsonwebtoken::decode_header(t).expect("header").kid;
    assert_ne!(kid(&old_token), kid(&new_token));
    for t in [&old_token, &new_token] {
        let me = app.gql_as(t, "{ me { email } }", json!({})).await;
        assert_eq!(me["data"]["me"]["email"], ADMIN_EMAIL);
    }
    let jwks: Value = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"].as_array().expect("keys").len(), 2);
    assert!(jwks.to_string().find("private").is_none() && jwks.to_string().find("\"d\"").is_none());
}

pub(crate) const CREATE_KEY: &str = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id prefix role { name } } secret } }";

#[tokio::test(flavor = "multi_thread")]
async fn api_key_lifecycle_and_least_privilege() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let out = app
        .gql_as(
            &owner,
            CREATE_KEY,
            json!({ "i": { "name": "ci", "roleId": "VIEWER" } }),
        )
        .await;
    let secret = out["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let key_id = out["data"]["createApiKey"]["apiKey"]["id"].clone();
    assert!(secret.starts_with("agp_"));
    assert!(
        secret.starts_with(
            out["data"]["createApiKey"]["apiKey"]["prefix"]
                .as_str()
                .expect("prefix")
        )
    );

    // The key acts in its tenant with its role, nothing more.
    let t = app.gql_as(&secret, "{ tenant { slug } }", json!({})).await;
    assert_eq!(t["data"]["tenant"]["slug"], "acme");
    let denied = app
        .gql_as(
            &secret,
            CREATE_KEY,
            json!({ "i": { "name": "x", "roleId": "VIEWER" } }),
        )
        .await;
    assert_eq!(first_error_code(&denied).as_deref(), Some("FORBIDDEN"));

    // Listing shows metadata, never the secret.
    let list = app
        .gql_as(&owner, "{ apiKeys { name prefix lastUsedAt } }", json!({}))
        .await;
    assert_eq!(list["data"]["apiKeys"][0]["name"], "ci");
    assert!(list["data"]["apiKeys"][0]["lastUsedAt"].is_string());
    assert!(!list.to_string().contains(&secret));

    // Nobody grants more than they hold.
    let (_, viewer_key) = (
        (),
        app.gql_as(
            &owner,
            CREATE_KEY,
            json!({ "i": { "name": "adm", "roleId": "PLATFORM_ADMIN" } }),
        )
        .await,
    );
    assert_eq!(first_error_code(&viewer_key).as_deref(), Some("FORBIDDEN"));

    let revoked = app
        .gql_as(
            &owner,
            "mutation($i: RevokeApiKeyInput!) { revokeApiKey(input: $i) { apiKey { revokedAt } } }",
            json!({ "i": { "apiKeyId": key_id } }),
        )
        .await;
    assert!(revoked["data"]["revokeApiKey"]["apiKey"]["revokedAt"].is_string());
    let (status, _, _) = app
        .post_raw(&json!({ "query": "{ tenant { slug } }" }), Some(&secret))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_tenant_is_refused_everywhere() {
    let app = TestApp::spawn().await;
    let (tenant_id, owner) = app.tenant_with_owner("acme").await;
    let key = app
        .gql_as(
            &owner,
            CREATE_KEY,
            json!({ "i": { "name": "k", "roleId": "VIEWER" } }),
        )
        .await["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let admin = app.admin_token().await;
    let out = app
        .gql_as(
            &admin,
            "mutation($i: SuspendTenantInput!) { suspendTenant(input: $i) { tenant { status statusReason } } }",
            json!({ "i": { "tenantId": tenant_id, "reason": "unpaid" } }),
        )
        .await;
    assert_eq!(
        out["data"]["suspendTenant"]["tenant"]["status"],
        "SUSPENDED"
    );
    for t in [&owner, &key] {
        let (status, _, body) = app
            .post_raw(&json!({ "query": "{ tenant { slug } }" }), Some(t))
            .await;
        assert_eq!(status, 403);
        assert_eq!(first_error_code(&body).as_deref(), Some("FORBIDDEN"));
        assert_eq!(
            body["errors"][0]["extensions"]["reason"],
            "TENANT_SUSPENDED"
        );
    }
    let login = app
        .gql(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            json!({ "i": { "email": "owner@acme.example", "password": OWNER_PASSWORD } }),
        )
        .await;
    assert_eq!(
        login["errors"][0]["extensions"]["reason"],
        "TENANT_SUSPENDED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_b_objects_are_not_found_for_tenant_a() {
    let app = TestApp::spawn().await;
    let (a_tenant, a) = app.tenant_with_owner("alpha").await;
    let (b_tenant, b) = app.tenant_with_owner("bravo").await;
    let b_users = app
        .gql_as(&b, "{ users { edges { node { id } } } }", json!({}))
        .await;
    let b_user = b_users["data"]["users"]["edges"][0]["node"]["id"].clone();
    let a_users = app
        .gql_as(
            &a,
            "{ users { totalCount edges { node { id email } } } }",
            json!({}),
        )
        .await;
    assert_eq!(a_users["data"]["users"]["totalCount"], 1);
    assert!(!a_users.to_string().contains("bravo"));

    for (query, vars) in [
        (
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": b_user }),
        ),
        (
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": b_tenant }),
        ),
        (
            "mutation($i: UpdateUserRoleInput!) { updateUserRole(input: $i) { user { id } } }",
            json!({ "i": { "userId": b_user, "roleId": "VIEWER" } }),
        ),
        (
            "mutation($i: DisableUserInput!) { disableUser(input: $i) { user { id } } }",
            json!({ "i": { "userId": b_user } }),
        ),
    ] {
        let out = app.gql_as(&a, query, vars).await;
        assert_eq!(
            first_error_code(&out).as_deref(),
            Some("NOT_FOUND"),
            "{query}: {out}"
        );
    }
    // `nodes` answers null for B's objects and returns A's own.
    let out = app
        .gql_as(
            &a,
            "query($ids: [ID!]!) { nodes(ids: $ids) { id } }",
            json!({ "ids": [b_user, b_tenant, a_tenant] }),
        )
        .await;
    assert_eq!(out["data"]["nodes"][0], Value::Null);
    assert_eq!(out["data"]["nodes"][1], Value::Null);
    assert_eq!(out["data"]["nodes"][2]["id"], a_tenant);
    // B's owner is untouched.
    let me = app
        .gql_as(&b, "{ me { status role { name } } }", json!({}))
        .await;
    assert_eq!(me["data"]["me"]["status"], "ACTIVE");
    assert_eq!(me["data"]["me"]["role"]["name"], "OWNER");
}
