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
//!
//! Here: the rules of the flow and of configuration. `provider.rs`: the provider as this
//! server reaches it (discovery, keys, code exchange, ID-token checks). `store.rs`: the
//! rows. `graphql.rs`: `configureOidcProvider` and friends.

pub mod graphql;
pub mod provider;
pub mod store;

pub use store::ProviderRow;

use provider::{check_scheme, discovery, normalize_issuer, provider_error};
use store::LoginRow;

use base64::Engine as _;
use sha2::Digest as _;

use crate::app::App;
use crate::audit::{Entry, Origin, Severity};
use crate::auth::passwords;
use crate::auth::service::IssuedTokens;
use crate::db::ids::{TenantId, db_time, utc};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::request::ClientInfo;
use crate::tenancy::TenantRow;
use crate::tenancy::model::{TenantStatus, UserStatus};

/// How long a sign-in may take at the provider.
pub const LOGIN_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// The `amr` values that mean more than a password.
const STRONG_AMR: [&str; 6] = ["mfa", "otp", "hwk", "swk", "sc", "fpt"];

fn refused(message: impl Into<String>, reason: &'static str) -> AppError {
    AppError::unauthenticated(message).with_detail("reason", reason)
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
    match store::provider(&app.db, tenant.id).await? {
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
    // Sign-ins nobody finished are forgotten as new ones start.
    app.db
        .tx(tenant.id, async |conn| {
            store::insert_login(conn, &row, expired).await
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
    let login = store::find_login(&app.db, &hash).await?;
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
    if !store::spend_login(&app.db, &hash, db_time(now)).await? {
        return Err(stale());
    }
    let tenant = crate::tenancy::store::find(&app.db, login.tenant_id)
        .await?
        .ok_or_else(stale)?;
    let p = sso_tenant(app, &tenant).await?;
    let d = discovery(app, &p.issuer).await?;
    let id_token = provider::exchange_code(app, &p, &d, code, &login.code_verifier).await?;
    let claims = match provider::validate(app, &p, &d, &id_token, &login.nonce).await {
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
    provider::forget_discovery(&issuer);
    discovery(app, &issuer).await.map_err(|e| {
        AppError::bad_input(
            "issuer",
            format!("its discovery document could not be read: {}", e.message()),
        )
    })?;
    let now = db_time(app.clock.now());
    let before = store::provider(&app.db, tenant).await?;
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
            store::replace_provider(conn, &row).await
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
            if store::delete_provider(conn, tenant).await? == 0 {
                return Err(AppError::not_found("single sign-on provider"));
            }
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await
}
