//! Single sign-on through OpenID Connect (#19 item 2), against a small but real OIDC
//! provider the test starts on loopback: discovery, JWKS (an Ed25519 key), an authorize
//! endpoint that checks the request and redirects with a code, and a token endpoint that
//! checks the client secret and the PKCE verifier before it signs an ID token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::helpers::*;

/// The client this server is registered as at the fake provider.
pub const CLIENT_ID: &str = "agentplane-test";
/// Its client secret.
pub const CLIENT_SECRET: &str = "fake-idp-client-secret-0123456789";

/// How the next ID token is spoiled, to test that each check holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spoil {
    /// A good token.
    #[default]
    Nothing,
    /// Another nonce than the sign-in's.
    Nonce,
    /// For another client.
    Audience,
    /// Expired an hour ago.
    Expired,
    /// Signed with a key the provider does not publish (same key id).
    Signature,
}

struct Pending {
    nonce: String,
    challenge: String,
    redirect_uri: String,
    claims: Value,
}

/// The fake provider.
pub struct FakeIdp {
    /// Its issuer URL.
    pub issuer: String,
    /// The identity the next sign-in gets (ID-token claims besides iss/aud/exp/nonce).
    pub next: Arc<Mutex<Value>>,
    /// How the next token is spoiled.
    pub spoil: Arc<Mutex<Spoil>>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ed_key() -> (jsonwebtoken::EncodingKey, String) {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem");
    let enc = jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).expect("key");
    (enc, b64(key.verifying_key().as_bytes()))
}

impl FakeIdp {
    /// Starts the provider on loopback.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let (key, x) = ed_key();
        let (other_key, _) = ed_key();
        let next = Arc::new(Mutex::new(json!({})));
        let spoil = Arc::new(Mutex::new(Spoil::Nothing));
        let pending: Arc<Mutex<HashMap<String, Pending>>> = Arc::default();
        let iss = issuer.clone();
        let discovery = json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "code_challenge_methods_supported": ["S256"],
        });
        let jwks = json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig" } ] });
        let (p1, p2) = (pending.clone(), pending);
        let (n1, s1) = (next.clone(), spoil.clone());
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let d = discovery.clone();
                    async move { axum::Json(d) }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let j = jwks.clone();
                    async move { axum::Json(j) }
                }),
            )
            .route(
                "/authorize",
                axum::routing::get(
                    move |q: axum::extract::Query<HashMap<String, String>>| {
                        let pending = p1.clone();
                        let next = n1.clone();
                        async move {
                            let q = q.0;
                            let ok = q.get("response_type").map(String::as_str) == Some("code")
                                && q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                                && q.get("code_challenge_method").map(String::as_str) == Some("S256")
                                && q.get("scope").is_some_and(|s| s.split(' ').any(|x| x == "openid"));
                            if !ok {
                                return (axum::http::StatusCode::BAD_REQUEST, [("location", String::new())]);
                            }
                            let code = uuid::Uuid::now_v7().simple().to_string();
                            let redirect = q["redirect_uri"].clone();
                            pending.lock().expect("lock").insert(
                                code.clone(),
                                Pending {
                                    nonce: q["nonce"].clone(),
                                    challenge: q["code_challenge"].clone(),
                                    redirect_uri: redirect.clone(),
                                    claims: next.lock().expect("lock").clone(),
                                },
                            );
                            let state = url::form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>();
                            (
                                axum::http::StatusCode::FOUND,
                                [("location", format!("{redirect}?code={code}&state={state}"))],
                            )
                        }
                    },
                ),
            )
            .route(
                "/token",
                axum::routing::post(move |form: axum::extract::Form<HashMap<String, String>>| {
                    let pending = p2.clone();
                    let spoil = *s1.lock().expect("lock");
                    let iss = iss.clone();
                    let key = key.clone();
                    let other_key = other_key.clone();
                    async move {
                        let f = form.0;
                        let bad = |why: &str| {
                            (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "invalid_grant", "error_description": why })))
                        };
                        if f.get("grant_type").map(String::as_str) != Some("authorization_code")
                            || f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
                            || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
                        {
                            return bad("client authentication failed");
                        }
                        let Some(p) = pending.lock().expect("lock").remove(f.get("code").map(String::as_str).unwrap_or("")) else {
                            return bad("unknown or used code");
                        };
                        let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                        if b64(&sha2::Sha256::digest(verifier.as_bytes())) != p.challenge {
                            return bad("PKCE verifier does not match");
                        }
                        if f.get("redirect_uri") != Some(&p.redirect_uri) {
                            return bad("redirect_uri differs");
                        }
                        let now = chrono::Utc::now().timestamp();
                        let mut claims = json!({
                            "iss": iss,
                            "aud": if spoil == Spoil::Audience { "someone-else" } else { CLIENT_ID },
                            "iat": now,
                            "exp": if spoil == Spoil::Expired { now - 3600 } else { now + 300 },
                            "nonce": if spoil == Spoil::Nonce { "not-it".to_owned() } else { p.nonce },
                        });
                        if let (Some(c), Some(extra)) = (claims.as_object_mut(), p.claims.as_object()) {
                            for (k, v) in extra {
                                c.insert(k.clone(), v.clone());
                            }
                        }
                        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
                        header.kid = Some("k1".into());
                        let signer = if spoil == Spoil::Signature { &other_key } else { &key };
                        let id_token = jsonwebtoken::encode(&header, &claims, signer).expect("sign");
                        (axum::http::StatusCode::OK, axum::Json(json!({ "id_token": id_token, "access_token": "opaque", "token_type": "Bearer" })))
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            issuer,
            next,
            spoil,
        }
    }

    /// Sets who signs in next, and how the token is spoiled.
    pub fn next(&self, claims: Value, spoil: Spoil) {
        *self.next.lock().expect("lock") = claims;
        *self.spoil.lock().expect("lock") = spoil;
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The settings a test server needs to reach the fake provider.
pub const SSO_ENV: [(&str, &str); 2] = [
    ("AGENTPLANE_OIDC_ALLOW_HTTP_ISSUERS", "true"),
    ("AGENTPLANE_MASTER_KEY", crate::secrets::KEY1),
];

/// Stores the client secret and configures the provider for the owner's tenant.
pub async fn configure(app: &TestApp, owner: &str, idp: &FakeIdp, extra: Value) -> Value {
    let out = app
        .gql_as(
            owner,
            "mutation($i: SetSecretInput!) { setSecret(input: $i) { secret { name } } }",
            json!({ "i": { "name": "oidc-client", "value": CLIENT_SECRET } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let mut input = json!({
        "issuer": idp.issuer, "clientId": CLIENT_ID, "clientSecretName": "oidc-client",
        "allowedEmailDomains": ["acme.example"], "roleClaim": "groups",
        "roleMappings": [ { "claimValue": "ops", "roleId": "OPERATOR" } ],
        "defaultRoleId": "VIEWER", "jitProvisioning": true,
    });
    if let (Some(i), Some(e)) = (input.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            i.insert(k.clone(), v.clone());
        }
    }
    app.gql_as(
        owner,
        "mutation($i: ConfigureOidcProviderInput!) { configureOidcProvider(input: $i) { oidcProvider { issuer loginUrl callbackUrl jitProvisioning roleMappings { claimValue roleId } } } }",
        json!({ "i": input }),
    )
    .await
}

/// A sign-in up to the provider's redirect back: (callback URL, the browser's cookie).
async fn start_sign_in(app: &TestApp, slug: &str, return_to: Option<&str>) -> (String, String) {
    let http = no_redirects();
    let mut url = format!("{}/auth/oidc/{slug}/login", app.base);
    if let Some(r) = return_to {
        url.push_str(&format!(
            "?returnTo={}",
            url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
        ));
    }
    let start = http.get(&url).send().await.expect("login");
    let cookie = start
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        start.status(),
        302,
        "{}",
        start.text().await.unwrap_or_default()
    );
    assert!(cookie.starts_with("agentplane_oidc="), "{cookie}");
    let to_idp = location(&start);
    let at_idp = http.get(&to_idp).send().await.expect("authorize");
    assert_eq!(at_idp.status(), 302, "the provider accepted the request");
    let back = location(&at_idp);
    // The provider sends the browser to the callback on the configured public address;
    // the test server listens elsewhere, so only the path and query are kept.
    let parsed = url::Url::parse(&back).expect("callback url");
    let callback = format!(
        "{}{}?{}",
        app.base,
        parsed.path(),
        parsed.query().unwrap_or("")
    );
    (callback, cookie)
}

/// One sign-in through the provider: returns the callback's response.
async fn sign_in(
    app: &TestApp,
    slug: &str,
    return_to: Option<&str>,
) -> (reqwest::Response, String) {
    let (callback, cookie) = start_sign_in(app, slug, return_to).await;
    let resp = no_redirects()
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("callback");
    (resp, callback)
}

fn fragment(loc: &str) -> HashMap<String, String> {
    let frag = loc.split_once('#').map(|(_, f)| f).unwrap_or_default();
    url::form_urlencoded::parse(frag.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn single_sign_on_through_an_oidc_provider() {
    let idp = FakeIdp::start().await;
    let mut env = SSO_ENV.to_vec();
    env.push(("AGENTPLANE_WORKERS", "0"));
    // As a role that does not own the tables (PostgreSQL): row-level security in force.
    let app = TestApp::spawn_as_app_role_with(&env).await;
    let admin = app.admin_token().await;
    let (acme, owner) = app.tenant_with_owner("acme").await;
    let (_, other) = app.tenant_with_owner("globex").await;

    // Configuration checks the issuer now, and keeps only what it may.
    let bad = app
        .gql_as(
            &owner,
            "mutation($i: ConfigureOidcProviderInput!) { configureOidcProvider(input: $i) { oidcProvider { issuer } } }",
            json!({ "i": { "issuer": "http://127.0.0.1:9/nowhere", "clientId": CLIENT_ID } }),
        )
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["field"], "issuer", "{bad}");
    let configured = configure(&app, &owner, &idp, json!({})).await;
    let p = &configured["data"]["configureOidcProvider"]["oidcProvider"];
    assert_eq!(p["issuer"], idp.issuer, "{configured}");
    assert!(
        p["loginUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/auth/oidc/acme/login")),
        "{configured}"
    );

    // 1. A new user, provisioned just in time, with the role their group maps to; the
    //    tokens come back in the fragment of the page that asked.
    idp.next(
        json!({ "sub": "u-1", "email": "new@acme.example", "email_verified": true, "name": "New Person", "groups": ["ops"], "amr": ["pwd"] }),
        Spoil::Nothing,
    );
    let (resp, callback) = sign_in(&app, "acme", Some("/app/welcome")).await;
    assert_eq!(resp.status(), 302);
    let loc = location(&resp);
    assert!(loc.starts_with("/app/welcome#"), "{loc}");
    let tokens = fragment(&loc);
    let me = app
        .gql_as(
            &tokens["access_token"],
            "{ me { email displayName role { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(me["data"]["me"]["email"], "new@acme.example", "{me}");
    assert_eq!(me["data"]["me"]["role"]["name"], "OPERATOR", "{me}");
    // The refresh token works like any other.
    let refreshed = app
        .gql(
            "mutation($i: RefreshSessionInput!) { refreshSession(input: $i) { accessToken } }",
            json!({ "i": { "refreshToken": tokens["refresh_token"] } }),
        )
        .await;
    assert!(
        refreshed["data"]["refreshSession"]["accessToken"].is_string(),
        "{refreshed}"
    );
    // A code and state are good once.
    let replay = no_redirects().get(&callback).send().await.expect("replay");
    assert_eq!(replay.status(), 401);
    let body: Value = replay.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "SSO_STATE_INVALID",
        "{body}"
    );

    // A callback from another browser (a link someone sent) is refused, and does not
    // spend the sign-in (login CSRF).
    idp.next(
        json!({ "sub": "u-1", "email": "new@acme.example", "email_verified": true }),
        Spoil::Nothing,
    );
    let (callback, cookie) = start_sign_in(&app, "acme", None).await;
    let foreign = no_redirects()
        .get(&callback)
        .send()
        .await
        .expect("callback");
    assert_eq!(foreign.status(), 401);
    let body: Value = foreign.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "SSO_STATE_INVALID",
        "{body}"
    );
    let own = no_redirects()
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("callback");
    assert_eq!(own.status(), 200);

    // 2. An existing user signs in as themselves; without returnTo the tokens are JSON.
    idp.next(
        json!({ "sub": "u-0", "email": "owner@acme.example", "email_verified": true }),
        Spoil::Nothing,
    );
    let (resp, _) = sign_in(&app, "acme", None).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    let me = app
        .gql_as(
            body["accessToken"].as_str().expect("token"),
            "{ me { email role { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(me["data"]["me"]["role"]["name"], "OWNER", "{me}");

    // 3. Each check of the ID token holds.
    for (spoil, reason) in [
        (Spoil::Nonce, "SSO_TOKEN_INVALID"),
        (Spoil::Audience, "SSO_TOKEN_INVALID"),
        (Spoil::Expired, "SSO_TOKEN_INVALID"),
        (Spoil::Signature, "SSO_TOKEN_INVALID"),
    ] {
        idp.next(
            json!({ "sub": "u-1", "email": "new@acme.example", "email_verified": true }),
            spoil,
        );
        let (resp, _) = sign_in(&app, "acme", None).await;
        assert_eq!(resp.status(), 401, "{spoil:?}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(
            body["errors"][0]["extensions"]["reason"], reason,
            "{spoil:?}: {body}"
        );
    }
    // Domains, unverified addresses, and another tenant's users are refused.
    for (claims, reason) in [
        (
            json!({ "sub": "x", "email": "mallory@evil.example", "email_verified": true }),
            "SSO_DOMAIN_NOT_ALLOWED",
        ),
        (
            json!({ "sub": "x", "email": "late@acme.example", "email_verified": false }),
            "SSO_EMAIL_UNVERIFIED",
        ),
        (
            json!({ "sub": "x", "email": "late@acme.example" }),
            "SSO_EMAIL_UNVERIFIED",
        ),
        (
            json!({ "sub": "x", "email": "late@acme.example", "email_verified": "true" }),
            "SSO_EMAIL_UNVERIFIED",
        ),
    ] {
        idp.next(claims, Spoil::Nothing);
        let (resp, _) = sign_in(&app, "acme", None).await;
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["errors"][0]["extensions"]["reason"], reason, "{body}");
    }
    let configured = configure(&app, &owner, &idp, json!({ "allowedEmailDomains": [] })).await;
    assert!(configured["errors"].is_null(), "{configured}");
    idp.next(
        json!({ "sub": "g", "email": "owner@globex.example", "email_verified": true }),
        Spoil::Nothing,
    );
    let (resp, _) = sign_in(&app, "acme", None).await;
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "SSO_ACCOUNT_UNAVAILABLE",
        "{body}"
    );
    // Without just-in-time provisioning, unknown users are refused.
    let configured = configure(&app, &owner, &idp, json!({ "jitProvisioning": false })).await;
    assert!(configured["errors"].is_null(), "{configured}");
    idp.next(
        json!({ "sub": "n", "email": "stranger@acme.example", "email_verified": true }),
        Spoil::Nothing,
    );
    let (resp, _) = sign_in(&app, "acme", None).await;
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["reason"], "SSO_NO_ACCOUNT",
        "{body}"
    );

    // 4. Tokens go back only to this server.
    let evil = no_redirects()
        .get(format!(
            "{}/auth/oidc/acme/login?returnTo=https://evil.example/steal",
            app.base
        ))
        .send()
        .await
        .expect("login");
    assert_eq!(evil.status(), 400);
    for sneaky in [
        "//evil.example/steal",
        "/%09/evil.example",
        "/%0A/evil.example",
        "/\\evil.example",
    ] {
        let evil = no_redirects()
            .get(format!(
                "{}/auth/oidc/acme/login?returnTo={sneaky}",
                app.base
            ))
            .send()
            .await
            .expect("login");
        assert_eq!(evil.status(), 400, "{sneaky}");
    }

    // 5. A tenant without a provider, or with the `sso` flag off, has no sign-in.
    let none = no_redirects()
        .get(format!("{}/auth/oidc/globex/login", app.base))
        .send()
        .await
        .expect("login");
    assert_eq!(none.status(), 404);
    let out = app
        .gql_as(
            &admin,
            "mutation($i: UpdateTenantPlanInput!) { updateTenantPlan(input: $i) { tenant { id } } }",
            json!({ "i": { "tenantId": acme, "plan": "PRO", "featureFlags": ["llm_steps"] } }),
        )
        .await;
    assert!(out["errors"].is_null(), "{out}");
    let off = no_redirects()
        .get(format!("{}/auth/oidc/acme/login", app.base))
        .send()
        .await
        .expect("login");
    assert_eq!(off.status(), 403);
    let body: Value = off.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["flag"], "sso", "{body}");
    // Only OWNERs configure it (it can sign in as anyone of the tenant).
    let role = app
        .gql_as(
            &owner,
            "mutation($i: CreateRoleInput!) { createRole(input: $i) { role { id } } }",
            json!({ "i": { "name": "sso-admin", "permissions": ["tenant.read", "tenant.update"] } }),
        )
        .await["data"]["createRole"]["role"]["id"]
        .clone();
    let (_, dev) = user_with_role(&app, &owner, "dev@acme.example", role).await;
    let denied = app
        .gql_as(&dev, "mutation { deleteOidcProvider { ok } }", json!({}))
        .await;
    assert_eq!(
        denied["errors"][0]["extensions"]["reason"], "OWNER_ONLY",
        "{denied}"
    );
    // Another tenant cannot read this one's provider.
    let theirs = app
        .gql_as(&other, "{ oidcProvider { issuer } }", json!({}))
        .await;
    assert!(theirs["data"]["oidcProvider"].is_null(), "{theirs}");
}
