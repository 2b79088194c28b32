//! The credential side of a GraphQL websocket: accepting `connection_init`, refreshing by
//! `ping`, and watching the accepted credential until it expires, is revoked or carries
//! other rights (the transport and the protocol gate are in the parent module).

use std::sync::{Arc, PoisonError};

use async_graphql::Data;

use super::{CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, SocketState};
use crate::app::App;
use crate::auth::Principal;
use crate::error::{AppError, ErrorCode};

pub(super) const UNAUTHENTICATED_REASON: &str = "unauthenticated";
pub(super) const UNAVAILABLE_REASON: &str = "unavailable";
pub(super) const FORBIDDEN_REASON: &str = "forbidden";

/// The close reason for a refused credential: the refusal's reason code first (as HTTP's
/// `extensions.reason`), then what to do. At most 123 bytes.
pub(super) fn refused_reason(e: &AppError) -> String {
    let reason = e.reason().unwrap_or("TOKEN_INVALID");
    let todo = match reason {
        "TOKEN_EXPIRED" => "refresh the session, then reconnect",
        "TENANT_SUSPENDED" => "the organization is suspended",
        "IP_NOT_ALLOWED" => "connect from a network in allowedIpRanges",
        _ => "sign in again, then reconnect",
    };
    format!("{reason}: {todo}")
}

/// What a principal may do; a socket keeps the rights it was accepted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rights {
    tenant: crate::db::ids::TenantId,
    role: String,
    permissions: crate::rbac::PermissionSet,
    platform_admin: bool,
}

impl Rights {
    pub(super) fn of(p: &Principal) -> Self {
        Self {
            tenant: p.tenant_id,
            role: p.role.clone(),
            permissions: p.permissions,
            platform_admin: p.platform_admin,
        }
    }
}

/// The credential a socket was accepted with.
#[derive(Clone)]
pub(super) struct Accepted {
    pub(super) bearer: String,
    expires_at: chrono::DateTime<chrono::Utc>,
    pub(super) rights: Rights,
    /// The user or API key, for the per-principal operation count.
    pub(super) actor: String,
}

/// Closes the socket with 4408 unless `connection_init` arrives within
/// `websocket.init_timeout`; then ends it when the accepted credential expires on the app
/// clock, stops authenticating (revoked, user disabled, tenant suspended), or now carries
/// other rights. Re-checked when an authentication change of the socket's tenant is
/// announced (`auth::cache`: this process at once, other processes through the
/// database), so an idle socket costs no statement; only while this process cannot hear
/// changes does it fall back to re-checking every `websocket.recheck_interval`.
///
/// An idle socket's watcher sleeps until something is due: the init deadline, its
/// token's end (at most a minute at a time, so a jump of the wall clock is noticed), a
/// retry of a check the database could not answer, or the next poll while no change
/// feed is heard. It wakes early when the socket accepts a credential (`SocketState::
/// rearm`) or the app clock is moved by hand (tests). (It ticked every second before:
/// 10,000 idle sockets were 10,000 wake-ups, each cloning its credential, a second.)
///
/// One task per socket watches both (a second task for the init deadline cost every
/// socket its own allocation), and the checks' database reads are awaited boxed, so an
/// idle socket's watcher holds only its timer and its receiver.
pub(super) async fn watch_credentials(app: Arc<App>, socket: Arc<SocketState>) {
    use tokio::sync::broadcast::error::RecvError;
    use tokio::time::Instant;
    /// The longest a watcher sleeps on a token's expiry in one go.
    const EXPIRY_LOOK: std::time::Duration = std::time::Duration::from_secs(60);
    /// When a check the database could not answer is tried again.
    const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
    let init_deadline = Instant::now() + app.config.websocket.init_timeout;
    let mut awaiting_init = true;
    let mut changes = app.auth_cache.subscribe();
    let recheck = app.config.websocket.recheck_interval;
    let leeway = chrono::Duration::seconds(crate::auth::jwt::LEEWAY_SECS);
    let mut last_check = Instant::now();
    // A check the database could not answer is retried soon.
    let mut retry = false;
    loop {
        // Before the clock is read: a move after this point still wakes it.
        let moved = app.clock.moved();
        let accepted = socket.accepted();
        let now = Instant::now();
        let mut wake = if awaiting_init {
            init_deadline
        } else {
            now + EXPIRY_LOOK
        };
        if let Some(a) = &accepted {
            let left = (a.expires_at + leeway - app.clock.now())
                .to_std()
                .unwrap_or_default();
            // Just past the end, so the check below sees it expired (at the very end
            // on a clock that stands still, a second on rather than a busy loop).
            let left = if left.is_zero() {
                RETRY
            } else {
                left.min(EXPIRY_LOOK) + std::time::Duration::from_millis(1)
            };
            wake = wake.min(now + left);
            if retry {
                wake = wake.min(now + RETRY);
            }
            if !app.auth_cache.is_live() {
                wake = wake.min(last_check + recheck);
            }
        }
        drop(accepted);
        let change = tokio::select! {
            () = tokio::time::sleep_until(wake) => None,
            () = socket.rearm.notified() => None,
            () = moved => None,
            c = changes.recv() => match c {
                Ok(c) => Some(c),
                Err(RecvError::Lagged(_)) => Some(crate::auth::cache::AuthChange::All),
                Err(RecvError::Closed) => return,
            },
        };
        if awaiting_init && Instant::now() >= init_deadline {
            awaiting_init = false;
            if !socket
                .init_received
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                socket.close(
                    super::CLOSE_INIT_TIMEOUT,
                    "Connection initialisation timeout",
                );
                return;
            }
        }
        let Some(accepted) = socket.accepted() else {
            continue;
        };
        // The same leeway as HTTP: a token HTTP still takes keeps its socket.
        if app.clock.now() > accepted.expires_at + leeway {
            socket.close(
                CLOSE_UNAUTHORIZED,
                "TOKEN_EXPIRED: refresh the session, then reconnect (or send the new token \
                 in a ping before expiry)",
            );
            return;
        }
        let due = match change {
            Some(c) => c.touches(accepted.rights.tenant),
            // Nobody announces changes to this process now: poll.
            None => retry || (!app.auth_cache.is_live() && last_check.elapsed() >= recheck),
        };
        if !due {
            continue;
        }
        last_check = Instant::now();
        retry = false;
        match Box::pin(crate::auth::authenticate(&app, &accepted.bearer)).await {
            Ok(p) if Rights::of(&p) != accepted.rights => {
                socket.close(CLOSE_FORBIDDEN, "permissions changed; reconnect");
                return;
            }
            Ok(p) => {
                if let Err(e) = Box::pin(check_address(&app, &socket, &p)).await {
                    socket.close(CLOSE_FORBIDDEN, refused_reason(&e));
                    return;
                }
            }
            // Only a verdict on the credential ends the socket. A database that does
            // not answer says nothing about it: keep the socket and check again on
            // the next round (clients treat 4401 as final and never reconnect).
            Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Forbidden) => {
                socket.close(CLOSE_UNAUTHORIZED, refused_reason(&e));
                return;
            }
            Err(e) => {
                retry = true;
                tracing::warn!(
                    code = e.code().as_str(),
                    "websocket credential check could not run; keeping the socket"
                );
            }
        }
    }
}

/// Checks the credential in `connection_init`'s payload (or, when the payload has none,
/// the one the upgrade request carried, already verified at the edge).
pub(super) async fn accept(
    app: Arc<App>,
    socket: Arc<SocketState>,
    payload: serde_json::Value,
    edge_bearer: Option<String>,
) -> async_graphql::Result<Data> {
    let header = authorization(&payload).map(str::to_owned);
    let refuse = |why: &str| async_graphql::Error::new(format!("{UNAUTHENTICATED_REASON}: {why}"));
    let bearer = match (header, edge_bearer) {
        (Some(header), _) => crate::auth::bearer_from_header(&header)
            .map_err(|e| refuse(e.message()))?
            .to_owned(),
        (None, Some(edge)) => edge,
        (None, None) => {
            return Err(refuse(
                "send {\"Authorization\": \"Bearer <token>\"} in connection_init",
            ));
        }
    };
    let p = crate::auth::authenticate(&app, &bearer)
        .await
        .map_err(|e| match e.code() {
            ErrorCode::Unauthenticated | ErrorCode::Forbidden => refuse(e.message()),
            // A close reason holds at most 123 bytes: keep it short.
            _ => async_graphql::Error::new(format!(
                "{UNAVAILABLE_REASON}: database unavailable; reconnect in {} s",
                crate::error::RETRY_AFTER_SECONDS
            )),
        })?;
    check_address(&app, &socket, &p).await.map_err(|e| {
        async_graphql::Error::new(format!("{FORBIDDEN_REASON}: {}", refused_reason(&e)))
    })?;
    let expires_at = expiry(&app, &p);
    let actor = actor_key(&p);
    *socket
        .accepted
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(Accepted {
        bearer,
        expires_at,
        rights: Rights::of(&p),
        actor,
    });
    // The watcher sleeps on the init deadline until now: it takes up the token's end.
    socket.rearm.notify_one();
    // Nothing for the connection's data: every operation's own data carries the
    // principal and its loaders, read afresh when it is admitted (`SocketExecutor`), so
    // copies here would only cost an idle socket memory.
    Ok(Data::default())
}

/// The tenant's allowedIpRanges for this socket's client (refusals are recorded).
async fn check_address(app: &App, socket: &SocketState, p: &Principal) -> Result<(), AppError> {
    match &socket.client {
        Some(client) => crate::auth::check_client_address(app, p, client, None).await,
        None => Ok(()),
    }
}

/// When a principal's credential stops working on its own (API keys without expiry: never,
/// for practical purposes).
/// The `Authorization` entry of a `connection_init` or `ping` payload.
fn authorization(payload: &serde_json::Value) -> Option<&str> {
    payload
        .get("Authorization")
        .or_else(|| payload.get("authorization"))
        .and_then(|v| v.as_str())
}

pub(super) fn expiry(app: &App, p: &Principal) -> chrono::DateTime<chrono::Utc> {
    p.token.as_ref().map_or_else(
        || app.clock.now() + chrono::Duration::days(3650),
        |t| t.expires_at,
    )
}

pub(super) fn actor_key(p: &Principal) -> String {
    match p.actor {
        crate::auth::Actor::User(u) => format!("user:{u}"),
        crate::auth::Actor::ApiKey(k) => format!("key:{k}"),
    }
}

/// graphql-transport-ws `ping`: a payload with `Authorization` swaps the socket's
/// credential for a fresh one of the same principal and rights, so a client refreshes
/// its session without reconnecting. Other pings are answered with an empty pong.
pub(super) async fn refresh_on_ping(
    app: Arc<App>,
    socket: Arc<SocketState>,
    payload: Option<serde_json::Value>,
) -> async_graphql::Result<Option<serde_json::Value>> {
    let Some(header) = payload.as_ref().and_then(authorization) else {
        return Ok(None);
    };
    let Some(accepted) = socket.accepted() else {
        // Before the acknowledgement there is nothing to refresh.
        return Ok(None);
    };
    let refuse =
        |why: String| async_graphql::Error::new(format!("{UNAUTHENTICATED_REASON}: {why}"));
    let bearer = crate::auth::bearer_from_header(header)
        .map_err(|e| refuse(format!("TOKEN_INVALID: {}", e.message())))?
        .to_owned();
    let p = match crate::auth::authenticate(&app, &bearer).await {
        Ok(p) => p,
        Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Forbidden) => {
            return Err(refuse(refused_reason(&e)));
        }
        // The database did not answer: the socket keeps its current credential.
        Err(_) => {
            return Ok(Some(serde_json::json!({
                "credentials": "UNCHANGED",
                "retryAfterSeconds": crate::error::RETRY_AFTER_SECONDS,
            })));
        }
    };
    if let Err(e) = check_address(&app, &socket, &p).await {
        return Err(async_graphql::Error::new(format!(
            "{FORBIDDEN_REASON}: {}",
            refused_reason(&e)
        )));
    }
    if actor_key(&p) != accepted.actor || Rights::of(&p) != accepted.rights {
        return Err(async_graphql::Error::new(format!(
            "{FORBIDDEN_REASON}: another principal or other rights; reconnect with this token"
        )));
    }
    let expires_at = expiry(&app, &p);
    if let Some(a) = socket
        .accepted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        a.bearer = bearer;
        a.expires_at = expires_at;
    }
    socket.rearm.notify_one();
    Ok(Some(serde_json::json!({
        "credentials": "ACCEPTED",
        "expiresAt": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })))
}
