//! GraphQL over HTTP (`POST`/`GET /graphql`); the websocket transport is in `socket.rs`.

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{BatchRequest, BatchResponse, Request as GqlRequest, Value};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use super::AppState;
use super::caller::Caller;
use crate::error::{AppError, ErrorCode};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

fn wants_graphql_response_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(GRAPHQL_RESPONSE_JSON))
}

/// Adds `requestId` to every error, and a code to errors async-graphql raised itself
/// (parse, validation, limits, argument coercion: all caused by the request).
pub(super) fn finish_errors(resp: &mut async_graphql::Response, request_id: &str) {
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
            request_error = is_request_error(r);
            unavailable = failed_for_outage(r);
        }
        BatchResponse::Batch(rs) => {
            for r in rs.iter_mut() {
                finish_errors(r, request_id);
            }
        }
    }
    let refused_secs = match &batch {
        BatchResponse::Single(r) => refused_for_rate(r),
        BatchResponse::Batch(_) => None,
    };
    let status = if unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else if refused_secs.is_some() {
        StatusCode::TOO_MANY_REQUESTS
    } else if media_graphql && request_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    // A request error (the document did not parse or validate, or a limit refused it)
    // carries no `data` entry at all: execution never began (GraphQL spec, "Response";
    // GraphQL over HTTP, application/graphql-response+json).
    let body = match &batch {
        BatchResponse::Single(r) => serde_json::to_vec(&Wire(r)),
        BatchResponse::Batch(rs) => serde_json::to_vec(&rs.iter().map(Wire).collect::<Vec<_>>()),
    };
    let body = match body {
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
    if let Some(secs) = refused_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Whether the response answers a request that never executed: no data and only errors
/// without a path (parse, validation and document-limit errors). A field error that
/// nulled the whole result has a path: execution began, so `data: null` stays.
/// A response as sent: a request error without `data`; any other written straight from
/// async-graphql's value tree, not through a `serde_json::Value` copy of it.
struct Wire<'a>(&'a async_graphql::Response);

impl serde::Serialize for Wire<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !is_request_error(self.0) {
            return self.0.serialize(s);
        }
        let mut v = serde_json::to_value(self.0).map_err(serde::ser::Error::custom)?;
        if let Some(map) = v.as_object_mut() {
            map.remove("data");
        }
        v.serialize(s)
    }
}

fn is_request_error(r: &async_graphql::Response) -> bool {
    r.data == Value::Null && r.is_err() && r.errors.iter().all(|e| e.path.is_empty())
}

pub(super) fn retry_after() -> HeaderValue {
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
    all_unavailable && no_data(r)
}

/// Whether no field produced data (`data` null, or every root field null).
fn no_data(r: &async_graphql::Response) -> bool {
    match &r.data {
        Value::Null => true,
        Value::Object(fields) => fields.values().all(|v| *v == Value::Null),
        _ => false,
    }
}

/// 429 `RATE_LIMITED` with `Retry-After`, the IETF `RateLimit-*` headers and
/// `extensions.retryAfterSeconds`.
pub(super) fn rate_limited(refusal: &crate::auth::limits::Refusal, request_id: &str) -> Response {
    let secs = refusal.limited.retry_after_secs();
    let mut resp = app_error_response(StatusCode::TOO_MANY_REQUESTS, refusal.error(), request_id);
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert("ratelimit-limit", HeaderValue::from(refusal.quota.burst));
    h.insert("ratelimit-remaining", HeaderValue::from(0));
    h.insert("ratelimit-reset", HeaderValue::from(secs));
    if let Ok(v) = HeaderValue::from_str(&refusal.quota.policy()) {
        h.insert("ratelimit-policy", v);
    }
    resp
}

/// The `RateLimit-*` headers of an admitted request: the tightest budget that applied.
pub(super) fn add_headroom(resp: &mut Response, headroom: &crate::auth::limits::Headroom) {
    if headroom.policies.is_empty() {
        return;
    }
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(headroom.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(headroom.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(headroom.reset.as_millis().div_ceil(1000) as u64),
    );
    let policies: Vec<String> = headroom.policies.iter().map(|q| q.policy()).collect();
    if let Ok(v) = HeaderValue::from_str(&policies.join(", ")) {
        h.insert("ratelimit-policy", v);
    }
}

/// When every error of a response without data is `RATE_LIMITED` (an expensive
/// operation or the query-cost budget refused it): the longest `retryAfterSeconds`.
fn refused_for_rate(r: &async_graphql::Response) -> Option<u64> {
    if !no_data(r) || r.errors.is_empty() {
        return None;
    }
    let mut longest = 1;
    for e in &r.errors {
        let ext = e.extensions.as_ref()?;
        if ext.get("code") != Some(&Value::from(ErrorCode::RateLimited.as_str())) {
            return None;
        }
        if let Some(Value::Number(n)) = ext.get("retryAfterSeconds") {
            longest = longest.max(n.as_u64().unwrap_or(1));
        }
    }
    Some(longest)
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
    caller: Caller,
    headers: &HeaderMap,
) -> Response {
    let Caller {
        principal,
        client,
        request_id,
        ..
    } = caller;
    let request_id = &request_id;
    let media_graphql = wants_graphql_response_json(headers);
    // Per principal (anonymous callers: per address) and per tenant, shared across
    // replicas.
    // A batch counts each of its operations.
    let operations = match &batch {
        BatchRequest::Single(_) => 1,
        BatchRequest::Batch(rs) => u64::try_from(rs.len()).unwrap_or(u64::MAX),
    };
    let headroom = match crate::auth::limits::check_request(
        &state.app,
        principal.as_ref(),
        client.ip,
        operations,
    )
    .await
    {
        Ok(h) => h,
        Err(refusal) => return rate_limited(&refusal, &request_id.0),
    };
    let limits = &state.app.config.graphql;
    if let BatchRequest::Batch(rs) = &batch {
        if rs.len() > limits.max_batch {
            return app_error_response(
                StatusCode::BAD_REQUEST,
                AppError::bad_input(
                    "batch",
                    format!(
                        "a batch holds at most {} operations; this one has {}",
                        limits.max_batch,
                        rs.len()
                    ),
                )
                .with_detail("limit", "maxBatch"),
                &request_id.0,
            );
        }
    }
    // One set of denials and one complexity budget for the whole HTTP request, batched
    // operations included.
    let denials = Arc::new(crate::graphql::guards::DenialsSeen::default());
    let budget = Arc::new(crate::graphql::limits::SharedBudget::new(
        limits.max_complexity,
    ));
    let attach = |r: GqlRequest| {
        let r = r
            .data(request_id.clone())
            .data(client.clone())
            .data(denials.clone())
            .data(budget.clone());
        match &principal {
            Some(p) => r
                .data(crate::graphql::loaders::Loaders::for_principal(
                    &state.app.db,
                    &state.app.clock,
                    p,
                ))
                .data(p.clone()),
            None => r,
        }
    };
    // Document limits before async-graphql sees the document (its pre-validation walk
    // follows fragment spreads as written, exponential in a crafted document).
    let document_limits = crate::graphql::limits::DocumentLimits::from_config(limits);
    let introspection = limits.introspection.allows(principal.is_some());
    let run = |r: GqlRequest| {
        let r = if !introspection {
            r.disable_introspection()
        } else {
            r
        };
        let schema = if principal.is_some() {
            state.schema.clone()
        } else {
            state.anonymous_schema.clone()
        };
        let principal = principal.as_ref();
        let attach = &attach;
        async move {
            // A persisted document is looked up (and a tenant that runs trusted documents
            // only is held to them) before the limits measure it.
            let r = match crate::graphql::documents::resolve(&state.app, principal, r).await {
                Ok(r) => r,
                Err(e) => {
                    return async_graphql::Response::from_errors(vec![
                        crate::graphql::errors::unplaced(e),
                    ]);
                }
            };
            match document_limits.admit(r).map(attach) {
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
    let mut resp = respond(resp, media_graphql, &request_id.0);
    add_headroom(&mut resp, &headroom);
    resp
}

/// Root fields a client may call with a stale `Authorization` header: they exist to get
/// a new credential, so a refused one is ignored for them (the request runs anonymous).
const CREDENTIAL_FREE: [&str; 6] = [
    "login",
    "refreshSession",
    "setPassword",
    "requestPasswordReset",
    "confirmEmailChange",
    "__typename",
];

/// Whether every operation of `batch` is a mutation that only selects
/// [`CREDENTIAL_FREE`] root fields.
fn only_sign_in(batch: &BatchRequest) -> bool {
    let one = |req: &GqlRequest| {
        chosen_operation(req, |op| {
            op.ty == OperationType::Mutation
                && op.selection_set.node.items.iter().all(|s| match &s.node {
                    async_graphql::parser::types::Selection::Field(f) => {
                        CREDENTIAL_FREE.contains(&f.node.name.node.as_str())
                    }
                    _ => false,
                })
        })
        .unwrap_or(false)
    };
    match batch {
        BatchRequest::Single(r) => one(r),
        BatchRequest::Batch(rs) => !rs.is_empty() && rs.iter().all(one),
    }
}

/// `POST /graphql` with an `application/json` body (single or batched).
pub async fn post_handler(
    State(state): State<AppState>,
    lenient: super::caller::LenientCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let super::caller::LenientCaller { caller, refused } = lenient;
    let request_id = &caller.request_id;
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
    if let Some(e) = refused {
        if !only_sign_in(&batch) {
            return super::caller::refusal(e, request_id);
        }
    }
    execute(&state, batch, caller, &headers).await
}

/// `f` of the operation a request would run, if its document parses and names one.
fn chosen_operation<T>(
    req: &GqlRequest,
    f: impl FnOnce(&async_graphql::parser::types::OperationDefinition) -> T,
) -> Option<T> {
    let doc = async_graphql::parser::parse_query(&req.query).ok()?;
    let op = match &doc.operations {
        DocumentOperations::Single(op) => Some(op),
        DocumentOperations::Multiple(ops) => match &req.operation_name {
            Some(name) => ops.get(name.as_str()),
            None if ops.len() == 1 => ops.values().next(),
            None => None,
        },
    }?;
    Some(f(&op.node))
}

/// The operation type a request would run, if its document parses.
fn operation_type(req: &GqlRequest) -> Option<OperationType> {
    chosen_operation(req, |op| op.ty)
}

/// `GET /graphql`: GraphiQL for browsers (`Accept: text/html`), otherwise a query from
/// the URL. Mutations are refused over GET (405), as GET must be safe.
pub async fn get_handler(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let request_id = &caller.request_id;
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
    // A persisted document sent by hash is looked up first: what it would run decides
    // whether GET may run it.
    let req = if req.query.is_empty() && req.extensions.contains_key("persistedQuery") {
        match crate::graphql::documents::resolve(&state.app, caller.principal.as_ref(), req).await {
            Ok(r) => r,
            Err(e) => {
                return respond(
                    BatchResponse::Single(async_graphql::Response::from_errors(vec![
                        crate::graphql::errors::unplaced(e),
                    ])),
                    wants_graphql_response_json(&headers),
                    &request_id.0,
                );
            }
        }
    } else {
        req
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
    execute(&state, BatchRequest::Single(req), caller, &headers).await
}
