//! Appending to a chain: inside the caller's transaction (`append`), in one of its own
//! (`record`, for events that change nothing), or many at once (`append_many`, seeding).

use super::*;
use crate::audit::chain::KeysOf as _;

/// Appends an [`Entry`] to its tenant's chain on `$conn`, inside the caller's transaction
/// (a `DbPool::tx`). Evaluates to `Result<RecordRow, AppError>`. A macro because the body is
/// expanded once per backend. Serialization: the chain head row is locked first (an
/// upsert whose update is a no-op; SQLite's write transaction already serializes).
macro_rules! audit_append {
    ($conn:expr, $entry:expr) => {{
        async {
            use diesel::prelude::*;
            use diesel_async::RunQueryDsl;
            use $crate::db::schema::{audit_actors, audit_heads, audit_log};
            let e: &$crate::audit::Entry = $entry;
            // One statement creates the head on a tenant's first record, or takes the
            // existing head's row lock (a no-op update), and reads it.
            let (seq, prev): (i64, String) = $crate::db::cached(
                diesel::insert_into(audit_heads::table)
                    .values((
                        audit_heads::tenant_id.eq(&e.tenant_id),
                        audit_heads::seq.eq(0i64),
                        audit_heads::hash.eq($crate::audit::GENESIS),
                        audit_heads::checkpoint_seq.eq(0i64),
                        audit_heads::checkpoint_hash.eq($crate::audit::GENESIS),
                    ))
                    .on_conflict(audit_heads::tenant_id)
                    .do_update()
                    .set(audit_heads::seq.eq(audit_heads::seq))
                    .returning((audit_heads::seq, audit_heads::hash)),
            )
            .get_result(&mut *$conn)
            .await?;
            let pseudonym: Option<String> = match &e.actor_ref {
                None => None,
                Some(r) => {
                    diesel::insert_into(audit_actors::table)
                        .values((
                            audit_actors::pseudonym.eq(uuid::Uuid::now_v7().to_string()),
                            audit_actors::tenant_id.eq(&e.tenant_id),
                            audit_actors::actor_ref.eq(r),
                            audit_actors::created_at.eq(e.at),
                        ))
                        .on_conflict_do_nothing()
                        .execute(&mut *$conn)
                        .await?;
                    Some(
                        audit_actors::table
                            .filter(audit_actors::tenant_id.eq(&e.tenant_id))
                            .filter(audit_actors::actor_ref.eq(r))
                            .select(audit_actors::pseudonym)
                            .first::<String>(&mut *$conn)
                            .await?,
                    )
                }
            };
            let rec = $crate::audit::RecordRow::seal(e, pseudonym, seq + 1, prev);
            diesel::insert_into(audit_log::table)
                .values(&rec)
                .execute(&mut *$conn)
                .await?;
            $crate::db::cached(diesel::update(audit_heads::table.find(&e.tenant_id)).set((
                audit_heads::seq.eq(rec.seq),
                audit_heads::hash.eq(&rec.hash),
            )))
            .execute(&mut *$conn)
            .await?;
            Ok::<_, $crate::error::AppError>(rec)
        }
        .await
    }};
}

/// Appends `entry` to its tenant's chain on the caller's connection, inside the caller's
/// transaction ([`crate::db::DbPool::tx`]): the record commits with the change it
/// describes, or neither does. Takes the tenant's chain lock (the head row) first thing,
/// so writers in one tenant queue behind each other until the transaction ends.
pub async fn append(conn: &mut crate::db::Conn<'_>, entry: &Entry) -> AppResult<RecordRow> {
    let keys = conn.chain_keys();
    crate::metrics::audit_appended(entry.severity.as_str(), 1);
    chain::CURRENT
        .scope(keys, async {
            crate::on_conn!(conn, |c| audit_append!(c, entry))
        })
        .await
}

/// Appends a record in a transaction of its own: for events that change nothing.
pub async fn record(db: &DbPool, entry: &Entry) -> AppResult<RecordRow> {
    db.tx(&entry.tenant_id, async |conn| append(conn, entry).await)
        .await
}

/// Appends many entries to one tenant's chain in a single transaction, in order: for
/// bulk imports and for seeding benchmarks and tests. Rows go in multi-row inserts of
/// 1000 on PostgreSQL and one statement each on SQLite (same transaction). Returns the
/// new head sequence number.
pub async fn append_many(
    db: &DbPool,
    tenant: crate::db::ids::TenantId,
    entries: &[Entry],
) -> AppResult<i64> {
    use crate::db::schema::{audit_actors, audit_heads};
    use diesel::prelude::*;
    use diesel_async::{AsyncConnection as _, RunQueryDsl};
    use std::collections::HashMap;

    if entries.iter().any(|e| e.tenant_id != tenant) {
        return Err(crate::error::AppError::bad_input(
            "entries",
            "every entry must belong to the tenant",
        ));
    }
    // Seals every record after `(seq, prev)`, resolving pseudonyms through `pseudonym`.
    fn seal_all(
        entries: &[Entry],
        mut seq: i64,
        mut prev: String,
        pseudonyms: &HashMap<String, String>,
    ) -> Vec<RecordRow> {
        entries
            .iter()
            .map(|e| {
                seq += 1;
                let ps = e
                    .actor_ref
                    .as_ref()
                    .and_then(|r| pseudonyms.get(r))
                    .cloned();
                let r = RecordRow::seal(e, ps, seq, std::mem::take(&mut prev));
                prev = r.hash.clone();
                r
            })
            .collect()
    }
    let refs: Vec<String> = {
        let mut v: Vec<String> = entries.iter().filter_map(|e| e.actor_ref.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    let at = entries.first().map(|e| e.at).unwrap_or_default();
    let t = tenant.to_owned();
    // The same statements on both backends, but PostgreSQL gets multi-row inserts.
    macro_rules! prepare {
        ($conn:expr) => {{
            diesel::insert_into(audit_heads::table)
                .values((
                    audit_heads::tenant_id.eq(&t),
                    audit_heads::seq.eq(0i64),
                    audit_heads::hash.eq(GENESIS),
                    audit_heads::checkpoint_seq.eq(0i64),
                    audit_heads::checkpoint_hash.eq(GENESIS),
                ))
                .on_conflict_do_nothing()
                .execute($conn)
                .await?;
            diesel::update(audit_heads::table.find(&t))
                .set(audit_heads::seq.eq(audit_heads::seq))
                .execute($conn)
                .await?;
            let (seq, prev): (i64, String) = audit_heads::table
                .find(&t)
                .select((audit_heads::seq, audit_heads::hash))
                .first($conn)
                .await?;
            let mut pseudonyms = HashMap::new();
            for r in &refs {
                diesel::insert_into(audit_actors::table)
                    .values((
                        audit_actors::pseudonym.eq(uuid::Uuid::now_v7().to_string()),
                        audit_actors::tenant_id.eq(&t),
                        audit_actors::actor_ref.eq(r),
                        audit_actors::created_at.eq(at),
                    ))
                    .on_conflict_do_nothing()
                    .execute($conn)
                    .await?;
                let ps: String = audit_actors::table
                    .filter(audit_actors::tenant_id.eq(&t))
                    .filter(audit_actors::actor_ref.eq(r))
                    .select(audit_actors::pseudonym)
                    .first($conn)
                    .await?;
                pseudonyms.insert(r.clone(), ps);
            }
            seal_all(entries, seq, prev, &pseudonyms)
        }};
    }
    macro_rules! finish {
        ($conn:expr, $rows:expr) => {{
            if let Some(last) = $rows.last() {
                diesel::update(audit_heads::table.find(&t))
                    .set((
                        audit_heads::seq.eq(last.seq),
                        audit_heads::hash.eq(&last.hash),
                    ))
                    .execute($conn)
                    .await?;
                Ok::<i64, crate::error::AppError>(last.seq)
            } else {
                Ok(0)
            }
        }};
    }
    let run = async {
        match db {
            DbPool::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let conn: &mut diesel_async::AsyncPgConnection = &mut pooled;
                conn.transaction(async |conn| -> AppResult<i64> {
                    crate::db::set_tenant(conn, &t.to_string()).await?;
                    let rows = prepare!(&mut *conn);
                    for chunk in rows.chunks(1000) {
                        diesel::insert_into(audit_log::table)
                            .values(chunk)
                            .execute(&mut *conn)
                            .await?;
                    }
                    finish!(&mut *conn, rows)
                })
                .await
            }
            DbPool::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let conn: &mut crate::db::SqliteConn = &mut pooled;
                crate::db::sqlite_immediate(conn, async |conn| -> AppResult<i64> {
                    let rows = prepare!(&mut *conn);
                    for r in &rows {
                        diesel::insert_into(audit_log::table)
                            .values(r)
                            .execute(&mut *conn)
                            .await?;
                    }
                    finish!(&mut *conn, rows)
                })
                .await
            }
        }
    };
    chain::CURRENT.scope(db.chain_keys(), run).await
}
