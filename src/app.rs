//! Application state built once at start-up, and the server's run loop with graceful
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::jwt::KeyRing;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::db::DbPool;
use crate::graphql::{AppSchema, build_schema};

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
    /// Execution events (and queue wake-ups) for subscribers and workers.
    pub bus: Arc<crate::events::EventBus>,
    /// This process as a cluster node (its id is the bus origin).
    pub node: Arc<crate::cluster::NodeState>,
    /// Bounds concurrent password hashing (memory and CPU per sign-in).
    pub password_slots: crate::auth::passwords::HashSlots,
    /// Open websockets per address and running websocket operations per principal.
    pub socket_slots: crate::http::socket::SocketSlots,
    /// One audit follower per watched tenant, shared by its `auditEvents` subscriptions.
    pub audit_tails: Arc<crate::audit::tail::TailHub>,
    /// The threads step templates render on, and their limits.
    pub templates: crate::executions::templates::Templates,
    /// The audit checkpoints this process published last.
    pub published: crate::audit::chain::Published,
    /// Bumped when someone's rights may have changed (role, status, custom role, key
    /// revoked, tenant suspended): open websockets re-check at once.
    pub rights_epoch: tokio::sync::watch::Sender<u64>,
}

impl App {
    /// Tells open websockets in this process to re-check their credential now (other
    /// processes' sockets notice within `websocket.recheck_interval`).
    pub fn rights_changed(&self) {
        self.rights_epoch.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Cheap handle to the shared state plus the executable schema (the router's state).
#[derive(Clone)]
pub struct AppState {
    /// Shared state.
    pub app: Arc<App>,
    /// The GraphQL schema, holding `Arc<App>` as context data.
    pub schema: AppSchema,
    /// The same schema for requests without credentials (see `graphql.anonymous_*`).
    pub anonymous_schema: AppSchema,
}

impl AppState {
    /// Connects to storage (migrations must already be applied) and builds the schema.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        Self::with_clock(config, Arc::new(SystemClock)).await
    }

    /// Like [`AppState::new`] with an explicit clock.
    pub async fn with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let statements = Arc::new(AtomicU64::new(0));
        let db = DbPool::connect_counted(&config.database_url, statements.clone()).await?;
        db.set_chain_keys(Arc::new(crate::audit::chain::ChainKeys::from_master(
            &config.master_keys,
        )));
        let keys = KeyRing::load(&db, &config.auth, &config.master_keys)
            .await
            .context("loading signing keys")?;
        let bus = Arc::new(crate::events::EventBus::new());
        let node = Arc::new(crate::cluster::NodeState::new(bus.origin.clone()));
        let app = Arc::new(App {
            db,
            started_at: Instant::now(),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            clock,
            keys,
            statements,
            bus,
            node,
            password_slots: crate::auth::passwords::HashSlots::new(
                config.auth.max_concurrent_hashes,
                config.auth.hash_queue,
                config.auth.max_hashes_per_address,
            ),
            socket_slots: crate::http::socket::SocketSlots::default(),
            audit_tails: Arc::default(),
            templates: crate::executions::templates::Templates::new(&config.engine),
            published: crate::audit::chain::Published::default(),
            rights_epoch: tokio::sync::watch::channel(0).0,
            config,
        });
        let schema = build_schema(Some(app.clone()));
        let anonymous_schema = crate::graphql::build_anonymous_schema(app.clone());
        Ok(Self {
            app,
            schema,
            anonymous_schema,
        })
    }
}

/// Binds the configured listen address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Work a process runs besides HTTP: the engine's workers and scheduler, and on
/// PostgreSQL the LISTEN relay that carries other processes' events and wake-ups.
pub struct Background {
    engine: Option<crate::executions::engine::EngineHandle>,
    relay: Option<tokio::task::JoinHandle<()>>,
    retention: tokio::task::JoinHandle<()>,
    checkpoints: tokio::task::JoinHandle<()>,
    agent: (CancellationToken, tokio::task::JoinHandle<()>),
}

impl Background {
    /// Starts `workers` engine workers (none when 0), the relay, and the node agent that
    /// registers this process in the cluster. The engine and relay stop when
    /// `app.shutdown` is cancelled; the agent leaves the cluster in [`Background::shutdown`],
    /// after the engine has handed its work over.
    pub fn start(
        app: &Arc<App>,
        workers: usize,
        kind: crate::cluster::model::NodeKind,
        address: Option<String>,
    ) -> anyhow::Result<Self> {
        let relay = match &app.config.database_url {
            crate::config::DatabaseUrl::Postgres(url) => {
                use secrecy::ExposeSecret as _;
                Some(tokio::spawn(crate::events::relay_postgres(
                    url.expose_secret().to_owned(),
                    app.bus.clone(),
                    app.shutdown.child_token(),
                )))
            }
            crate::config::DatabaseUrl::Sqlite(_) => {
                Some(tokio::spawn(crate::events::follow_sqlite(
                    app.config.database_url.clone(),
                    app.bus.clone(),
                    app.shutdown.child_token(),
                )))
            }
        };
        let engine = crate::executions::engine::start(app.clone(), workers)?;
        let retention = tokio::spawn(crate::audit::retention::retention_loop(
            app.clone(),
            app.shutdown.child_token(),
        ));
        let checkpoints = tokio::spawn(crate::audit::chain::publish_loop(
            app.clone(),
            app.shutdown.child_token(),
        ));
        let stop = CancellationToken::new();
        let agent = tokio::spawn(crate::cluster::agent::run(
            app.clone(),
            crate::cluster::agent::Registration {
                kind,
                worker_slots: workers,
                address,
            },
            stop.clone(),
        ));
        Ok(Self {
            engine,
            relay,
            retention,
            checkpoints,
            agent: (stop, agent),
        })
    }

    /// The engine, when workers run here.
    pub fn engine(&self) -> Option<&Arc<crate::executions::engine::Engine>> {
        self.engine.as_ref().map(|h| &h.engine)
    }

    /// Waits (bounded by `grace`) for in-flight steps to finish or hand over.
    pub async fn shutdown(self, grace: std::time::Duration) {
        if let Some(e) = self.engine {
            e.shutdown(grace).await;
        }
        if let Some(r) = self.relay {
            r.abort();
        }
        self.retention.abort();
        self.checkpoints.abort();
        let (stop, agent) = self.agent;
        stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), agent).await;
    }
}

/// Serves until `state.app.shutdown` is cancelled, then stops accepting, lets in-flight
/// requests finish, closes websockets with 1001, and returns within the grace period.
pub async fn serve(state: AppState, listener: TcpListener) -> anyhow::Result<()> {
    let app = state.app.clone();
    let grace = app.config.http.shutdown_grace;
    let address = listener.local_addr().ok().map(|a| a.to_string());
    let background = Background::start(
        &app,
        app.config.engine.workers,
        crate::cluster::model::NodeKind::Api,
        address,
    )?;
    let router = crate::http::router(state);
    let token = app.shutdown.clone();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(token.clone().cancelled_owned());
    let mut handle = tokio::spawn(server.into_future());

    tokio::select! {
        res = &mut handle => {
            background.shutdown(grace).await;
            res.context("server task panicked")?.context("HTTP server failed")?;
            return Ok(());
        }
        () = token.cancelled() => {}
    }
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutdown started; draining requests"
    );
    let deadline = tokio::time::Instant::now() + grace;
    // The engine drains in parallel with HTTP (its stop token is a child of shutdown).
    let engine_done = tokio::spawn(background.shutdown(grace));
    match tokio::time::timeout_at(deadline, handle).await {
        Ok(res) => res
            .context("server task panicked")?
            .context("HTTP server failed")?,
        Err(_) => tracing::warn!("grace period elapsed with requests still in flight"),
    }
    app.connections.close();
    if tokio::time::timeout_at(deadline, app.connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period elapsed with websockets still open");
    }
    let _ = tokio::time::timeout_at(
        deadline + std::time::Duration::from_millis(500),
        engine_done,
    )
    .await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}
