//! Data-subject requests: `exportUserData` (everything stored about a person, as one JSON
//! document) and `eraseUser` (personal data removed, the person pseudonymized in the
//! trail without breaking its chain). Both are recorded.
//!
//! Erasure keeps the user row (other objects refer to its id) but blanks it: e-mail
//! replaced by `erased-<id>@erased.invalid`, display name `Erased user`, no password,
//! status ERASED. Team memberships, sessions (with their refresh tokens), set-password
//! tokens and the sign-in throttle entry are deleted. In the trail, the person's
//! pseudonym mapping (`audit_actors.actor_ref`) is deleted, and the source IP and user
//! agent of every record they made (and of failed sign-ins against their account) are
//! set to NULL together with the record's context salt; the chain hashes a commitment
//! to those values, so it still verifies. Records written before that commitment
//! existed (migration 000009) keep their IP and user agent.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use super::{Entry, RecordRow, Severity};
use crate::app::App;
use crate::audit::Origin;
use crate::auth::Principal;
use crate::db::DbPool;
use crate::db::ids::TenantId;
use crate::db::ids::{db_time, utc};
use crate::db::schema::{
    api_keys, audit_actors, audit_heads, audit_log, email_changes, login_attempts, mfa_challenges,
    mfa_factors, mfa_recovery_codes, password_tokens, refresh_tokens, sessions, team_members,
    teams, users,
};
use crate::error::{AppError, AppResult};
use crate::graphql::relay::{NodeKind, to_global_id};
use crate::tenancy::model::{UserId, UserRow, UserStatus};

fn t(v: Option<NaiveDateTime>) -> Value {
    v.map_or(Value::Null, |x| Value::String(utc(x).to_rfc3339()))
}

/// Everything stored about `user` in `tenant`, as one JSON document.
pub async fn user_document(
    db: &DbPool,
    tenant: TenantId,
    user: &UserRow,
    now: NaiveDateTime,
) -> AppResult<Value> {
    let (tid, uid) = (tenant.to_string(), user.id.to_string());
    let actor_ref = format!("user:{uid}");
    type Membership = (String, String, String, NaiveDateTime);
    type Session = (
        String,
        NaiveDateTime,
        NaiveDateTime,
        NaiveDateTime,
        Option<NaiveDateTime>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    type Key = (
        String,
        String,
        String,
        String,
        NaiveDateTime,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
    );
    type Gathered = (
        Vec<Membership>,
        Vec<Session>,
        Vec<Key>,
        Option<String>,
        Vec<RecordRow>,
    );
    let (memberships, sessions_, keys, pseudonym, records): Gathered =
        crate::db_run_tenant!(db, tenant, |conn| {
            let memberships: Vec<Membership> = team_members::table
                .inner_join(teams::table.on(teams::id.eq(team_members::team_id)))
                .filter(team_members::tenant_id.eq(&tid))
                .filter(team_members::user_id.eq(&uid))
                .select((
                    teams::id,
                    teams::name,
                    team_members::role,
                    team_members::created_at,
                ))
                .load(conn)
                .await?;
            let sessions_: Vec<Session> = sessions::table
                .filter(sessions::tenant_id.eq(&tid))
                .filter(sessions::user_id.eq(&uid))
                .order(sessions::created_at.asc())
                .select((
                    sessions::id,
                    sessions::created_at,
                    sessions::last_used_at,
                    sessions::expires_at,
                    sessions::revoked_at,
                    sessions::revoked_reason,
                    sessions::ip,
                    sessions::user_agent,
                ))
                .load(conn)
                .await?;
            let keys: Vec<Key> = api_keys::table
                .filter(api_keys::tenant_id.eq(&tid))
                .filter(api_keys::created_by.eq(&actor_ref))
                .order(api_keys::created_at.asc())
                .select((
                    api_keys::id,
                    api_keys::name,
                    api_keys::prefix,
                    api_keys::role,
                    api_keys::created_at,
                    api_keys::expires_at,
                    api_keys::last_used_at,
                    api_keys::revoked_at,
                ))
                .load(conn)
                .await?;
            let pseudonym: Option<String> = audit_actors::table
                .filter(audit_actors::tenant_id.eq(&tid))
                .filter(audit_actors::actor_ref.eq(&actor_ref))
                .select(audit_actors::pseudonym)
                .first(conn)
                .await
                .optional()?;
            let records: Vec<RecordRow> = match &pseudonym {
                None => Vec::new(),
                Some(ps) => {
                    audit_log::table
                        .filter(audit_log::tenant_id.eq(&tid))
                        .filter(audit_log::actor_id.eq(ps))
                        .order(audit_log::seq.asc())
                        .select(RecordRow::as_select())
                        .load(conn)
                        .await?
                }
            };
            (memberships, sessions_, keys, pseudonym, records)
        });
    Ok(json!({
        "generatedAt": utc(now).to_rfc3339(),
        "profile": {
            "id": to_global_id(NodeKind::User, user.id.0).to_string(),
            "email": user.email,
            "displayName": user.display_name,
            "role": user.role,
            "status": user.status,
            "lastLoginAt": t(user.last_login_at),
            "lastActiveAt": t(user.last_active_at),
            "createdAt": t(Some(user.created_at)),
            "updatedAt": t(Some(user.updated_at)),
        },
        "memberships": memberships.into_iter().map(|(team, name, role, since)| json!({
            "teamId": to_global_id(NodeKind::Team, uuid::Uuid::parse_str(&team).unwrap_or_default()).to_string(),
            "teamName": name,
            "role": role,
            "since": t(Some(since)),
        })).collect::<Vec<_>>(),
        "sessions": sessions_.into_iter().map(|s| json!({
            "id": s.0,
            "createdAt": t(Some(s.1)),
            "lastUsedAt": t(Some(s.2)),
            "expiresAt": t(Some(s.3)),
            "revokedAt": t(s.4),
            "revokedReason": s.5,
            "ip": s.6,
            "userAgent": s.7,
        })).collect::<Vec<_>>(),
        "apiKeys": keys.into_iter().map(|k| json!({
            "id": to_global_id(NodeKind::ApiKey, uuid::Uuid::parse_str(&k.0).unwrap_or_default()).to_string(),
            "name": k.1,
            "prefix": k.2,
            "role": k.3,
            "createdAt": t(Some(k.4)),
            "expiresAt": t(k.5),
            "lastUsedAt": t(k.6),
            "revokedAt": t(k.7),
        })).collect::<Vec<_>>(),
        "auditPseudonym": pseudonym,
        "auditRecords": records.into_iter().map(|r| json!({
            "sequence": r.seq,
            "id": r.id,
            "createdAt": t(Some(r.created_at)),
            "action": r.action,
            "resourceType": r.resource_type,
            "resourceId": r.resource_id,
            "outcome": r.outcome,
            "reason": r.reason,
            "severity": r.severity,
            "ip": r.ip,
            "userAgent": r.user_agent,
            "requestId": r.request_id,
            "changes": r.changes.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()),
        })).collect::<Vec<_>>(),
    }))
}

/// What an erasure did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Erased {
    /// Records whose IP and user agent were removed.
    pub records_pseudonymized: i64,
    /// Sessions deleted.
    pub sessions_deleted: i64,
}

/// Erases `user` (see the module docs) and appends `audit` in the same transaction.
pub async fn erase(
    db: &DbPool,
    tenant: TenantId,
    user: &UserRow,
    now: NaiveDateTime,
    audit: &Entry,
) -> AppResult<Erased> {
    let pg = matches!(db, DbPool::Postgres(_));
    let (tid, uid) = (tenant.to_string(), user.id.to_string());
    let actor_ref = format!("user:{uid}");
    let throttle_keys = format!(
        "acct:{}:%",
        crate::auth::service::throttle_account(&user.email.to_lowercase())
    );
    let erased_email = format!("erased-{uid}@erased.invalid");
    db.tx(tenant, async |conn| {
        let (pseudonymized, sessions_deleted, keys_revoked) = crate::on_conn!(conn, |conn| {
            // The tenant's chain lock first (as audit appends take it), so concurrent
            // erasures and demotions check the owner count one after the other.
            diesel::update(audit_heads::table.find(&tid))
                .set(audit_heads::seq.eq(audit_heads::seq))
                .execute(&mut *conn)
                .await?;
            let was_owner = crate::tenancy::store::is_active_owner!(conn, &tid, &uid)
                .ok_or_else(|| AppError::not_found("user"))?;
            let keys_revoked =
                crate::tenancy::store::revoke_keys_created_by!(conn, &tid, &actor_ref, now);
            diesel::update(
                users::table
                    .filter(users::tenant_id.eq(&tid))
                    .filter(users::id.eq(&uid)),
            )
            .set((
                users::email.eq(&erased_email),
                users::display_name.eq("Erased user"),
                users::password_hash.eq(None::<String>),
                users::status.eq(UserStatus::Erased),
                users::last_login_at.eq(None::<NaiveDateTime>),
                users::last_active_at.eq(None::<NaiveDateTime>),
                users::updated_at.eq(now),
            ))
            .execute(&mut *conn)
            .await?;
            if was_owner {
                crate::tenancy::store::ensure_an_owner!(conn, &tid);
            }
            diesel::delete(
                team_members::table
                    .filter(team_members::tenant_id.eq(&tid))
                    .filter(team_members::user_id.eq(&uid)),
            )
            .execute(&mut *conn)
            .await?;
            let session_ids: Vec<String> = sessions::table
                .filter(sessions::tenant_id.eq(&tid))
                .filter(sessions::user_id.eq(&uid))
                .select(sessions::id)
                .load(&mut *conn)
                .await?;
            diesel::delete(
                refresh_tokens::table.filter(refresh_tokens::session_id.eq_any(&session_ids)),
            )
            .execute(&mut *conn)
            .await?;
            let sessions_deleted = diesel::delete(
                sessions::table
                    .filter(sessions::tenant_id.eq(&tid))
                    .filter(sessions::user_id.eq(&uid)),
            )
            .execute(&mut *conn)
            .await?;
            diesel::delete(password_tokens::table.filter(password_tokens::user_id.eq(&uid)))
                .execute(&mut *conn)
                .await?;
            // A pending e-mail change holds the address asked for.
            diesel::delete(email_changes::table.filter(email_changes::user_id.eq(&uid)))
                .execute(&mut *conn)
                .await?;
            // The second factor goes with the person: secret, recovery codes, challenges.
            diesel::delete(mfa_factors::table.filter(mfa_factors::user_id.eq(&uid)))
                .execute(&mut *conn)
                .await?;
            diesel::delete(mfa_recovery_codes::table.filter(mfa_recovery_codes::user_id.eq(&uid)))
                .execute(&mut *conn)
                .await?;
            diesel::delete(mfa_challenges::table.filter(mfa_challenges::user_id.eq(&uid)))
                .execute(&mut *conn)
                .await?;
            diesel::delete(login_attempts::table.filter(login_attempts::key.like(&throttle_keys)))
                .execute(&mut *conn)
                .await?;
            let pseudonymized: usize = if pg {
                // Only the guarded function may touch audit records on PostgreSQL.
                #[derive(diesel::QueryableByName)]
                struct Cleared {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let cleared: Cleared =
                    diesel::sql_query("SELECT agentplane_audit_erase($1, $2, $3) AS n")
                        .bind::<diesel::sql_types::Text, _>(&tid)
                        .bind::<diesel::sql_types::Text, _>(&uid)
                        .bind::<diesel::sql_types::Timestamp, _>(now)
                        .get_result(&mut *conn)
                        .await?;
                usize::try_from(cleared.n).unwrap_or(0)
            } else {
                let pseudonym: Option<String> = audit_actors::table
                    .filter(audit_actors::tenant_id.eq(&tid))
                    .filter(audit_actors::actor_ref.eq(&actor_ref))
                    .select(audit_actors::pseudonym)
                    .first(&mut *conn)
                    .await
                    .optional()?;
                let mut pseudonymized = 0;
                if let Some(ps) = &pseudonym {
                    diesel::update(audit_actors::table.find(ps))
                        .set((
                            audit_actors::actor_ref.eq(None::<String>),
                            audit_actors::erased_at.eq(Some(now)),
                        ))
                        .execute(&mut *conn)
                        .await?;
                    pseudonymized += diesel::update(
                        audit_log::table
                            .filter(audit_log::tenant_id.eq(&tid))
                            .filter(audit_log::actor_id.eq(ps))
                            .filter(audit_log::context_hash.is_not_null())
                            .filter(audit_log::context_salt.is_not_null()),
                    )
                    .set((
                        audit_log::ip.eq(None::<String>),
                        audit_log::user_agent.eq(None::<String>),
                        audit_log::context_salt.eq(None::<String>),
                    ))
                    .execute(&mut *conn)
                    .await?;
                }
                // Failed sign-ins against the account carry the client's address too.
                pseudonymized += diesel::update(
                    audit_log::table
                        .filter(audit_log::tenant_id.eq(&tid))
                        .filter(audit_log::actor_type.eq(super::ActorType::Anonymous.as_str()))
                        .filter(audit_log::resource_type.eq("user"))
                        .filter(audit_log::resource_id.eq(&uid))
                        .filter(audit_log::context_hash.is_not_null())
                        .filter(audit_log::context_salt.is_not_null()),
                )
                .set((
                    audit_log::ip.eq(None::<String>),
                    audit_log::user_agent.eq(None::<String>),
                    audit_log::context_salt.eq(None::<String>),
                ))
                .execute(&mut *conn)
                .await?;
                pseudonymized
            };
            (pseudonymized, sessions_deleted, keys_revoked)
        });
        let mut audit = audit.clone();
        audit.changes = Some(json!({
            "auditRecordsPseudonymized": pseudonymized,
            "sessionsDeleted": sessions_deleted,
            "apiKeysRevoked": keys_revoked,
        }));
        super::append(conn, &audit).await?;
        Ok(Erased {
            records_pseudonymized: i64::try_from(pseudonymized).unwrap_or(0),
            sessions_deleted: i64::try_from(sessions_deleted).unwrap_or(0),
        })
    })
    .await
}

async fn target(app: &App, tenant: TenantId, id: UserId) -> AppResult<UserRow> {
    crate::tenancy::store::find_user(&app.db, tenant, id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

/// Everything stored about a person of `tenant` (a data-subject access request), and
/// when it was gathered. Recorded as `user.data_exported`.
pub async fn export_user_data(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    id: UserId,
) -> AppResult<(Value, NaiveDateTime)> {
    let user = target(app, tenant, id).await?;
    let now = db_time(app.clock.now());
    let document = user_document(&app.db, tenant, &user, now).await?;
    let entry = Entry::change(origin, "user.data_exported", "user", user.id, None, now);
    super::record(&app.db, &entry).await?;
    Ok((document, now))
}

/// Erases a person's personal data and pseudonymizes them in the trail (see the module
/// docs). Not oneself, not twice, and not someone holding permissions the caller lacks.
/// Recorded as `user.erased` (CRITICAL) in the erasure's transaction. Returns the user
/// as it is now.
pub async fn erase_user(
    app: &App,
    origin: &Origin,
    p: &Principal,
    id: UserId,
) -> AppResult<(UserRow, Erased)> {
    let mut user = target(app, p.tenant_id, id).await?;
    if p.user_id() == Some(user.id) {
        return Err(AppError::bad_input("userId", "you cannot erase yourself"));
    }
    if user.status == UserStatus::Erased {
        return Err(AppError::new(
            crate::error::ErrorCode::Conflict,
            "this user has already been erased",
        ));
    }
    crate::auth::admin::may_change_user(app, p, &user).await?;
    let now = db_time(app.clock.now());
    let entry = Entry::change(origin, "user.erased", "user", user.id, None, now)
        .severity(Severity::Critical);
    let done = erase(&app.db, p.tenant_id, &user, now, &entry).await?;
    app.rights_changed(p.tenant_id);
    user.email = format!("erased-{}@erased.invalid", user.id);
    user.display_name = "Erased user".into();
    user.password_hash = None;
    user.status = UserStatus::Erased;
    user.last_login_at = None;
    user.last_active_at = None;
    user.updated_at = now;
    Ok((user, done))
}
