//! The queue: the claim statement, lease renewal and release, running counts.

use super::*;

/// The concurrency slots execution `e`'s tenant holds, as SQL: RUNNING executions (the
/// status given as `$running`) and QUEUED ones under a lease live at `$now`, the latter
/// through `executions_leased_queued_idx` (`$hint` may name it). One text for the claim
/// and its PostgreSQL re-check, so the two count alike.
macro_rules! slots_held {
    ($running:literal, $now:literal, $hint:literal) => {
        concat!(
            "((SELECT COUNT(*) FROM executions r \
               WHERE r.tenant_id = e.tenant_id AND r.status = ",
            $running,
            ") + (SELECT COUNT(*) FROM executions q ",
            $hint,
            " WHERE q.tenant_id = e.tenant_id AND q.status = 'QUEUED' \
               AND q.lease_owner IS NOT NULL AND q.lease_expires_at >= ",
            $now,
            "))"
        )
    };
}

/// The claim statement. `$1` owner, `$2` lease end, `$3` now, `$4` the claiming node,
/// `$5` QUEUED, `$6` RUNNING (statuses are bound, never written as literals).
/// Takes a RUNNING execution whose lease lapsed or was released (its worker died or shut
/// down), else the oldest QUEUED one whose tenant is under its concurrency quota, and
/// leases it. Executions that need GPUs go only to the node the placer chose.
///
/// The concurrency quota counts RUNNING executions and QUEUED ones a driver holds a live
/// lease on: a driver writes RUNNING only with its first write, which it holds back while
/// it runs inline steps (for a workflow of inline steps only, until the execution ends),
/// so counting RUNNING alone let a second claim take a tenant's last slot again in that
/// window. The leased QUEUED rows are counted through `executions_leased_queued_idx`, a
/// partial index that holds only them (a few per worker) keyed by tenant and lease end, so
/// the count does not grow with the queue and reads no table row; its predicate is
/// matched by the literal `'QUEUED'` (a bound status would not let the planner use it).
///
/// Each arm walks `executions_claim_idx` `(status, created_at, id)` in claim order and
/// stops at its first runnable row, so a claim costs the same with ten or a million
/// executions queued (one arm over both statuses had to sort the whole queue).
pub(super) const CLAIM_SQL: &str = concat!(
    "UPDATE executions SET lease_owner = $1, lease_expires_at = $2, \
    claims = claims + 1, updated_at = $3 \
    WHERE id = COALESCE( \
      (SELECT e.id FROM executions e \
        WHERE e.status = $6 AND (e.lease_owner IS NULL OR e.lease_expires_at < $3) \
          AND NOT EXISTS (SELECT 1 FROM execution_placements p WHERE p.execution_id = e.id \
                          AND (p.node_id IS NULL OR p.node_id <> $4)) \
        ORDER BY e.status, e.created_at, e.id LIMIT 1 {LOCK}), \
      (SELECT e.id FROM executions e \
        WHERE e.status = $5 AND (e.lease_owner IS NULL OR e.lease_expires_at < $3) \
          AND ",
    slots_held!("$6", "$3", "{LEASED}"),
    " \
              < (SELECT t.max_concurrent_executions FROM tenants t WHERE t.id = e.tenant_id) \
          AND NOT EXISTS (SELECT 1 FROM execution_placements p WHERE p.execution_id = e.id \
                          AND (p.node_id IS NULL OR p.node_id <> $4)) \
        ORDER BY e.status, e.created_at, e.id LIMIT 1 {LOCK})) \
    RETURNING *"
);

/// [`CLAIM_SQL`] for PostgreSQL: rows locked, skipping those other claims hold.
static CLAIM_PG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CLAIM_SQL
        .replace("{LOCK}", "FOR UPDATE SKIP LOCKED")
        .replace("{LEASED}", "")
});

/// [`CLAIM_SQL`] for SQLite: no row locks (one writer), `?N` parameters, and the leased
/// count named to its partial index (without statistics SQLite's planner prefers
/// `(tenant_id, status)`, which walks the tenant's whole queue).
static CLAIM_SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    CLAIM_SQL
        .replace("{LOCK}", "")
        .replace("{LEASED}", "INDEXED BY executions_leased_queued_idx")
        .replace('$', "?")
});

/// After a PostgreSQL claim commits, in the same round trip: the execution `$1` just
/// claimed from the queue, if its tenant is now over its concurrency quota. Claims that
/// run at the same moment each get a different row (SKIP LOCKED) and none sees the
/// others' uncommitted leases, so each may count the tenant under its quota; this
/// statement runs after the claim's `COMMIT`, so it sees every claim committed before it.
/// A claim that finds its tenant over gives its lease back: of the claims that keep
/// theirs, the one that checked last saw all of them, so they are never more than the
/// quota (two racers may both give theirs back; the next claim takes it). SQLite needs
/// none of this: its claims take turns under the one writer.
const OVER_QUOTA_PG: &str = concat!(
    "SELECT e.id FROM executions e \
     WHERE e.status = 'QUEUED' AND e.lease_owner = $1 AND ",
    slots_held!("'RUNNING'", "$2", ""),
    " > (SELECT t.max_concurrent_executions FROM tenants t WHERE t.id = e.tenant_id)"
);

/// A row of [`OVER_QUOTA_PG`].
#[derive(diesel::QueryableByName)]
struct OverQuota {
    #[diesel(sql_type = Text)]
    id: String,
}

/// The claim statement with its parameters, the same for both backends.
macro_rules! claim_query {
    ($sql:expr, $owner:expr, $until:expr, $now:expr, $node:expr) => {
        crate::db::cached(
            diesel::sql_query($sql)
                .bind::<Text, _>($owner)
                .bind::<Timestamp, _>($until)
                .bind::<Timestamp, _>($now)
                .bind::<Text, _>($node)
                .bind::<Text, _>(ExecutionStatus::Queued)
                .bind::<Text, _>(ExecutionStatus::Running),
        )
    };
}

/// Leases the next runnable execution to `owner` until `until`, or returns `None`.
/// PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait on each other
/// and never take the same row. SQLite: the single-statement UPDATE runs under the
/// database's one writer lock, which gives the same guarantee.
pub async fn claim(
    db: &DbPool,
    owner: &str,
    node: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> AppResult<Option<ExecutionRow>> {
    Ok(match db {
        DbPool::Postgres(pool) => {
            // One round trip: BEGIN, the planner settings, the claim and COMMIT are sent
            // together.
            let tx = crate::db::conn::PipelinedTx::checkout(pool).await?;
            let c = tx.conn();
            let (began, claimed, ended, over) = futures_util::join!(
                tx.begin(),
                futures_util::future::try_join(
                    // Walk the claim index in order and stop at the first runnable row,
                    // even when the statistics are stale (a queue that just grew looks
                    // nearly empty to the planner, which then sorts every queued row and
                    // runs the quota check on each: 11 ms per claim at 3,000 queued,
                    // measured). And the claim commits without waiting for its WAL
                    // flush (the flush is most of a claim's time on this disk). That
                    // loses nothing a driver acted on: a step with effects outside (a
                    // task of its own, `Engine::run_attempts`) starts only after its
                    // driver committed the step's start durably under this lease, and
                    // that commit's flush covers the claim, which came before it in the
                    // WAL. Before it, a driver has only run inline steps, which have no
                    // effects and whose held writes are applied in a durable commit too
                    // (before the first step that runs as a task, or at the end). A
                    // claim lost to a database crash therefore leaves the
                    // execution claimable again, as a claim whose worker died does;
                    // its old driver's next write fails the lease check.
                    // (`engine_writes::inline_steps_are_written_in_one_transaction...`
                    // checks that a waiting step's start is visible while it waits.)
                    crate::db::cached(diesel::sql_query(
                        "SELECT set_config('enable_sort', 'off', true), \
                         set_config('enable_bitmapscan', 'off', true), \
                         set_config('synchronous_commit', 'off', true)",
                    ))
                    .execute(&mut &*c),
                    claim_query!(CLAIM_PG.as_str(), owner, until, now, node)
                        .get_results::<ExecutionRow>(&mut &*c),
                ),
                tx.commit(),
                crate::db::cached(
                    diesel::sql_query(OVER_QUOTA_PG)
                        .bind::<Text, _>(owner)
                        .bind::<Timestamp, _>(now)
                )
                .get_results::<OverQuota>(&mut &*c),
            );
            tx.ended(began.is_ok() && claimed.is_ok() && ended.is_ok());
            began?;
            let (_, rows) = claimed?;
            ended?;
            let row = rows.into_iter().next();
            match (row, over) {
                (Some(row), Ok(over)) if !over.is_empty() => {
                    tracing::debug!(
                        execution = %over[0].id,
                        "claimed past its tenant's concurrency quota in a race; given back"
                    );
                    release(db, row.id, owner).await?;
                    None
                }
                (row, Ok(_)) => row,
                // The check could not run: the claim stands (its lease is committed; an
                // unused one would hold the slot until it lapses).
                (row, Err(e)) => {
                    tracing::warn!(error = %e, "the claim's quota check failed");
                    row
                }
            }
        }
        DbPool::Sqlite(pool) => {
            let _turn = db.writer_turn().await?;
            let mut conn = pool.get().await?;
            claim_query!(CLAIM_SQLITE.as_str(), owner, until, now, node)
                .get_result::<ExecutionRow>(&mut *conn)
                .await
                .optional()?
        }
    })
}

/// [`claim`] inside a SQLite write transaction the caller holds (`None` on PostgreSQL,
/// whose transactions here are tenant-scoped and whose claims lock rows instead): a
/// driver that finishes an execution claims the next one in the same transaction, so
/// draining a queue costs one transaction per execution, not two.
pub async fn claim_in_tx(
    conn: &mut Conn<'_>,
    owner: &str,
    node: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> AppResult<Option<ExecutionRow>> {
    let crate::db::conn::Inner::Sqlite(c) = conn.inner() else {
        return Ok(None);
    };
    let c: &mut crate::db::SqliteConn = c;
    Ok(claim_query!(CLAIM_SQLITE.as_str(), owner, until, now, node)
        .get_result::<ExecutionRow>(c)
        .await
        .optional()?)
}

/// Extends `owner`'s lease to `until`; `false` when it no longer holds it, the lease
/// already ran out at `now` (another worker may have claimed it meanwhile: an expired
/// lease is never revived), or the execution ended.
pub async fn renew(
    db: &DbPool,
    id: ExecutionId,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> AppResult<bool> {
    let n = crate::db_run!(db, |conn| {
        diesel::update(
            executions::table
                .filter(executions::id.eq(id))
                .filter(executions::lease_owner.eq(owner))
                .filter(executions::lease_expires_at.ge(now))
                .filter(
                    executions::status.eq_any([ExecutionStatus::Queued, ExecutionStatus::Running]),
                ),
        )
        .set(executions::lease_expires_at.eq(until))
        .execute(conn)
        .await?
    });
    Ok(n == 1)
}

/// Gives the lease back so another worker can resume the execution at once: idle
/// workers of other processes are woken through `agentplane_queue` (PostgreSQL); the
/// caller wakes its own process's.
pub async fn release(db: &DbPool, id: ExecutionId, owner: &str) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        let n = diesel::update(
            executions::table
                .filter(executions::id.eq(id))
                .filter(executions::lease_owner.eq(owner)),
        )
        .set((
            executions::lease_owner.eq(None::<String>),
            executions::lease_expires_at.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)
        .await?;
        if n > 0 {
            conn.notify(crate::events::QUEUE_CHANNEL, "").await?;
        }
    });
    Ok(())
}

/// Executions of `tenant` that hold a concurrency slot as of `now`, as the claim counts
/// them (for `waitingReason`): RUNNING ones, and QUEUED ones a driver holds a live lease
/// on (it has not written RUNNING yet).
pub async fn running_count(db: &DbPool, tenant: TenantId, now: NaiveDateTime) -> AppResult<i64> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        let running: i64 = executions::table
            .filter(executions::tenant_id.eq(tenant))
            .filter(executions::status.eq(ExecutionStatus::Running))
            .count()
            .get_result(&mut *conn)
            .await?;
        let leased: i64 = executions::table
            .filter(executions::tenant_id.eq(tenant))
            .filter(executions::status.eq(ExecutionStatus::Queued))
            .filter(executions::lease_owner.is_not_null())
            .filter(executions::lease_expires_at.ge(now))
            .count()
            .get_result(&mut *conn)
            .await?;
        running + leased
    }))
}

/// Every execution's id and status that is not finished (engine bookkeeping, tests).
pub async fn active_ids(db: &DbPool) -> AppResult<Vec<(ExecutionId, String)>> {
    Ok(crate::db_run!(db, |conn| {
        executions::table
            .filter(executions::status.eq_any([ExecutionStatus::Queued, ExecutionStatus::Running]))
            .select((executions::id, executions::status))
            .load(conn)
            .await?
    }))
}
