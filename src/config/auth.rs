//! `auth`: token algorithm and keys, lifetimes, the first admin, password hashing limits.

use super::ConfigError;
use super::layers::{Layers, Raw, err, parse_bool, parse_num, toml_scalar};
use secrecy::SecretString;
use serde::Deserialize;
use std::time::Duration;

/// Which algorithm signs access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// Ed25519 keys generated at first start and kept in the database (default).
    EdDsa,
    /// HMAC-SHA256 with a shared secret from configuration.
    Hs256,
}

/// Where account messages (password-reset and e-mail-change tokens) go.
#[derive(Debug, Clone)]
pub enum Notifier {
    /// Written to the server log (development: read the token from the log).
    Log,
    /// POSTed as JSON to a webhook that delivers them (production: an e-mail or chat
    /// service), signed with HMAC-SHA256 (`X-Agentplane-Signature`).
    Webhook {
        /// Where to POST.
        url: String,
        /// The signing key (at least 32 bytes).
        secret: SecretString,
    },
    /// Not sent: self-service resets and e-mail changes are then unavailable.
    Off,
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// A session unused this long expires.
    pub refresh_idle: Duration,
    /// A session expires this long after sign-in, however used.
    pub refresh_absolute: Duration,
    /// Signing algorithm.
    pub algorithm: JwtAlgorithm,
    /// HS256 secret (at least 32 bytes), when `algorithm` is HS256.
    pub hs256_secret: Option<SecretString>,
    /// EdDSA signing key from a PKCS#8 PEM file instead of the database; keys kept in the
    /// database still verify.
    pub signing_key_pem: Option<SecretString>,
    /// E-mail of the platform admin created on an empty database.
    pub bootstrap_admin_email: String,
    /// Its password; generated and printed once when unset.
    pub bootstrap_admin_password: Option<SecretString>,
    /// Password hashes computed at once (each takes 19 MiB); default: the core count.
    pub max_concurrent_hashes: usize,
    /// Sign-ins that may wait for a hashing slot before others are refused.
    pub hash_queue: usize,
    /// Password checks in flight from one client address.
    pub max_hashes_per_address: usize,
    /// How long a resolved principal is reused without reading the database (zero: never).
    /// Changes drop entries at once; this bounds only what no change announces.
    pub principal_cache_ttl: Duration,
    /// Principals cached at most.
    pub principal_cache_entries: usize,
    /// Whether platform admins may act from addresses outside their own (the system
    /// tenant's) `allowedIpRanges`: a break-glass setting, off unless set.
    pub platform_admins_bypass_ip_allowlist: bool,
    /// Where password-reset and e-mail-change tokens are sent.
    pub notifier: Notifier,
    /// The server's address as browsers reach it (e.g. `https://agentplane.example.com`):
    /// the single sign-on callback is `<public_url>/auth/oidc/callback`. Default:
    /// `http://<listen address>`.
    pub public_url: Option<url::Url>,
    /// Whether OpenID Connect issuers may be plain `http://` URLs (development and tests
    /// only; production issuers are HTTPS).
    pub oidc_allow_http_issuers: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) access_ttl_secs: Option<toml::Value>,
    pub(super) refresh_idle_secs: Option<toml::Value>,
    pub(super) refresh_absolute_secs: Option<toml::Value>,
    pub(super) jwt_algorithm: Option<String>,
    hs256_secret: Option<String>,
    pub(super) signing_key_file: Option<String>,
    pub(super) bootstrap_admin_email: Option<String>,
    pub(super) max_concurrent_hashes: Option<toml::Value>,
    pub(super) hash_queue: Option<toml::Value>,
    pub(super) max_hashes_per_address: Option<toml::Value>,
    pub(super) principal_cache_secs: Option<toml::Value>,
    pub(super) principal_cache_entries: Option<toml::Value>,
    pub(super) platform_admins_bypass_ip_allowlist: Option<toml::Value>,
    pub(super) notifier: Option<String>,
    pub(super) notifier_webhook_url: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) oidc_allow_http_issuers: Option<toml::Value>,
}

/// Reads the section from its layers.
pub(super) fn load(
    layers: &Layers<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    file: FileAuth,
) -> Result<AuthConfig, ConfigError> {
    let algorithm = match layers.pick(
        "AGENTPLANE_JWT_ALGORITHM",
        "auth.jwt_algorithm",
        file.jwt_algorithm,
    ) {
        None => JwtAlgorithm::EdDsa,
        Some(raw) => match raw.value.trim() {
            "EdDSA" | "eddsa" | "EDDSA" => JwtAlgorithm::EdDsa,
            "HS256" | "hs256" => JwtAlgorithm::Hs256,
            other => {
                return Err(err(
                    &raw.key,
                    format!("unknown algorithm {other:?}"),
                    "EdDSA or HS256",
                ));
            }
        },
    };
    let hs256_secret = match layers.pick(
        "AGENTPLANE_JWT_HS256_SECRET",
        "auth.hs256_secret",
        file.hs256_secret,
    ) {
        Some(raw) if raw.value.len() < 32 => {
            return Err(err(
                &raw.key,
                "the secret is shorter than 32 bytes",
                "a random secret of at least 32 bytes",
            ));
        }
        Some(raw) => Some(SecretString::from(raw.value)),
        None => None,
    };
    if algorithm == JwtAlgorithm::Hs256 && hs256_secret.is_none() {
        return Err(err(
            "AGENTPLANE_JWT_HS256_SECRET",
            "HS256 is selected but no secret is set",
            "a random secret of at least 32 bytes",
        ));
    }
    let signing_key_pem = match layers.pick(
        "AGENTPLANE_JWT_SIGNING_KEY_FILE",
        "auth.signing_key_file",
        file.signing_key_file,
    ) {
        None => None,
        Some(raw) => {
            let expected =
                "a readable Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519)";
            let pem = std::fs::read_to_string(raw.value.trim()).map_err(|e| {
                err(
                    &raw.key,
                    format!("cannot read {} ({e})", raw.value),
                    expected,
                )
            })?;
            jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|_| {
                err(
                    &raw.key,
                    format!("{} is not an Ed25519 private key", raw.value),
                    expected,
                )
            })?;
            if algorithm != JwtAlgorithm::EdDsa {
                return Err(err(
                    &raw.key,
                    "a signing key file needs EdDSA",
                    "AGENTPLANE_JWT_ALGORITHM=EdDSA",
                ));
            }
            Some(SecretString::from(pem))
        }
    };
    let secs = |env: &str, key: &str, v: Option<toml::Value>, default: u64, max: u64| {
        parse_num(
            layers.pick(env, key, toml_scalar(v)),
            default,
            1,
            max,
            &format!("seconds between 1 and {max}"),
        )
        .map(Duration::from_secs)
    };
    let notifier = match layers.pick("AGENTPLANE_NOTIFIER", "auth.notifier", file.notifier) {
        None => Notifier::Log,
        Some(raw) => match raw.value.trim() {
            "log" => Notifier::Log,
            "off" | "none" => Notifier::Off,
            "webhook" => {
                let url = layers
                    .pick(
                        "AGENTPLANE_NOTIFIER_WEBHOOK_URL",
                        "auth.notifier_webhook_url",
                        file.notifier_webhook_url,
                    )
                    .ok_or_else(|| {
                        err(
                            "AGENTPLANE_NOTIFIER_WEBHOOK_URL",
                            "AGENTPLANE_NOTIFIER=webhook needs a URL to POST to",
                            "an http:// or https:// URL",
                        )
                    })?;
                let parsed = url::Url::parse(url.value.trim()).map_err(|e| {
                    err(
                        &url.key,
                        format!("not a URL ({e})"),
                        "an http:// or https:// URL",
                    )
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(err(
                        &url.key,
                        "only http and https are supported",
                        "an http:// or https:// URL",
                    ));
                }
                let secret = match (env)("AGENTPLANE_NOTIFIER_WEBHOOK_SECRET") {
                    Some(s) if s.len() >= 32 => SecretString::from(s),
                    _ => {
                        return Err(err(
                            "AGENTPLANE_NOTIFIER_WEBHOOK_SECRET",
                            "the webhook's signing key is missing or shorter than 32 bytes",
                            "a random secret of at least 32 bytes (openssl rand -hex 32)",
                        ));
                    }
                };
                Notifier::Webhook {
                    url: parsed.to_string(),
                    secret,
                }
            }
            other => {
                return Err(err(
                    &raw.key,
                    format!("unknown notifier {other:?}"),
                    "log, webhook or off",
                ));
            }
        },
    };
    let auth = AuthConfig {
        issuer: layers
            .pick("AGENTPLANE_JWT_ISSUER", "auth.issuer", file.issuer)
            .map_or_else(|| "agentplane".to_owned(), |r| r.value),
        audience: layers
            .pick("AGENTPLANE_JWT_AUDIENCE", "auth.audience", file.audience)
            .map_or_else(|| "agentplane".to_owned(), |r| r.value),
        access_ttl: secs(
            "AGENTPLANE_ACCESS_TOKEN_TTL_SECS",
            "auth.access_ttl_secs",
            file.access_ttl_secs,
            900,
            86_400,
        )?,
        refresh_idle: secs(
            "AGENTPLANE_REFRESH_IDLE_SECS",
            "auth.refresh_idle_secs",
            file.refresh_idle_secs,
            7 * 86_400,
            365 * 86_400,
        )?,
        refresh_absolute: secs(
            "AGENTPLANE_REFRESH_ABSOLUTE_SECS",
            "auth.refresh_absolute_secs",
            file.refresh_absolute_secs,
            30 * 86_400,
            365 * 86_400,
        )?,
        algorithm,
        hs256_secret,
        signing_key_pem,
        bootstrap_admin_email: {
            let raw = layers
                .pick(
                    "AGENTPLANE_BOOTSTRAP_ADMIN_EMAIL",
                    "auth.bootstrap_admin_email",
                    file.bootstrap_admin_email,
                )
                .unwrap_or(Raw {
                    key: "AGENTPLANE_BOOTSTRAP_ADMIN_EMAIL".into(),
                    value: "admin@agentplane.local".into(),
                });
            crate::policy::normalize_email(&raw.value)
                .map_err(|p| err(&raw.key, p, "an e-mail address such as ops@example.com"))?
        },
        bootstrap_admin_password: match (env)("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD") {
            None => None,
            Some(p) => {
                crate::policy::check_policy(&p).map_err(|problem| {
                    err(
                        "AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD",
                        problem,
                        "a password of 12 to 256 characters",
                    )
                })?;
                Some(SecretString::from(p))
            }
        },
        max_concurrent_hashes: parse_num(
            layers.pick(
                "AGENTPLANE_AUTH_MAX_CONCURRENT_HASHES",
                "auth.max_concurrent_hashes",
                toml_scalar(file.max_concurrent_hashes),
            ),
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            1,
            1024,
            "a number of hashes between 1 and 1024",
        )?,
        hash_queue: parse_num(
            layers.pick(
                "AGENTPLANE_AUTH_HASH_QUEUE",
                "auth.hash_queue",
                toml_scalar(file.hash_queue),
            ),
            32usize,
            0,
            100_000,
            "a queue length between 0 and 100000",
        )?,
        max_hashes_per_address: parse_num(
            layers.pick(
                "AGENTPLANE_AUTH_MAX_HASHES_PER_ADDRESS",
                "auth.max_hashes_per_address",
                toml_scalar(file.max_hashes_per_address),
            ),
            4usize,
            1,
            10_000,
            "a number between 1 and 10000",
        )?,
        principal_cache_ttl: Duration::from_secs(parse_num(
            layers.pick(
                "AGENTPLANE_AUTH_CACHE_SECS",
                "auth.principal_cache_secs",
                toml_scalar(file.principal_cache_secs),
            ),
            30u64,
            0,
            3600,
            "seconds between 0 (no cache) and 3600",
        )?),
        principal_cache_entries: parse_num(
            layers.pick(
                "AGENTPLANE_AUTH_CACHE_ENTRIES",
                "auth.principal_cache_entries",
                toml_scalar(file.principal_cache_entries),
            ),
            100_000usize,
            1,
            10_000_000,
            "a number of principals between 1 and 10000000",
        )?,
        platform_admins_bypass_ip_allowlist: parse_bool(
            layers.pick(
                "AGENTPLANE_PLATFORM_ADMINS_BYPASS_IP_ALLOWLIST",
                "auth.platform_admins_bypass_ip_allowlist",
                toml_scalar(file.platform_admins_bypass_ip_allowlist),
            ),
            false,
        )?,
        notifier,
        public_url: match layers.pick("AGENTPLANE_PUBLIC_URL", "auth.public_url", file.public_url) {
            None => None,
            Some(raw) => {
                let expected = "the server's address as browsers reach it, e.g. https://agentplane.example.com";
                let u = url::Url::parse(raw.value.trim())
                    .map_err(|e| err(&raw.key, format!("not a URL ({e})"), expected))?;
                if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                    return Err(err(&raw.key, "an http or https URL with a host", expected));
                }
                Some(u)
            }
        },
        oidc_allow_http_issuers: parse_bool(
            layers.pick(
                "AGENTPLANE_OIDC_ALLOW_HTTP_ISSUERS",
                "auth.oidc_allow_http_issuers",
                toml_scalar(file.oidc_allow_http_issuers),
            ),
            false,
        )?,
    };

    Ok(auth)
}
