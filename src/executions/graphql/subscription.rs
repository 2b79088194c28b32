//! Execution subscriptions: live updates, gap-free by sequence number.

use super::*;
use crate::graphql::Lean;
use futures_util::StreamExt as _;
use std::sync::{Mutex, PoisonError};

/// One event of an execution's life, as streamed to subscribers.
pub struct ExecutionUpdate(pub ExecutionEvent);

#[Object]
impl ExecutionUpdate {
    /// Per-execution sequence number: consecutive from the snapshot on, so a client can
    /// tell it missed nothing.
    async fn sequence(&self) -> i64 {
        self.0.seq
    }
    /// SNAPSHOT first, then STATUS_CHANGED and STEP_CHANGED.
    async fn kind(&self) -> crate::graphql::enums::EventKind {
        self.0.kind.into()
    }
    /// The execution's ID.
    async fn execution_id(&self) -> ID {
        to_global_id(NodeKind::Execution, self.0.execution_id.0)
    }
    /// Its workflow's ID.
    async fn workflow_id(&self) -> ID {
        to_global_id(NodeKind::Workflow, self.0.workflow_id.0)
    }
    /// The execution's status after this event.
    async fn status(&self) -> crate::graphql::enums::ExecutionStatus {
        self.0.status.into()
    }
    /// The step, for STEP_CHANGED.
    async fn step_id(&self) -> Option<&str> {
        self.0.step_id.as_deref()
    }
    /// The step's new status.
    async fn step_status(&self) -> Option<crate::graphql::enums::StepStatus> {
        self.0.step_status.map(Into::into)
    }
    /// The step's attempt.
    async fn attempt(&self) -> Option<i64> {
        self.0.attempt
    }
    /// Error text of a failure.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// When.
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    /// The execution as it is now (read when the client asks).
    async fn execution(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Execution>> {
        let p = principal(ctx)?;
        if let Ok(loaders) = crate::graphql::loaders::Loaders::of(ctx) {
            loaders.forget_executions();
        }
        Ok(store::find(&app(ctx)?.db, p.tenant_id, self.0.execution_id)
            .await?
            .map(Execution::from))
    }
}

pub(super) fn snapshot_of(
    tenant: crate::db::ids::TenantId,
    state: crate::executions::model::ExecutionState,
    at: DateTime<Utc>,
) -> ExecutionEvent {
    ExecutionEvent {
        tenant_id: tenant,
        execution_id: state.id,
        workflow_id: state.workflow_id,
        seq: state.seq,
        kind: EventKind::Snapshot,
        status: state.status,
        step_id: None,
        step_status: None,
        attempt: None,
        error: state.error,
        at,
    }
}

/// Execution subscriptions.
///
/// A stream lives as long as its subscriber, and its state is as large as the largest
/// future it awaits in place; so every database read in these resolvers and streams is
/// awaited boxed (allocated only while it runs). Inline, the reads made each idle
/// `executionEvents` subscription hold about 8 KiB (heaptrack, 1,000 subscribers).
#[derive(Default)]
pub struct ExecutionSubscription;

#[Subscription]
impl ExecutionSubscription {
    /// Every status change and step event of one execution: first a SNAPSHOT with the
    /// current sequence number, then each event in order without gaps (events missed by a
    /// slow client are re-read from the event log). Ends after the terminal event.
    #[graphql(guard = "Require(Permission::ExecutionsRead)")]
    async fn execution_updated(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<impl Stream<Item = Lean<ExecutionUpdate>> + use<>> {
        Ok(Box::pin(updates_of(ctx, id)).await?.map(Lean))
    }

    /// Every event of every execution the caller may read in its tenant, optionally
    /// narrowed to one workflow or to events leaving a given status. Per execution,
    /// events arrive once each and in sequence order, without holes: a gap (an event
    /// relayed late or lost with a dropped connection) is filled from the stored log, and
    /// so is everything a slow subscriber missed. Starts with a SNAPSHOT of each QUEUED or
    /// RUNNING execution that matches, or, with `since`, replays the stored events
    /// written at or after that time instead (a reconnecting dashboard passes the `at` of
    /// the last event it received and drops repeats by `executionId` + `sequence`).
    #[graphql(guard = "Require(Permission::ExecutionsRead)")]
    async fn execution_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<ExecutionEventsFilter>,
        since: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<impl Stream<Item = Lean<ExecutionUpdate>> + use<>> {
        Ok(Box::pin(events_of(ctx, filter, since)).await?.map(Lean))
    }
}

/// [`ExecutionSubscription::execution_updated`]'s stream. A free function, awaited boxed:
/// async-graphql keeps a subscription resolver's future inside the subscriber's stream for
/// the stream's whole life, so only a pointer to it stays there.
async fn updates_of(
    ctx: &Context<'_>,
    id: ID,
) -> async_graphql::Result<impl Stream<Item = ExecutionUpdate> + use<>> {
    let a: Arc<App> = app(ctx)?.clone();
    let p = principal(ctx)?.clone();
    let uuid = decode_expecting(&id, NodeKind::Execution, "execution")?;
    // Subscribe before reading the snapshot, so nothing falls between the two.
    let mut rx = a.bus.subscribe();
    let resync = crate::events::next_resync(a.bus.resync.subscribe());
    let row = Box::pin(visible_execution_row(ctx, uuid)).await?;
    let tenant = p.tenant_id;
    let exec_id = row.id;
    let mut last = row.seq;
    let done = row.status.is_terminal();
    // Only the snapshot event moves into the stream, not the whole row it came from
    // (which the stream would otherwise keep for its life).
    let snapshot = snapshot_of(tenant, (&row).into(), a.clock.now());
    drop(row);
    Ok(async_stream::stream! {
        yield ExecutionUpdate(snapshot);
        if done {
            return;
        }
        let mut resync = std::pin::pin!(resync);
        loop {
            let received = tokio::select! {
                // An event that is there is taken without polling the resync wait.
                biased;
                r = rx.recv() => r,
                next = &mut resync => {
                    let Some(receiver) = next else { return };
                    resync.set(crate::events::next_resync(receiver));
                    // Notifications from other processes may have been lost.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(0))
                }
            };
            let ev = match received {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: read what we missed from the log.
                    let Ok(missed) = Box::pin(store::events_after(&a.db, tenant, exec_id, last)).await else { return };
                    let mut finished = false;
                    for ev in missed {
                        last = ev.seq;
                        finished = ev.kind == EventKind::StatusChanged && ev.status.is_terminal();
                        yield ExecutionUpdate(ev);
                    }
                    if finished { return; }
                    continue;
                }
                Err(_) => return,
            };
            if ev.tenant_id != tenant || ev.execution_id != exec_id || ev.seq <= last {
                continue;
            }
            if ev.seq > last + 1 {
                // A gap (e.g. an event relayed late from another process): fill it.
                let Ok(missed) = Box::pin(store::events_after(&a.db, tenant, exec_id, last)).await else { return };
                for m in missed.into_iter().filter(|m| m.seq < ev.seq) {
                    yield ExecutionUpdate(m);
                }
            }
            last = ev.seq;
            let finished = ev.kind == EventKind::StatusChanged && ev.status.is_terminal();
            yield ExecutionUpdate((*ev).clone());
            if finished {
                return;
            }
        }
    })
}

/// [`ExecutionSubscription::execution_events`]'s stream (a free function, awaited boxed:
/// see [`updates_of`]).
async fn events_of(
    ctx: &Context<'_>,
    filter: Option<ExecutionEventsFilter>,
    since: Option<DateTime<Utc>>,
) -> async_graphql::Result<impl Stream<Item = ExecutionUpdate> + use<>> {
    let a: Arc<App> = app(ctx)?.clone();
    let p = principal(ctx)?.clone();
    let f = filter.unwrap_or_default();
    let wf_filter = f
        .workflow_id
        .as_ref()
        .map(|w| decode_expecting(w, NodeKind::Workflow, "workflow").map(WorkflowId))
        .transpose()?;
    if let Some(w) = wf_filter {
        Box::pin(crate::workflows::service::visible(&a, &p, w)).await?;
    }
    let mut rx = a.bus.subscribe();
    let resync = crate::events::next_resync(a.bus.resync.subscribe());
    let started = crate::db::ids::db_time(a.clock.now());
    let visible: Option<Vec<WorkflowId>> = Box::pin(visible_workflow_ids(ctx, &p)).await?;
    let mut active = Vec::new();
    let mut replay = Vec::new();
    if let Some(t) = since {
        replay = Box::pin(store::tenant_events_since(
            &a.db,
            p.tenant_id,
            crate::db::ids::db_time(t),
        ))
        .await?;
    } else {
        for status in [ExecutionStatus::Queued, ExecutionStatus::Running] {
            let rows = Box::pin(store::newest_states(
                &a.db,
                p.tenant_id,
                &ListFilter {
                    workflows: match (wf_filter, &visible) {
                        (Some(w), _) => Some(vec![w]),
                        (None, v) => v.clone(),
                    },
                    status: Some(status.as_str().to_owned()),
                },
                100,
            ))
            .await?;
            active.extend(rows);
        }
        // An execution that moved from QUEUED to RUNNING between the two reads is in
        // both: keep its newer state only.
        active.sort_by(|a, b| a.id.cmp(&b.id).then(b.seq.cmp(&a.seq)));
        active.dedup_by_key(|r| r.id);
    }
    let tenant = p.tenant_id;
    let status_filter = f.status;
    let sight = sight(&p);
    // Only the snapshot events live on in the stream, not the rows they came from
    // (kept rows cost an idle subscriber ~48 KiB with 100 active executions).
    let now = a.clock.now();
    let snapshot: Vec<ExecutionEvent> = active
        .into_iter()
        .map(|r| snapshot_of(tenant, r, now))
        .collect();
    let base = SnapshotIndex::intern(snapshot.iter().map(|ev| (ev.execution_id, seq32(ev.seq))));
    Ok(async_stream::stream! {
        let mut seqs = SeqTracker::over(base);
        for ev in snapshot {
            yield ExecutionUpdate(ev);
        }
        // Visibility per workflow, decided once per stream.
        let mut seen: HashMap<WorkflowId, bool> = HashMap::new();
        if let Some(v) = &visible {
            for w in v { seen.insert(*w, true); }
        }
        // Catch-up reads start a little before the last one, for events whose
        // transaction committed later than its timestamp.
        let slack = chrono::Duration::seconds(30);
        let mut synced_at = started;
        let mut batch = replay;
        let mut resync = std::pin::pin!(resync);
        loop {
            for ev in std::mem::take(&mut batch) {
                if !seqs.advance(ev.execution_id, ev.seq) {
                    continue;
                }
                if wf_filter.is_some_and(|w| w != ev.workflow_id)
                    || status_filter.is_some_and(|s| ExecutionStatus::from(s) != ev.status)
                {
                    continue;
                }
                let ok = match seen.get(&ev.workflow_id) {
                    Some(v) => *v,
                    // The whole tenant is visible: no workflow to look up.
                    None if matches!(sight, crate::workflows::store::Sight::All) => true,
                    None => {
                        // A workflow created after the stream began.
                        let ok = Box::pin(crate::workflows::service::is_visible(&a, tenant, &sight, ev.workflow_id))
                            .await
                            .unwrap_or(false);
                        seen.insert(ev.workflow_id, ok);
                        ok
                    }
                };
                if ok {
                    yield ExecutionUpdate(ev);
                }
            }
            let catch_up = tokio::select! {
                // An event that is there is taken without polling the resync wait.
                biased;
                ev = rx.recv() => match ev {
                    Ok(ev) if ev.tenant_id != tenant => continue,
                    Ok(ev) => match seqs.last(ev.execution_id) {
                        Some(l) if ev.seq <= l => continue,
                        Some(l) if ev.seq == l + 1 => {
                            batch.push((*ev).clone());
                            continue;
                        }
                        // An execution's first event (sequence 1, its enqueueing):
                        // nothing came before it, so there is nothing to read.
                        None if ev.seq == 1 => {
                            batch.push((*ev).clone());
                            continue;
                        }
                        // A gap, or an execution new to this stream: read its events
                        // from the log, in order, up to this one.
                        known => {
                            match Box::pin(store::events_after(&a.db, tenant, ev.execution_id, known.unwrap_or(0))).await {
                                Ok(missed) => batch = missed,
                                Err(e) => {
                                    tracing::warn!(error = ?e, "reading missed events failed");
                                    batch.push((*ev).clone());
                                }
                            }
                            continue;
                        }
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                next = &mut resync => {
                    let Some(receiver) = next else { return };
                    resync.set(crate::events::next_resync(receiver));
                    true
                }
            };
            if catch_up {
                // Fell behind, or notifications from other processes may be lost:
                // everything since the last catch-up is in the log.
                let from = synced_at - slack;
                synced_at = crate::db::ids::db_time(a.clock.now());
                match Box::pin(store::tenant_events_since(&a.db, tenant, from)).await {
                    Ok(events) => batch = events,
                    Err(e) => tracing::warn!(error = ?e, "catching up from the event log failed"),
                }
            }
        }
    })
}

/// The last sequence number a stream delivered (or skipped) per execution: what its
/// snapshot said ([`SnapshotIndex`], shared), and above that what it delivered since; past a
/// bound it forgets the executions it first saw longest ago, so a long-lived stream stays
/// small.
///
/// What it delivered since is kept as one vector sorted by execution id (binary search;
/// ids are time-ordered UUIDv7, so a new execution lands at the end), each entry stamped
/// with when the stream first saw it. 24 bytes an execution (the id, the sequence number
/// and the stamp as `u32`: stamps are renumbered from 0 at each forgetting pass, so they
/// stay below `KEPT + KEPT / 8`), against about 48 for a hash map plus an insertion queue.
/// The snapshot's entries are never forgotten (at most the 200 QUEUED and RUNNING
/// executions a snapshot reads).
#[derive(Default)]
pub(super) struct SeqTracker {
    base: Option<SnapshotTable>,
    last: Vec<(ExecutionId, u32, u32)>,
    /// Executions first seen since the last forgetting pass (the next stamp).
    seen: u32,
}

/// A sequence number as the tracker keeps it (an execution has far fewer than 2^32
/// events; a larger one would compare as the largest).
fn seq32(seq: i64) -> u32 {
    u32::try_from(seq.max(0)).unwrap_or(u32::MAX)
}

type SnapshotEntries = Box<[(ExecutionId, u32)]>;
type SnapshotTable = Arc<SnapshotEntries>;

static SNAPSHOTS: std::sync::LazyLock<Mutex<SnapshotIndex>> =
    std::sync::LazyLock::new(Mutex::default);

/// Snapshot tables (execution id → sequence number, sorted by id), shared by the streams
/// whose snapshots are equal: subscribers of one tenant that start while its executions
/// do not move (a dashboard fleet reconnecting after a deploy) hold one table between
/// them, where each held its own (2.4 KB with 100 active executions: an eighth of an idle
/// subscriber). Content-addressed and immutable, so sharing is invisible to the streams.
/// A table's entries are freed with the last stream that holds it (they are boxed apart
/// from the `Arc`: the index's `Weak` would keep an `Arc<[_]>`'s whole block alive); the
/// index's dead entries (a few dozen bytes each) are swept as it grows.
#[derive(Default)]
struct SnapshotIndex {
    /// Live tables by a hash of their content.
    tables: HashMap<u64, std::sync::Weak<SnapshotEntries>>,
    /// The size past which dead entries are swept (twice the live ones at the last sweep).
    sweep_at: usize,
}

impl SnapshotIndex {
    /// The shared table equal to `entries` (`None` for an empty snapshot).
    fn intern(entries: impl Iterator<Item = (ExecutionId, u32)>) -> Option<SnapshotTable> {
        use std::hash::{Hash as _, Hasher as _};
        let mut table: Vec<(ExecutionId, u32)> = entries.collect();
        if table.is_empty() {
            return None;
        }
        // One entry per execution, its highest sequence number.
        table.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        table.dedup_by_key(|e| e.0);
        // Fixed keys: equal tables must meet under one hash.
        let mut hasher = std::hash::DefaultHasher::new();
        table.hash(&mut hasher);
        let key = hasher.finish();
        let mut index = SNAPSHOTS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = index.tables.get(&key).and_then(std::sync::Weak::upgrade) {
            if **shared == *table {
                return Some(shared);
            }
        }
        let shared: SnapshotTable = Arc::new(table.into_boxed_slice());
        index.tables.insert(key, Arc::downgrade(&shared));
        if index.tables.len() > index.sweep_at {
            index.tables.retain(|_, t| t.strong_count() > 0);
            index.sweep_at = (index.tables.len() * 2).max(64);
        }
        Some(shared)
    }
}

impl SeqTracker {
    const KEPT: usize = 20_000;

    /// A tracker that starts from a snapshot's table.
    fn over(base: Option<SnapshotTable>) -> Self {
        Self {
            base,
            ..Self::default()
        }
    }

    fn in_snapshot(&self, id: ExecutionId) -> Option<u32> {
        let base: &[(ExecutionId, u32)] = self.base.as_deref()?;
        base.binary_search_by_key(&id, |e| e.0)
            .ok()
            .map(|i| base[i].1)
    }

    fn last(&self, id: ExecutionId) -> Option<i64> {
        match self.last.binary_search_by_key(&id, |e| e.0) {
            Ok(i) => Some(i64::from(self.last[i].1)),
            Err(_) => self.in_snapshot(id).map(i64::from),
        }
    }

    /// Records `seq` for `id`; `false` when it was already delivered.
    fn advance(&mut self, id: ExecutionId, seq: i64) -> bool {
        let seq = seq32(seq);
        match self.last.binary_search_by_key(&id, |e| e.0) {
            Ok(i) if self.last[i].1 >= seq => false,
            Ok(i) => {
                self.last[i].1 = seq;
                true
            }
            Err(_) if self.in_snapshot(id).is_some_and(|s| s >= seq) => false,
            Err(i) => {
                self.last.insert(i, (id, seq, self.seen));
                self.seen += 1;
                // Forget in bulk, so the pass is paid once per KEPT / 8 executions: keep
                // the KEPT seen last (this one among them), stamps renumbered from 0.
                if self.last.len() > Self::KEPT + Self::KEPT / 8 {
                    let cutoff = self.seen - Self::KEPT as u32;
                    self.last.retain(|e| e.2 >= cutoff);
                    for e in &mut self.last {
                        e.2 -= cutoff;
                    }
                    self.seen = Self::KEPT as u32;
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_table_is_shared_by_equal_snapshots_and_its_entries_hold() {
        let ids: Vec<ExecutionId> = (0..4).map(|_| ExecutionId::new()).collect();
        // Unordered with a repeat: tables are sorted and each id kept once.
        let a = SnapshotIndex::intern([(ids[2], 5), (ids[0], 3), (ids[2], 5)].into_iter())
            .expect("a table");
        let b = SnapshotIndex::intern([(ids[0], 3), (ids[2], 5)].into_iter()).expect("a table");
        assert!(Arc::ptr_eq(&a, &b), "equal snapshots share one table");
        assert_eq!(a.len(), 2);
        let c = SnapshotIndex::intern([(ids[0], 4), (ids[2], 5)].into_iter()).expect("a table");
        assert!(
            !Arc::ptr_eq(&a, &c),
            "another sequence number: another table"
        );
        assert!(SnapshotIndex::intern(std::iter::empty()).is_none());

        // Two streams over one table: each advances on its own.
        let mut one = SeqTracker::over(Some(a.clone()));
        let mut two = SeqTracker::over(Some(b));
        assert_eq!(one.last(ids[2]), Some(5));
        assert!(!one.advance(ids[2], 5), "the snapshot's own event");
        assert!(!one.advance(ids[2], 4), "older than the snapshot");
        assert!(one.advance(ids[2], 6));
        assert_eq!(one.last(ids[2]), Some(6));
        assert!(!one.advance(ids[2], 6));
        assert_eq!(
            two.last(ids[2]),
            Some(5),
            "the other stream is where it was"
        );
        assert!(two.advance(ids[2], 6));
        assert_eq!(one.last(ids[1]), None);
        assert!(one.advance(ids[1], 1));
        assert_eq!(
            **a,
            [(ids[0], 3), (ids[2], 5)][..],
            "the table never changes"
        );
        // A table no stream holds is gone: an equal snapshot later gets a new one.
        let dead = Arc::downgrade(&a);
        drop((one, two, a, c));
        assert!(dead.upgrade().is_none());
        let again = SnapshotIndex::intern([(ids[0], 3), (ids[2], 5)].into_iter()).expect("a table");
        assert_eq!(Arc::strong_count(&again), 1);
        // A repeated id keeps its highest sequence number.
        let d = SnapshotIndex::intern([(ids[3], 1), (ids[3], 4), (ids[3], 2)].into_iter())
            .expect("a table");
        assert_eq!(**d, [(ids[3], 4)][..]);
        // Dead entries are swept as the index grows: it stays near twice the live tables.
        for _ in 0..1_000 {
            drop(SnapshotIndex::intern([(ExecutionId::new(), 1)].into_iter()));
        }
        let index = SNAPSHOTS.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            index.tables.len() <= 2 * index.sweep_at,
            "{}",
            index.tables.len()
        );
    }

    #[test]
    fn the_tracker_keeps_order_refuses_repeats_and_forgets_the_oldest() {
        let ids: Vec<ExecutionId> = (0..5).map(|_| ExecutionId::new()).collect();
        let mut t = SeqTracker::default();
        // Out of order arrivals stay findable.
        assert!(t.advance(ids[3], 1));
        assert!(t.advance(ids[1], 4));
        assert!(t.advance(ids[4], 2));
        assert_eq!(t.last(ids[1]), Some(4));
        assert_eq!(t.last(ids[3]), Some(1));
        assert_eq!(t.last(ids[0]), None);
        assert!(!t.advance(ids[1], 4), "a repeat");
        assert!(!t.advance(ids[1], 3), "an older one");
        assert!(t.advance(ids[1], 5));
        assert_eq!(t.last(ids[1]), Some(5));
        // Past the bound, the oldest ids go first, down to KEPT.
        let mut t = SeqTracker::default();
        let mut many: Vec<ExecutionId> = (0..SeqTracker::KEPT + SeqTracker::KEPT / 8 + 1)
            .map(|_| ExecutionId::new())
            .collect();
        many.sort();
        for id in &many {
            assert!(t.advance(*id, 1));
        }
        assert_eq!(t.last.len(), SeqTracker::KEPT);
        assert!(
            t.last.iter().all(|e| (e.2 as usize) < SeqTracker::KEPT),
            "stamps are renumbered from 0"
        );
        assert_eq!(std::mem::size_of_val(&t.last[0]), 24);
        assert_eq!(t.last(many[0]), None);
        assert_eq!(t.last(*many.last().expect("ids")), Some(1));
        assert_eq!(t.last(many[many.len() - SeqTracker::KEPT]), Some(1));
        // An old execution seen again after it was forgotten counts as seen now: it
        // outlives the next pass, which forgets executions first seen before it.
        assert!(t.advance(many[0], 7));
        // With it, KEPT / 8 + 1 new entries: one pass.
        for _ in 0..SeqTracker::KEPT / 8 {
            assert!(t.advance(ExecutionId::new(), 1));
        }
        assert_eq!(t.last.len(), SeqTracker::KEPT);
        assert_eq!(t.last(many[0]), Some(7));
        assert!(
            !t.advance(many[0], 7),
            "still remembered: not delivered twice"
        );
        assert_eq!(t.last(many[many.len() - SeqTracker::KEPT]), None);
    }
}
