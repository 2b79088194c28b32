//! The identity provider as this server reaches it: its discovery document and key set
//! (fetched over HTTPS from public addresses, size- and time-bounded, cached), the code
//! exchange at its token endpoint, and the checks of the ID token it signs.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::refused;
use super::store::ProviderRow;
use crate::app::App;
use crate::error::{AppError, AppResult, ErrorCode};

/// How long a discovery document is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// How long a key set is reused; an unknown key id fetches it again after at least
/// [`JWKS_MIN_REFRESH`].
const JWKS_TTL: Duration = Duration::from_secs(3600);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Largest answer read from a provider.
const MAX_BODY: usize = 256 * 1024;

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

pub fn provider_error(what: &str, detail: impl std::fmt::Display) -> AppError {
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

pub fn check_scheme(app: &App, url: &url::Url, field: &str) -> AppResult<()> {
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
pub async fn check_host(app: &App, url: &url::Url) -> AppResult<()> {
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

/// Forgets the cached discovery document of `issuer` (a reconfigured provider is read
/// afresh).
pub fn forget_discovery(issuer: &str) {
    cache().discovery.remove(issuer);
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// Exchanges `code` (with the PKCE `verifier`, and the client secret when configured,
/// which goes only to the hosts it is pinned to) for the ID token.
pub async fn exchange_code(
    app: &App,
    p: &ProviderRow,
    d: &Discovery,
    code: &str,
    verifier: &str,
) -> AppResult<String> {
    let token_url = url::Url::parse(&d.token_endpoint)
        .map_err(|e| provider_error("gave a bad token endpoint", e))?;
    check_scheme(app, &token_url, "issuer")?;
    check_host(app, &token_url).await?;
    let secret = match &p.client_secret_name {
        Some(name) => Some(
            crate::secrets::service::reveal_for_host(
                app,
                p.tenant_id,
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
        ("redirect_uri", super::callback_url(app)),
        ("client_id", p.client_id.clone()),
        ("code_verifier", verifier.to_owned()),
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
    answer
        .id_token
        .ok_or_else(|| provider_error("answered without an ID token", "no id_token"))
}

/// Checks the ID token; returns its claims.
pub async fn validate(
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
