//! Authentication at the edge: the one extractor every route that serves a caller uses
//! (GraphQL over HTTP, the websocket upgrade, `/audit/export`). It reads the
//! `Authorization` header once, resolves the principal (one joined query behind
//! `auth::authenticate`) and turns a refused credential into the HTTP answer: 401 with
//! `WWW-Authenticate: Bearer`, 403 for a suspended tenant, 503 with `Retry-After` when the
//! database did not answer. A credential that is present and invalid never becomes an
//! anonymous request.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::AppState;
use crate::auth::Principal;
use crate::config::ForwardedHeader;
use crate::error::AppError;
use crate::graphql::{ClientInfo, RequestId};
use crate::net::Cidr;

/// Who calls and from where, resolved before the handler runs.
pub struct Caller {
    /// The principal, or `None` when the request carried no `Authorization` header.
    pub principal: Option<Principal>,
    /// Client address and user agent (for audit records and per-address limits).
    pub client: ClientInfo,
    /// The request id assigned by the request-context middleware.
    pub request_id: RequestId,
    /// The bearer credential the principal was resolved from (a websocket re-checks it).
    pub bearer: Option<String>,
}

/// Client address and user agent of a request. The address is the TCP peer's, unless the
/// peer is a trusted proxy: then the hops of the one header the proxies append to
/// (`http.forwarded_header`: `X-Forwarded-For` by default, or `Forwarded`) are walked
/// from the right, and the client is the first hop that is not itself a trusted proxy.
/// A client can only add hops on the left, so what it writes never decides: the walk
/// stops at the first untrusted hop, which a trusted proxy wrote. A hop that does not
/// parse (or an obfuscated `Forwarded` node) ends the walk at the last trusted hop read.
pub fn client_info(
    addr: SocketAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    header: ForwardedHeader,
) -> ClientInfo {
    ClientInfo {
        ip: client_ip(addr.ip(), headers, trusted, header),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
    }
}

fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[Cidr],
    which: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Every value of the header, in order, then each comma-separated element.
    let values: Vec<&str> = headers
        .get_all(which.name())
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    let mut client = peer;
    for element in values.iter().flat_map(|v| v.split(',')).rev() {
        let Some(hop) = parse_hop(element, which) else {
            break;
        };
        client = hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// One element of the header: `192.0.2.60` (X-Forwarded-For) or `for=192.0.2.60;proto=https`
/// / `for="[2001:db8::1]:4711"` (Forwarded).
fn parse_hop(element: &str, which: ForwardedHeader) -> Option<IpAddr> {
    let element = element.trim();
    let raw = match which {
        ForwardedHeader::XForwardedFor => element,
        ForwardedHeader::Forwarded => element.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })?,
    };
    parse_node(raw.trim_matches('"')).map(crate::net::canonical)
}

/// `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// The HTTP answer to an error before GraphQL runs: a refused credential (401 with
/// `WWW-Authenticate`), a forbidden caller, or an outage (503 with `Retry-After`).
pub fn refusal(e: AppError, request_id: &RequestId) -> Response {
    let retry_after_secs = (e.code() == crate::error::ErrorCode::RateLimited)
        .then(|| {
            e.detail("retryAfterSeconds")
                .and_then(serde_json::Value::as_u64)
        })
        .flatten();
    let status = StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut resp = super::graphql::app_error_response(status, e, &request_id.0);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, super::graphql::retry_after());
    }
    if let Some(secs) = retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A [`Caller`] whose refused credential (401) does not end the request yet: `POST
/// /graphql` still serves the sign-in mutations (`login`, `refreshSession`,
/// `setPassword`) to a client that holds a stale token, and refuses everything else.
pub struct LenientCaller {
    /// The caller (anonymous when the credential was refused).
    pub caller: Caller,
    /// The refusal of the credential the request carried, if it was refused.
    pub refused: Option<AppError>,
}

impl FromRequestParts<AppState> for LenientCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let (caller, refused) = resolve(parts, state).await?;
        Ok(Self { caller, refused })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match resolve(parts, state).await? {
            (caller, None) => Ok(caller),
            (caller, Some(e)) => Err(refusal(e, &caller.request_id)),
        }
    }
}

/// Resolves the caller; a refused credential (401) comes back beside an anonymous caller,
/// anything else that stops the request (403, 503) as the response.
async fn resolve(
    parts: &mut Parts,
    state: &AppState,
) -> Result<(Caller, Option<AppError>), Response> {
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(|| RequestId(uuid::Uuid::now_v7().to_string()));
    // The server is always run with connect info (`App::serve`); without it there is
    // no address for audit records and per-address limits, so refuse.
    let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
        return Err(refusal(
            AppError::internal(anyhow::anyhow!("the router runs without connect info")),
            &request_id,
        ));
    };
    let client = client_info(
        *addr,
        &parts.headers,
        &state.app.config.http.trusted_proxies,
        state.app.config.http.forwarded_header,
    );
    let anonymous = |client, request_id| Caller {
        principal: None,
        client,
        request_id,
        bearer: None,
    };
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok((anonymous(client, request_id), None));
    };
    let bearer = match value
        .to_str()
        .map_err(|_| AppError::unauthenticated("use Authorization: Bearer <token>"))
        .and_then(crate::auth::bearer_from_header)
    {
        Ok(b) => b,
        Err(e) => return Ok((anonymous(client, request_id), Some(e))),
    };
    match crate::auth::authenticate(&state.app, bearer).await {
        Ok(principal) => {
            // The tenant's allowedIpRanges hold for every use of the credential.
            if let Err(e) = crate::auth::check_client_address(
                &state.app,
                &principal,
                &client,
                Some(&request_id),
            )
            .await
            {
                return Err(refusal(e, &request_id));
            }
            crate::auth::note_activity(&state.app, &principal).await;
            Ok((
                Caller {
                    principal: Some(principal),
                    client,
                    request_id,
                    bearer: Some(bearer.to_owned()),
                },
                None,
            ))
        }
        Err(e) if e.code() == crate::error::ErrorCode::Unauthenticated => {
            // Refused credentials count against the address's budget, so guessing keys
            // or replaying dead tokens is as limited as any anonymous request.
            if let Err(refusal) =
                crate::auth::limits::check_request(&state.app, None, client.ip, 1).await
            {
                return Err(super::graphql::rate_limited(&refusal, &request_id.0));
            }
            Ok((anonymous(client, request_id), Some(e)))
        }
        Err(e) => Err(refusal(e, &request_id)),
    }
}
