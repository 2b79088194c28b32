//! Configuration: defaults < optional TOML file (`--config PATH`) < environment < CLI flags.
//!
//! Every value is parsed and validated exactly once, here, at start-up. A bad value stops
//! the process with one line naming the key, what is wrong with the value and the expected
//! form. Secrets (database and Redis URLs may hold passwords) are `SecretString`s and never
//! appear in `Debug` output or logs.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod auth;
mod cluster;
mod engine;
mod graphql;
mod http;
mod layers;
mod websocket;

use auth::FileAuth;
pub use auth::{AuthConfig, JwtAlgorithm, Notifier};
use cluster::FileCluster;
pub use cluster::{ClusterConfig, parse_fake_gpus};
pub use engine::EngineConfig;
use engine::FileEngine;
use graphql::FileGraphql;
pub use graphql::{GraphqlConfig, Introspection};
use http::FileHttp;
pub use http::{ForwardedHeader, HttpConfig};
use layers::{Layers, Raw, err};
use websocket::FileWebsocket;
pub use websocket::WebsocketConfig;

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

/// The validated configuration of one process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage backend and location.
    pub database_url: DatabaseUrl,
    /// Where the `LISTEN` connections (event relay, credential-change follower) go on
    /// PostgreSQL: `DATABASE_URL` unless set. Behind a transaction-mode pooler such as
    /// PgBouncer, point this at PostgreSQL itself (LISTEN needs a session).
    pub database_listen_url: Option<SecretString>,
    /// Optional Redis: the cross-replica event fan-out on PostgreSQL (`redis://` or
    /// `rediss://` for TLS, password in the URL).
    pub redis_url: Option<SecretString>,
    /// The CA certificate(s), PEM, that signed the Redis server's certificate, for a
    /// `rediss://` URL whose server certificate no public CA signed
    /// (`AGENTPLANE_REDIS_CA_FILE`); none: the public web roots.
    pub redis_ca_pem: Option<Vec<u8>>,
    /// Prefix of every Redis key this deployment uses (several deployments, or test
    /// runs, can share one Redis).
    pub redis_key_prefix: String,
    /// Where `deleteTenant` writes a deleted tenant's final export.
    pub export_dir: std::path::PathBuf,
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Log output format.
    pub log_format: LogFormat,
    /// `tracing` filter directives (`RUST_LOG`).
    pub log_filter: String,
    /// Where OpenTelemetry traces go (OTLP over HTTP, e.g. `http://collector:4318`);
    /// `None` exports nothing.
    pub otlp_endpoint: Option<url::Url>,
    /// Database connection pool.
    pub db_pool: PoolConfig,
    /// How often a `serve` or `worker` process checks whether its allocator holds freed
    /// memory it could give back to the operating system (`None`: never).
    pub memory_trim_interval: Option<std::time::Duration>,
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

/// The database connection pool of a process.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections at most (default: 16 on PostgreSQL, 8 on SQLite).
    pub max_size: Option<u32>,
    /// How long a request waits for a connection before it fails with `UNAVAILABLE`.
    pub timeout: std::time::Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: None,
            timeout: std::time::Duration::from_secs(10),
        }
    }
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
    database_listen_url: Option<String>,
    redis_url: Option<String>,
    redis_key_prefix: Option<String>,
    redis_ca_file: Option<String>,
    export_dir: Option<String>,
    listen: Option<String>,
    log_format: Option<String>,
    log_filter: Option<String>,
    otlp_endpoint: Option<String>,
    db_pool_size: Option<toml::Value>,
    db_pool_timeout_ms: Option<toml::Value>,
    memory_trim_ms: Option<toml::Value>,
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

        let database_listen_url = match layers.pick(
            "AGENTPLANE_DATABASE_LISTEN_URL",
            "database_listen_url",
            file.database_listen_url,
        ) {
            None => None,
            Some(raw) if raw.value.trim().is_empty() => None,
            Some(raw) => {
                let expected = "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (PostgreSQL itself, not a transaction pooler)";
                match DatabaseUrl::parse(raw.value.trim()) {
                    Ok(DatabaseUrl::Postgres(_))
                        if matches!(database_url, DatabaseUrl::Postgres(_)) =>
                    {
                        Some(SecretString::from(raw.value.trim().to_owned()))
                    }
                    Ok(_) => {
                        return Err(err(
                            &raw.key,
                            "only PostgreSQL deployments LISTEN",
                            expected,
                        ));
                    }
                    Err(p) => return Err(err(&raw.key, p, expected)),
                }
            }
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

        let redis_ca_pem = match layers.pick(
            "AGENTPLANE_REDIS_CA_FILE",
            "redis_ca_file",
            file.redis_ca_file,
        ) {
            None => None,
            Some(raw) => {
                let expected = "a readable PEM file of the CA that signed the Redis server's \
                                certificate, with a rediss:// REDIS_URL";
                let pem = std::fs::read(raw.value.trim()).map_err(|e| {
                    err(
                        &raw.key,
                        format!("cannot read {} ({e})", raw.value),
                        expected,
                    )
                })?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(err(&raw.key, "no PEM certificate in the file", expected));
                }
                let tls = {
                    use secrecy::ExposeSecret as _;
                    redis_url
                        .as_ref()
                        .is_some_and(|u| u.expose_secret().starts_with("rediss://"))
                };
                if !tls {
                    return Err(err(
                        &raw.key,
                        "a CA file is for TLS: REDIS_URL must be a rediss:// URL",
                        expected,
                    ));
                }
                Some(pem)
            }
        };

        let export_dir = match layers.pick("AGENTPLANE_EXPORT_DIR", "export_dir", file.export_dir) {
            None => std::path::PathBuf::from("exports"),
            Some(raw) if raw.value.trim().is_empty() => {
                return Err(err(&raw.key, "the directory is empty", "a directory path"));
            }
            Some(raw) => std::path::PathBuf::from(raw.value.trim()),
        };

        let redis_key_prefix = match layers.pick(
            "AGENTPLANE_REDIS_KEY_PREFIX",
            "redis_key_prefix",
            file.redis_key_prefix,
        ) {
            None => "agentplane".to_owned(),
            Some(raw) => {
                let v = raw.value.trim();
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
                {
                    return Err(err(
                        &raw.key,
                        format!("{v:?} is not a usable key prefix"),
                        "1-64 of A-Z a-z 0-9 - _ . :",
                    ));
                }
                v.to_owned()
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

        let otlp_endpoint = match layers.pick(
            "AGENTPLANE_OTLP_ENDPOINT",
            "otlp_endpoint",
            file.otlp_endpoint,
        ) {
            None => None,
            Some(raw) if raw.value.trim().is_empty() => None,
            Some(raw) => Some(
                url::Url::parse(raw.value.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                    .ok_or_else(|| {
                        err(
                            &raw.key,
                            format!("{:?} is not an http(s) URL", raw.value),
                            "the OTLP/HTTP endpoint of a collector, e.g. http://otel-collector:4318",
                        )
                    })?,
            ),
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

        let db_pool = PoolConfig {
            max_size: match layers.pick(
                "AGENTPLANE_DB_POOL_SIZE",
                "db_pool_size",
                layers::toml_scalar(file.db_pool_size),
            ) {
                None => None,
                raw => Some(layers::parse_num(
                    raw,
                    16u32,
                    1,
                    1000,
                    "a number of connections between 1 and 1000",
                )?),
            },
            timeout: std::time::Duration::from_millis(layers::parse_num(
                layers.pick(
                    "AGENTPLANE_DB_POOL_TIMEOUT_MS",
                    "db_pool_timeout_ms",
                    layers::toml_scalar(file.db_pool_timeout_ms),
                ),
                10_000u64,
                100,
                600_000,
                "milliseconds between 100 and 600000",
            )?),
        };
        let memory_trim_interval = {
            const EXPECTED: &str = "milliseconds between 100 and 3600000, or 0 for never";
            let raw = layers.pick(
                "AGENTPLANE_MEMORY_TRIM_MS",
                "memory_trim_ms",
                layers::toml_scalar(file.memory_trim_ms),
            );
            let key = raw.as_ref().map(|r| r.key.clone()).unwrap_or_default();
            match layers::parse_num(raw, 2_000u64, 0, 3_600_000, EXPECTED)? {
                0 => None,
                ms if ms < 100 => {
                    return Err(layers::err(&key, format!("{ms} is out of range"), EXPECTED));
                }
                ms => Some(std::time::Duration::from_millis(ms)),
            }
        };
        let http = http::load(&layers, file.http)?;
        let graphql = graphql::load(&layers, file.graphql)?;
        let websocket = websocket::load(&layers, file.websocket)?;
        let auth = auth::load(&layers, env, file.auth)?;

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

        let engine = engine::load(&layers, file.engine)?;
        let cluster = cluster::load(&layers, file.cluster)?;

        Ok(Self {
            database_url,
            database_listen_url,
            redis_url,
            redis_key_prefix,
            redis_ca_pem,
            export_dir,
            listen,
            log_format,
            log_filter,
            otlp_endpoint,
            db_pool,
            memory_trim_interval,
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
    fn memory_trimming_defaults_to_every_two_seconds_and_can_be_turned_off() {
        let c = load(&[]).expect("defaults are valid");
        assert_eq!(
            c.memory_trim_interval,
            Some(std::time::Duration::from_secs(2))
        );
        let c = load(&[("AGENTPLANE_MEMORY_TRIM_MS", "0")]).expect("valid");
        assert_eq!(c.memory_trim_interval, None);
        for bad in ["50", "soon", "3600001"] {
            let e = load(&[("AGENTPLANE_MEMORY_TRIM_MS", bad)]).unwrap_err();
            assert_eq!(e.key, "AGENTPLANE_MEMORY_TRIM_MS", "{bad}");
        }
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let c = load(&[("DATABASE_URL", "postgres://u:hunter2@db:5432/app")]).expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let c = load(&[("REDIS_URL", "redis://:hunter2@r:6379")]).expect("valid");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_separate_listen_url_is_for_postgres_only() {
        let c = load(&[
            ("DATABASE_URL", "postgres://u@pgbouncer:6432/app"),
            (
                "AGENTPLANE_DATABASE_LISTEN_URL",
                "postgres://u:hunter2@db:5432/app",
            ),
        ])
        .expect("valid");
        assert!(c.database_listen_url.is_some());
        assert!(!format!("{c:?}").contains("hunter2"));
        let e = load(&[("AGENTPLANE_DATABASE_LISTEN_URL", "postgres://u@db/app")])
            .expect_err("SQLite does not LISTEN");
        assert_eq!(e.key, "AGENTPLANE_DATABASE_LISTEN_URL");
        let e = load(&[
            ("DATABASE_URL", "postgres://u@db/app"),
            ("AGENTPLANE_DATABASE_LISTEN_URL", "sqlite://x.db"),
        ])
        .expect_err("not PostgreSQL");
        assert_eq!(e.key, "AGENTPLANE_DATABASE_LISTEN_URL");
    }
}
