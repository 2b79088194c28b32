//! Closed-loop load generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Closed-loop load: `concurrency` tasks run `op` back to back for `secs`; returns
/// (operations per second, errors, sorted latencies in ms).
pub(crate) async fn load<F, Fut>(concurrency: usize, secs: f64, op: F) -> (f64, u64, Vec<f64>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, stop, errors) = (op.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if !op().await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (
        all.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        all,
    )
}

/// Whether a GraphQL response body is well-formed JSON with `data` and without `errors`.
/// Checked without building the document: the client shares the server's cores, and a
/// `serde_json::Value` of a large answer costs it a few hundred allocations.
pub(crate) fn answered(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        data: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        errors: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Answer>(body).is_ok_and(|a| a.data.is_some() && a.errors.is_none())
}

pub(crate) fn post_op(
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    body: Value,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync {
    move || {
        let mut req = client.post(url.clone()).json(&body);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        Box::pin(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|b| answered(&b)),
                _ => false,
            }
        })
    }
}
