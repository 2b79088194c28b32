//! Configuration: defaults < optional TOML file (`--config PATH`) < environment < CLI flags.
//!
//! Every value is parsed and validated exactly once, here, at start-up. A bad value stops
//! the process with one line naming the key, what is wrong with the value and the expected
//! form. Secrets (database and Redis URLs may hold passwords) are `SecretString`s and never
//! appear in `Debug` output or logs.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The default database: an embedded SQLite file next to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/agentplane.db";
/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// A configuration value that failed validation. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key as the operator wrote it (`DATABASE_URL`, or `listen in ./agentplane.toml`).
    pub key: String,
    /// What is wrong with the value.
    pub problem: String,
    /// The form that would be accepted.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}: {} (expected {})",
            self.key, self.problem, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// Which storage engine the process runs on, chosen from `DATABASE_URL` at run time.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// Embedded SQLite at a file path.
    Sqlite(PathBuf),
    /// PostgreSQL; the URL may carry a password, so it is a secret.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH` or `postgres://…` / `postgresql://…`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("the SQLite path is empty".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err("the PostgreSQL URL has no host".into());
            }
            if url.path().trim_start_matches('/').is_empty() {
                return Err("the PostgreSQL URL names no database".into());
            }
            return Ok(Self::Postgres(SecretString::from(raw.to_owned())));
        }
        let scheme = raw.split("://").next().unwrap_or(raw);
        Err(format!("unsupported scheme {scheme:?}"))
    }

    /// The URL with any password replaced, safe for logs and `serverInfo`.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite://{}", p.display()),
            Self::Postgres(s) => redact_url(s.expose_secret()),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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
}

/// GraphQL execution limits.
#[derive(Debug, Clone)]
pub struct GraphqlConfig {
    /// Deepest selection nesting accepted.
    pub max_depth: usize,
    /// Highest query complexity accepted.
    pub max_complexity: usize,
    /// Most field selections of an operation with fragments expanded, checked before
    /// validation (so fragment-spread explosions cost nothing).
    pub max_selections: u64,
    /// Most fragment definitions in one document.
    pub max_fragments: usize,
    /// Most fragment spreads written in one document.
    pub max_spreads: usize,
    /// Most operations in one batched HTTP request (they share one complexity budget).
    pub max_batch: usize,
    /// Whether callers without credentials may introspect the schema (GraphiQL needs it).
    pub anonymous_introspection: bool,
    /// Whether validation errors to callers without credentials suggest names ("Did you
    /// mean …?"); signed-in callers always get suggestions.
    pub anonymous_suggestions: bool,
}

/// GraphQL-over-WebSocket limits.
#[derive(Debug, Clone)]
pub struct WebsocketConfig {
    /// A socket that has not sent `connection_init` by then is closed with 4408.
    pub init_timeout: Duration,
    /// Open sockets per client address; more are refused with 429.
    pub max_connections_per_address: usize,
    /// Operations running at once on one socket.
    pub max_subscriptions_per_socket: usize,
    /// Operations running at once for one user or API key, over all its sockets.
    pub max_subscriptions_per_principal: usize,
    /// How often an open socket re-checks its credential and rights (at once when they
    /// change in this process).
    pub recheck_interval: Duration,
}

/// Which algorithm signs access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// Ed25519 keys generated at first start and kept in the database (default).
    EdDsa,
    /// HMAC-SHA256 with a shared secret from configuration.
    Hs256,
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
}

/// The validated configuration of one process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage backend and location.
    pub database_url: DatabaseUrl,
    /// Optional Redis for cross-replica fan-out (used by later features).
    pub redis_url: Option<SecretString>,
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Log output format.
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG`).
    pub log_filter: String,
    /// HTTP limits.
    pub http: HttpConfig,
    /// GraphQL limits.
    pub graphql: GraphqlConfig,
    /// WebSocket limits.
    pub websocket: WebsocketConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// The execution engine.
    pub engine: EngineConfig,
    /// Node registration, heartbeats and GPU telemetry.
    pub cluster: ClusterConfig,
    /// Keys that encrypt tenant secrets at rest; the first encrypts, all decrypt. Empty:
    /// secrets are disabled.
    pub master_keys: Vec<MasterKey>,
}

/// Node registration, heartbeats and GPU telemetry.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How often a node heartbeats (and runs the reaper and placer).
    pub heartbeat: Duration,
    /// A node without a heartbeat for this long is OFFLINE; its work moves elsewhere.
    pub offline_after: Duration,
    /// This node's display name (default: host name and process id).
    pub node_name: Option<String>,
    /// Labels shown with the node (`zone=eu-1,pool=gpu`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Tests and demos only: report these GPUs (`NAME:MIB,…`) instead of reading NVML.
    pub fake_gpus: Option<String>,
    /// Telemetry samples kept per node for charts.
    pub telemetry_samples: usize,
}

/// The execution engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Executions `serve` runs at once in its embedded worker pool (0: none).
    pub workers: usize,
    /// How long a claim lasts unless renewed (renewed every third of it).
    pub lease: Duration,
    /// How often idle workers look for work when no wake-up arrives.
    pub poll_interval: Duration,
    /// Steps of one execution running at once.
    pub max_parallel_steps: usize,
    /// Steps of all executions running at once in one process.
    pub worker_max_steps: usize,
    /// Default execution-level timeout.
    pub execution_timeout: Duration,
    /// Non-public address ranges `http` and `llm` steps may reach anyway.
    pub egress_allow: Vec<crate::net::Cidr>,
    /// USD per million prompt and completion tokens, by model.
    pub llm_prices: std::collections::HashMap<String, (f64, f64)>,
    /// How often the scheduler looks for due schedules.
    pub scheduler_tick: Duration,
    /// How often the retention job deletes audit records and finished executions older
    /// than each tenant's `dataRetentionDays`.
    pub retention_interval: Duration,
    /// Largest step output (and rendered template, and `http` response) kept; a larger
    /// one fails the step.
    pub max_step_output_bytes: usize,
    /// How long one step's template rendering may take.
    pub template_timeout: Duration,
    /// How often signed checkpoints of the audit chains are published.
    pub audit_checkpoint_interval: Duration,
    /// A file (outside the database) the checkpoints are appended to as JSON lines.
    pub audit_checkpoint_file: Option<std::path::PathBuf>,
}

/// Parses `model=prompt:completion,…` (USD per million tokens).
fn parse_prices(s: &str) -> Option<std::collections::HashMap<String, (f64, f64)>> {
    let mut out = std::collections::HashMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (model, prices) = part.rsplit_once('=')?;
        let (p, c) = prices.split_once(':')?;
        let (p, c): (f64, f64) = (p.trim().parse().ok()?, c.trim().parse().ok()?);
        if !(p >= 0.0 && c >= 0.0 && p.is_finite() && c.is_finite()) || model.trim().is_empty() {
            return None;
        }
        out.insert(model.trim().to_owned(), (p, c));
    }
    Some(out)
}

/// A 256-bit key that encrypts tenant secrets, with the id stored beside each ciphertext.
#[derive(Clone)]
pub struct MasterKey {
    /// Short identifier (`k1`, `2026-q4`…).
    pub id: String,
    /// The key.
    pub key: std::sync::Arc<secrecy::SecretBox<[u8; 32]>>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, ***)", self.id)
    }
}

impl Config {
    /// The master key that encrypts new secrets, if secrets are enabled.
    pub fn current_master_key(&self) -> Option<&MasterKey> {
        self.master_keys.first()
    }
}

fn parse_master_key(id: &str, b64: &str) -> Option<MasterKey> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim()))
        .ok()?;
    let key: [u8; 32] = bytes.try_into().ok()?;
    let id = id.trim();
    let id_ok = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    id_ok.then(|| MasterKey {
        id: id.to_owned(),
        key: std::sync::Arc::new(secrecy::SecretBox::new(Box::new(key))),
    })
}

/// The shape of the optional TOML file. Unknown keys are an error, so typos surface.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    redis_url: Option<String>,
    listen: Option<String>,
    log_format: Option<String>,
    log_filter: Option<String>,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    graphql: FileGraphql,
    #[serde(default)]
    websocket: FileWebsocket,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    engine: FileEngine,
    #[serde(default)]
    cluster: FileCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    heartbeat_ms: Option<toml::Value>,
    offline_after_ms: Option<toml::Value>,
    node_name: Option<String>,
    labels: Option<String>,
    fake_gpus: Option<String>,
    telemetry_samples: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEngine {
    workers: Option<toml::Value>,
    lease_secs: Option<toml::Value>,
    poll_ms: Option<toml::Value>,
    max_parallel_steps: Option<toml::Value>,
    worker_max_steps: Option<toml::Value>,
    execution_timeout_secs: Option<toml::Value>,
    egress_allow_cidrs: Option<Vec<String>>,
    llm_prices: Option<String>,
    scheduler_tick_ms: Option<toml::Value>,
    retention_interval_ms: Option<toml::Value>,
    max_step_output_bytes: Option<toml::Value>,
    template_timeout_ms: Option<toml::Value>,
    audit_checkpoint_secs: Option<toml::Value>,
    audit_checkpoint_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    issuer: Option<String>,
    audience: Option<String>,
    access_ttl_secs: Option<toml::Value>,
    refresh_idle_secs: Option<toml::Value>,
    refresh_absolute_secs: Option<toml::Value>,
    jwt_algorithm: Option<String>,
    hs256_secret: Option<String>,
    signing_key_file: Option<String>,
    bootstrap_admin_email: Option<String>,
    max_concurrent_hashes: Option<toml::Value>,
    hash_queue: Option<toml::Value>,
    max_hashes_per_address: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    body_limit_bytes: Option<toml::Value>,
    request_timeout_secs: Option<toml::Value>,
    cors_origins: Option<Vec<String>>,
    shutdown_grace_secs: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGraphql {
    max_depth: Option<toml::Value>,
    max_complexity: Option<toml::Value>,
    max_selections: Option<toml::Value>,
    max_fragments: Option<toml::Value>,
    max_spreads: Option<toml::Value>,
    max_batch: Option<toml::Value>,
    anonymous_introspection: Option<toml::Value>,
    anonymous_suggestions: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebsocket {
    init_timeout_secs: Option<toml::Value>,
    max_connections_per_address: Option<toml::Value>,
    max_subscriptions_per_socket: Option<toml::Value>,
    max_subscriptions_per_principal: Option<toml::Value>,
    recheck_secs: Option<toml::Value>,
}

/// One raw value and where it came from, so errors name the key the operator wrote.
struct Raw {
    key: String,
    value: String,
}

/// Collects raw values layer by layer, then validates them.
struct Layers<'a> {
    file: Option<&'a Path>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Layers<'_> {
    /// Env var wins over the file value, which wins over nothing.
    fn pick(&self, env_key: &str, file_key: &str, file_value: Option<String>) -> Option<Raw> {
        if let Some(v) = (self.env)(env_key) {
            return Some(Raw {
                key: env_key.to_owned(),
                value: v,
            });
        }
        file_value.map(|value| Raw {
            key: format!(
                "{file_key} in {}",
                self.file
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            value,
        })
    }
}

fn toml_scalar(v: Option<toml::Value>) -> Option<String> {
    v.map(|v| match v {
        toml::Value::String(s) => s,
        other => other.to_string(),
    })
}

fn err(key: &str, problem: impl Into<String>, expected: &str) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        problem: problem.into(),
        expected: expected.to_owned(),
    }
}

fn parse_num<T>(
    raw: Option<Raw>,
    default: T,
    min: T,
    max: T,
    expected: &str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Copy,
{
    let Some(raw) = raw else { return Ok(default) };
    let v: T = raw.value.trim().parse().map_err(|_| {
        err(
            &raw.key,
            format!("{:?} is not a whole number", raw.value),
            expected,
        )
    })?;
    if v < min || v > max {
        return Err(err(
            &raw.key,
            format!("{} is out of range", raw.value),
            expected,
        ));
    }
    Ok(v)
}

fn parse_bool(raw: Option<Raw>, default: bool) -> Result<bool, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(err(
            &raw.key,
            format!("{:?} is not a yes/no value", raw.value),
            "true or false",
        )),
    }
}

/// Command-line overrides that sit above the environment.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--config PATH`
    pub config_file: Option<PathBuf>,
    /// `--listen ADDR`
    pub listen: Option<String>,
}

impl Config {
    /// Loads from the process environment and the optional file.
    pub fn load(cli: &CliOverrides) -> Result<Self, ConfigError> {
        Self::load_with(cli, &|k| std::env::var(k).ok())
    }

    /// Loads with an explicit environment lookup (tests use this).
    pub fn load_with(
        cli: &CliOverrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = match &cli.config_file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err(
                        "--config",
                        format!("cannot read {} ({e})", path.display()),
                        "a readable TOML file",
                    )
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    err(
                        "--config",
                        format!(
                            "{} is not valid: {}",
                            path.display(),
                            e.message().replace('\n', " ")
                        ),
                        "TOML with the documented keys",
                    )
                })?
            }
        };
        let layers = Layers {
            file: cli.config_file.as_deref(),
            env,
        };

        let database_url = {
            let raw = layers
                .pick("DATABASE_URL", "database_url", file.database_url)
                .unwrap_or(Raw {
                    key: "DATABASE_URL".into(),
                    value: DEFAULT_DATABASE_URL.into(),
                });
            DatabaseUrl::parse(&raw.value).map_err(|p| {
                err(
                    &raw.key,
                    p,
                    "sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
                )
            })?
        };

        let redis_url = match layers.pick("REDIS_URL", "redis_url", file.redis_url) {
            None => None,
            Some(raw) if raw.value.trim().is_empty() => None,
            Some(raw) => {
                let u = url::Url::parse(raw.value.trim()).map_err(|e| {
                    err(
                        &raw.key,
                        format!("not a valid URL ({e})"),
                        "redis://HOST[:PORT][/DB]",
                    )
                })?;
                if !matches!(u.scheme(), "redis" | "rediss") {
                    return Err(err(
                        &raw.key,
                        format!("unsupported scheme {:?}", u.scheme()),
                        "redis://HOST[:PORT][/DB]",
                    ));
                }
                Some(SecretString::from(raw.value.trim().to_owned()))
            }
        };

        let listen = {
            let raw = match &cli.listen {
                Some(v) => Raw {
                    key: "--listen".into(),
                    value: v.clone(),
                },
                None => layers
                    .pick("AGENTPLANE_LISTEN", "listen", file.listen)
                    .unwrap_or(Raw {
                        key: "AGENTPLANE_LISTEN".into(),
                        value: DEFAULT_LISTEN.into(),
                    }),
            };
            raw.value.trim().parse::<SocketAddr>().map_err(|_| {
                err(
                    &raw.key,
                    format!("{:?} is not an IP address and port", raw.value),
                    "IP:PORT such as 127.0.0.1:8000 or [::1]:8000",
                )
            })?
        };

        let log_format = match layers.pick("AGENTPLANE_LOG_FORMAT", "log_format", file.log_format) {
            None => LogFormat::Text,
            Some(raw) => match raw.value.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(err(
                        &raw.key,
                        format!("unknown log format {:?}", raw.value),
                        "text or json",
                    ));
                }
            },
        };

        let log_filter = match layers.pick("RUST_LOG", "log_filter", file.log_filter) {
            None => "info".to_owned(),
            Some(raw) => {
                tracing_subscriber::EnvFilter::builder()
                    .parse(raw.value.trim())
                    .map_err(|e| {
                        err(
                            &raw.key,
                            format!("{:?} is not a valid filter ({e})", raw.value),
                            "tracing directives such as info or agentplane=debug,tower_http=info",
                        )
                    })?;
                raw.value.trim().to_owned()
            }
        };

        let http = HttpConfig {
            body_limit_bytes: parse_num(
                layers.pick(
                    "AGENTPLANE_BODY_LIMIT_BYTES",
                    "http.body_limit_bytes",
                    toml_scalar(file.http.body_limit_bytes),
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
                    toml_scalar(file.http.request_timeout_secs),
                ),
                30u64,
                1,
                3600,
                "seconds between 1 and 3600",
            )?),
            cors_origins: match layers.pick(
                "AGENTPLANE_CORS_ORIGINS",
                "http.cors_origins",
                file.http.cors_origins.map(|v| v.join(",")),
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
                    toml_scalar(file.http.shutdown_grace_secs),
                ),
                8u64,
                1,
                9,
                "seconds between 1 and 9 (shutdown must finish within 10 s)",
            )?),
        };

        let graphql = GraphqlConfig {
            max_depth: parse_num(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_MAX_DEPTH",
                    "graphql.max_depth",
                    toml_scalar(file.graphql.max_depth),
                ),
                12usize,
                2,
                64,
                "a depth between 2 and 64",
            )?,
            max_complexity: parse_num(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_MAX_COMPLEXITY",
                    "graphql.max_complexity",
                    toml_scalar(file.graphql.max_complexity),
                ),
                10_000usize,
                10,
                1_000_000,
                "a complexity between 10 and 1000000",
            )?,
            max_selections: parse_num(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_MAX_SELECTIONS",
                    "graphql.max_selections",
                    toml_scalar(file.graphql.max_selections),
                ),
                10_000u64,
                10,
                10_000_000,
                "a number of selections between 10 and 10000000",
            )?,
            max_fragments: parse_num(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_MAX_FRAGMENTS",
                    "graphql.max_fragments",
                    toml_scalar(file.graphql.max_fragments),
                ),
                100usize,
                1,
                10_000,
                "a number of fragments between 1 and 10000",
            )?,
            max_spreads: parse_num(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_MAX_SPREADS",
                    "graphql.max_spreads",
                    toml_scalar(file.graphql.max_spreads),
                ),
                500usize,
                1,
                100_000,
                "a number of spreads between 1 and 100000",
            )?,
            max_batch: parse_num(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_MAX_BATCH",
                    "graphql.max_batch",
                    toml_scalar(file.graphql.max_batch),
                ),
                10usize,
                1,
                1000,
                "a number of operations between 1 and 1000",
            )?,
            anonymous_introspection: parse_bool(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_ANONYMOUS_INTROSPECTION",
                    "graphql.anonymous_introspection",
                    toml_scalar(file.graphql.anonymous_introspection),
                ),
                true,
            )?,
            anonymous_suggestions: parse_bool(
                layers.pick(
                    "AGENTPLANE_GRAPHQL_ANONYMOUS_SUGGESTIONS",
                    "graphql.anonymous_suggestions",
                    toml_scalar(file.graphql.anonymous_suggestions),
                ),
                false,
            )?,
        };

        let websocket = WebsocketConfig {
            init_timeout: Duration::from_secs(parse_num(
                layers.pick(
                    "AGENTPLANE_WS_INIT_TIMEOUT_SECS",
                    "websocket.init_timeout_secs",
                    toml_scalar(file.websocket.init_timeout_secs),
                ),
                10u64,
                1,
                300,
                "seconds between 1 and 300",
            )?),
            max_connections_per_address: parse_num(
                layers.pick(
                    "AGENTPLANE_WS_MAX_CONNECTIONS_PER_ADDRESS",
                    "websocket.max_connections_per_address",
                    toml_scalar(file.websocket.max_connections_per_address),
                ),
                100usize,
                1,
                100_000,
                "a number of sockets between 1 and 100000",
            )?,
            max_subscriptions_per_socket: parse_num(
                layers.pick(
                    "AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_SOCKET",
                    "websocket.max_subscriptions_per_socket",
                    toml_scalar(file.websocket.max_subscriptions_per_socket),
                ),
                100usize,
                1,
                10_000,
                "a number of operations between 1 and 10000",
            )?,
            max_subscriptions_per_principal: parse_num(
                layers.pick(
                    "AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_PRINCIPAL",
                    "websocket.max_subscriptions_per_principal",
                    toml_scalar(file.websocket.max_subscriptions_per_principal),
                ),
                500usize,
                1,
                100_000,
                "a number of operations between 1 and 100000",
            )?,
            recheck_interval: Duration::from_secs(parse_num(
                layers.pick(
                    "AGENTPLANE_WS_RECHECK_SECS",
                    "websocket.recheck_secs",
                    toml_scalar(file.websocket.recheck_secs),
                ),
                5u64,
                1,
                3600,
                "seconds between 1 and 3600",
            )?),
        };

        let algorithm = match layers.pick(
            "AGENTPLANE_JWT_ALGORITHM",
            "auth.jwt_algorithm",
            file.auth.jwt_algorithm,
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
            file.auth.hs256_secret,
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
            file.auth.signing_key_file,
        ) {
            None => None,
            Some(raw) => {
                let expected = "a readable Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519)";
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
        let auth = AuthConfig {
            issuer: layers
                .pick("AGENTPLANE_JWT_ISSUER", "auth.issuer", file.auth.issuer)
                .map_or_else(|| "agentplane".to_owned(), |r| r.value),
            audience: layers
                .pick(
                    "AGENTPLANE_JWT_AUDIENCE",
                    "auth.audience",
                    file.auth.audience,
                )
                .map_or_else(|| "agentplane".to_owned(), |r| r.value),
            access_ttl: secs(
                "AGENTPLANE_ACCESS_TOKEN_TTL_SECS",
                "auth.access_ttl_secs",
                file.auth.access_ttl_secs,
                900,
                86_400,
            )?,
            refresh_idle: secs(
                "AGENTPLANE_REFRESH_IDLE_SECS",
                "auth.refresh_idle_secs",
                file.auth.refresh_idle_secs,
                7 * 86_400,
                365 * 86_400,
            )?,
            refresh_absolute: secs(
                "AGENTPLANE_REFRESH_ABSOLUTE_SECS",
                "auth.refresh_absolute_secs",
                file.auth.refresh_absolute_secs,
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
                        file.auth.bootstrap_admin_email,
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
                    toml_scalar(file.auth.max_concurrent_hashes),
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
                    toml_scalar(file.auth.hash_queue),
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
                    toml_scalar(file.auth.max_hashes_per_address),
                ),
                4usize,
                1,
                10_000,
                "a number between 1 and 10000",
            )?,
        };

        // Secrets: env only (a key in a config file sits next to the data too easily).
        let mut master_keys = Vec::new();
        if let Some(raw) = (env)("AGENTPLANE_MASTER_KEY").filter(|v| !v.trim().is_empty()) {
            let id = (env)("AGENTPLANE_MASTER_KEY_ID").unwrap_or_else(|| "k1".into());
            master_keys.push(parse_master_key(&id, &raw).ok_or_else(|| {
                err(
                    "AGENTPLANE_MASTER_KEY",
                    "not 32 bytes of base64 (or AGENTPLANE_MASTER_KEY_ID is not 1-32 of A-Z a-z 0-9 - _ .)",
                    "32 random bytes in base64, e.g. from `openssl rand -base64 32`",
                )
            })?);
        }
        if let Some(old) = (env)("AGENTPLANE_OLD_MASTER_KEYS").filter(|v| !v.trim().is_empty()) {
            if master_keys.is_empty() {
                return Err(err(
                    "AGENTPLANE_OLD_MASTER_KEYS",
                    "old keys are set without AGENTPLANE_MASTER_KEY",
                    "a current AGENTPLANE_MASTER_KEY as well",
                ));
            }
            for part in old.split(',') {
                let key = part
                    .split_once(':')
                    .and_then(|(id, k)| parse_master_key(id, k))
                    .ok_or_else(|| {
                        err(
                            "AGENTPLANE_OLD_MASTER_KEYS",
                            "an entry is not ID:BASE64-32-BYTES",
                            "comma-separated ID:BASE64 pairs",
                        )
                    })?;
                master_keys.push(key);
            }
        }

        let fe = file.engine;
        let engine = EngineConfig {
            workers: parse_num(
                layers.pick("AGENTPLANE_WORKERS", "engine.workers", toml_scalar(fe.workers)),
                4usize,
                0,
                1024,
                "a number of workers between 0 and 1024",
            )?,
            lease: Duration::from_secs(parse_num(
                layers.pick("AGENTPLANE_LEASE_SECS", "engine.lease_secs", toml_scalar(fe.lease_secs)),
                30u64,
                1,
                3600,
                "seconds between 1 and 3600",
            )?),
            poll_interval: Duration::from_millis(parse_num(
                layers.pick("AGENTPLANE_POLL_MS", "engine.poll_ms", toml_scalar(fe.poll_ms)),
                1000u64,
                10,
                60_000,
                "milliseconds between 10 and 60000",
            )?),
            max_parallel_steps: parse_num(
                layers.pick(
                    "AGENTPLANE_MAX_PARALLEL_STEPS",
                    "engine.max_parallel_steps",
                    toml_scalar(fe.max_parallel_steps),
                ),
                8usize,
                1,
                256,
                "a number between 1 and 256",
            )?,
            worker_max_steps: parse_num(
                layers.pick(
                    "AGENTPLANE_WORKER_MAX_STEPS",
                    "engine.worker_max_steps",
                    toml_scalar(fe.worker_max_steps),
                ),
                64usize,
                1,
                4096,
                "a number between 1 and 4096",
            )?,
            execution_timeout: Duration::from_secs(parse_num(
                layers.pick(
                    "AGENTPLANE_EXECUTION_TIMEOUT_SECS",
                    "engine.execution_timeout_secs",
                    toml_scalar(fe.execution_timeout_secs),
                ),
                3600u64,
                1,
                7 * 86_400,
                "seconds between 1 and 604800",
            )?),
            egress_allow: match layers.pick(
                "AGENTPLANE_EGRESS_ALLOW_CIDRS",
                "engine.egress_allow_cidrs",
                fe.egress_allow_cidrs.map(|v| v.join(",")),
            ) {
                None => Vec::new(),
                Some(raw) => {
                    let mut out = Vec::new();
                    for part in raw.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        out.push(crate::net::Cidr::parse(part).ok_or_else(|| {
                            err(
                                &raw.key,
                                format!("{part:?} is not an address range"),
                                "comma-separated CIDR ranges such as 10.0.0.0/8,127.0.0.1/32",
                            )
                        })?);
                    }
                    out
                }
            },
            llm_prices: match layers.pick("AGENTPLANE_LLM_PRICES", "engine.llm_prices", fe.llm_prices) {
                None => std::collections::HashMap::new(),
                Some(raw) => parse_prices(&raw.value).ok_or_else(|| {
                    err(
                        &raw.key,
                        "not a price list",
                        "MODEL=PROMPT:COMPLETION pairs in USD per million tokens, comma-separated, e.g. gpt-4o=2.5:10",
                    )
                })?,
            },
            max_step_output_bytes: parse_num(
                layers.pick(
                    "AGENTPLANE_MAX_STEP_OUTPUT_BYTES",
                    "engine.max_step_output_bytes",
                    toml_scalar(fe.max_step_output_bytes),
                ),
                1024 * 1024usize,
                1024,
                64 * 1024 * 1024,
                "bytes between 1024 and 67108864",
            )?,
            audit_checkpoint_interval: Duration::from_secs(parse_num(
                layers.pick(
                    "AGENTPLANE_AUDIT_CHECKPOINT_SECS",
                    "engine.audit_checkpoint_secs",
                    toml_scalar(fe.audit_checkpoint_secs),
                ),
                60u64,
                1,
                86_400,
                "seconds between 1 and 86400",
            )?),
            audit_checkpoint_file: layers
                .pick(
                    "AGENTPLANE_AUDIT_CHECKPOINT_FILE",
                    "engine.audit_checkpoint_file",
                    fe.audit_checkpoint_file,
                )
                .map(|r| std::path::PathBuf::from(r.value))
                .filter(|p| !p.as_os_str().is_empty()),
            template_timeout: Duration::from_millis(parse_num(
                layers.pick(
                    "AGENTPLANE_TEMPLATE_TIMEOUT_MS",
                    "engine.template_timeout_ms",
                    toml_scalar(fe.template_timeout_ms),
                ),
                2000u64,
                10,
                60_000,
                "milliseconds between 10 and 60000",
            )?),
            scheduler_tick: Duration::from_millis(parse_num(
                layers.pick(
                    "AGENTPLANE_SCHEDULER_TICK_MS",
                    "engine.scheduler_tick_ms",
                    toml_scalar(fe.scheduler_tick_ms),
                ),
                1000u64,
                10,
                60_000,
                "milliseconds between 10 and 60000",
            )?),
            retention_interval: Duration::from_millis(parse_num(
                layers.pick(
                    "AGENTPLANE_RETENTION_INTERVAL_MS",
                    "engine.retention_interval_ms",
                    toml_scalar(fe.retention_interval_ms),
                ),
                3_600_000u64,
                100,
                86_400_000,
                "milliseconds between 100 and 86400000",
            )?),
        };

        let fc = file.cluster;
        let heartbeat = Duration::from_millis(parse_num(
            layers.pick(
                "AGENTPLANE_HEARTBEAT_MS",
                "cluster.heartbeat_ms",
                toml_scalar(fc.heartbeat_ms),
            ),
            5000u64,
            50,
            60_000,
            "milliseconds between 50 and 60000",
        )?);
        let offline_raw = layers.pick(
            "AGENTPLANE_NODE_OFFLINE_AFTER_MS",
            "cluster.offline_after_ms",
            toml_scalar(fc.offline_after_ms),
        );
        let offline_key = offline_raw.as_ref().map_or_else(
            || "AGENTPLANE_NODE_OFFLINE_AFTER_MS".to_owned(),
            |r| r.key.clone(),
        );
        let offline_after = Duration::from_millis(parse_num(
            offline_raw,
            30_000u64,
            100,
            3_600_000,
            "milliseconds between 100 and 3600000",
        )?);
        if offline_after < heartbeat * 2 {
            return Err(err(
                &offline_key,
                format!(
                    "{} ms is less than two heartbeats ({} ms each)",
                    offline_after.as_millis(),
                    heartbeat.as_millis()
                ),
                "at least twice AGENTPLANE_HEARTBEAT_MS",
            ));
        }
        let labels = match layers.pick("AGENTPLANE_NODE_LABELS", "cluster.labels", fc.labels) {
            None => std::collections::BTreeMap::new(),
            Some(raw) => {
                let mut out = std::collections::BTreeMap::new();
                for part in raw
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    let (k, v) = part.split_once('=').ok_or_else(|| {
                        err(
                            &raw.key,
                            format!("{part:?} is not KEY=VALUE"),
                            "comma-separated KEY=VALUE pairs",
                        )
                    })?;
                    out.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                out
            }
        };
        let fake_gpus = match layers.pick("AGENTPLANE_FAKE_GPUS", "cluster.fake_gpus", fc.fake_gpus)
        {
            None => None,
            Some(raw) => {
                if parse_fake_gpus(&raw.value).is_none() {
                    return Err(err(
                        &raw.key,
                        "not a GPU list",
                        "NAME:MIB pairs, comma-separated, e.g. A10:24576,H100:81920",
                    ));
                }
                Some(raw.value)
            }
        };
        let cluster = ClusterConfig {
            heartbeat,
            offline_after,
            node_name: layers
                .pick("AGENTPLANE_NODE_NAME", "cluster.node_name", fc.node_name)
                .map(|r| r.value)
                .filter(|v| !v.trim().is_empty()),
            labels,
            fake_gpus,
            telemetry_samples: parse_num(
                layers.pick(
                    "AGENTPLANE_TELEMETRY_SAMPLES",
                    "cluster.telemetry_samples",
                    toml_scalar(fc.telemetry_samples),
                ),
                360usize,
                10,
                100_000,
                "a number between 10 and 100000",
            )?,
        };

        Ok(Self {
            database_url,
            redis_url,
            listen,
            log_format,
            log_filter,
            http,
            graphql,
            websocket,
            auth,
            engine,
            cluster,
            master_keys,
        })
    }
}

/// Parses a fake GPU list, `NAME:MIB,NAME:MIB` (e.g. `A10:24576,H100:81920`).
pub fn parse_fake_gpus(spec: &str) -> Option<Vec<(String, u64)>> {
    let mut gpus = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, mb) = part.rsplit_once(':')?;
        let mb: u64 = mb.trim().parse().ok()?;
        if mb == 0 || name.trim().is_empty() {
            return None;
        }
        gpus.push((name.trim().to_owned(), mb));
    }
    (!gpus.is_empty()).then_some(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load_with(&CliOverrides::default(), &move |k| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_are_sqlite_on_loopback() {
        let c = load(&[]).expect("defaults are valid");
        assert!(matches!(c.database_url, DatabaseUrl::Sqlite(_)));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = load(&[("DATABASE_URL", "mysql://x/y")]).unwrap_err();
        assert_eq!(e.key, "DATABASE_URL");
        let e = load(&[("AGENTPLANE_LOG_FORMAT", "yaml")]).unwrap_err();
        assert_eq!(e.key, "AGENTPLANE_LOG_FORMAT");
        let e = load(&[("AGENTPLANE_LISTEN", "localhost")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid configuration: AGENTPLANE_LISTEN:")
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let c = load(&[("DATABASE_URL", "postgres://u:hunter2@db:5432/app")]).expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let c = load(&[("REDIS_URL", "redis://:hunter2@r:6379")]).expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
