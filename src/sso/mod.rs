//! Single sign-on through OpenID Connect: each tenant may name one identity provider
//! (issuer, client id, client secret kept as a tenant secret, allowed e-mail domains, a
//! claim mapped to roles, a default role, just-in-time provisioning). The sign-in is the
//! authorization-code flow with PKCE (S256), `state` and `nonce`:
//!
//! 1. `GET /auth/oidc/{tenant}/login` stores a single-use sign-in (the hash of its
//!    `state`, its `nonce` and PKCE verifier, the hash of a secret the browser keeps in
//!    a cookie, 10 minutes) and redirects to the provider's
//!    authorization endpoint (from its discovery document, cached for an hour);
//! 2. the provider redirects back to `GET /auth/oidc/callback?code&state`; the code is
//!    exchanged at the token endpoint (with the verifier and, when configured, the
//!    client secret), and the ID token is checked: signature against the provider's
//!    JWKS (cached, fetched again for an unknown key id at most every 30 s; asymmetric
//!    algorithms only), `iss`, `aud`, `exp`, `nonce`, a verified e-mail in an allowed
//!    domain;
//! 3. the user is the tenant's user with that e-mail (or, with just-in-time provisioning,
//!    a new one whose role comes from the mapped claim, else the default role); a session
//!    of our own opens, exactly as after a password sign-in (`allowedIpRanges` hold).
//!
//! Provider hosts are fetched over HTTPS at public addresses (plain HTTP and internal
//! addresses only with `AGENTPLANE_OIDC_ALLOW_HTTP_ISSUERS`, for development), with a
//! timeout and a size bound on every answer; what a provider answers to a refusal is
//! logged, never shown. The client secret goes only to hosts it is pinned to. Only the
//! tenant's OWNERs configure the provider: the provider vouches for any of the tenant's
//! e-mail addresses, so whoever configures it can sign in as anyone there. Gated by the
//! tenant's `sso` feature flag.

pub mod graphql;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::NaiveDateTime;
use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper};
use diesel_async::RunQueryDsl as _;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use sha2::Digest as _;

use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::auth::passwords;
use crate::auth::service::IssuedTokens;
use crate::db::ids::{TenantId, db_time, utc};
use crate::db::schema::{oidc_logins, oidc_providers};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::request::ClientInfo;
use crate::tenancy::TenantRow;
use crate::tenancy::model::{TenantStatus, UserStatus};

/// How long a sign-in may take at the provider.
pub const LOGIN_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// How long a discovery document is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// How long a key set is reused; an unknown key id fetches it again after at least
/// [`JWKS_MIN_REFRESH`].
const JWKS_TTL: Duration = Duration::from_secs(3600);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Largest answer read from a provider.
const MAX_BODY: usize = 256 * 1024;
/// The `amr` values that mean more than a password.
const STRONG_AMR: [&str; 6] = ["mfa", "otp", "hwk", "swk", "sc", "fpt"];

/// One row of `oidc_providers`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = oidc_providers)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ProviderRow {
    /// The tenant (one provider each).
    pub tenant_id: TenantId,
    /// The issuer URL (`iss`), without a trailing slash.
    pub issuer: String,
    /// Our client id at the provider (`aud`).
    pub client_id: String,
    /// The tenant secret holding the client secret (none: a public client, PKCE only).
    pub client_secret_name: Option<String>,
    /// JSON array of allowed e-mail domains (empty: any).
    pub allowed_domains: String,
    /// The ID-token claim mapped to roles (e.g. `groups`).
    pub role_claim: Option<String>,
    /// JSON array of `[claim value, stored role]`, first match wins.
    pub role_mapping: String,
    /// The stored role of users no mapping matches.
    pub default_role: String,
    /// Whether unknown users are created at their first sign-in.
    pub jit_provisioning: bool,
    /// Whether sign-ins are accepted.
    pub enabled: bool,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

impl ProviderRow {
    /// Allowed e-mail domains.
    pub fn domains(&self) -> Vec<String> {
        serde_json::from_str(&self.allowed_domains).unwrap_or_default()
    }

    /// `(claim value, stored role)` pairs.
    pub fn mapping(&self) -> Vec<(String, String)> {
        serde_json::from_str(&self.role_mapping).unwrap_or_default()
    }
}

/// One row of `oidc_logins`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = oidc_logins)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct LoginRow {
    state_hash: String,
    tenant_id: TenantId,
    nonce: String,
    code_verifier: String,
    browser_hash: String,
    return_to: Option<String>,
    created_at: NaiveDateTime,
    expires_at: NaiveDateTime,
    used_at: Option<NaiveDateTime>,
}

/// What a provider's discovery document says (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where browsers are sent.
    pub authorization_endpoint: String,
    /// Where codes are exchanged.
    pub token_endpoint: String,
    /// The signing keys.
    pub jwks_uri: String,
}

#[derive(Default)]
struct Cache {
    discovery: HashMap<String, (Discovery, Instant)>,
    jwks: HashMap<String, (jsonwebtoken::jwk::JwkSet, Instant)>,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refused(message: impl Into<String>, reason: &'static str) -> AppError {
    AppError::unauthenticated(message).with_detail("reason", reason)
}

fn provider_error(what: &str, detail: impl std::fmt::Display) -> AppError {
    AppError::new(
        ErrorCode::Unavailable,
        format!("the identity provider {what} ({detail}); try again, or check its configuration"),
    )
}

/// The issuer as stored: trimmed, without a trailing slash.
pub fn normalize_issuer(app: &App, issuer: &str) -> AppResult<String> {
    let issuer = issuer.trim().trim_end_matches('/').to_owned();
    let url = url::Url::parse(&issuer)
        .map_err(|e| AppError::bad_input("issuer", format!("not a URL ({e})")))?;
    check_scheme(app, &url, "issuer")?;
    Ok(issuer)
}

fn check_scheme(app: &App, url: &url::Url, field: &str) -> AppResult<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if app.config.auth.oidc_allow_http_issuers => Ok(()),
        _ => Err(AppError::bad_input(
            field,
            "identity providers are reached over https:// (plain http only with \
             AGENTPLANE_OIDC_ALLOW_HTTP_ISSUERS=true, for development)",
        )),
    }
}

/// Providers live on the internet, not inside this server's network: a host that
/// resolves to a loopback, private, link-local or otherwise internal address is refused
/// (unless `AGENTPLANE_OIDC_ALLOW_HTTP_ISSUERS`, for development against a local
/// provider), so a tenant cannot point the server at its own neighbours.
async fn check_host(app: &App, url: &url::Url) -> AppResult<()> {
    if app.config.auth.oidc_allow_http_issuers {
        return Ok(());
    }
    let refused = || {
        AppError::bad_input(
            "issuer",
            "the identity provider's address is internal (loopback, private or link-local): \
             providers are reached on public addresses",
        )
    };
    let host = url.host_str().ok_or_else(refused)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| provider_error("could not be found", e))?
        .collect();
    if addrs.is_empty()
        || addrs
            .iter()
            .any(|a| crate::net::non_public_reason(a.ip()).is_some())
    {
        return Err(refused());
    }
    Ok(())
}

fn http() -> &'static reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    });
    &CLIENT
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
) -> AppResult<T> {
    let status = resp.status();
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| provider_error(&format!("did not answer {what}"), e))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(provider_error(
                &format!("answered {what} with too much"),
                format!("more than {MAX_BODY} bytes"),
            ));
        }
    }
    if !status.is_success() {
        // What the provider said stays in the log: its answer may echo what was sent.
        tracing::warn!(
            status = status.as_u16(),
            body = %String::from_utf8_lossy(&body).chars().take(500).collect::<String>(),
            "the identity provider refused {what}"
        );
        return Err(provider_error(
            &format!("refused {what}"),
            format!("HTTP {status}"),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| provider_error(&format!("answered {what} with something unexpected"), e))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    app: &App,
    url: &str,
    what: &str,
) -> AppResult<T> {
    let parsed = url::Url::parse(url)
        .map_err(|e| provider_error(&format!("gave a bad URL for {what}"), e))?;
    check_scheme(app, &parsed, "issuer")?;
    check_host(app, &parsed).await?;
    let resp = http()
        .get(parsed)
        .send()
        .await
        .map_err(|e| provider_error(&format!("could not be reached for {what}"), e))?;
    read_json(resp, what).await
}

/// The provider's discovery document (cached for an hour).
pub async fn discovery(app: &App, issuer: &str) -> AppResult<Discovery> {
    if let Some((d, at)) = cache().discovery.get(issuer) {
        if at.elapsed() < DISCOVERY_TTL {
            return Ok(d.clone());
        }
    }
    let d: Discovery = get_json(
        app,
        &format!("{issuer}/.well-known/openid-configuration"),
        "its discovery document",
    )
    .await?;
    if d.issuer.trim_end_matches('/') != issuer {
        return Err(provider_error(
            "names another issuer in its discovery document",
            format!("{} is not {issuer}", d.issuer),
        ));
    }
    cache()
        .discovery
        .insert(issuer.to_owned(), (d.clone(), Instant::now()));
    Ok(d)
}

/// The decoding key of `kid` from the provider's key set.
async fn key(app: &App, d: &Discovery, kid: Option<&str>) -> AppResult<jsonwebtoken::DecodingKey> {
    let find = |set: &jsonwebtoken::jwk::JwkSet| match kid {
        Some(k) => set.find(k).cloned(),
        None if set.keys.len() == 1 => <[_]>::first(&set.keys).cloned(),
        None => None,
    };
    let cached = cache().jwks.get(&d.jwks_uri).cloned();
    if let Some((set, at)) = &cached {
        if at.elapsed() < JWKS_TTL {
            if let Some(jwk) = find(set) {
                return jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| {
                    refused(
                        format!("the provider's key is unusable ({e})"),
                        "SSO_TOKEN_INVALID",
                    )
                });
            }
            if at.elapsed() < JWKS_MIN_REFRESH {
                return Err(refused(
                    "the ID token is signed with a key the provider does not publish",
                    "SSO_TOKEN_INVALID",
                ));
            }
        }
    }
    let set: jsonwebtoken::jwk::JwkSet = get_json(app, &d.jwks_uri, "its key set").await?;
    cache()
        .jwks
        .insert(d.jwks_uri.clone(), (set.clone(), Instant::now()));
    let jwk = find(&set).ok_or_else(|| {
        refused(
            "the ID token is signed with a key the provider does not publish",
            "SSO_TOKEN_INVALID",
        )
    })?;
    jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| {
        refused(
            format!("the provider's key is unusable ({e})"),
            "SSO_TOKEN_INVALID",
        )
    })
}

/// The provider of `tenant`, if one is configured.
pub async fn provider(app: &App, tenant: TenantId) -> AppResult<Option<ProviderRow>> {
    Ok(crate::db_run_tenant!(&app.db, tenant, |conn| {
        oidc_providers::table
            .filter(oidc_providers::tenant_id.eq(tenant))
            .select(ProviderRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Where the provider sends browsers back.
pub fn callback_url(app: &App) -> String {
    format!("{}/auth/oidc/callback", public_base(app))
}

/// The server's address as browsers reach it.
pub fn public_base(app: &App) -> String {
    match &app.config.auth.public_url {
        Some(u) => u.as_str().trim_end_matches('/').to_owned(),
        None => format!("http://{}", app.config.listen),
    }
}

/// Where a tenant's users start a sign-in.
pub fn login_url(app: &App, slug: &str) -> String {
    format!("{}/auth/oidc/{slug}/login", public_base(app))
}

/// Whether `return_to` may receive tokens: a path on this server, or a URL under
/// `AGENTPLANE_PUBLIC_URL` (never another site: that would hand it the tokens). Only
/// visible ASCII is accepted (browsers drop tabs and newlines from URLs, so `/\t/evil`
/// would leave the site), and the value, resolved against the public address, must keep
/// its origin.
fn check_return_to(app: &App, return_to: &str) -> AppResult<()> {
    let base = public_base(app);
    let refuse = || {
        AppError::bad_input(
            "returnTo",
            format!(
                "tokens only go back to this server: a path such as /app, or a URL under {base}"
            ),
        )
    };
    if return_to.len() > 2048
        || !return_to.bytes().all(|b| b.is_ascii_graphic())
        || return_to.contains('\\')
    {
        return Err(refuse());
    }
    let local_path = return_to.starts_with('/') && !return_to.starts_with("//");
    let under_base = return_to == base || return_to.starts_with(&format!("{base}/"));
    if !(local_path || under_base) {
        return Err(refuse());
    }
    let origin = url::Url::parse(&base).map_err(|_| refuse())?;
    let resolved = origin.join(return_to).map_err(|_| refuse())?;
    if resolved.origin() != origin.origin() {
        return Err(refuse());
    }
    Ok(())
}

async fn sso_tenant(app: &App, tenant: &TenantRow) -> AppResult<ProviderRow> {
    if tenant.status != TenantStatus::Active {
        return Err(AppError::forbidden("this organization is suspended")
            .with_detail("reason", "TENANT_SUSPENDED"));
    }
    crate::tenancy::features::require(tenant, crate::tenancy::features::Feature::Sso)?;
    match provider(app, tenant.id).await? {
        Some(p) if p.enabled => Ok(p),
        _ => Err(AppError::not_found("single sign-on for this organization")),
    }
}

/// A sign-in started: where to send the browser, and the secret the browser keeps (in a
/// cookie) to finish it — a callback from another browser is refused, so nobody can
/// sign a victim into the attacker's account with a link (login CSRF).
pub struct Started {
    /// The provider's authorization URL.
    pub location: String,
    /// The browser's half of the sign-in.
    pub browser: String,
}

/// The cookie that binds a sign-in to the browser that started it.
pub const BROWSER_COOKIE: &str = "agentplane_oidc";

/// Starts a sign-in for tenant `slug`.
pub async fn begin(app: &App, slug: &str, return_to: Option<&str>) -> AppResult<Started> {
    let tenant = crate::tenancy::store::find_by_slug(&app.db, slug)
        .await?
        .ok_or_else(|| AppError::not_found("single sign-on for this organization"))?;
    let p = sso_tenant(app, &tenant).await?;
    if let Some(r) = return_to {
        check_return_to(app, r)?;
    }
    let d = discovery(app, &p.issuer).await?;
    let state = passwords::random_secret(32);
    let nonce = passwords::random_secret(32);
    let verifier = passwords::random_secret(48);
    let browser = passwords::random_secret(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let now = app.clock.now();
    let row = LoginRow {
        state_hash: passwords::sha256_hex(&state),
        tenant_id: tenant.id,
        nonce: nonce.clone(),
        code_verifier: verifier,
        browser_hash: passwords::sha256_hex(&browser),
        return_to: return_to.map(str::to_owned),
        created_at: db_time(now),
        expires_at: db_time(now + LOGIN_TTL),
        used_at: None,
    };
    let expired = db_time(now - LOGIN_TTL);
    app.db
        .tx(tenant.id, async |conn| {
            crate::on_conn!(conn, |conn| {
                // Sign-ins nobody finished are forgotten as new ones start.
                diesel::delete(oidc_logins::table.filter(oidc_logins::expires_at.lt(expired)))
                    .execute(conn)
                    .await?;
                diesel::insert_into(oidc_logins::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
            });
            Ok(())
        })
        .await?;
    let mut url = url::Url::parse(&d.authorization_endpoint)
        .map_err(|e| provider_error("gave a bad authorization endpoint", e))?;
    check_scheme(app, &url, "issuer")?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &p.client_id)
        .append_pair("redirect_uri", &callback_url(app))
        .append_pair("scope", "openid email profile")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(Started {
        location: url.into(),
        browser,
    })
}

/// A completed sign-in.
pub struct Completed {
    /// Our tokens.
    pub tokens: IssuedTokens,
    /// Where the sign-in asked to go back to.
    pub return_to: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// Finishes a sign-in from the provider's redirect.
pub async fn complete(
    app: &App,
    state: &str,
    code: &str,
    browser: Option<&str>,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
) -> AppResult<Completed> {
    let now = app.clock.now();
    let hash = passwords::sha256_hex(state);
    let login: Option<LoginRow> = crate::db_run!(&app.db, |conn| {
        oidc_logins::table
            .filter(oidc_logins::state_hash.eq(&hash))
            .select(LoginRow::as_select())
            .first(conn)
            .await
            .optional()?
    });
    let stale = || {
        refused(
            "this sign-in is unknown, used or expired: start again from the login link",
            "SSO_STATE_INVALID",
        )
    };
    let login = login
        .filter(|l| l.used_at.is_none() && utc(l.expires_at) > now)
        .ok_or_else(stale)?;
    if browser.map(passwords::sha256_hex).as_deref() != Some(login.browser_hash.as_str()) {
        return Err(refused(
            "this sign-in was started in another browser (or its cookie was blocked): \
             start again from the login link, in this browser",
            "SSO_STATE_INVALID",
        ));
    }
    // Spent before anything else: a code and state are good once.
    let at = db_time(now);
    let spent = crate::db_run!(&app.db, |conn| {
        diesel::update(
            oidc_logins::table
                .filter(oidc_logins::state_hash.eq(&hash))
                .filter(oidc_logins::used_at.is_null()),
        )
        .set(oidc_logins::used_at.eq(Some(at)))
        .execute(conn)
        .await?
    });
    if spent != 1 {
        return Err(stale());
    }
    let tenant = crate::tenancy::store::find(&app.db, login.tenant_id)
        .await?
        .ok_or_else(stale)?;
    let p = sso_tenant(app, &tenant).await?;
    let d = discovery(app, &p.issuer).await?;
    let token_url = url::Url::parse(&d.token_endpoint)
        .map_err(|e| provider_error("gave a bad token endpoint", e))?;
    check_scheme(app, &token_url, "issuer")?;
    check_host(app, &token_url).await?;
    // The client secret goes only where it is pinned to (its allowedHosts).
    let secret = match &p.client_secret_name {
        Some(name) => Some(
            crate::secrets::service::reveal_for_host(
                app,
                tenant.id,
                name,
                token_url.host_str().unwrap_or_default(),
            )
            .await?,
        ),
        None => None,
    };
    let mut form: Vec<(&str, String)> = vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.to_owned()),
        ("redirect_uri", callback_url(app)),
        ("client_id", p.client_id.clone()),
        ("code_verifier", login.code_verifier.clone()),
    ];
    if let Some(s) = &secret {
        form.push(("client_secret", s.expose_secret().to_owned()));
    }
    let resp = http()
        .post(token_url)
        .form(&form)
        .send()
        .await
        .map_err(|e| provider_error("could not be reached to exchange the code", e))?;
    let answer: TokenAnswer = read_json(resp, "the code exchange").await?;
    let id_token = answer
        .id_token
        .ok_or_else(|| provider_error("answered without an ID token", "no id_token"))?;
    let claims = match validate(app, &p, &d, &id_token, &login.nonce).await {
        Ok(c) => c,
        Err(e) => {
            record_refusal(app, &tenant, client, request_id, &e).await;
            return Err(e);
        }
    };
    // The tenant's allowedIpRanges before any account is looked up or created.
    if let Some(c) = client {
        let ranges = crate::auth::allowed_ranges(&tenant);
        if !crate::auth::address_allowed(app, &ranges, false, c.ip) {
            return Err(crate::auth::ip_not_allowed(c.ip));
        }
    }
    let user = match user_for(app, &tenant, &p, &claims).await {
        Ok(u) => u,
        Err(e) => {
            record_refusal(app, &tenant, client, request_id, &e).await;
            return Err(e);
        }
    };
    let strong = claims["amr"].as_array().is_some_and(|a| {
        a.iter()
            .any(|v| v.as_str().is_some_and(|s| STRONG_AMR.contains(&s)))
    });
    let details = serde_json::json!({
        "method": "oidc",
        "issuer": p.issuer,
        "subject": claims["sub"],
    });
    let tokens = crate::auth::service::sign_in_federated(
        app, &tenant, user, client, request_id, details, strong,
    )
    .await?;
    Ok(Completed {
        tokens,
        return_to: login.return_to,
    })
}

/// Checks the ID token; returns its claims.
async fn validate(
    app: &App,
    p: &ProviderRow,
    d: &Discovery,
    id_token: &str,
    nonce: &str,
) -> AppResult<serde_json::Value> {
    use jsonwebtoken::Algorithm as A;
    let invalid = |why: String| {
        refused(
            format!("the ID token is not valid: {why}"),
            "SSO_TOKEN_INVALID",
        )
    };
    let header = jsonwebtoken::decode_header(id_token).map_err(|e| invalid(e.to_string()))?;
    if !matches!(
        header.alg,
        A::RS256
            | A::RS384
            | A::RS512
            | A::PS256
            | A::PS384
            | A::PS512
            | A::ES256
            | A::ES384
            | A::EdDSA
    ) {
        return Err(invalid(format!(
            "{:?} is not an accepted signature algorithm",
            header.alg
        )));
    }
    let key = key(app, d, header.kid.as_deref()).await?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_issuer(&[p.issuer.as_str(), format!("{}/", p.issuer).as_str()]);
    v.set_audience(&[p.client_id.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 60;
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<serde_json::Value>(id_token, &key, &v)
        .map_err(|e| invalid(e.to_string()))?;
    let claims = data.claims;
    // Several audiences: the token must have been issued to us (OIDC Core 3.1.3.7).
    if claims["aud"].as_array().is_some_and(|a| a.len() > 1)
        && claims["azp"].as_str() != Some(p.client_id.as_str())
    {
        return Err(invalid(
            "it names several audiences and was not issued to this client (azp)".into(),
        ));
    }
    if claims["nonce"].as_str() != Some(nonce) {
        return Err(invalid("its nonce is not this sign-in's".into()));
    }
    if claims["exp"]
        .as_i64()
        .is_some_and(|exp| exp + 60 < app.clock.now().timestamp())
    {
        return Err(invalid("it has expired".into()));
    }
    Ok(claims)
}

/// The tenant's user the claims name, created when just-in-time provisioning is on.
async fn user_for(
    app: &App,
    tenant: &TenantRow,
    p: &ProviderRow,
    claims: &serde_json::Value,
) -> AppResult<crate::tenancy::UserRow> {
    let email = claims["email"].as_str().ok_or_else(|| {
        refused(
            "the provider sent no e-mail address (ask for the email scope)",
            "SSO_NO_EMAIL",
        )
    })?;
    if claims["email_verified"] != serde_json::Value::Bool(true) {
        return Err(refused(
            "the provider has not verified this e-mail address",
            "SSO_EMAIL_UNVERIFIED",
        ));
    }
    if !email.is_ascii() {
        return Err(refused(
            "single sign-on accepts ASCII e-mail addresses only",
            "SSO_NO_EMAIL",
        ));
    }
    let email = crate::policy::normalize_email(email).map_err(|_| {
        refused(
            "the provider sent an e-mail address that is not one",
            "SSO_NO_EMAIL",
        )
    })?;
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    let domains = p.domains();
    if !domains.is_empty() && !domains.iter().any(|d| d == domain) {
        return Err(AppError::forbidden(format!(
            "{domain} is not one of this organization's single sign-on domains"
        ))
        .with_detail("reason", "SSO_DOMAIN_NOT_ALLOWED"));
    }
    match crate::tenancy::store::find_user_by_email(&app.db, &email).await? {
        Some(u) if u.tenant_id == tenant.id && u.status == UserStatus::Active => Ok(u),
        Some(_) => Err(AppError::forbidden(
            "this account cannot sign in here: it is disabled, or belongs to another organization",
        )
        .with_detail("reason", "SSO_ACCOUNT_UNAVAILABLE")),
        None if !p.jit_provisioning => Err(AppError::forbidden(
            "no account with this e-mail address exists in this organization: ask an \
             administrator to create it",
        )
        .with_detail("reason", "SSO_NO_ACCOUNT")),
        None => {
            let role = mapped_role(p, claims);
            let name = claims["name"]
                .as_str()
                .unwrap_or(&email)
                .chars()
                .take(100)
                .collect::<String>();
            let mut origin = Origin::system(tenant.id);
            origin.actor_ref = Some(format!("oidc:{}", p.issuer));
            let created = crate::tenancy::service::create_user(
                app,
                &origin,
                tenant,
                crate::tenancy::service::NewUser {
                    email: &email,
                    display_name: &name,
                    credential: crate::tenancy::service::Credential::None,
                },
                &role,
                true,
            )
            .await;
            match created {
                Ok(c) => Ok(c.user),
                // The same new user signing in twice at once: the other sign-in made it.
                Err(e) if e.code() == ErrorCode::Conflict => {
                    match crate::tenancy::store::find_user_by_email(&app.db, &email).await? {
                        Some(u) if u.tenant_id == tenant.id && u.status == UserStatus::Active => {
                            Ok(u)
                        }
                        _ => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// The role the claims map to: the first mapping whose value the role claim holds (a
/// string or a list of strings), else the default role.
pub fn mapped_role(p: &ProviderRow, claims: &serde_json::Value) -> String {
    let held: Vec<&str> = match p.role_claim.as_deref().map(|c| &claims[c]) {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    p.mapping()
        .into_iter()
        .find(|(value, _)| held.contains(&value.as_str()))
        .map_or_else(|| p.default_role.clone(), |(_, role)| role)
}

async fn record_refusal(
    app: &App,
    tenant: &TenantRow,
    client: Option<&ClientInfo>,
    request_id: Option<&str>,
    e: &AppError,
) {
    crate::metrics::auth_failure("SSO_REFUSED");
    let origin = crate::audit::Origin::anonymous(tenant.id, client, request_id);
    let entry = Entry::change(
        &origin,
        "auth.login_failed",
        "tenant",
        tenant.id,
        Some(serde_json::json!({ "method": "oidc", "reason": e.reason() })),
        db_time(app.clock.now()),
    )
    .severity(Severity::Warning)
    .failed(e.message().to_owned());
    if let Err(err) = crate::audit::record(&app.db, &entry).await {
        tracing::warn!(error = ?err, "could not record a refused single sign-on");
    }
}

/// A provider configuration to save (roles already resolved to their stored form).
pub struct Settings {
    /// Issuer URL.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Tenant secret holding the client secret.
    pub client_secret_name: Option<String>,
    /// Allowed e-mail domains (empty: any).
    pub allowed_domains: Vec<String>,
    /// Claim mapped to roles.
    pub role_claim: Option<String>,
    /// `(claim value, stored role)`, first match wins.
    pub role_mapping: Vec<(String, String)>,
    /// Stored role when nothing matches.
    pub default_role: String,
    /// Create unknown users at their first sign-in.
    pub jit_provisioning: bool,
    /// Accept sign-ins.
    pub enabled: bool,
}

/// Most role mappings one provider holds.
pub const MAX_MAPPINGS: usize = 50;

/// Saves `tenant`'s provider (replacing any), after reading the issuer's discovery
/// document (a wrong issuer fails here, not at the first sign-in).
pub async fn configure(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    s: Settings,
) -> AppResult<ProviderRow> {
    let issuer = normalize_issuer(app, &s.issuer)?;
    let client_id = s.client_id.trim().to_owned();
    if client_id.is_empty() || client_id.len() > 512 {
        return Err(AppError::bad_input("clientId", "1 to 512 characters"));
    }
    if s.role_mapping.len() > MAX_MAPPINGS {
        return Err(AppError::bad_input(
            "roleMappings",
            format!("at most {MAX_MAPPINGS} mappings"),
        ));
    }
    let mut domains = Vec::with_capacity(s.allowed_domains.len());
    for d in &s.allowed_domains {
        let d = d.trim().trim_start_matches('@').to_lowercase();
        if d.is_empty() || !d.contains('.') || d.contains(['@', '/', ' ']) {
            return Err(AppError::bad_input(
                "allowedEmailDomains",
                format!("{d:?} is not a domain such as example.com"),
            ));
        }
        domains.push(d);
    }
    if let Some(name) = &s.client_secret_name {
        let exists = crate::secrets::service::list(app, tenant)
            .await?
            .iter()
            .any(|r| &r.name == name);
        if !exists {
            return Err(AppError::bad_input(
                "clientSecretName",
                format!("no secret named {name:?}: store the client secret first (setSecret)"),
            ));
        }
    }
    cache().discovery.remove(&issuer);
    discovery(app, &issuer).await.map_err(|e| {
        AppError::bad_input(
            "issuer",
            format!("its discovery document could not be read: {}", e.message()),
        )
    })?;
    let now = db_time(app.clock.now());
    let before = provider(app, tenant).await?;
    let row = ProviderRow {
        tenant_id: tenant,
        issuer,
        client_id,
        client_secret_name: s.client_secret_name,
        allowed_domains: serde_json::to_string(&domains).map_err(AppError::internal)?,
        role_claim: s
            .role_claim
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty()),
        role_mapping: serde_json::to_string(&s.role_mapping).map_err(AppError::internal)?,
        default_role: s.default_role,
        jit_provisioning: s.jit_provisioning,
        enabled: s.enabled,
        created_at: before.as_ref().map_or(now, |b| b.created_at),
        updated_at: now,
    };
    let audit = Entry::change(
        origin,
        "sso.provider_configured",
        "tenant",
        tenant,
        Some(serde_json::json!({
            "issuer": row.issuer,
            "clientId": row.client_id,
            "allowedEmailDomains": domains,
            "roleClaim": row.role_claim,
            "roleMappings": s.role_mapping,
            "defaultRole": row.default_role,
            "jitProvisioning": row.jit_provisioning,
            "enabled": row.enabled,
        })),
        now,
    )
    .severity(Severity::Warning);
    app.db
        .tx(tenant, async |conn| {
            crate::audit::append(conn, &audit).await?;
            crate::on_conn!(conn, |conn| {
                diesel::delete(oidc_providers::table.filter(oidc_providers::tenant_id.eq(tenant)))
                    .execute(conn)
                    .await?;
                diesel::insert_into(oidc_providers::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
            });
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Removes `tenant`'s provider: single sign-on stops; users keep their accounts.
pub async fn remove(app: &App, origin: &Origin, tenant: TenantId) -> AppResult<()> {
    let audit = Entry::change(
        origin,
        "sso.provider_deleted",
        "tenant",
        tenant,
        None,
        db_time(app.clock.now()),
    )
    .severity(Severity::Warning);
    app.db
        .tx(tenant, async |conn| {
            let n = crate::on_conn!(conn, |conn| {
                diesel::delete(oidc_providers::table.filter(oidc_providers::tenant_id.eq(tenant)))
                    .execute(conn)
                    .await?
            });
            if n == 0 {
                return Err(AppError::not_found("single sign-on provider"));
            }
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await
}
