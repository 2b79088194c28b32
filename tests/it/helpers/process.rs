//! Servers run from the real binary, a proxy that takes the database away, and what
//! tests read of processes.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::{ADMIN_PASSWORD, TestDb};

/// A server process started from the real binary.
pub struct ServerProcess {
    /// The child.
    pub child: tokio::process::Child,
    /// `http://IP:PORT` read from its first stdout line.
    pub base: String,
    /// `IP:PORT`.
    pub addr: String,
    /// Its database.
    pub db: TestDb,
}

/// Path of the built `agentplane` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentplane")
}

impl ServerProcess {
    /// Starts `agentplane serve` on a fresh database and waits for its listen line.
    pub async fn start(extra_env: &[(&str, &str)]) -> Self {
        let db = TestDb::create().await;
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("AGENTPLANE_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env("AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut line = String::new();
        while !line.contains("listening on") {
            line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("listen line within 30 s")
                .expect("read stdout")
                .expect("a line");
        }
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("url in listen line")
            .to_owned();
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            base: format!("http://{addr}"),
            addr,
            db,
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

/// A TCP proxy in front of PostgreSQL: `cut` takes the database away (open connections
/// drop, new ones are closed at once, as when the server stops), `restore` brings it back.
pub struct DbProxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl DbProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = tokio::sync::watch::Sender::new(0u64);
        let (u, g, upstream) = (up.clone(), generation.clone(), upstream.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !std::sync::atomic::AtomicBool::load(&u, Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut changed = g.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            generation,
            task,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("database url");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.port)).expect("port");
        u.to_string()
    }

    /// The database goes away: every connection drops, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The database is back.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of `TEST_DATABASE_URL`.
pub fn postgres_host_port() -> String {
    let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let u = url::Url::parse(&url).expect("url");
    format!(
        "{}:{}",
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5432)
    )
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
