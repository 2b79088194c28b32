//! Rows and statements of the second factor: `mfa_factors`, `mfa_recovery_codes`,
//! `mfa_challenges`. Every conditional update here is what makes a code, a recovery code
//! or a challenge attempt count once under concurrency; the rules are in
//! `auth::service::mfa`.

use chrono::NaiveDateTime;
use diesel::{
    ExpressionMethods, Insertable, OptionalExtension, QueryDsl, Queryable, Selectable,
    SelectableHelper,
};
use diesel_async::RunQueryDsl as _;

use crate::db::ids::{TenantId, UserId};
use crate::db::schema::{mfa_challenges, mfa_factors, mfa_recovery_codes};
use crate::db::{Conn, DbPool};
use crate::error::AppResult;

/// One row of `mfa_factors`.
#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = mfa_factors)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct FactorRow {
    /// The user (one factor each).
    pub user_id: UserId,
    /// The user's tenant.
    pub tenant_id: TenantId,
    /// Sealed (`sealed:v1:…`) or, without a master key, the base32 secret.
    pub secret: String,
    /// When a first code confirmed it (`None`: enrolment not finished).
    pub confirmed_at: Option<NaiveDateTime>,
    /// The last time step accepted; only later ones are.
    pub last_step: i64,
    /// Enrolment start.
    pub created_at: NaiveDateTime,
}

/// One row of `mfa_challenges`.
#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = mfa_challenges)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ChallengeRow {
    /// SHA-256 of the challenge handed to the client.
    pub token_hash: String,
    /// The user's tenant.
    pub tenant_id: TenantId,
    /// Who signs in.
    pub user_id: UserId,
    /// Issue time.
    pub created_at: NaiveDateTime,
    /// After this it is refused.
    pub expires_at: NaiveDateTime,
    /// Codes tried on it.
    pub attempts: i32,
    /// When it completed a sign-in.
    pub used_at: Option<NaiveDateTime>,
}

/// One row of `mfa_recovery_codes`.
#[derive(Queryable, Selectable, Insertable, Debug, Clone)]
#[diesel(table_name = mfa_recovery_codes)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct RecoveryRow {
    /// SHA-256 of the normalized code.
    pub code_hash: String,
    /// The user's tenant.
    pub tenant_id: TenantId,
    /// Whose code.
    pub user_id: UserId,
    /// Issue time.
    pub created_at: NaiveDateTime,
    /// When it was used (once).
    pub used_at: Option<NaiveDateTime>,
}

/// The user's factor, confirmed or not.
pub async fn factor(db: &DbPool, user: UserId) -> AppResult<Option<FactorRow>> {
    Ok(crate::db_run!(db, |conn| {
        mfa_factors::table
            .filter(mfa_factors::user_id.eq(user))
            .select(FactorRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Replaces the user's factor with `row` (a new, unconfirmed enrolment).
pub async fn put_factor(conn: &mut Conn<'_>, row: &FactorRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(mfa_factors::table.filter(mfa_factors::user_id.eq(row.user_id)))
            .execute(&mut *conn)
            .await?;
        diesel::insert_into(mfa_factors::table)
            .values(row)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Marks the user's factor confirmed.
pub async fn confirm_factor(
    conn: &mut Conn<'_>,
    user: UserId,
    now: NaiveDateTime,
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::update(mfa_factors::table.filter(mfa_factors::user_id.eq(user)))
            .set(mfa_factors::confirmed_at.eq(Some(now)))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Deletes the user's factor and recovery codes.
pub async fn delete_factor(conn: &mut Conn<'_>, user: UserId) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(mfa_factors::table.filter(mfa_factors::user_id.eq(user)))
            .execute(&mut *conn)
            .await?;
        diesel::delete(mfa_recovery_codes::table.filter(mfa_recovery_codes::user_id.eq(user)))
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Moves the factor's last used step to `step` if it is still earlier; `false` when
/// another request took this step (or a later one) first.
pub async fn advance_step(db: &DbPool, user: UserId, step: i64) -> AppResult<bool> {
    Ok(crate::db_run!(db, |conn| {
        diesel::update(
            mfa_factors::table
                .filter(mfa_factors::user_id.eq(user))
                .filter(mfa_factors::last_step.lt(step)),
        )
        .set(mfa_factors::last_step.eq(step))
        .execute(conn)
        .await?
    }) == 1)
}

/// Marks an unused recovery code of the user used; `false` when there is none.
pub async fn use_recovery_code(
    db: &DbPool,
    user: UserId,
    hash: &str,
    now: NaiveDateTime,
) -> AppResult<bool> {
    Ok(crate::db_run!(db, |conn| {
        diesel::update(
            mfa_recovery_codes::table
                .filter(mfa_recovery_codes::code_hash.eq(hash))
                .filter(mfa_recovery_codes::user_id.eq(user))
                .filter(mfa_recovery_codes::used_at.is_null()),
        )
        .set(mfa_recovery_codes::used_at.eq(Some(now)))
        .execute(conn)
        .await?
    }) == 1)
}

/// Unused recovery codes of the user.
pub async fn recovery_left(db: &DbPool, user: UserId) -> AppResult<i64> {
    Ok(crate::db_run!(db, |conn| {
        mfa_recovery_codes::table
            .filter(mfa_recovery_codes::user_id.eq(user))
            .filter(mfa_recovery_codes::used_at.is_null())
            .count()
            .get_result(conn)
            .await?
    }))
}

/// Replaces the user's recovery codes with `rows`.
pub async fn replace_recovery_codes(
    conn: &mut Conn<'_>,
    user: UserId,
    rows: &[RecoveryRow],
) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(mfa_recovery_codes::table.filter(mfa_recovery_codes::user_id.eq(user)))
            .execute(&mut *conn)
            .await?;
        for r in rows {
            diesel::insert_into(mfa_recovery_codes::table)
                .values(r)
                .execute(&mut *conn)
                .await?;
        }
    });
    Ok(())
}

/// Stores a new challenge (and drops the user's expired ones).
pub async fn insert_challenge(db: &DbPool, row: &ChallengeRow) -> AppResult<()> {
    crate::db_run!(db, |conn| {
        diesel::delete(
            mfa_challenges::table
                .filter(mfa_challenges::user_id.eq(row.user_id))
                .filter(mfa_challenges::expires_at.lt(row.created_at)),
        )
        .execute(&mut *conn)
        .await?;
        diesel::insert_into(mfa_challenges::table)
            .values(row)
            .execute(&mut *conn)
            .await?
    });
    Ok(())
}

/// The challenge with this digest.
pub async fn challenge(db: &DbPool, hash: &str) -> AppResult<Option<ChallengeRow>> {
    Ok(crate::db_run!(db, |conn| {
        mfa_challenges::table
            .filter(mfa_challenges::token_hash.eq(hash))
            .select(ChallengeRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Counts one more attempt on an unused challenge with fewer than `max`; `false` when
/// it has none left (or was used).
pub async fn take_challenge_attempt(db: &DbPool, hash: &str, max: i32) -> AppResult<bool> {
    Ok(crate::db_run!(db, |conn| {
        diesel::update(
            mfa_challenges::table
                .filter(mfa_challenges::token_hash.eq(hash))
                .filter(mfa_challenges::used_at.is_null())
                .filter(mfa_challenges::attempts.lt(max)),
        )
        .set(mfa_challenges::attempts.eq(mfa_challenges::attempts + 1))
        .execute(conn)
        .await?
    }) == 1)
}

/// Marks an unused challenge used; `false` when another request used it first.
pub async fn use_challenge(db: &DbPool, hash: &str, now: NaiveDateTime) -> AppResult<bool> {
    Ok(crate::db_run!(db, |conn| {
        diesel::update(
            mfa_challenges::table
                .filter(mfa_challenges::token_hash.eq(hash))
                .filter(mfa_challenges::used_at.is_null()),
        )
        .set(mfa_challenges::used_at.eq(Some(now)))
        .execute(conn)
        .await?
    }) == 1)
}
