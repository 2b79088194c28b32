//! Where SQLite statements run: on a blocking thread, except inside an open write
//! transaction.
//!
//! diesel-async runs every statement of its SQLite wrapper on tokio's blocking pool, so
//! each statement costs two thread hand-offs (to the blocking thread and back). In the
//! engine's write path those hand-offs, not SQLite, were most of the time: futex waits
//! and context switches were ~40 % of the engine bench's samples, `sqlite3_step` ~30 %
//! (perf, 1-step transforms, 8 workers).
//!
//! Inside a write transaction that already holds SQLite's write lock (after `BEGIN
//! IMMEDIATE`, see [`DbPool::tx`](super::DbPool::tx)) a statement cannot wait on a lock:
//! WAL readers never block a writer and the commit needs no further lock. Such statements
//! are short and bounded by what the transaction writes, so they run on the task's own
//! thread, and so do its `COMMIT` and `ROLLBACK`: the pool's connections never checkpoint
//! in a commit (see [`checkpoint`](super::checkpoint)), so a commit appends to the WAL
//! without an fsync. `BEGIN IMMEDIATE` (which may wait for another process's writer)
//! still goes to a blocking thread, as does every read and every statement outside such
//! a transaction.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

tokio::task_local! {
    /// Set on the task while it runs the body of a SQLite write transaction.
    static IN_WRITE_TX: ();
}

/// Runs `body` with the statements it issues inline (see the module documentation).
/// Only for the body of a write transaction that holds SQLite's write lock.
pub(super) async fn in_write_tx<T>(body: impl Future<Output = T>) -> T {
    IN_WRITE_TX.scope((), body).await
}

/// Whether this task is inside [`in_write_tx`].
fn inline() -> bool {
    IN_WRITE_TX.try_with(|()| ()).is_ok()
}

/// The spawner of this crate's SQLite connections (see the module documentation).
pub enum Spawner {
    /// The runtime the connection was opened on.
    Handle(tokio::runtime::Handle),
    /// A runtime of its own, for a connection opened outside any runtime.
    Runtime(tokio::runtime::Runtime),
}

impl diesel_async::sync_connection_wrapper::SpawnBlocking for Spawner {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<'a, Result<R, Box<dyn Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        if inline() {
            return std::future::ready(Ok(task())).boxed();
        }
        let (handle, future) = match self {
            Spawner::Handle(h) => (h.clone(), h.spawn_blocking(task)),
            Spawner::Runtime(r) => (r.handle().clone(), r.spawn_blocking(task)),
        };
        Finished { handle, future }
            .map(|r| r.map_err(|e| Box::new(e) as Box<dyn Error + Send + Sync>))
            .boxed()
    }

    fn get_runtime() -> Self {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => Spawner::Handle(h),
            Err(_) => Spawner::Runtime(
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime for a SQLite connection opened outside tokio"),
            ),
        }
    }
}

/// A blocking task that has finished by the time its future is dropped, as
/// diesel-async's own spawner guarantees: a statement abandoned mid-way (its request
/// was cancelled) ends before the connection is used again.
struct Finished<R> {
    handle: tokio::runtime::Handle,
    future: tokio::task::JoinHandle<R>,
}

impl<R> Future for Finished<R> {
    type Output = Result<R, tokio::task::JoinError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.get_mut().future).poll(cx)
    }
}

impl<R> Drop for Finished<R> {
    fn drop(&mut self) {
        if !self.future.is_finished() {
            let handle = self.handle.clone();
            let future = &mut self.future;
            tokio::task::block_in_place(|| {
                let _ = handle.block_on(future);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel_async::AsyncConnection as _;

    use super::super::SqliteConn;

    async fn statement_thread(conn: &mut SqliteConn) -> std::thread::ThreadId {
        conn.spawn_blocking(|_| Ok(std::thread::current().id()))
            .await
            .expect("statement")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_run_inline_only_inside_a_write_transaction_body() {
        let mut conn = SqliteConn::establish(":memory:").await.expect("open");
        let outside = statement_thread(&mut conn).await;
        assert_ne!(outside, std::thread::current().id(), "a blocking thread");
        let (inside, caller) = super::in_write_tx(async {
            (
                statement_thread(&mut conn).await,
                std::thread::current().id(),
            )
        })
        .await;
        assert_eq!(inside, caller, "the task's own thread");
        let after = statement_thread(&mut conn).await;
        assert_ne!(
            after,
            std::thread::current().id(),
            "a blocking thread again"
        );
    }
}
