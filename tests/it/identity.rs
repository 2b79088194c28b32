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

const CREATE_KEY: &str = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id prefix role { name } } secret } }";

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

/// Renders an introspected type reference as GraphQL type syntax.
fn type_syntax(t: &Value) -> String {
    match t["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", type_syntax(&t["ofType"])),
        Some("LIST") => format!("[{}]", type_syntax(&t["ofType"])),
        _ => t["name"].as_str().expect("named").to_owned(),
    }
}

/// A valid dummy value for an input type (guards run before the resolver looks at it).
fn dummy(t: &Value, types: &[Value]) -> Value {
    match t["kind"].as_str() {
        Some("NON_NULL") => dummy(&t["ofType"], types),
        Some("LIST") => json!([dummy(&t["ofType"], types)]),
        _ => {
            let name = t["name"].as_str().expect("named");
            let def = types
                .iter()
                .find(|d| d["name"] == name)
                .expect("type defined");
            match def["kind"].as_str() {
                Some("ENUM") => def["enumValues"][0]["name"].clone(),
                Some("INPUT_OBJECT") => {
                    let mut obj = serde_json::Map::new();
                    for f in def["inputFields"].as_array().expect("fields") {
                        obj.insert(
                            f["name"].as_str().expect("name").to_owned(),
                            dummy(&f["type"], types),
                        );
                    }
                    Value::Object(obj)
                }
                _ => match name {
                    "Int" => json!(1),
                    "Float" => json!(1.0),
                    "Boolean" => json!(true),
                    "DateTime" => json!("2030-01-01T00:00:00Z"),
                    _ => json!("x"),
                },
            }
        }
    }
}

fn named(t: &Value) -> &Value {
    if t["ofType"].is_null() {
        t
    } else {
        named(&t["ofType"])
    }
}

const TYPE_REF: &str = "kind name ofType { kind name ofType { kind name ofType { kind name } } }";

/// Every root query and mutation field as a callable operation with dummy arguments:
/// (field name, document, variables).
async fn root_field_calls(app: &TestApp) -> Vec<(String, String, Value)> {
    field_calls(app, false).await
}

/// Like [`root_field_calls`] for the subscription root.
async fn field_calls(app: &TestApp, subscriptions: bool) -> Vec<(String, String, Value)> {
    let intro = app
        .gql(
            &format!(
                "{{ __schema {{ types {{ name kind enumValues {{ name }} inputFields {{ name type {{ {TYPE_REF} }} }} }}
                   queryType {{ fields {{ name args {{ name type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }}
                   mutationType {{ fields {{ name args {{ name type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }}
                   subscriptionType {{ fields {{ name args {{ name type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }} }} }} }}"
            ),
            json!({}),
        )
        .await;
    let schema = &intro["data"]["__schema"];
    let types = schema["types"].as_array().expect("types").clone();
    let mut calls = Vec::new();
    let roots: Vec<(&str, &Value)> = if subscriptions {
        vec![("subscription", &schema["subscriptionType"])]
    } else {
        vec![
            ("query", &schema["queryType"]),
            ("mutation", &schema["mutationType"]),
        ]
    };
    for (op, root) in roots {
        for f in root["fields"].as_array().expect("fields") {
            let name = f["name"].as_str().expect("name");
            let args = f["args"].as_array().expect("args");
            let decl: Vec<String> = args
                .iter()
                .map(|a| {
                    format!(
                        "${}: {}",
                        a["name"].as_str().expect("n"),
                        type_syntax(&a["type"])
                    )
                })
                .collect();
            let pass: Vec<String> = args
                .iter()
                .map(|a| format!("{0}: ${0}", a["name"].as_str().expect("n")))
                .collect();
            let mut vars = serde_json::Map::new();
            for a in args {
                vars.insert(
                    a["name"].as_str().expect("n").to_owned(),
                    dummy(&a["type"], &types),
                );
            }
            let ret = named(&f["type"]);
            let ret_kind = types
                .iter()
                .find(|t| t["name"] == ret["name"])
                .map(|t| t["kind"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let selection = if matches!(ret_kind.as_str(), "OBJECT" | "INTERFACE" | "UNION") {
                " { __typename }"
            } else {
                ""
            };
            let q = format!(
                "{op}{} {{ {name}{}{selection} }}",
                if decl.is_empty() {
                    String::new()
                } else {
                    format!("({})", decl.join(", "))
                },
                if pass.is_empty() {
                    String::new()
                } else {
                    format!("({})", pass.join(", "))
                },
            );
            calls.push((name.to_owned(), q, Value::Object(vars)));
        }
    }
    calls
}

/// An API key of `owner`'s tenant whose custom role holds no permission.
async fn powerless_key(app: &TestApp, owner: &str) -> String {
    let role = app
        .gql_as(
            owner,
            "mutation { createRole(input: {name: \"nothing\", permissions: []}) { role { id } } }",
            json!({}),
        )
        .await;
    let role_id = role["data"]["createRole"]["role"]["id"].clone();
    app.gql_as(
        owner,
        CREATE_KEY,
        json!({ "i": { "name": "nothing", "roleId": role_id } }),
    )
    .await["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_owned()
}

/// Walks every root field and proves it is guarded: without credentials it is
/// UNAUTHENTICATED, and with a principal holding no permission it is FORBIDDEN naming the
/// permission — unless it is listed public (or, for self-service fields, only needs a
/// signed-in caller).
#[tokio::test(flavor = "multi_thread")]
async fn every_root_field_declares_a_guard() {
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let nothing = powerless_key(&app, &owner).await;
    let mut checked = 0;
    for (name, q, vars) in root_field_calls(&app).await {
        if agentplane::rbac::PUBLIC_FIELDS.contains(&name.as_str()) {
            continue;
        }
        let anon = app.gql(&q, vars.clone()).await;
        assert_eq!(
            first_error_code(&anon).as_deref(),
            Some("UNAUTHENTICATED"),
            "{name} without credentials: {anon}"
        );
        if !agentplane::rbac::SELF_FIELDS.contains(&name.as_str()) {
            let out = app.gql_as(&nothing, &q, vars).await;
            assert_eq!(
                first_error_code(&out).as_deref(),
                Some("FORBIDDEN"),
                "{name} without permission: {out}"
            );
            assert!(
                out["errors"][0]["extensions"]["permission"].is_string(),
                "{name}: {out}"
            );
        }
        checked += 1;
    }
    assert!(checked > 25, "walked {checked} fields");
}

/// Each built-in role calls every guarded root field through the API and is refused
/// exactly when the permission matrix says so.
#[tokio::test(flavor = "multi_thread")]
async fn every_role_gets_what_the_matrix_says_on_every_field() {
    use agentplane::rbac::{BuiltinRole, Permission};
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let nothing = powerless_key(&app, &owner).await;
    let calls = root_field_calls(&app).await;
    // Learn each field's required permission from the refusal of a powerless caller.
    let mut required = Vec::new();
    for (name, q, vars) in &calls {
        if agentplane::rbac::PUBLIC_FIELDS.contains(&name.as_str())
            || agentplane::rbac::SELF_FIELDS.contains(&name.as_str())
        {
            continue;
        }
        let out = app.gql_as(&nothing, q, vars.clone()).await;
        let perm = out["errors"][0]["extensions"]["permission"]
            .as_str()
            .expect("permission named");
        required.push((
            name.clone(),
            q.clone(),
            vars.clone(),
            Permission::parse(perm).expect("known"),
        ));
    }
    let mut principals: Vec<(BuiltinRole, String)> = Vec::new();
    for role in BuiltinRole::TENANT_ROLES {
        let key = app
            .gql_as(
                &owner,
                CREATE_KEY,
                json!({ "i": { "name": role.as_str(), "roleId": role.as_str() } }),
            )
            .await["data"]["createApiKey"]["secret"]
            .as_str()
            .expect("secret")
            .to_owned();
        principals.push((*role, key));
    }
    principals.push((BuiltinRole::PlatformAdmin, app.admin_token().await));
    for (role, token) in &principals {
        for (name, q, vars, perm) in &required {
            let out = app.gql_as(token, q, vars.clone()).await;
            let refused = first_error_code(&out).as_deref() == Some("FORBIDDEN")
                && out["errors"][0]["extensions"]["permission"] == perm.as_str();
            assert_eq!(
                refused,
                !role.permissions().contains(perm),
                "{} calling {name} (needs {}): {out}",
                role.as_str(),
                perm.as_str()
            );
        }
    }
}

/// Every subscription field is guarded too: over a websocket, a powerless principal is
/// FORBIDDEN (naming the permission) unless the field is public.
#[tokio::test(flavor = "multi_thread")]
async fn every_subscription_field_declares_a_guard() {
    use crate::helpers::{ws_authed, ws_next_json, ws_send};
    let app = TestApp::spawn().await;
    let (_, owner) = app.tenant_with_owner("acme").await;
    let nothing = powerless_key(&app, &owner).await;
    let mut checked = 0;
    for (name, q, vars) in field_calls(&app, true).await {
        if agentplane::rbac::PUBLIC_FIELDS.contains(&name.as_str()) {
            continue;
        }
        // Anonymous sockets are refused at connection_init (4401, see websocket tests),
        // so a subscription's own guard is what a signed-in, powerless caller meets.
        let mut key = ws_authed(&app.ws_url(), "graphql-transport-ws", &nothing).await;
        {
            let (ws, code) = (&mut key, "FORBIDDEN");
            ws_send(
                ws,
                json!({ "id": "1", "type": "subscribe", "payload": { "query": q, "variables": vars } }),
            )
            .await;
            let msg = ws_next_json(ws).await;
            let errors = if msg["type"] == "error" {
                msg["payload"].clone()
            } else {
                msg["payload"]["errors"].clone()
            };
            assert_eq!(errors[0]["extensions"]["code"], code, "{name}: {msg}");
            if code == "FORBIDDEN" {
                assert!(
                    errors[0]["extensions"]["permission"].is_string(),
                    "{name}: {msg}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 2, "walked {checked} subscription fields");
}
