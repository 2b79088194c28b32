//! The real binary: configuration errors, migrations, graceful shutdown.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{ServerProcess, TestDb, bin, ws_authed, ws_close_code};

pub fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

#[test]
fn a_bad_config_value_stops_with_one_line_naming_the_key() {
    for (key, value) in [
        ("AGENTPLANE_LOG_FORMAT", "yaml"),
        ("DATABASE_URL", "mysql://db/x"),
        ("AGENTPLANE_LISTEN", "not-an-address"),
        ("REDIS_URL", "http://x"),
        ("AGENTPLANE_JWT_SIGNING_KEY_FILE", "/nonexistent/key.pem"),
        ("AGENTPLANE_JWT_ALGORITHM", "RS256"),
        ("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD", "short"),
        ("AGENTPLANE_MASTER_KEY", "dG9vLXNob3J0"),
    ] {
        let out = run(&["serve"], &[(key, value)]);
        assert_eq!(out.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(stderr.contains("expected"), "{stderr}");
    }
    let out = run(&["--config", "/nonexistent/agentplane.toml", "serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["schema", "--help"],
        vec!["admin", "--help"],
    ] {
        let out = run(&args, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_check_reports_pending_migrations() {
    let db = TestDb::create().await;
    let env = [("DATABASE_URL", db.url.as_str()), ("RUST_LOG", "warn")];
    let out = run(&["migrate", "--check"], &env);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = run(&["migrate"], &env);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["migrate", "--check"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_closes_sockets_and_exits() {
    let mut server = ServerProcess::start(&[]).await;

    // A subscriber that must be told the server is going away.
    let login = reqwest::Client::new()
        .post(format!("{}/graphql", server.base))
        .json(&serde_json::json!({
            "query": "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            "variables": { "i": { "email": crate::helpers::ADMIN_EMAIL, "password": crate::helpers::ADMIN_PASSWORD } }
        }))
        .send()
        .await
        .expect("login")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    let token = login["data"]["login"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut ws = ws_authed(
        &format!("ws://{}/graphql/ws", server.addr),
        "graphql-transport-ws",
        &token,
    )
    .await;

    // A request in flight: headers and half the body sent before the signal.
    let body = r#"{"query":"{ serverInfo { version } }"}"#;
    let mut tcp = tokio::net::TcpStream::connect(&server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(&body.as_bytes()[..10])
        .await
        .expect("write part");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    server.terminate();
    assert_eq!(ws_close_code(&mut ws, 9).await, Some(1001));

    tcp.write_all(&body.as_bytes()[10..])
        .await
        .expect("write rest");
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.expect("read response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("serverInfo"), "{resp}");

    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("exits within 10 s")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));

    // And new connections are refused afterwards.
    assert!(
        reqwest::get(format!("{}/healthz", server.base))
            .await
            .is_err()
    );
}

/// Starts `serve` without a bootstrap password on `db`, returns its stdout up to the
/// listen line (then stops it).
async fn first_lines(db: &TestDb) -> Vec<String> {
    let (seen, mut child, _log) = start_serve(db, &["serve"], &[("RUST_LOG", "warn")]).await;
    let _ = child.kill().await;
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_that_cannot_listen_leaves_the_one_time_admin_password_for_the_next() {
    let db = TestDb::create().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run(
        &["serve"],
        &[
            ("DATABASE_URL", &db.url),
            ("AGENTPLANE_LISTEN", &addr),
            ("RUST_LOG", "warn"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        !stdout.contains("password"),
        "a start that could not listen bootstrapped: {stdout}"
    );
    drop(taken);

    // The next start bootstraps and shows the generated password once.
    let first = first_lines(&db).await;
    assert!(
        first
            .iter()
            .any(|l| l.contains("generated password (shown once)")),
        "{first:?}"
    );
    // Later starts say how to get a new one.
    let later = first_lines(&db).await;
    assert!(
        later.iter().all(|l| !l.contains("shown once"))
            && later
                .iter()
                .any(|l| l
                    .contains("agentplane admin reset-password --email admin@agentplane.local")),
        "{later:?}"
    );
}

/// `serve --demo` on `db` with info logs on a pipe.
async fn demo_server(
    db: &TestDb,
) -> (
    Vec<String>,
    tokio::process::Child,
    tokio::task::JoinHandle<String>,
) {
    start_serve(
        db,
        &["serve", "--demo"],
        &[
            (
                "AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD",
                crate::helpers::ADMIN_PASSWORD,
            ),
            ("RUST_LOG", "info"),
        ],
    )
    .await
}

/// Starts the binary with `args` on `db` (plus `env`): its stdout up to the listen line,
/// the running child, and its log (stderr, read as it comes so the server never blocks
/// on a full pipe; complete once the child exits).
async fn start_serve(
    db: &TestDb,
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    Vec<String>,
    tokio::process::Child,
    tokio::task::JoinHandle<String>,
) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(bin())
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("AGENTPLANE_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("serve starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log).await;
        log
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while !seen
        .last()
        .is_some_and(|l: &String| l.contains("listening on"))
    {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a line within 30 s")
            .expect("read")
            .expect("stdout open");
        seen.push(line);
    }
    // Keep draining stdout too.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (seen, child, log)
}

/// The demo: a published workflow that needs no network and one printed command that
/// runs it and follows it live; a second start says the demo exists. The server's log
/// (a pipe, not a terminal) has no colour codes and one INFO line per lifecycle change.
#[tokio::test(flavor = "multi_thread")]
async fn serve_demo_prints_one_command_that_runs_the_demo_workflow_live() {
    let db = TestDb::create().await;
    let (lines, mut server, log) = demo_server(&db).await;
    let command = lines
        .iter()
        .find(|l| l.contains(" start ") && l.contains("--token agp_"))
        .unwrap_or_else(|| panic!("no run command in {lines:#?}"));
    let continued = lines
        .iter()
        .skip_while(|l| *l != command)
        .nth(1)
        .expect("the command's second line");
    // Run it as printed (the line ends with a shell continuation).
    let script = format!("{}\n{continued}\n", command.trim());
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n{stdout}\n{stderr}");
    assert!(stdout.contains("step wait: SUCCEEDED"), "{stdout}");
    assert!(stdout.contains("step shortcut: SKIPPED"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.contains("SUCCEEDED")),
        "{stdout}"
    );

    // Its log: plain text on a pipe, one line per lifecycle change with the ids.
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &server.id().expect("pid").to_string()])
        .status()
        .await;
    let _ = server.wait().await;
    let log = log.await.expect("log reader");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    for want in [
        "execution QUEUED",
        "execution RUNNING",
        "step SUCCEEDED",
        "execution SUCCEEDED",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(want) && l.contains("tenant=") && l.contains("workflow=")),
            "no `{want}` line with tenant and workflow:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("execution SUCCEEDED") && l.contains("duration_ms=")),
        "{log}"
    );

    // A second --demo start seeds nothing and says so.
    let (again, _server, _log) = demo_server(&db).await;
    assert!(
        again
            .iter()
            .any(|l| l.contains("demo tenant `demo` exists")),
        "{again:#?}"
    );
    assert!(again.iter().all(|l| !l.contains("agp_")), "{again:#?}");
}
