//! `App`: the shared state built once at start-up and handed to every service. The
//! HTTP state (`http::AppState`) and the run loop (`server`) sit above it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::jwt::KeyRing;
use crate::clock::Clock;
use crate::config::Config;
use crate::db::DbPool;

/// The process's event bus: execution events (stored, relayed between processes) and
/// cluster notices (each process derives its own).
pub type Bus =
    crate::events::EventBus<crate::executions::model::ExecutionEvent, crate::cluster::ClusterEvent>;

/// Everything a request may need, shared by reference. Built once; never global.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// The storage pool.
    pub db: DbPool,
    /// When the process started serving (for `uptimeSeconds`).
    pub started_at: Instant,
    /// Cancelled when shutdown begins; long-lived tasks (websockets) watch it.
    pub shutdown: CancellationToken,
    /// Tracks upgraded websocket connections so shutdown can wait for their close frames.
    pub connections: TaskTracker,
    /// The source of time (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
    /// Access-token signing and verification keys.
    pub keys: KeyRing,
    /// SQL statements run so far by this process's pool.
    pub statements: Arc<AtomicU64>,
    /// Transactions committed so far by this process's pool.
    pub commits: Arc<AtomicU64>,
    /// Execution events (and queue wake-ups) for subscribers and workers.
    pub bus: Arc<Bus>,
    /// This process as a cluster node (its id is the bus origin).
    pub node: Arc<crate::cluster::NodeState>,
    /// Bounds concurrent password hashing (memory and CPU per sign-in).
    pub password_slots: crate::auth::passwords::HashSlots,
    /// Open websockets per address and running websocket operations per principal.
    pub socket_slots: crate::slots::SocketSlots,
    /// One audit follower per watched tenant, shared by its `auditEvents` subscriptions.
    pub audit_tails: Arc<crate::audit::tail::TailHub>,
    /// The threads step templates render on, and their limits.
    pub templates: crate::executions::templates::Templates,
    /// The audit checkpoints this process published last.
    pub published: crate::audit::chain::Published,
    /// Resolved principals, and the feed of authentication changes that keeps them (and
    /// open websockets) current.
    pub auth_cache: Arc<crate::auth::cache::PrincipalCache>,
    /// Request rate limits per principal (shared through Redis when configured).
    pub rate_limiter: Arc<crate::ratelimit::RateLimiter>,
    /// Refusals by `allowedIpRanges` recorded in the last minute (one record per
    /// principal and address).
    pub ip_denials: crate::auth::DenialLog,
    /// Users whose `lastActiveAt` this process wrote lately.
    pub activity: crate::auth::DenialLog,
}

impl App {
    /// Connects to storage (migrations must already be applied), loads the signing keys
    /// and builds the shared state.
    pub async fn connect(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        crate::metrics::install();
        let counters = crate::db::DbCounters::default();
        let db = DbPool::connect_counted(&config.database_url, counters.clone(), &config.db_pool)
            .await?;
        db.set_signer(Arc::new(crate::audit::chain::ChainKeys::from_master(
            &config.master_keys,
        )));
        let keys = KeyRing::load(&db, &config.auth, &config.master_keys)
            .await
            .context("loading signing keys")?;
        let bus = Arc::new(Bus::new());
        let node = Arc::new(crate::cluster::NodeState::new(bus.origin.clone()));
        Ok(App {
            db,
            started_at: Instant::now(),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            clock,
            keys,
            statements: counters.statements,
            commits: counters.commits,
            bus,
            node,
            password_slots: crate::auth::passwords::HashSlots::new(
                config.auth.max_concurrent_hashes,
                config.auth.hash_queue,
                config.auth.max_hashes_per_address,
            ),
            socket_slots: crate::slots::SocketSlots::default(),
            audit_tails: Arc::default(),
            templates: crate::executions::templates::Templates::new(&config.engine),
            published: crate::audit::chain::Published::default(),
            auth_cache: Arc::new(crate::auth::cache::PrincipalCache::new(
                config.auth.principal_cache_ttl,
                config.auth.principal_cache_entries,
            )),
            rate_limiter: Arc::new(crate::ratelimit::RateLimiter::new(
                crate::ratelimit::Quota {
                    per_minute: u64::from(config.http.rate_limit_per_minute),
                    burst: u64::from(config.http.rate_limit_burst),
                },
                {
                    use secrecy::ExposeSecret as _;
                    config
                        .redis_url
                        .as_ref()
                        .map(|u| u.expose_secret().to_owned())
                }
                .as_deref(),
                config.redis_ca_pem.as_deref(),
                &config.redis_key_prefix,
            )?),
            ip_denials: crate::auth::DenialLog::default(),
            activity: crate::auth::DenialLog::default(),
            config,
        })
    }

    /// Announces, in this process and at once, that someone's rights in `tenant` may have
    /// changed (role, status, custom role, session or key revoked, tenant suspended):
    /// cached principals of the tenant are dropped and its open websockets re-check.
    /// Other processes hear the same change from the database's triggers
    /// (`auth::cache`).
    pub fn rights_changed(&self, tenant: crate::db::ids::TenantId) {
        self.auth_cache
            .invalidate(crate::auth::cache::AuthChange::Tenant(tenant));
    }
}
