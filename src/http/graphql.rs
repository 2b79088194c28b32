//! GraphQL over HTTP (`POST`/`GET /graphql`) and over WebSocket (`/graphql/ws`, both the
//! `graphql-transport-ws` and the legacy `graphql-ws` subprotocols).

use std::net::SocketAddr;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{BatchRequest, BatchResponse, Data, Request as GqlRequest, Value};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::app::AppState;
use crate::error::{AppError, ErrorCode};
use crate::graphql::{ClientInfo, RequestId};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

pub(super) fn client_info(addr: SocketAddr, headers: &HeaderMap) -> ClientInfo {
    ClientInfo {
        ip: addr.ip(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
    }
}

/// Connection-scoped data every websocket operation gets.
fn request_data(request_id: &RequestId, client: ClientInfo) -> Data {
    let mut data = Data::default();
    data.insert(request_id.clone());
    data.insert(client);
    data.insert(Arc::new(crate::rbac::DenialsSeen::default()));
    data
}

fn wants_graphql_response_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(GRAPHQL_RESPONSE_JSON))
}

/// Adds `requestId` to every error, and a code to errors async-graphql raised itself
/// (parse, validation, limits, argument coercion: all caused by the request).
fn finish_errors(resp: &mut async_graphql::Response, request_id: &str) {
    for err in &mut resp.errors {
        let ext = err.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", ErrorCode::BadUserInput.as_str());
        }
        ext.set("requestId", request_id);
    }
}

/// Serializes a batch response with the negotiated media type. Under
/// `application/graphql-response+json`, a request that failed before execution (no
/// `data`) is answered 400, as the GraphQL-over-HTTP spec asks.
fn respond(batch: BatchResponse, media_graphql: bool, request_id: &str) -> Response {
    let mut batch = batch;
    let mut request_error = false;
    let mut unavailable = false;
    match &mut batch {
        BatchResponse::Single(r) => {
            finish_errors(r, request_id);
            request_error = r.data == Value::Null && r.is_err();
            unavailable = failed_for_outage(r);
        }
        BatchResponse::Batch(rs) => {
            for r in rs.iter_mut() {
                finish_errors(r, request_id);
            }
        }
    }
    let status = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else if media_graphql && request_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = match serde_json::to_vec(&batch) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "serializing GraphQL response");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let ct = if media_graphql {
        GRAPHQL_RESPONSE_JSON
    } else {
        "application/json"
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if unavailable {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, retry_after());
    }
    resp
}

fn retry_after() -> HeaderValue {
    HeaderValue::from(crate::error::RETRY_AFTER_SECONDS)
}

/// Whether the whole request failed because the database was unavailable: every error
/// is `UNAVAILABLE` and no field produced data (answered 503 + `Retry-After`).
fn failed_for_outage(r: &async_graphql::Response) -> bool {
    let all_unavailable = !r.errors.is_empty()
        && r.errors.iter().all(|e| {
            e.extensions
                .as_ref()
                .and_then(|x| x.get("code"))
                .is_some_and(|c| *c == Value::from(ErrorCode::Unavailable.as_str()))
        });
    let no_data = match &r.data {
        Value::Null => true,
        Value::Object(fields) => fields.values().all(|v| *v == Value::Null),
        _ => false,
    };
    all_unavailable && no_data
}

/// A GraphQL-shaped error response for requests rejected before execution.
fn request_error(status: StatusCode, code: ErrorCode, message: &str, request_id: &str) -> Response {
    app_error_response(status, AppError::new(code, message), request_id)
}

/// A GraphQL-shaped error response for an [`AppError`] raised before execution.
pub(super) fn app_error_response(status: StatusCode, e: AppError, request_id: &str) -> Response {
    let message = e.message().to_owned();
    let gql: async_graphql::Error = e.into();
    let mut ext = serde_json::to_value(&gql.extensions).unwrap_or_default();
    if let Some(o) = ext.as_object_mut() {
        o.insert("requestId".into(), request_id.into());
    }
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": ext }] });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn execute(
    state: &AppState,
    batch: BatchRequest,
    request_id: &RequestId,
    client: ClientInfo,
    headers: &HeaderMap,
) -> Response {
    let media_graphql = wants_graphql_response_json(headers);
    let principal = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let bearer = v
                .to_str()
                .map_err(|_| AppError::unauthenticated("use Authorization: Bearer <token>"))
                .and_then(crate::auth::bearer_from_header);
            let res = match bearer {
                Ok(b) => crate::auth::authenticate(&state.app, b).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(p) => Some(p),
                Err(e) => {
                    let status = StatusCode::from_u16(e.code().http_status())
                        .unwrap_or(StatusCode::UNAUTHORIZED);
                    let mut resp = app_error_response(status, e, &request_id.0);
                    if status == StatusCode::UNAUTHORIZED {
                        resp.headers_mut()
                            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    }
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        resp.headers_mut()
                            .insert(header::RETRY_AFTER, retry_after());
                    }
                    return resp;
                }
            }
        }
    };
    // One set for the whole HTTP request, batched operations included.
    let denials = Arc::new(crate::rbac::DenialsSeen::default());
    let attach = |r: GqlRequest| {
        let r = r
            .data(request_id.clone())
            .data(client.clone())
            .data(denials.clone());
        match &principal {
            Some(p) => r
                .data(crate::graphql::loaders::Loaders::for_principal(
                    &state.app.db,
                    p,
                ))
                .data(p.clone()),
            None => r,
        }
    };
    // Document limits before async-graphql sees the document (its pre-validation walk
    // follows fragment spreads as written, exponential in a crafted document).
    let limits = crate::graphql::limits::DocumentLimits::from_config(&state.app.config.graphql);
    let run = |r: GqlRequest| {
        let admitted = limits.admit(r).map(&attach);
        let schema = state.schema.clone();
        async move {
            match admitted {
                Ok(r) => schema.execute(r).await,
                Err(e) => async_graphql::Response::from_errors(vec![e]),
            }
        }
    };
    let resp = match batch {
        BatchRequest::Single(r) => BatchResponse::Single(run(r).await),
        BatchRequest::Batch(rs) => {
            BatchResponse::Batch(futures_util::future::join_all(rs.into_iter().map(run)).await)
        }
    };
    respond(resp, media_graphql, &request_id.0)
}

/// `POST /graphql` with an `application/json` body (single or batched).
pub async fn post_handler(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/json") || ct.starts_with(GRAPHQL_RESPONSE_JSON)
        });
    if !is_json {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "send the request as application/json",
            &request_id.0,
        );
    }
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &format!("the body is not a GraphQL request: {e}"),
                &request_id.0,
            );
        }
    };
    execute(
        &state,
        batch,
        &request_id,
        client_info(addr, &headers),
        &headers,
    )
    .await
}

/// The operation type a request would run, if its document parses.
fn operation_type(req: &GqlRequest) -> Option<OperationType> {
    let doc = async_graphql::parser::parse_query(&req.query).ok()?;
    match doc.operations {
        DocumentOperations::Single(op) => Some(op.node.ty),
        DocumentOperations::Multiple(ops) => match &req.operation_name {
            Some(name) => ops.get(name.as_str()).map(|op| op.node.ty),
            None if ops.len() == 1 => ops.values().next().map(|op| op.node.ty),
            None => None,
        },
    }
}

/// `GET /graphql`: GraphiQL for browsers (`Accept: text/html`), otherwise a query from
/// the URL. Mutations are refused over GET (405), as GET must be safe.
pub async fn get_handler(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let query = uri.query().unwrap_or("");
    if wants_html && query.is_empty() {
        return super::graphiql::page();
    }
    let req = match async_graphql::http::parse_query_string(query) {
        // The parser reads `operation_name`; GraphQL over HTTP names it `operationName`.
        Ok(r) if r.operation_name.is_none() => {
            match url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "operationName")
            {
                Some((_, name)) => r.operation_name(name.into_owned()),
                None => r,
            }
        }
        Ok(r) => r,
        Err(e) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadUserInput,
                &format!("invalid GraphQL GET request: {e}"),
                &request_id.0,
            );
        }
    };
    if matches!(
        operation_type(&req),
        Some(OperationType::Mutation | OperationType::Subscription)
    ) {
        let mut resp = request_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadUserInput,
            "only queries may be sent with GET; use POST for mutations",
            &request_id.0,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    execute(
        &state,
        BatchRequest::Single(req),
        &request_id,
        client_info(addr, &headers),
        &headers,
    )
    .await
}

/// `GET /graphql/ws`: upgrades to a GraphQL websocket.
pub async fn ws_handler(
    State(state): State<AppState>,
    Extension(request_id): Extension<RequestId>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client = client_info(addr, &headers);
    let tracker = state.app.connections.clone();
    let token = tracker.token();
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("graphql.ws", request_id = %request_id.0);
            async move {
                let _token = token;
                serve_socket(state, socket, protocol, request_id, client).await;
            }
            .instrument(span)
        })
}

/// The bearer credential a socket was accepted with, and when it expires.
type SocketCredential = Arc<Mutex<Option<(String, chrono::DateTime<chrono::Utc>)>>>;

/// Close code sent when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for missing, invalid, expired or revoked credentials.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code for a `connection_init` that cannot be checked now (the database is
/// unavailable): "try again later", which graphql-ws clients retry.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
const UNAUTHENTICATED_REASON: &str = "unauthenticated";
const UNAVAILABLE_REASON: &str = "unavailable";

/// Ends the socket (via `ended`) when the accepted credential expires on the app clock
/// (checked every second) or stops authenticating: revoked, user disabled, tenant
/// suspended (re-checked every 5 s).
async fn watch_credentials(
    app: Arc<crate::app::App>,
    auth: SocketCredential,
    ended: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let current = auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some((bearer, exp)) = current else {
            continue;
        };
        if app.clock.now() > exp {
            ended.cancel();
            return;
        }
        if n % 5 == 0 {
            match crate::auth::authenticate(&app, &bearer).await {
                Ok(_) => {}
                // Only a verdict on the credential ends the socket. A database that does
                // not answer says nothing about it: keep the socket and check again on
                // the next round (clients treat 4401 as final and never reconnect).
                Err(e) if matches!(e.code(), ErrorCode::Unauthenticated | ErrorCode::Forbidden) => {
                    ended.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        code = e.code().as_str(),
                        "websocket credential check could not run; keeping the socket"
                    );
                }
            }
        }
    }
}

async fn serve_socket(
    state: AppState,
    socket: WebSocket,
    protocol: GraphQLProtocol,
    request_id: RequestId,
    client: ClientInfo,
) {
    let (mut sink, stream) = socket.split();
    let app = state.app.clone();
    let shutdown = app.shutdown.clone();
    // The credential accepted at connection_init; re-checked while the socket lives.
    let auth: SocketCredential = Arc::default();
    let ended = CancellationToken::new();
    let watcher = tokio::spawn(watch_credentials(app.clone(), auth.clone(), ended.clone()));
    let stop = {
        let (shutdown, ended) = (shutdown.clone(), ended.clone());
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = ended.cancelled() => {}
            }
        }
    };
    let input = stream.take_until(Box::pin(stop));
    let data = request_data(&request_id, client);
    let init_app = app.clone();
    let init_auth = auth.clone();
    {
        // graphql-transport-ws closes a refused init with 1002; we say 4401 (Unauthorized)
        // for a bad credential and 1013 (try again later) when it could not be checked.
        let sink = (&mut sink).with(|m: Message| {
            futures_util::future::ready(Ok::<_, axum::Error>(match m {
                Message::Close(Some(f))
                    if f.code == 1002 && f.reason.starts_with(UNAUTHENTICATED_REASON) =>
                {
                    Message::Close(Some(CloseFrame {
                        code: CLOSE_UNAUTHORIZED,
                        reason: f.reason,
                    }))
                }
                Message::Close(Some(f))
                    if f.code == 1002 && f.reason.starts_with(UNAVAILABLE_REASON) =>
                {
                    Message::Close(Some(CloseFrame {
                        code: CLOSE_TRY_AGAIN_LATER,
                        reason: f.reason,
                    }))
                }
                other => other,
            }))
        });
        GraphQLWebSocket::new_with_pair(sink, input, state.schema.clone(), protocol)
            .with_data(data)
            .on_connection_init(move |payload| async move {
                let header = payload
                    .get("Authorization")
                    .or_else(|| payload.get("authorization"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                let refuse = |why: &str| {
                    async_graphql::Error::new(format!("{UNAUTHENTICATED_REASON}: {why}"))
                };
                let header = header.ok_or_else(|| {
                    refuse("send {\"Authorization\": \"Bearer <token>\"} in connection_init")
                })?;
                let bearer = crate::auth::bearer_from_header(&header)
                    .map_err(|e| refuse(e.message()))?
                    .to_owned();
                let p = crate::auth::authenticate(&init_app, &bearer)
                    .await
                    .map_err(|e| match e.code() {
                        ErrorCode::Unauthenticated | ErrorCode::Forbidden => refuse(e.message()),
                        // A close reason holds at most 123 bytes: keep it short.
                        _ => async_graphql::Error::new(format!(
                            "{UNAVAILABLE_REASON}: database unavailable; reconnect in {} s",
                            crate::error::RETRY_AFTER_SECONDS
                        )),
                    })?;
                let exp = p.token.as_ref().map_or_else(
                    || init_app.clock.now() + chrono::Duration::days(3650),
                    |t| t.expires_at,
                );
                *init_auth
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((bearer, exp));
                let mut d = Data::default();
                d.insert(crate::graphql::loaders::Loaders::for_principal(
                    &init_app.db,
                    &p,
                ));
                d.insert(p);
                Ok(d)
            })
            .serve()
            .await;
    }
    watcher.abort();
    let close = if shutdown.is_cancelled() {
        Some((CLOSE_GOING_AWAY, "server shutting down"))
    } else if ended.is_cancelled() {
        Some((CLOSE_UNAUTHORIZED, "credentials expired or revoked"))
    } else {
        None
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
