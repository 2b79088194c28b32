//! Process wiring: binds the listener, starts the background work (engine, relay,
//! retention, checkpoints, cluster agent) and serves until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
pub use crate::http::AppState;

/// Binds the configured listen address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Serves `/metrics` and `/healthz` on `http.metrics_listen` when it is set, until
/// shutdown; the bound address, or `None`.
pub async fn serve_metrics(state: &AppState) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = state.app.config.http.metrics_listen else {
        return Ok(None);
    };
    let listener = bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = crate::http::metrics_router(state.clone());
    let stop = state.app.shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    tracing::info!(address = %bound, "serving /metrics");
    Ok(Some(bound))
}

/// Work a process runs besides HTTP: the engine's workers and scheduler, and on
/// PostgreSQL the LISTEN relay that carries other processes' events and wake-ups.
pub struct Background {
    engine: Option<crate::executions::engine::EngineHandle>,
    relay: Option<tokio::task::JoinHandle<()>>,
    /// Hears authentication changes, so cached principals can be used.
    auth_changes: tokio::task::JoinHandle<()>,
    retention: tokio::task::JoinHandle<()>,
    checkpoints: tokio::task::JoinHandle<()>,
    agent: (CancellationToken, tokio::task::JoinHandle<()>),
}

/// Where `LISTEN` connections go: `AGENTPLANE_DATABASE_LISTEN_URL`, else the pool's URL.
fn listen_url(app: &App, pool_url: &secrecy::SecretString) -> String {
    use secrecy::ExposeSecret as _;
    app.config
        .database_listen_url
        .as_ref()
        .unwrap_or(pool_url)
        .expose_secret()
        .to_owned()
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
                if let Some(redis_url) = &app.config.redis_url {
                    let db = app.db.clone();
                    let fallback: crate::events::redis::Fallback = Arc::new(move |payload| {
                        let db = db.clone();
                        Box::pin(async move {
                            if let Err(e) =
                                crate::executions::store::notify_committed(&db, &payload).await
                            {
                                tracing::warn!(
                                    code = e.code().as_str(),
                                    "an event reached neither Redis nor NOTIFY; \
                                     subscribers find it in the stored log"
                                );
                            }
                        })
                    });
                    let fanout = crate::events::redis::start(
                        redis_url.expose_secret(),
                        app.config.redis_ca_pem.as_deref(),
                        &app.config.redis_key_prefix,
                        app.bus.clone(),
                        fallback,
                        app.shutdown.child_token(),
                    )?;
                    app.bus.use_redis(fanout);
                }
                // NOTIFY stays: the path while Redis is down (or not configured), sent
                // after commit by one task.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                app.bus.use_pg_notifier(tx);
                tokio::spawn(crate::executions::store::pg_notify_loop(
                    app.db.clone(),
                    rx,
                    app.shutdown.child_token(),
                ));
                Some(tokio::spawn(crate::events::relay_postgres(
                    listen_url(app, url),
                    app.db.clone(),
                    app.bus.clone(),
                    app.shutdown.child_token(),
                )))
            }
            crate::config::DatabaseUrl::Sqlite(_) => {
                Some(tokio::spawn(crate::executions::relay::follow_sqlite(
                    app.config.database_url.clone(),
                    app.bus.clone(),
                    app.shutdown.child_token(),
                )))
            }
        };
        let auth_changes = match &app.config.database_url {
            crate::config::DatabaseUrl::Postgres(url) => {
                tokio::spawn(crate::auth::cache::follow_postgres(
                    listen_url(app, url),
                    app.db.clone(),
                    app.auth_cache.clone(),
                    app.shutdown.child_token(),
                ))
            }
            crate::config::DatabaseUrl::Sqlite(_) => {
                tokio::spawn(crate::auth::cache::follow_sqlite(
                    app.config.database_url.clone(),
                    app.auth_cache.clone(),
                    app.shutdown.child_token(),
                ))
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
            auth_changes,
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
        self.auth_changes.abort();
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
