//! GraphiQL served entirely by the binary, so it works on air-gapped sites.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agentplane · GraphiQL</title>
<link rel="stylesheet" href="/graphql/assets/graphiql.min.css">
<style>html, body, #graphiql { height: 100%; margin: 0; }</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL…</div>
<script src="/graphql/assets/react.production.min.js"></script>
<script src="/graphql/assets/react-dom.production.min.js"></script>
<script src="/graphql/assets/graphql-ws.min.js"></script>
<script src="/graphql/assets/graphiql.min.js"></script>
<script src="/graphql/assets/init.js"></script>
</body>
</html>
"#;

/// The GraphiQL page. Its content-security policy allows only this origin.
pub fn page() -> Response {
    let mut resp = (StatusCode::OK, PAGE).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             font-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'",
        ),
    );
    resp
}

/// Vendored GraphiQL assets (see `src/http/assets/README.md`).
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, ct): (&'static [u8], &'static str) = match file.as_str() {
        "graphiql.min.js" => (
            include_bytes!("assets/graphiql.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "graphiql.min.css" => (
            include_bytes!("assets/graphiql.min.css"),
            "text/css; charset=utf-8",
        ),
        "react.production.min.js" => (
            include_bytes!("assets/react.production.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "react-dom.production.min.js" => (
            include_bytes!("assets/react-dom.production.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "graphql-ws.min.js" => (
            include_bytes!("assets/graphql-ws.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "init.js" => (
            include_bytes!("assets/init.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}
