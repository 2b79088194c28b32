//! A driver's held-back writes, applied together: folded in memory, then written as one
//! row update per changed row and one insert of every event.

use std::collections::HashMap;

use super::*;

/// Event inserts of at most this many rows keep their prepared statement (one per count).
const CACHED_EVENT_ROWS: usize = 16;

/// One of a driver's writes, held back to be applied with others in one transaction
/// (see [`apply`]).
#[derive(Debug, Clone)]
pub enum Write {
    /// A status change (see [`transition`]), at `at`.
    Transition {
        /// The new status.
        to: ExecutionStatus,
        /// Its extra columns.
        patch: Patch,
        /// When it happened.
        at: NaiveDateTime,
    },
    /// A step change (see [`record_step`]), at `at`.
    Step {
        /// The change.
        change: StepChange,
        /// When it happened.
        at: NaiveDateTime,
    },
}

/// What [`apply`] wrote: each event with the execution row of the transition that wrote
/// it (`None` for step events).
pub type Applied = Vec<(ExecutionEvent, Option<ExecutionRow>)>;

/// Applies `writes` in order, all under `owner`'s lease, in the caller's transaction: the
/// same rows and events as applying each with [`transition`] and [`record_step`], in one
/// commit. `None` when the first is refused (lease lost, execution moved on: nothing is
/// written); a later refusal cannot happen, since the first statement holds the
/// execution's row lock, and is an error that rolls everything back.
///
/// The writes are folded in memory, so whatever their number the transaction costs one
/// statement to lock the execution, one to read its steps, one update per step that
/// changed, one update of the execution and one insert of all the events (a one-step
/// execution: 5, where applying each write on its own took 14).
pub async fn apply(
    conn: &mut Conn<'_>,
    id: ExecutionId,
    owner: &str,
    writes: &[Write],
    envelope: &(dyn Fn(&ExecutionEvent) -> String + Sync),
) -> AppResult<Option<Applied>> {
    let Some(first) = writes.first() else {
        return Ok(Some(Vec::new()));
    };
    let sources = match first {
        Write::Transition { to, .. } => ExecutionStatus::sources_of(*to),
        Write::Step { .. } => vec![ExecutionStatus::Running],
    };
    let sources: Vec<&str> = sources.into_iter().map(ExecutionStatus::as_str).collect();
    // The statements, the same on both backends; PostgreSQL sends each group of them in
    // one round trip (pipelined), SQLite runs them one after another.
    //
    // Read the row under the guard first: on PostgreSQL locking it (`FOR NO KEY UPDATE`,
    // the lock an update of it takes, without the new row version), on SQLite inside the
    // write transaction that already holds the database's one write lock.
    macro_rules! guarded {
        () => {
            executions::table
                .filter(executions::id.eq(id))
                .filter(executions::status.eq_any(&sources))
                .filter(executions::lease_owner.eq(owner))
                .select(ExecutionRow::as_select())
        };
    }
    macro_rules! steps {
        () => {
            execution_steps::table
                .filter(execution_steps::execution_id.eq(id))
                .select(StepRunRow::as_select())
                .order(execution_steps::position.asc())
        };
    }
    macro_rules! step_update {
        ($s:expr) => {{
            let s: &StepRunRow = $s;
            crate::db::cached(
                diesel::update(execution_steps::table.filter(execution_steps::id.eq(s.id))).set((
                    execution_steps::status.eq(s.status.as_str()),
                    execution_steps::attempt.eq(s.attempt),
                    execution_steps::started_at.eq(s.started_at),
                    execution_steps::finished_at.eq(s.finished_at),
                    execution_steps::output.eq(&s.output),
                    execution_steps::error.eq(&s.error),
                    execution_steps::prompt_tokens.eq(s.prompt_tokens),
                    execution_steps::completion_tokens.eq(s.completion_tokens),
                    execution_steps::cost_usd.eq(s.cost_usd),
                    execution_steps::unpriced_calls.eq(s.unpriced_calls),
                )),
            )
        }};
    }
    macro_rules! row_update {
        ($row:expr) => {{
            let row: &ExecutionRow = $row;
            crate::db::cached(
                diesel::update(executions::table.filter(executions::id.eq(id))).set((
                    executions::status.eq(row.status.as_str()),
                    executions::seq.eq(row.seq),
                    executions::updated_at.eq(row.updated_at),
                    executions::error.eq(&row.error),
                    executions::output.eq(&row.output),
                    executions::started_at.eq(row.started_at),
                    executions::deadline_at.eq(row.deadline_at),
                    executions::finished_at.eq(row.finished_at),
                    executions::lease_owner.eq(&row.lease_owner),
                    executions::lease_expires_at.eq(row.lease_expires_at),
                    executions::prompt_tokens.eq(row.prompt_tokens),
                    executions::completion_tokens.eq(row.completion_tokens),
                    executions::cost_usd.eq(row.cost_usd),
                    executions::unpriced_calls.eq(row.unpriced_calls),
                )),
            )
        }};
    }
    let mut audits = Vec::new();
    let events = match crate::db::Conn::inner(&mut *conn) {
        crate::db::conn::Inner::Postgres(pgm) => {
            use futures_util::future::{try_join, try_join_all};
            let pgm: &mut diesel_async::AsyncPgConnection = pgm;
            let pg: &diesel_async::AsyncPgConnection = pgm;
            // Sent together: the server runs them in order, so the steps are read under
            // the row lock (and ignored when the guard refused).
            let (locked, steps) = try_join(
                crate::db::cached(guarded!().for_no_key_update()).load::<ExecutionRow>(&mut &*pg),
                steps!().load::<StepRunRow>(&mut &*pg),
            )
            .await?;
            let Some(row) = locked.into_iter().next() else {
                return Ok(None);
            };
            let (row, steps, events) = fold(row, steps, writes, &mut audits)?;
            let rows = event_rows(&events)?;
            // Every write in one round trip: one update per changed step, the
            // execution's row, all the events.
            let mut sent = Vec::with_capacity(steps.len() + 2);
            for s in steps.iter().filter(|s| s.changed) {
                sent.push(step_update!(&s.row).execute(&mut &*pg));
            }
            sent.push(row_update!(&row).execute(&mut &*pg));
            if !rows.is_empty() {
                sent.push(
                    diesel::insert_into(execution_events::table)
                        .values(&rows)
                        .execute(&mut &*pg),
                );
            }
            try_join_all(sent).await?;
            for (e, _) in &events {
                notify_pg(pgm, &envelope(e)).await?;
            }
            events
        }
        crate::db::conn::Inner::Sqlite(lite) => {
            let lite: &mut crate::db::SqliteConn = lite;
            let Some(row) = crate::db::cached(guarded!().limit(1))
                .get_result(lite)
                .await
                .optional()?
            else {
                return Ok(None);
            };
            let steps: Vec<StepRunRow> = steps!().load(lite).await?;
            let (row, steps, events) = fold(row, steps, writes, &mut audits)?;
            for s in steps.iter().filter(|s| s.changed) {
                step_update!(&s.row).execute(lite).await?;
            }
            row_update!(&row).execute(lite).await?;
            let rows = event_rows(&events)?;
            // diesel-async has no multi-row INSERT for SQLite: the same statement, by hand.
            // 6 parameters a row, well under SQLite's 32,766 per statement.
            for chunk in rows.chunks(1000) {
                let values = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
                let mut q = diesel::sql_query(format!(
                    "INSERT INTO execution_events \
                     (id, tenant_id, execution_id, seq, payload, created_at) VALUES {values}"
                ))
                .into_boxed::<diesel::sqlite::Sqlite>();
                for r in chunk {
                    q = q
                        .bind::<Text, _>(r.id.clone())
                        .bind::<Text, _>(r.tenant_id)
                        .bind::<Text, _>(r.execution_id)
                        .bind::<diesel::sql_types::BigInt, _>(r.seq)
                        .bind::<Text, _>(r.payload.clone())
                        .bind::<Timestamp, _>(r.created_at);
                }
                // A few shapes cover nearly every apply (a one-step execution writes 4
                // events): those are prepared once per connection.
                if chunk.len() <= CACHED_EVENT_ROWS {
                    crate::db::cached(q).execute(lite).await?;
                } else {
                    q.execute(lite).await?;
                }
            }
            events
        }
    };
    for a in &audits {
        crate::audit::append(conn, a).await?;
    }
    Ok(Some(events))
}

/// The writes folded into the locked row and its steps: the row and steps as they leave
/// them, and their events.
fn fold(
    row: ExecutionRow,
    steps: Vec<StepRunRow>,
    writes: &[Write],
    audits: &mut Vec<crate::audit::Entry>,
) -> AppResult<(ExecutionRow, Vec<FoldedStep>, Applied)> {
    let mut fold = Fold::new(row, steps);
    for w in writes {
        fold.write(w, audits)?;
    }
    Ok((fold.row, fold.steps, fold.events))
}

/// The stored rows of `events`.
fn event_rows(events: &Applied) -> AppResult<Vec<EventRow>> {
    events.iter().map(|(e, _)| event_row(e)).collect()
}

/// A step row as the fold leaves it, and whether the fold changed it.
struct FoldedStep {
    row: StepRunRow,
    changed: bool,
}

/// The execution and its steps as the writes so far leave them, with their events.
struct Fold {
    row: ExecutionRow,
    steps: Vec<FoldedStep>,
    /// Index into `steps` by step id.
    by_id: HashMap<String, usize>,
    events: Applied,
}

impl Fold {
    fn new(row: ExecutionRow, steps: Vec<StepRunRow>) -> Self {
        let by_id = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.step_id.clone(), i))
            .collect();
        Self {
            row,
            steps: steps
                .into_iter()
                .map(|row| FoldedStep {
                    row,
                    changed: false,
                })
                .collect(),
            by_id,
            events: Vec::new(),
        }
    }

    fn event(&mut self, at: NaiveDateTime) -> ExecutionEvent {
        self.row.seq += 1;
        ExecutionEvent {
            tenant_id: self.row.tenant_id,
            execution_id: self.row.id,
            workflow_id: self.row.workflow_id,
            seq: self.row.seq,
            kind: EventKind::StepChanged,
            status: self.row.status,
            step_id: None,
            step_status: None,
            attempt: None,
            error: None,
            at: utc(at),
        }
    }

    fn refused(&self) -> AppError {
        AppError::internal(anyhow::anyhow!(
            "a held-back write of execution {} was refused after the first applied",
            self.row.id
        ))
    }

    /// Folds one write in, as [`transition`] or [`record_step`] would write it.
    fn write(&mut self, w: &Write, audits: &mut Vec<crate::audit::Entry>) -> AppResult<()> {
        match w {
            Write::Step { change, at } => self.step(change, *at),
            Write::Transition { to, patch, at } => {
                if let Some(a) = &patch.audit {
                    audits.push(a.clone());
                }
                self.transition(*to, patch, *at)
            }
        }
    }

    fn step(&mut self, change: &StepChange, at: NaiveDateTime) -> AppResult<()> {
        if self.row.status != ExecutionStatus::Running {
            return Err(self.refused());
        }
        let Some(&i) = self.by_id.get(&change.step_id) else {
            return Err(AppError::internal(anyhow::anyhow!(
                "execution {} has no step {:?}",
                self.row.id,
                change.step_id
            )));
        };
        let r = &mut self.row;
        r.prompt_tokens += change.prompt_tokens;
        r.completion_tokens += change.completion_tokens;
        r.cost_usd += change.cost_usd;
        r.unpriced_calls += change.unpriced_calls;
        r.updated_at = at;
        let s = &mut self.steps[i];
        s.changed = true;
        let s = &mut s.row;
        s.status = change.status;
        s.attempt = change.attempt;
        s.error.clone_from(&change.error);
        if let Some(start) = change.started_at {
            s.started_at = Some(start);
            s.finished_at = None;
        }
        if let Some(t) = change.finished_at {
            s.finished_at = Some(t);
            s.output.clone_from(&change.output);
            s.prompt_tokens += change.prompt_tokens;
            s.completion_tokens += change.completion_tokens;
            s.cost_usd += change.cost_usd;
            s.unpriced_calls += change.unpriced_calls;
        }
        let mut ev = self.event(at);
        ev.step_id = Some(change.step_id.clone());
        ev.step_status = Some(change.status);
        ev.attempt = Some(change.attempt);
        ev.error.clone_from(&change.error);
        self.events.push((ev, None));
        Ok(())
    }

    fn transition(
        &mut self,
        to: ExecutionStatus,
        patch: &Patch,
        at: NaiveDateTime,
    ) -> AppResult<()> {
        if !self.row.status.may_become(to) {
            return Err(self.refused());
        }
        let terminal = to.is_terminal();
        let first = self.events.len();
        if terminal {
            // Unfinished steps end with it, in definition order, each with its event.
            for i in 0..self.steps.len() {
                let s = &self.steps[i].row;
                if s.status.is_terminal() {
                    continue;
                }
                let new_status = match s.status {
                    StepStatus::Pending => StepStatus::Skipped,
                    _ => StepStatus::Cancelled,
                };
                let (step_id, attempt) = (s.step_id.clone(), s.attempt);
                let s = &mut self.steps[i];
                s.changed = true;
                s.row.status = new_status;
                s.row.finished_at = Some(at);
                let mut ev = self.event(at);
                ev.step_id = Some(step_id);
                ev.step_status = Some(new_status);
                ev.attempt = Some(attempt);
                ev.status = to;
                self.events.push((ev, None));
            }
        }
        let mut ev = self.event(at);
        ev.kind = EventKind::StatusChanged;
        ev.status = to;
        ev.error.clone_from(&patch.error);
        let r = &mut self.row;
        r.status = to;
        r.updated_at = at;
        r.error = patch.error.clone().or(r.error.take());
        r.output = patch.output.clone().or(r.output.take());
        if to == ExecutionStatus::Running {
            r.started_at = r.started_at.or(Some(at));
        }
        r.deadline_at = patch.deadline_at.or(r.deadline_at);
        if terminal {
            r.finished_at = Some(at);
            r.lease_owner = None;
            r.lease_expires_at = None;
        }
        self.events.push((ev, None));
        // The transition's events carry the row as it left it.
        let snapshot = self.row.clone();
        for (_, row) in &mut self.events[first..] {
            *row = Some(snapshot.clone());
        }
        Ok(())
    }
}
