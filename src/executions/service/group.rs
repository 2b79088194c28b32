//! Group commit of drivers' last transactions (SQLite).
//!
//! SQLite has one writer, so the engine's drivers apply their held-back writes (and
//! claim the next execution, see [`apply_then_claim`]) one transaction after another
//! anyway. Each of those transactions pays `BEGIN IMMEDIATE` (a thread hand-off), and a
//! `COMMIT` that appends every page it touched to the WAL: the executions table, its
//! queue index, the step and event tables and their indexes, mostly the same pages for
//! every driver. Drivers that finish while a transaction runs queue here, and the next
//! transaction applies all of them: those pages are written once per group.
//!
//! Nothing changes for one driver: its writes apply under its lease or are refused, its
//! claim is made after its writes, its events are published after the commit, and its
//! answer is the one [`apply_then_claim`] gives. A group in which a statement fails is
//! rolled back and each driver's writes are applied again alone, so a failure fails
//! only its own driver.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{NextClaim, apply_in_tx, apply_then_claim, publish_applied};
use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::executions::model::{ExecutionId, ExecutionRow};
use crate::executions::store;

/// Most drivers one transaction applies.
const MOST: usize = 64;

/// What one driver asks for.
struct Job {
    id: ExecutionId,
    owner: Arc<str>,
    writes: Arc<[store::Write]>,
    next: Option<Claim>,
    reply: oneshot::Sender<AppResult<(bool, Option<ExecutionRow>)>>,
}

/// [`NextClaim`], owned.
struct Claim {
    owner: Arc<str>,
    node: String,
    now: chrono::NaiveDateTime,
    until: chrono::NaiveDateTime,
}

impl Claim {
    fn borrow(&self) -> NextClaim<'_> {
        NextClaim {
            owner: &self.owner,
            node: &self.node,
            now: self.now,
            until: self.until,
        }
    }
}

/// The queue of one engine's last transactions; its task stops when this is dropped.
pub struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the task that commits the groups.
    pub fn start(app: Arc<App>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(app, rx));
        Self { jobs }
    }

    /// [`apply_then_claim`], in the next group.
    pub async fn apply_then_claim(
        &self,
        id: ExecutionId,
        owner: &str,
        writes: &Arc<[store::Write]>,
        next: Option<NextClaim<'_>>,
    ) -> AppResult<(bool, Option<ExecutionRow>)> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id,
            owner: owner.into(),
            writes: writes.clone(),
            next: next.map(|n| Claim {
                owner: n.owner.into(),
                node: n.node.to_owned(),
                now: n.now,
                until: n.until,
            }),
            reply,
        };
        let stopped = || AppError::internal(anyhow::anyhow!("the engine's commit task stopped"));
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(app: Arc<App>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(MOST);
    while rx.recv_many(&mut jobs, MOST).await > 0 {
        commit(&app, std::mem::take(&mut jobs)).await;
    }
}

/// Applies `jobs` in one transaction and answers each.
async fn commit(app: &App, mut jobs: Vec<Job>) {
    // A driver that stopped waiting (its task was dropped) would have rolled back: its
    // writes are not applied and nothing is claimed for it.
    jobs.retain(|j| !j.reply.is_closed());
    if jobs.len() <= 1 {
        for job in jobs {
            alone(app, job).await;
        }
        return;
    }
    let envelope = |e: &crate::executions::model::ExecutionEvent| app.bus.pg_envelope(e);
    let done = app
        .db
        .tx("", async |conn| {
            let mut done = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let next = job.next.as_ref().map(Claim::borrow);
                done.push(
                    apply_in_tx(
                        conn,
                        &envelope,
                        job.id,
                        &job.owner,
                        &job.writes,
                        next.as_ref(),
                    )
                    .await?,
                );
            }
            Ok(done)
        })
        .await;
    match done {
        Ok(done) => {
            for (job, done) in jobs.into_iter().zip(done) {
                let _ = job.reply.send(Ok(publish_applied(app, done)));
            }
        }
        Err(e) => {
            tracing::debug!(error = ?e, drivers = jobs.len(), "a group commit failed; applying each alone");
            for job in jobs {
                alone(app, job).await;
            }
        }
    }
}

async fn alone(app: &App, job: Job) {
    let out = apply_then_claim(
        app,
        job.id,
        &job.owner,
        &job.writes,
        job.next.as_ref().map(Claim::borrow),
    )
    .await;
    let _ = job.reply.send(out);
}
