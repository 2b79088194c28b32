//! `agentplane start` and `agentplane watch`: a small GraphQL client (HTTP for the
//! mutation, graphql-transport-ws for the live events) so the quickstart needs no other
//! tool to run a workflow and follow it.

use std::io::Write;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const SUBSCRIPTION: &str = "subscription($id: ID!) { executionUpdated(id: $id) { \
    at sequence kind status stepId stepStatus attempt error \
    execution { steps { stepId status attempt } } } }";

/// How a watched execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The terminal status (`SUCCEEDED`, `FAILED`, `CANCELLED`).
    pub status: String,
}

/// The HTTP endpoint for a server address: `http://host:port` (with or without
/// `/graphql`) becomes `http://host:port/graphql`.
pub fn http_url(server: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server)
        .with_context(|| format!("{server:?} is not a URL; try http://127.0.0.1:8000"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("use an http:// or https:// address, e.g. http://127.0.0.1:8000");
    }
    let path = url.path().trim_end_matches('/');
    let path = if path.ends_with("/graphql") {
        path.to_owned()
    } else {
        format!("{path}/graphql")
    };
    url.set_path(&path);
    Ok(url.to_string())
}

fn bearer(token: &str) -> String {
    if token.starts_with("Bearer ") {
        token.to_owned()
    } else {
        format!("Bearer {token}")
    }
}

/// Starts a published workflow (`startExecution`); returns the execution's ID.
pub async fn start(
    server: &str,
    token: &str,
    workflow_id: &str,
    input: Value,
    idempotency_key: Option<&str>,
) -> anyhow::Result<String> {
    let url = http_url(server)?;
    let body = json!({
        "query": "mutation($i: StartExecutionInput!) { startExecution(input: $i) { \
                  deduplicated execution { id status } } }",
        "variables": { "i": {
            "workflowId": workflow_id,
            "input": input,
            "idempotencyKey": idempotency_key,
        } },
    });
    let resp = reqwest::Client::new()
        .post(&url)
        .header("Authorization", bearer(token))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is the server running?"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .with_context(|| format!("{url} answered {status} without a GraphQL response"))?;
    if let Some(errors) = v["errors"].as_array() {
        let message = errors
            .iter()
            .map(|e| match e["extensions"]["code"].as_str() {
                Some(code) => format!("{code}: {}", e["message"].as_str().unwrap_or("")),
                None => e["message"].as_str().unwrap_or("").to_owned(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        bail!("{message}");
    }
    v["data"]["startExecution"]["execution"]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("unexpected answer: {v}"))
}

/// The websocket endpoint for a server address: `http://host:port` (with or without the
/// `/graphql` path) becomes `ws://host:port/graphql/ws`.
pub fn ws_url(server: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(server)
        .with_context(|| format!("{server:?} is not a URL; try http://127.0.0.1:8000"))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => bail!(
            "this client speaks plain ws:// only; for TLS use any graphql-transport-ws client \
             (e.g. the graphql-ws package) against wss://…/graphql/ws"
        ),
        other => bail!("unsupported scheme {other:?}; try http://127.0.0.1:8000"),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot use {server:?} as a websocket address"))?;
    let path = url.path().trim_end_matches('/');
    let path = if path.ends_with("/graphql/ws") {
        path.to_owned()
    } else if path.ends_with("/graphql") {
        format!("{path}/ws")
    } else {
        format!("{path}/graphql/ws")
    };
    url.set_path(&path);
    Ok(url.to_string())
}

/// Subscribes to `executionUpdated(id)` and writes one line per event to `out` (the
/// event's JSON with `json`, else a readable line) until the execution ends.
pub async fn watch(
    server: &str,
    token: &str,
    execution_id: &str,
    json_lines: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Finished> {
    let url = ws_url(server)?;
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("static header value"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("cannot open {url}; is the server running?"))?;
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(json!({
        "type": "connection_init",
        "payload": { "Authorization": bearer(token) },
    })))
    .await?;
    let mut subscribed = false;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t.to_string(),
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                bail!("the server closed the socket ({code}): {reason}");
            }
            _ => continue,
        };
        let v: Value = serde_json::from_str(&text).context("the server sent a non-JSON message")?;
        match v["type"].as_str() {
            Some("connection_ack") if !subscribed => {
                subscribed = true;
                ws.send(send(json!({
                    "id": "1",
                    "type": "subscribe",
                    "payload": { "query": SUBSCRIPTION, "variables": { "id": execution_id } },
                })))
                .await?;
            }
            Some("ping") => ws.send(send(json!({ "type": "pong" }))).await?,
            Some("next") => {
                if let Some(errors) = v["payload"]["errors"].as_array() {
                    let message = errors
                        .iter()
                        .filter_map(|e| e["message"].as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    bail!("{message}");
                }
                let event = &v["payload"]["data"]["executionUpdated"];
                if json_lines {
                    writeln!(out, "{event}")?;
                } else {
                    writeln!(out, "{}", describe(event))?;
                    // A watcher that subscribed late learns from the snapshot where
                    // each step already is.
                    if event["kind"] == "SNAPSHOT" {
                        for line in snapshot_steps(event) {
                            writeln!(out, "{line}")?;
                        }
                    }
                }
                out.flush()?;
                if let Some(status) = event["status"].as_str()
                    && matches!(status, "SUCCEEDED" | "FAILED" | "CANCELLED" | "TIMED_OUT")
                    && event["kind"] != "STEP_CHANGED"
                {
                    let _ = ws
                        .send(send(json!({ "id": "1", "type": "complete" })))
                        .await;
                    let _ = ws.close(None).await;
                    return Ok(Finished {
                        status: status.to_owned(),
                    });
                }
            }
            Some("error") => bail!("refused: {}", v["payload"]),
            Some("complete") => bail!("the server ended the stream before the execution ended"),
            _ => {}
        }
    }
    bail!("the connection ended before the execution did")
}

/// A line per step that has started or ended, from a snapshot's execution.
fn snapshot_steps(e: &Value) -> Vec<String> {
    let Some(steps) = e["execution"]["steps"].as_array() else {
        return Vec::new();
    };
    steps
        .iter()
        .filter(|s| s["status"].as_str().is_some_and(|st| st != "PENDING"))
        .map(|s| {
            let mut line = format!(
                "{:>32}  step {}: {}",
                "",
                s["stepId"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or("")
            );
            if let Some(a) = s["attempt"].as_i64().filter(|a| *a > 0) {
                line.push_str(&format!(" (attempt {a})"));
            }
            line
        })
        .collect()
}

/// One readable line for an `ExecutionUpdate`.
fn describe(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("");
    let mut line = format!(
        "{}  #{:<3} {:<14} {}",
        s("at"),
        e["sequence"].as_i64().unwrap_or_default(),
        s("kind"),
        s("status")
    );
    if let Some(step) = e["stepId"].as_str() {
        line.push_str(&format!("  step {step}: {}", s("stepStatus")));
        if let Some(a) = e["attempt"].as_i64().filter(|a| *a > 0) {
            line.push_str(&format!(" (attempt {a})"));
        }
    }
    if let Some(err) = e["error"].as_str() {
        line.push_str(&format!("  error: {err}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_become_the_websocket_endpoint() {
        for (given, want) in [
            ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/graphql/ws"),
            ("http://127.0.0.1:8000/", "ws://127.0.0.1:8000/graphql/ws"),
            (
                "http://127.0.0.1:8000/graphql",
                "ws://127.0.0.1:8000/graphql/ws",
            ),
            ("ws://h:1/graphql/ws", "ws://h:1/graphql/ws"),
            ("http://h/prefix", "ws://h/prefix/graphql/ws"),
        ] {
            assert_eq!(ws_url(given).expect(given), want);
        }
        assert!(ws_url("https://h").is_err());
        assert_eq!(
            http_url("http://127.0.0.1:8000").expect("http"),
            "http://127.0.0.1:8000/graphql"
        );
        assert_eq!(
            http_url("https://h/graphql/").expect("https"),
            "https://h/graphql"
        );
        assert!(ws_url("not a url").is_err());
    }
}
