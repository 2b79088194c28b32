//! `http`: body size, timeouts, CORS, shutdown grace.

use super::ConfigError;
use super::layers::{Layers, err, parse_cidrs, parse_num, toml_scalar};
use serde::Deserialize;
use std::time::Duration;

/// HTTP limits and CORS.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// Time after which a request is answered 408.
    pub request_timeout: Duration,
    /// Origins allowed by CORS; empty means CORS is off (same-origin only).
    /// `*` allows any origin.
    pub cors_origins: Vec<String>,
    /// How long shutdown waits for in-flight requests before exiting anyway.
    pub shutdown_grace: Duration,
    /// Requests (GraphQL over HTTP, exports) served at once; more wait in line.
    pub max_in_flight: usize,
    /// How long a request waits in line before it is answered 503 with `Retry-After`.
    pub queue_timeout: Duration,
    /// GraphQL requests per minute per principal (anonymous callers: per address) in the
    /// long run; 0 turns the limit off. Shared by every replica through Redis.
    pub rate_limit_per_minute: u32,
    /// Requests allowed at once above that rate.
    pub rate_limit_burst: u32,
    /// Expensive operations (starting executions, exports, reports) per minute per
    /// principal, in bursts of a sixth (0: no per-principal limit; the tenant's holds).
    pub expensive_operations_per_minute: u32,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <token>`.
    pub metrics_token: Option<ScrapeToken>,
    /// A listener of its own for `/metrics` (and `/healthz`): the only HTTP a worker
    /// process (`agentplane worker`) serves; `serve` also keeps `/metrics` on its main
    /// listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Peers whose `Forwarded` / `X-Forwarded-For` is believed (load balancers, ingress
    /// controllers); from anyone else those headers are ignored.
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// The one header the trusted proxies append the client's address to:
    /// `X-Forwarded-For` (the default: nginx, HAProxy, cloud load balancers) or RFC 7239
    /// `Forwarded`. The other is ignored, so a client cannot pass one through a proxy
    /// that only appends to the other.
    pub forwarded_header: ForwardedHeader,
}

/// Which header names the client behind trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …`
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1, …` (RFC 7239)
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The token `/metrics` asks for (never printed: its `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct ScrapeToken(pub String);

impl std::fmt::Debug for ScrapeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeToken(<hidden>)")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHttp {
    pub(super) body_limit_bytes: Option<toml::Value>,
    pub(super) request_timeout_secs: Option<toml::Value>,
    pub(super) cors_origins: Option<Vec<String>>,
    pub(super) shutdown_grace_secs: Option<toml::Value>,
    pub(super) max_in_flight: Option<toml::Value>,
    pub(super) queue_timeout_ms: Option<toml::Value>,
    pub(super) rate_limit_per_minute: Option<toml::Value>,
    pub(super) rate_limit_burst: Option<toml::Value>,
    pub(super) expensive_operations_per_minute: Option<toml::Value>,
    pub(super) metrics_token: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) forwarded_header: Option<String>,
}

/// Reads the section from its layers.
pub(super) fn load(layers: &Layers<'_>, file: FileHttp) -> Result<HttpConfig, ConfigError> {
    let http = HttpConfig {
        body_limit_bytes: parse_num(
            layers.pick(
                "AGENTPLANE_BODY_LIMIT_BYTES",
                "http.body_limit_bytes",
                toml_scalar(file.body_limit_bytes),
            ),
            1024 * 1024,
            1024,
            256 * 1024 * 1024,
            "a byte count between 1024 and 268435456",
        )?,
        request_timeout: Duration::from_secs(parse_num(
            layers.pick(
                "AGENTPLANE_REQUEST_TIMEOUT_SECS",
                "http.request_timeout_secs",
                toml_scalar(file.request_timeout_secs),
            ),
            30u64,
            1,
            3600,
            "seconds between 1 and 3600",
        )?),
        cors_origins: match layers.pick(
            "AGENTPLANE_CORS_ORIGINS",
            "http.cors_origins",
            file.cors_origins.map(|v| v.join(",")),
        ) {
            None => Vec::new(),
            Some(raw) => {
                let mut out = Vec::new();
                for o in raw
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                {
                    if o != "*" {
                        let u = url::Url::parse(o).ok().filter(|u| {
                            matches!(u.scheme(), "http" | "https")
                                && u.host_str().is_some()
                                && u.path() == "/"
                        });
                        if u.is_none() {
                            return Err(err(
                                &raw.key,
                                format!("{o:?} is not an origin"),
                                "comma-separated origins such as https://app.example.com, or *",
                            ));
                        }
                    }
                    out.push(o.trim_end_matches('/').to_owned());
                }
                out
            }
        },
        shutdown_grace: Duration::from_secs(parse_num(
            layers.pick(
                "AGENTPLANE_SHUTDOWN_GRACE_SECS",
                "http.shutdown_grace_secs",
                toml_scalar(file.shutdown_grace_secs),
            ),
            8u64,
            1,
            9,
            "seconds between 1 and 9 (shutdown must finish within 10 s)",
        )?),
        max_in_flight: parse_num(
            layers.pick(
                "AGENTPLANE_MAX_IN_FLIGHT",
                "http.max_in_flight",
                toml_scalar(file.max_in_flight),
            ),
            64usize,
            1,
            100_000,
            "a number of requests between 1 and 100000",
        )?,
        queue_timeout: Duration::from_millis(parse_num(
            layers.pick(
                "AGENTPLANE_QUEUE_TIMEOUT_MS",
                "http.queue_timeout_ms",
                toml_scalar(file.queue_timeout_ms),
            ),
            2000u64,
            0,
            60_000,
            "milliseconds between 0 and 60000",
        )?),
        rate_limit_per_minute: parse_num(
            layers.pick(
                "AGENTPLANE_RATE_LIMIT_PER_MINUTE",
                "http.rate_limit_per_minute",
                toml_scalar(file.rate_limit_per_minute),
            ),
            1200u32,
            0,
            60_000,
            "requests per minute between 0 (off) and 60000",
        )?,
        rate_limit_burst: parse_num(
            layers.pick(
                "AGENTPLANE_RATE_LIMIT_BURST",
                "http.rate_limit_burst",
                toml_scalar(file.rate_limit_burst),
            ),
            200u32,
            1,
            100_000,
            "a number of requests between 1 and 100000",
        )?,
        expensive_operations_per_minute: parse_num(
            layers.pick(
                "AGENTPLANE_EXPENSIVE_OPERATIONS_PER_MINUTE",
                "http.expensive_operations_per_minute",
                toml_scalar(file.expensive_operations_per_minute),
            ),
            1800u32,
            0,
            1_000_000,
            "operations per minute between 0 (off) and 1000000",
        )?,
        metrics_token: match layers.pick(
            "AGENTPLANE_METRICS_TOKEN",
            "http.metrics_token",
            file.metrics_token,
        ) {
            None => None,
            Some(raw) if raw.value.is_empty() => None,
            Some(raw) if raw.value.len() < 16 || raw.value.chars().any(char::is_whitespace) => {
                return Err(err(
                    &raw.key,
                    "too short or contains whitespace",
                    "a random token of at least 16 characters, e.g. `openssl rand -hex 24`",
                ));
            }
            Some(raw) => Some(ScrapeToken(raw.value)),
        },
        trusted_proxies: parse_cidrs(
            layers.pick(
                "AGENTPLANE_TRUSTED_PROXIES",
                "http.trusted_proxies",
                file.trusted_proxies.map(|v| v.join(",")),
            ),
            "comma-separated CIDR ranges of your proxies, e.g. 10.0.0.0/8",
        )?,
        forwarded_header: match layers.pick(
            "AGENTPLANE_FORWARDED_HEADER",
            "http.forwarded_header",
            file.forwarded_header,
        ) {
            None => ForwardedHeader::XForwardedFor,
            Some(raw) => match raw.value.trim().to_ascii_lowercase().as_str() {
                "" | "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                "forwarded" => ForwardedHeader::Forwarded,
                other => {
                    return Err(err(
                        &raw.key,
                        format!("unknown header {other:?}"),
                        "x-forwarded-for or forwarded: the header your proxies append to",
                    ));
                }
            },
        },
        metrics_listen: match layers.pick(
            "AGENTPLANE_METRICS_LISTEN",
            "http.metrics_listen",
            file.metrics_listen,
        ) {
            None => None,
            Some(raw) if raw.value.trim().is_empty() => None,
            Some(raw) => Some(raw.value.trim().parse().map_err(|_| {
                err(
                    &raw.key,
                    format!("{:?} is not a socket address", raw.value),
                    "HOST:PORT such as 0.0.0.0:9100",
                )
            })?),
        },
    };

    Ok(http)
}
