//! Teams: named groups of a tenant's users with a team role (LEAD, MEMBER).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{TenantId, UserId, UserRow};
use crate::db::schema::{team_members, teams, users};
use crate::db::{Conn, DbPool};
use crate::error::AppResult;

pub use crate::db::ids::TeamId;

/// One row of `teams`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = teams)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct TeamRow {
    /// Primary key.
    pub id: TeamId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Unique within the tenant.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Creation time.
    pub created_at: NaiveDateTime,
    /// Last change.
    pub updated_at: NaiveDateTime,
}

/// One row of `team_members`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = team_members)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct TeamMemberRow {
    /// The team.
    pub team_id: TeamId,
    /// The member.
    pub user_id: UserId,
    /// The team's tenant (denormalised so every tenant table carries it).
    pub tenant_id: TenantId,
    /// The member's role in the team.
    pub role: TeamRole,
    /// When added.
    pub created_at: NaiveDateTime,
}

crate::db_enum! {
    /// A member's role in a team.
    pub enum TeamRole {
        /// Leads the team.
        Lead => "LEAD",
        /// A member.
        Member => "MEMBER",
    }
}

// ---- store ----

/// A team of `tenant`.
pub(crate) async fn find(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    id: TeamId,
) -> AppResult<Option<TeamRow>> {
    Ok(crate::on_conn!(conn, |conn| {
        teams::table
            .filter(teams::tenant_id.eq(tenant))
            .filter(teams::id.eq(id))
            .select(TeamRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Teams of `tenant` by id, in one statement (dataloader).
pub async fn teams_by_ids(
    db: &DbPool,
    tenant: TenantId,
    ids: &[TeamId],
) -> AppResult<Vec<TeamRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        teams::table
            .filter(teams::tenant_id.eq(tenant))
            .filter(teams::id.eq_any(ids))
            .select(TeamRow::as_select())
            .load(conn)
            .await?
    }))
}

pub(crate) async fn list(db: &DbPool, tenant: TenantId) -> AppResult<Vec<TeamRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        teams::table
            .filter(teams::tenant_id.eq(tenant))
            .order(teams::name.asc())
            .limit(1000)
            .select(TeamRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Inserts a team.
pub(crate) async fn insert(conn: &mut Conn<'_>, row: &TeamRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(teams::table)
            .values(row)
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Writes a team's name and description.
pub(crate) async fn update(conn: &mut Conn<'_>, row: &TeamRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::update(
            teams::table
                .filter(teams::tenant_id.eq(row.tenant_id))
                .filter(teams::id.eq(row.id)),
        )
        .set((
            teams::name.eq(&row.name),
            teams::description.eq(&row.description),
            teams::updated_at.eq(row.updated_at),
        ))
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Deletes a team and its memberships.
pub(crate) async fn delete(conn: &mut Conn<'_>, tenant: TenantId, id: TeamId) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::delete(
            team_members::table
                .filter(team_members::tenant_id.eq(tenant))
                .filter(team_members::team_id.eq(id)),
        )
        .execute(conn)
        .await?;
        diesel::delete(
            teams::table
                .filter(teams::tenant_id.eq(tenant))
                .filter(teams::id.eq(id)),
        )
        .execute(conn)
        .await?;
    });
    Ok(())
}

/// Adds a member, or changes the role of one.
pub(crate) async fn put_member(conn: &mut Conn<'_>, row: &TeamMemberRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(team_members::table)
            .values(row)
            .on_conflict((team_members::team_id, team_members::user_id))
            .do_update()
            .set(team_members::role.eq(&row.role))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Removes a member; `false` when the user was not one.
pub(crate) async fn remove_member(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    team: TeamId,
    user: UserId,
) -> AppResult<bool> {
    Ok(crate::on_conn!(conn, |conn| {
        diesel::delete(
            team_members::table
                .filter(team_members::tenant_id.eq(tenant))
                .filter(team_members::team_id.eq(team))
                .filter(team_members::user_id.eq(user)),
        )
        .execute(conn)
        .await?
            == 1
    }))
}

pub(crate) async fn members(
    db: &DbPool,
    tenant: TenantId,
    team: TeamId,
) -> AppResult<Vec<(TeamMemberRow, UserRow)>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        team_members::table
            .inner_join(users::table.on(users::id.eq(team_members::user_id)))
            .filter(team_members::tenant_id.eq(tenant))
            .filter(team_members::team_id.eq(team))
            .order(users::email.asc())
            .select((TeamMemberRow::as_select(), UserRow::as_select()))
            .load(conn)
            .await?
    }))
}
