//! Verifying a tenant's chain: hashes, signatures, sequence, checkpoints.

use super::*;
use crate::audit::chain::KeysOf as _;

/// The result of checking a chain.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Records checked.
    pub checked: i64,
    /// The first problem: (sequence number, record id if it exists, what is wrong).
    pub first_broken: Option<(i64, Option<String>, String)>,
    /// The chain's head as stored: (sequence number, hash).
    pub head: Option<(i64, String)>,
}

/// Checks `tenant`'s chain (records created in `[from, to]`, all when unset): every
/// record's hash matches its content (keyed hashes under the chain keys), each links to
/// the one before, no sequence number is missing, a keyed retention checkpoint carries a
/// valid signature, the chain still holds every `pinned` checkpoint published earlier,
/// and it ends where its head says. Reads in batches of 1000.
pub async fn verify(
    db: &DbPool,
    tenant: &str,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    pinned: &[chain::Checkpoint],
) -> AppResult<Verification> {
    let out = verify_chain(db, tenant, from, to, pinned).await?;
    if out.first_broken.is_some() {
        crate::metrics::audit_verification_failed();
    }
    Ok(out)
}

async fn verify_chain(
    db: &DbPool,
    tenant: &str,
    from: Option<NaiveDateTime>,
    to: Option<NaiveDateTime>,
    pinned: &[chain::Checkpoint],
) -> AppResult<Verification> {
    use crate::db::schema::audit_heads;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let t = tenant.to_owned();
    let keys = db.chain_keys();
    let head: Option<(i64, String, i64, String, Option<String>)> = crate::db_run!(db, |conn| {
        audit_heads::table
            .find(&t)
            .select((
                audit_heads::seq,
                audit_heads::hash,
                audit_heads::checkpoint_seq,
                audit_heads::checkpoint_hash,
                audit_heads::checkpoint_sig,
            ))
            .first(conn)
            .await
            .optional()?
    });
    let Some((head_seq, head_hash, cp_seq, cp_hash, cp_sig)) = head else {
        let mut out = Verification::default();
        if let Some(p) = pinned.iter().find(|p| p.sequence > 0) {
            out.first_broken = Some((
                1,
                None,
                format!(
                    "the chain is gone, but checkpoint {} was published: records were removed",
                    p.sequence
                ),
            ));
        }
        return Ok(out);
    };
    let mut out = Verification {
        head: Some((head_seq, head_hash.clone())),
        ..Verification::default()
    };
    // A keyed checkpoint moves only with the key.
    if cp_hash.starts_with(chain::KEYED) || cp_sig.is_some() {
        let msg = chain::checkpoint_message(&t, cp_seq, &cp_hash);
        let problem = match (&cp_sig, keys.as_deref()) {
            (None, _) => Some("it is not signed (moved without the chain key)".to_owned()),
            (Some(_), None) => {
                Some("it is signed, and no master key is configured here to check it".into())
            }
            (Some(sig), Some(k)) => k.check(sig, &msg).err(),
        };
        if let Some(p) = problem {
            out.first_broken = Some((cp_seq, None, format!("the retention checkpoint: {p}")));
            return Ok(out);
        }
    }
    // Published checkpoints: the chain may have grown since, never shrunk or changed.
    for p in pinned {
        if p.sequence > head_seq {
            out.first_broken = Some((
                head_seq + 1,
                None,
                format!(
                    "the chain ends at {head_seq}, but checkpoint {} was published: records \
                     were removed",
                    p.sequence
                ),
            ));
            return Ok(out);
        }
        if p.sequence <= cp_seq {
            continue; // pruned by retention since
        }
        let seq = p.sequence;
        let stored: Option<String> = crate::db_run!(db, |conn| {
            audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.eq(seq))
                .select(audit_log::hash)
                .first::<String>(conn)
                .await
                .optional()?
        });
        if stored.as_deref() != Some(p.hash.as_str()) {
            out.first_broken = Some((
                seq,
                None,
                format!("record {seq} is not the one checkpoint {seq} published (rewritten)"),
            ));
            return Ok(out);
        }
    }
    // Where to start: the first record in range (or after the checkpoint).
    let start: Option<i64> = crate::db_run!(db, |conn| {
        let mut q = audit_log::table
            .filter(audit_log::tenant_id.eq(&t))
            .filter(audit_log::seq.gt(cp_seq))
            .into_boxed();
        if let Some(f) = from {
            q = q.filter(audit_log::created_at.ge(f));
        }
        q.select(diesel::dsl::min(audit_log::seq))
            .first::<Option<i64>>(conn)
            .await?
    });
    let Some(start) = start else {
        if to.is_none() && from.is_none() && head_seq > cp_seq {
            out.first_broken = Some((
                cp_seq + 1,
                None,
                format!("records {}..{head_seq} are missing", cp_seq + 1),
            ));
        }
        return Ok(out);
    };
    if start > cp_seq + 1 && from.is_none() {
        out.first_broken = Some((
            cp_seq + 1,
            None,
            format!("record {} is missing", cp_seq + 1),
        ));
        return Ok(out);
    }
    // The hash the first checked record must link to.
    let mut expected_prev: Option<String> = if start == cp_seq + 1 {
        Some(cp_hash)
    } else {
        crate::db_run!(db, |conn| {
            audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.eq(start - 1))
                .select(audit_log::hash)
                .first::<String>(conn)
                .await
                .optional()?
        })
    };
    let mut next = start;
    loop {
        let batch: Vec<RecordRow> = crate::db_run!(db, |conn| {
            let mut q = audit_log::table
                .filter(audit_log::tenant_id.eq(&t))
                .filter(audit_log::seq.ge(next))
                .into_boxed();
            if let Some(to) = to {
                q = q.filter(audit_log::created_at.le(to));
            }
            q.order(audit_log::seq.asc())
                .limit(1000)
                .select(RecordRow::as_select())
                .load(conn)
                .await?
        });
        if batch.is_empty() {
            break;
        }
        for r in &batch {
            if r.seq != next {
                out.first_broken = Some((next, None, format!("record {next} is missing")));
                return Ok(out);
            }
            if let Some(problem) = r.hash_problem(keys.as_deref()) {
                out.first_broken = Some((r.seq, Some(r.id.clone()), problem));
                return Ok(out);
            }
            if expected_prev.as_ref().is_some_and(|p| p != &r.prev_hash) {
                out.first_broken = Some((
                    r.seq,
                    Some(r.id.clone()),
                    "it does not link to the record before it".into(),
                ));
                return Ok(out);
            }
            expected_prev = Some(r.hash.clone());
            out.checked += 1;
            next += 1;
        }
    }
    // Without an upper bound the chain must end at its head.
    if to.is_none() {
        if next - 1 < head_seq {
            out.first_broken = Some((
                next,
                None,
                format!("record {next} is missing (the chain ends at {head_seq})"),
            ));
        } else if expected_prev.as_deref() != Some(head_hash.as_str()) {
            out.first_broken = Some((
                next - 1,
                None,
                "the chain does not end at its recorded head".into(),
            ));
        }
    }
    Ok(out)
}
