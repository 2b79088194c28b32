//! What a request may cost: connection pages multiply, counts are not free, batches are
//! capped and share one budget; and what an anonymous caller learns from errors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, first_error_code};

fn aliases(n: usize, field: &str) -> String {
    let body: Vec<String> = (0..n).map(|i| format!("a{i}: {field}")).collect();
    format!("{{ {} }}", body.join(" "))
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_and_nested_pages_are_priced_by_the_work_they_do() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    // 1,000 aliased counts fit the old budget (every field cost 1) and took seconds.
    let t = Instant::now();
    let out = app
        .gql_as(&admin, &aliases(1000, "auditLog { totalCount }"), json!({}))
        .await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("BAD_USER_INPUT"),
        "{out}"
    );
    assert!(
        out["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("complex")),
        "{out}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    // Pages nested in pages multiply.
    let nested = "{ workflows(first: 100) { edges { node { auditTrail(first: 100) { edges { node { id action } } } } } } }";
    let out = app.gql_as(&admin, nested, json!({})).await;
    assert_eq!(
        first_error_code(&out).as_deref(),
        Some("BAD_USER_INPUT"),
        "{out}"
    );
    // What a dashboard asks for still fits: a full page with its count, twice.
    let page = "{ users(first: 100) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id email displayName status createdAt role { name } } } } auditLog(first: 100) { totalCount edges { node { id sequence action outcome severity resourceType resourceId actorType createdAt } } } }";
    let out = app.gql_as(&admin, page, json!({})).await;
    assert!(out["errors"].is_null(), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_are_capped_and_share_one_complexity_budget() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_GRAPHQL_MAX_COMPLEXITY", "100")]).await;
    let op = |q: &str| json!({ "query": q });
    // Eleven operations: refused as a whole, before any runs.
    let batch: Vec<Value> = (0..11).map(|_| op("{ serverInfo { version } }")).collect();
    let (status, _, body) = app.post_raw(&Value::Array(batch), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["limit"], "maxBatch",
        "{body}"
    );
    // Ten are accepted.
    let batch: Vec<Value> = (0..10).map(|_| op("{ serverInfo { version } }")).collect();
    let (status, _, body) = app.post_raw(&Value::Array(batch), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.as_array()
            .is_some_and(|b| b.iter().all(|r| r["errors"].is_null())),
        "{body}"
    );

    // Each operation of 60 fits the budget of 100 alone; two together do not.
    let heavy = aliases(30, "serverInfo { version }");
    let (_, _, alone) = app.post_raw(&op(&heavy), None).await;
    assert!(alone["errors"].is_null(), "{alone}");
    let (status, _, body) = app
        .post_raw(&Value::Array(vec![op(&heavy), op(&heavy)]), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let refused: Vec<&Value> = body
        .as_array()
        .expect("a batch response")
        .iter()
        .filter(|r| r["errors"][0]["extensions"]["limit"] == "maxComplexity")
        .collect();
    assert_eq!(refused.len(), 1, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_callers_get_no_suggestions_and_introspection_is_a_setting() {
    let app = TestApp::spawn_with(&[("AGENTPLANE_GRAPHQL_INTROSPECTION", "authenticated")]).await;
    let admin = app.admin_token().await;
    let typo = "{ serverInf { version } }";
    let anonymous = app.gql(typo, json!({})).await;
    let message = anonymous["errors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("serverInf") && !message.contains("Did you mean"),
        "{anonymous}"
    );
    let signed_in = app.gql_as(&admin, typo, json!({})).await;
    assert!(
        signed_in["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Did you mean")),
        "{signed_in}"
    );

    let introspect = "{ __schema { queryType { name } } }";
    let anonymous = app.gql(introspect, json!({})).await;
    assert!(anonymous["data"]["__schema"].is_null(), "{anonymous}");
    let signed_in = app.gql_as(&admin, introspect, json!({})).await;
    assert_eq!(
        signed_in["data"]["__schema"]["queryType"]["name"], "Query",
        "{signed_in}"
    );

    // `off`: nobody introspects, signed in or not; ordinary fields still answer.
    let app = TestApp::spawn_with(&[("AGENTPLANE_GRAPHQL_INTROSPECTION", "off")]).await;
    let admin = app.admin_token().await;
    let signed_in = app.gql_as(&admin, introspect, json!({})).await;
    assert!(signed_in["data"]["__schema"].is_null(), "{signed_in}");
    let typename = app
        .gql_as(&admin, "{ serverInfo { version } }", json!({}))
        .await;
    assert!(
        typename["data"]["serverInfo"]["version"].is_string(),
        "{typename}"
    );

    // The older yes/no setting still reads: no = authenticated.
    let app = TestApp::spawn_with(&[("AGENTPLANE_GRAPHQL_ANONYMOUS_INTROSPECTION", "false")]).await;
    let anonymous = app.gql(introspect, json!({})).await;
    assert!(anonymous["data"]["__schema"].is_null(), "{anonymous}");

    // By default anonymous introspection is on: GraphiQL needs it before sign-in.
    let app = TestApp::spawn().await;
    let anonymous = app.gql(introspect, json!({})).await;
    assert_eq!(
        anonymous["data"]["__schema"]["queryType"]["name"], "Query",
        "{anonymous}"
    );
}

/// Per-principal rate limits: a burst, then 429 `RATE_LIMITED` with `Retry-After` and
/// the `RateLimit-*` headers; another principal keeps its own budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_rate_gets_429_with_retry_after() {
    let app = TestApp::spawn_with(&[
        ("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "60"),
        ("AGENTPLANE_RATE_LIMIT_BURST", "6"),
    ])
    .await;
    // Set-up: four anonymous requests (one address's budget) and one by the admin.
    let (_, owner) = app.tenant_with_owner("rate").await;
    let ask = |token: String| {
        let http = app.http.clone();
        let url = format!("{}/graphql", app.base);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({ "query": "{ me { email } }" }))
                .send()
                .await
                .expect("request")
        }
    };
    for _ in 0..6 {
        assert_eq!(ask(owner.clone()).await.status(), 200);
    }
    let refused = ask(owner.clone()).await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers().clone();
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert_eq!(retry, 1, "one request a second refills the bucket");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-policy"], "60;w=60;burst=6");
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["retryAfterSeconds"], 1,
        "{body}"
    );

    // Another principal is not held back by the first one's budget.
    let admin = app
        .login(crate::helpers::ADMIN_EMAIL, crate::helpers::ADMIN_PASSWORD)
        .await
        .0;
    assert_eq!(ask(admin).await.status(), 200);
}
