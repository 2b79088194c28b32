//! Single sign-on over HTTP: `GET /auth/oidc/{tenant}/login` sends the browser to the
//! tenant's identity provider; `GET /auth/oidc/callback` finishes the sign-in. With a
//! `returnTo` the browser comes back there with the tokens in the URL fragment
//! (`#access_token=…&refresh_token=…&expires_at=…`, never sent to a server); without
//! one, the callback answers them as JSON. Refusals are JSON errors with a code and a
//! reason. Both count against the caller's address's request budget.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::caller::Caller;
use crate::error::AppError;

/// `?returnTo=` of the login route.
#[derive(Deserialize)]
pub struct LoginParams {
    #[serde(rename = "returnTo")]
    return_to: Option<String>,
}

/// What the provider sends back.
#[derive(Deserialize)]
pub struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn limited(state: &AppState, caller: &Caller) -> Option<Response> {
    crate::auth::limits::check_request(&state.app, None, caller.client.ip, 1)
        .await
        .err()
        .map(|refusal| super::graphql::rate_limited(&refusal, &caller.request_id.0))
}

/// `GET /auth/oidc/{tenant}/login`.
pub async fn login(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
    Query(params): Query<LoginParams>,
) -> Response {
    if let Some(r) = limited(&state, &caller).await {
        return r;
    }
    match crate::sso::begin(&state.app, &tenant, params.return_to.as_deref()).await {
        Ok(started) => {
            let mut r = redirect(&started.location);
            let secure = crate::sso::public_base(&state.app).starts_with("https://");
            let cookie = format!(
                "{}={}; Path=/auth/oidc; Max-Age={}; HttpOnly; SameSite=Lax{}",
                crate::sso::BROWSER_COOKIE,
                started.browser,
                crate::sso::LOGIN_TTL.num_seconds(),
                if secure { "; Secure" } else { "" }
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => super::caller::refusal(e, &caller.request_id),
    }
}

/// The value of the sign-in's browser cookie, if the request carries it.
fn browser_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == crate::sso::BROWSER_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// `GET /auth/oidc/callback`.
pub async fn callback(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Response {
    if let Some(r) = limited(&state, &caller).await {
        return r;
    }
    if let Some(error) = params.error {
        let detail = params.error_description.unwrap_or_default();
        return super::caller::refusal(
            AppError::unauthenticated(format!(
                "the identity provider refused the sign-in: {} {}",
                error.chars().take(100).collect::<String>(),
                detail.chars().take(300).collect::<String>()
            ))
            .with_detail("reason", "SSO_PROVIDER_REFUSED"),
            &caller.request_id,
        );
    }
    let (Some(st), Some(code)) = (params.state, params.code) else {
        return super::caller::refusal(
            AppError::bad_input(
                "code",
                "the callback needs `code` and `state` from the provider",
            ),
            &caller.request_id,
        );
    };
    let done = crate::sso::complete(
        &state.app,
        &st,
        &code,
        browser_cookie(&headers).as_deref(),
        Some(&caller.client),
        Some(caller.request_id.0.as_str()),
    )
    .await;
    match done {
        Ok(c) => {
            let t = &c.tokens;
            match c.return_to {
                Some(to) => {
                    let fragment = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("access_token", &t.access_token)
                        .append_pair("refresh_token", &t.refresh_token)
                        .append_pair("expires_at", &t.access_token_expires_at.to_rfc3339())
                        .finish();
                    redirect(&format!("{to}#{fragment}"))
                }
                None => {
                    let body = serde_json::json!({
                        "accessToken": t.access_token,
                        "refreshToken": t.refresh_token,
                        "accessTokenExpiresAt": t.access_token_expires_at.to_rfc3339(),
                    });
                    let mut r = (StatusCode::OK, body.to_string()).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                }
            }
        }
        Err(e) => super::caller::refusal(e, &caller.request_id),
    }
}
