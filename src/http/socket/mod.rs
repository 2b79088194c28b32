//! GraphQL over WebSocket (`/graphql/ws`): the `graphql-transport-ws` protocol and the
//! legacy `graphql-ws` one, with the spec's close codes and this server's limits.
//!
//! async-graphql runs the protocol; around it this module keeps what the spec and an
//! attacker ask for: the client's messages pass a gate (malformed → 4400, `subscribe`
//! before the connection is acknowledged → 4401, an id already running → 4409), a socket
//! that never sends `connection_init` is closed with 4408, and every operation goes
//! through [`SocketExecutor`], which applies the document limits, re-resolves the
//! caller's rights from the database (a demoted user gets no more than their new role,
//! and the socket is closed with 4403 when the rights it was opened with changed), and
//! holds a slot per socket and per principal while it runs.
//!
//! Credentials: a socket ends (4401, the reason naming `TOKEN_EXPIRED`, `TOKEN_REVOKED` or
//! `TOKEN_INVALID` first) when its token expires — with the same leeway HTTP allows — or
//! is revoked. A graphql-transport-ws client keeps a socket past its token's life by
//! sending `{"type":"ping","payload":{"Authorization":"Bearer <fresh token>"}}` before it
//! expires: the pong's payload says `{"credentials":"ACCEPTED","expiresAt":…}`. The fresh
//! token must be the same principal with the same rights (otherwise 4403: reconnect).

use std::collections::HashSet;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::http::{ClientMessage, WebSocketProtocols, WsMessage};
use async_graphql::{Data, Request as GqlRequest, ServerError};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::AppState;
use crate::error::{AppError, ErrorCode};
use crate::graphql::limits::DocumentLimits;
use crate::graphql::{ClientInfo, RequestId};
use crate::slots::{KeyedSlots, Slot};

mod credentials;
use credentials::{
    Accepted, FORBIDDEN_REASON, Rights, UNAUTHENTICATED_REASON, UNAVAILABLE_REASON, accept,
    refresh_on_ping, refused_reason, watch_credentials,
};

/// Close code sent when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a `connection_init` that cannot be checked now (the database is
/// unavailable): "try again later", which graphql-ws clients retry.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// A message larger than the limit (the HTTP body limit).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// A message that is not a protocol message.
pub const CLOSE_BAD_REQUEST: u16 = 4400;
/// Missing, invalid, expired or revoked credentials, or `subscribe` before the
/// connection was acknowledged.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// The caller's rights changed since the socket was opened: reconnect to get the new ones.
pub const CLOSE_FORBIDDEN: u16 = 4403;
/// No `connection_init` within the configured time.
pub const CLOSE_INIT_TIMEOUT: u16 = 4408;
/// A `subscribe` with the id of an operation that is still running.
pub const CLOSE_DUPLICATE_ID: u16 = 4409;
/// One socket's state, shared by the gate, the executor and the watchers.
#[derive(Default)]
struct SocketState {
    init_received: std::sync::atomic::AtomicBool,
    accepted: Mutex<Option<Accepted>>,
    /// Ids of operations started and not yet completed.
    running: Mutex<HashSet<String>>,
    operations: KeyedSlots<()>,
    /// Wakes the credential watcher when the accepted credential changes (accepted at
    /// `connection_init`, refreshed by `ping`), so it sleeps on the right expiry.
    rearm: tokio::sync::Notify,
    /// The close frame to send when the socket ends on this server's initiative.
    close: Mutex<Option<(u16, String)>>,
    /// Cancelled when the socket is to end: by this server's decision ([`Self::close`])
    /// or, as a child of the app's shutdown token, at shutdown. One token, so a socket
    /// woken for an event polls one cancellation future of its own (the shared shutdown
    /// token's lock and waiter list were polled by every socket at every event).
    ended: CancellationToken,
    /// The client's address and agent (the tenant's allowedIpRanges are checked
    /// against it at `connection_init`, on refresh and on every re-check).
    client: Option<ClientInfo>,
}

impl SocketState {
    fn accepted(&self) -> Option<Accepted> {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends the socket with `code` (the first reason given wins).
    fn close(&self, code: u16, reason: impl Into<String>) {
        let mut c = self.close.lock().unwrap_or_else(PoisonError::into_inner);
        if c.is_none() {
            *c = Some((code, reason.into()));
        }
        drop(c);
        self.ended.cancel();
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks one client message against the protocol; `None` drops it (the socket is
    /// then closing).
    fn gate(&self, bytes: &[u8]) -> Option<serde_json::Result<ClientMessage>> {
        let msg = match ClientMessage::from_bytes(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.close(CLOSE_BAD_REQUEST, "Invalid message received");
                return None;
            }
        };
        match &msg {
            ClientMessage::ConnectionInit { .. } => {
                self.init_received
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            ClientMessage::Start { id, .. } => {
                if self.accepted().is_none() {
                    self.close(CLOSE_UNAUTHORIZED, "Unauthorized");
                    return None;
                }
                if !self.running().insert(id.clone()) {
                    // A close reason holds at most 123 bytes.
                    let id: String = id.chars().take(64).collect();
                    self.close(
                        CLOSE_DUPLICATE_ID,
                        format!("Subscriber for {id} already exists"),
                    );
                    return None;
                }
            }
            ClientMessage::Stop { id } => {
                self.running().remove(id);
            }
            _ => {}
        }
        Some(Ok(msg))
    }

    /// Notes operations the server completed, so their ids may be used again.
    fn saw_outgoing(&self, text: &str) {
        if text.starts_with(r#"{"type":"complete""#) {
            #[derive(serde::Deserialize)]
            struct Complete {
                id: String,
            }
            if let Ok(c) = serde_json::from_str::<Complete>(text) {
                self.running().remove(&c.id);
            }
        }
    }
}

/// Runs each websocket operation within the socket's limits and the caller's current
/// rights.
#[derive(Clone)]
struct SocketExecutor {
    state: AppState,
    socket: Arc<SocketState>,
    limits: DocumentLimits,
    request_id: Arc<str>,
}

/// Slots an operation holds while it runs.
struct Held {
    _socket: Slot<()>,
    _principal: Slot<String>,
}

fn server_error(e: AppError) -> ServerError {
    crate::graphql::errors::unplaced(e)
}

impl SocketExecutor {
    /// Checks the document, re-resolves the caller and takes the operation's slots.
    async fn admit(&self, request: GqlRequest) -> Result<(GqlRequest, Held), ServerError> {
        let app = &self.state.app;
        let request = if app.config.graphql.introspection.allows(true) {
            request
        } else {
            request.disable_introspection()
        };
        let Some(accepted) = self.socket.accepted() else {
            return Err(server_error(AppError::unauthenticated(
                "send connection_init with credentials first",
            )));
        };
        let p = match crate::auth::authenticate(app, &accepted.bearer).await {
            Ok(p) => p,
            Err(e) => {
                if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Forbidden) {
                    self.socket.close(CLOSE_UNAUTHORIZED, refused_reason(&e));
                }
                return Err(server_error(e));
            }
        };
        if Rights::of(&p) != accepted.rights {
            self.socket
                .close(CLOSE_FORBIDDEN, "permissions changed; reconnect");
            return Err(server_error(AppError::forbidden(
                "your permissions changed since this socket was opened; reconnect",
            )));
        }
        // Each operation counts as a request against the caller's and its tenant's
        // budgets, and runs a trusted document when its tenant asks for that.
        let ip = self
            .socket
            .client
            .as_ref()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.ip);
        crate::auth::limits::check_request(app, Some(&p), ip, 1)
            .await
            .map_err(|refusal| server_error(refusal.error()))?;
        let request = crate::graphql::documents::resolve(app, Some(&p), request)
            .await
            .map_err(server_error)?;
        let request = self.limits.admit(request)?;
        let limits = &app.config.websocket;
        let Some(socket_slot) = self
            .socket
            .operations
            .try_take(&(), limits.max_subscriptions_per_socket)
        else {
            return Err(server_error(busy(format!(
                "this socket already runs {} operations; complete one first",
                limits.max_subscriptions_per_socket
            ))));
        };
        let Some(principal_slot) = app
            .socket_slots
            .principals
            .try_take(&accepted.actor, limits.max_subscriptions_per_principal)
        else {
            return Err(server_error(busy(format!(
                "you already run {} operations over websockets; complete one first",
                limits.max_subscriptions_per_principal
            ))));
        };
        let request = request
            .data(crate::graphql::loaders::Loaders::for_principal(
                &app.db, &app.clock, &p,
            ))
            .data(p);
        Ok((
            request,
            Held {
                _socket: socket_slot,
                _principal: principal_slot,
            },
        ))
    }
}

fn busy(message: String) -> AppError {
    AppError::new(ErrorCode::RateLimited, message)
}

impl async_graphql::Executor for SocketExecutor {
    fn execute(&self, request: GqlRequest) -> impl Future<Output = async_graphql::Response> + Send {
        let this = self.clone();
        async move {
            this.execute_stream(request, None)
                .next()
                .await
                .unwrap_or_else(|| async_graphql::Response::new(async_graphql::Value::Null))
        }
    }

    fn execute_stream(
        &self,
        request: GqlRequest,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        let this = self.clone();
        Box::pin(Operation {
            // Boxed, so the admission's state is freed once it is done rather than sized
            // into the stream an idle subscription keeps.
            phase: Phase::Admitting(Box::pin(async move {
                let admitted = this.admit(request).await;
                (this, admitted)
            })),
            session_data,
            request_id: self.request_id.clone(),
        })
    }
}

/// One websocket operation as a stream: admitted first ([`SocketExecutor::admit`]), then
/// async-graphql's execution, with every response's errors given their code and the
/// request id. Written out rather than composed from `once`, `flat_map` and two `map`s:
/// a subscription's every event passed through each of those layers, for each
/// subscriber.
struct Operation {
    phase: Phase,
    session_data: Option<Arc<Data>>,
    request_id: Arc<str>,
}

type Admission = (SocketExecutor, Result<(GqlRequest, Held), ServerError>);

enum Phase {
    Admitting(futures_util::future::BoxFuture<'static, Admission>),
    /// The slots are given back when the operation's stream ends.
    Running {
        stream: BoxStream<'static, async_graphql::Response>,
        _held: Held,
    },
    Done,
}

impl futures_util::Stream for Operation {
    type Item = async_graphql::Response;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            let mut response = match &mut this.phase {
                Phase::Admitting(admission) => {
                    let (executor, admitted) = std::task::ready!(admission.as_mut().poll(cx));
                    match admitted {
                        Ok((request, held)) => {
                            let stream = executor.state.schema.execute_stream_with_session_data(
                                request,
                                this.session_data.take().unwrap_or_default(),
                            );
                            this.phase = Phase::Running {
                                stream,
                                _held: held,
                            };
                            continue;
                        }
                        Err(e) => {
                            this.phase = Phase::Done;
                            async_graphql::Response::from_errors(vec![e])
                        }
                    }
                }
                Phase::Running { stream, .. } => {
                    match std::task::ready!(stream.poll_next_unpin(cx)) {
                        Some(r) => r,
                        None => {
                            this.phase = Phase::Done;
                            return Poll::Ready(None);
                        }
                    }
                }
                Phase::Done => return Poll::Ready(None),
            };
            // Errors async-graphql raised itself (validation, limits) get a code, as
            // over HTTP, and every error the request id.
            super::graphql::finish_errors(&mut response, &this.request_id);
            return Poll::Ready(Some(response));
        }
    }
}

/// The GraphQL subprotocol the client asked for, if it is one this server speaks.
fn requested_protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        })
}

/// Write buffer of one websocket: what is written before a flush (messages are flushed
/// one by one anyway).
const SOCKET_BUFFER_BYTES: usize = 1024;

/// Read buffer of one websocket, at first. Clients send small messages
/// (`connection_init`, `subscribe`, `ping`) and it grows for a larger one; tungstenite
/// reserves a frame's whole length on top of what is already buffered, so a 1 KiB start
/// ended at 2 KiB after a `connection_init` with a bearer token, kept for the socket's life.
const SOCKET_READ_BUFFER_BYTES: usize = 256;

/// `GET /graphql/ws`: upgrades to a GraphQL websocket.
pub async fn ws_handler(
    State(state): State<AppState>,
    caller: super::caller::Caller,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let request_id = caller.request_id.clone();
    let Some(protocol) = requested_protocol(&headers) else {
        return super::graphql::app_error_response(
            StatusCode::BAD_REQUEST,
            AppError::bad_input(
                "Sec-WebSocket-Protocol",
                "ask for graphql-transport-ws (or the legacy graphql-ws)",
            ),
            &request_id.0,
        );
    };
    let max = state.app.config.websocket.max_connections_per_address;
    let Some(address_slot) = state
        .app
        .socket_slots
        .addresses
        .try_take(&caller.client.ip, max)
    else {
        return super::graphql::app_error_response(
            StatusCode::TOO_MANY_REQUESTS,
            busy(format!(
                "{max} websockets are already open from your address; close one first"
            )),
            &request_id.0,
        );
    };
    let client = caller.client;
    // A credential on the upgrade request (non-browser clients can send one) stands for
    // `connection_init` payloads that carry none.
    let edge_bearer = caller.bearer;
    let token = state.app.connections.token();
    // A message is held as parsed JSON (many times its size): no bigger than an HTTP
    // request body, before authentication or not.
    let max_message = state.app.config.http.body_limit_bytes;
    upgrade
        // Small buffers: an idle subscriber should cost kilobytes, not tungstenite's
        // default 128 KiB read + 128 KiB write buffers. Both grow while a large message
        // passes and messages are flushed one by one anyway.
        .read_buffer_size(SOCKET_READ_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("graphql.ws", request_id = %request_id.0);
            async move {
                let _token = token;
                let _address = address_slot;
                serve_socket(state, socket, protocol, request_id, client, edge_bearer).await;
            }
            .instrument(span)
        })
}

/// The frame for a close async-graphql decided on. graphql-transport-ws closes a refused
/// init with 1002; this server says 4401 for a bad credential and 1013 (try again later)
/// when it could not be checked.
fn protocol_close(code: u16, reason: String) -> Message {
    let code = match code {
        1002 if reason.starts_with(UNAUTHENTICATED_REASON) => CLOSE_UNAUTHORIZED,
        1002 if reason.starts_with(UNAVAILABLE_REASON) => CLOSE_TRY_AGAIN_LATER,
        1002 if reason.starts_with(FORBIDDEN_REASON) => CLOSE_FORBIDDEN,
        other => other,
    };
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn serve_socket(
    state: AppState,
    socket: WebSocket,
    protocol: WebSocketProtocols,
    request_id: RequestId,
    client: ClientInfo,
    edge_bearer: Option<String>,
) {
    let _open = crate::metrics::SocketGauge::open(match protocol {
        WebSocketProtocols::GraphQLWS => "graphql-transport-ws",
        WebSocketProtocols::SubscriptionsTransportWS => "graphql-ws",
    });
    let (mut sink, stream) = socket.split();
    let app = state.app.clone();
    let shutdown = app.shutdown.clone();
    let me = Arc::new(SocketState {
        client: Some(client.clone()),
        ended: shutdown.child_token(),
        ..SocketState::default()
    });
    let watcher = tokio::spawn(watch_credentials(app.clone(), me.clone()));
    let stop = me.ended.clone().cancelled_owned();
    let gate = me.clone();
    let reader = me.clone();
    let input = stream
        .take_until(Box::pin(stop))
        .take_while(move |m| {
            if let Err(e) = m {
                // tungstenite refuses a message over the size limit with a capacity error.
                let e = e.to_string();
                if e.contains("Space limit exceeded") || e.contains("too long") {
                    reader.close(CLOSE_TOO_BIG, "Message too big");
                }
            }
            futures_util::future::ready(m.is_ok())
        })
        .filter_map(move |m| {
            let out = match m {
                Ok(Message::Text(t)) => gate.gate(t.as_bytes()),
                Ok(Message::Binary(b)) => gate.gate(&b),
                _ => None,
            };
            futures_util::future::ready(out)
        });
    let executor = SocketExecutor {
        state: state.clone(),
        socket: me.clone(),
        limits: DocumentLimits::from_config(&app.config.graphql),
        request_id: Arc::from(request_id.0.as_str()),
    };
    let mut data = Data::default();
    data.insert(request_id.clone());
    data.insert(client);
    data.insert(Arc::new(crate::graphql::guards::DenialsSeen::default()));
    let (init_app, init_socket) = (app.clone(), me.clone());
    let (ping_app, ping_socket) = (app.clone(), me.clone());
    let protocol_stream =
        async_graphql::http::WebSocket::from_message_stream(executor, Box::pin(input), protocol)
            .connection_data(data)
            .on_connection_init(move |payload| accept(init_app, init_socket, payload, edge_bearer))
            .on_ping(move |_, payload| refresh_on_ping(ping_app, ping_socket, payload));
    futures_util::pin_mut!(protocol_stream);
    let mut closed_by_protocol = false;
    while let Some(msg) = protocol_stream.next().await {
        let out = match msg {
            WsMessage::Text(text) => {
                me.saw_outgoing(&text);
                Message::Text(text.into())
            }
            WsMessage::Close(code, reason) => {
                closed_by_protocol = true;
                protocol_close(code, reason)
            }
        };
        if sink.send(out).await.is_err() {
            break;
        }
    }
    watcher.abort();
    let close = if closed_by_protocol {
        None
    } else if shutdown.is_cancelled() {
        Some((CLOSE_GOING_AWAY, "server shutting down".to_owned()))
    } else {
        me.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    };
    if let Some((code, reason)) = close {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
    let _ = sink.close().await;
    tracing::debug!("websocket closed");
}
