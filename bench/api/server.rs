//! The server under test, as a client sees it: the `agentplane serve` process, GraphQL
//! over HTTP and the graphql-transport-ws subscription.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::ADMIN_PASSWORD;

/// The server process (a process group of its own: with `BENCH_SERVER_WRAPPER`, the
/// profiler and the server under it); ended on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) ws: String,
}

impl Drop for Server {
    /// Sends the whole group SIGTERM (a profiler writes its data on it; killing only the
    /// wrapper left its server running after the bench), waits up to 10 s for the
    /// process it started, then SIGKILLs whatever is left of the group.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |s: &str| {
            let _ = Command::new("kill")
                .args([s, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

pub(crate) async fn start_server(db_url: &str, log: &std::path::Path) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // `BENCH_SERVER_WRAPPER` runs the server under a profiler (e.g. `heaptrack -o
    // /tmp/ht`); its numbers then include the profiler's own cost.
    let wrapper = std::env::var("BENCH_SERVER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_agentplane"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_agentplane")),
    };
    let child = command
        .process_group(0)
        .arg("serve")
        .env("DATABASE_URL", db_url)
        .env("AGENTPLANE_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env(
            "AGENTPLANE_MASTER_KEY",
            "YmVuY2gtbWFzdGVyLWtleS0zMi1ieXRlcy1sb25nISE=",
        )
        .env("AGENTPLANE_WORKERS", "0")
        // The bench measures throughput; per-principal rate limits would cap it.
        .env("AGENTPLANE_RATE_LIMIT_PER_MINUTE", "0")
        .env("AGENTPLANE_EXPENSIVE_OPERATIONS_PER_MINUTE", "0")
        .env("AGENTPLANE_WS_MAX_CONNECTIONS_PER_ADDRESS", "100000")
        .env("AGENTPLANE_WS_MAX_SUBSCRIPTIONS_PER_PRINCIPAL", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        ws: format!("ws://127.0.0.1:{port}/graphql/ws"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", server.base)).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's own count of SQL statements run (`agentplane_db_statements_total` on
/// `/metrics`): exact and immediate on both backends, where PostgreSQL's
/// `pg_stat_database` reports a backend's transactions up to 10 s after it goes idle.
pub(crate) async fn statements_run(client: &reqwest::Client, base: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("agentplane_db_statements_total "))
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) async fn gql(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let mut req = client
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body: Value = req.send().await?.json().await?;
    anyhow::ensure!(body["errors"].is_null(), "{query}: {body}");
    Ok(body)
}

pub(crate) async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    pw: &str,
) -> anyhow::Result<String> {
    let body = gql(
        client,
        base,
        None,
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        json!({ "i": { "email": email, "password": pw } }),
    )
    .await?;
    Ok(body["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An authenticated graphql-transport-ws socket subscribed to the tenant's execution
/// events.
pub(crate) async fn subscribe(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    // The client holds thousands of sockets on the same two cores as the server: with
    // tungstenite's default 128 KiB read buffer it zeroed 128 KiB for every message it
    // read (memset was 62 % of the client's CPU at 10,000 subscribers, about 13 µs a
    // message), which the delivery figure counted as the server's latency.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(config), false).await?;
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } })
            .to_string(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("connection_ack") => break,
            Some(Ok(_)) => {}
            other => anyhow::bail!("no connection_ack: {other:?}"),
        }
    }
    ws.send(Message::text(
        json!({ "id": "1", "type": "subscribe",
                "payload": { "query": "subscription { executionEvents { executionId sequence kind } }" } })
            .to_string(),
    ))
    .await?;
    Ok(ws)
}
