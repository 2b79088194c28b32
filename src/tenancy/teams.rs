//! Teams: named groups of a tenant's users with a team role (LEAD, MEMBER).

use async_graphql::Enum;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{TenantId, UserId, UserRow};
use crate::db::DbPool;
use crate::db::schema::{team_members, teams, users};
use crate::error::AppResult;

crate::id_type!(
    /// Identifies a team.
    TeamId
);

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
    #[derive(Enum)]
    pub enum TeamRole {
        /// Leads the team.
        Lead => "LEAD",
        /// A member.
        Member => "MEMBER",
    }
}

// ---- store ----

pub(crate) async fn find(db: &DbPool, tenant: TenantId, id: TeamId) -> AppResult<Option<TeamRow>> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
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

pub(crate) async fn insert(
    db: &DbPool,
    row: &TeamRow,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, row.tenant_id, |conn| {
        diesel::insert_into(teams::table)
            .values(row)
            .execute(conn)
            .await?;
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

pub(crate) async fn update(
    db: &DbPool,
    row: &TeamRow,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, row.tenant_id, |conn| {
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
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

pub(crate) async fn delete(
    db: &DbPool,
    tenant: TenantId,
    id: TeamId,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, tenant, |conn| {
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
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

pub(crate) async fn put_member(
    db: &DbPool,
    row: &TeamMemberRow,
    audit: &crate::audit::Entry,
) -> AppResult<()> {
    crate::db_tx!(db, row.tenant_id, |conn| {
        diesel::insert_into(team_members::table)
            .values(row)
            .on_conflict((team_members::team_id, team_members::user_id))
            .do_update()
            .set(team_members::role.eq(&row.role))
            .execute(conn)
            .await?;
        crate::audit_append!(conn, audit)?;
        Ok(())
    })
}

pub(crate) async fn remove_member(
    db: &DbPool,
    tenant: TenantId,
    team: TeamId,
    user: UserId,
    audit: &crate::audit::Entry,
) -> AppResult<bool> {
    crate::db_tx!(db, tenant, |conn| {
        let gone = diesel::delete(
            team_members::table
                .filter(team_members::tenant_id.eq(tenant))
                .filter(team_members::team_id.eq(team))
                .filter(team_members::user_id.eq(user)),
        )
        .execute(conn)
        .await?
            == 1;
        if gone {
            crate::audit_append!(conn, audit)?;
        }
        Ok(gone)
    })
}

/// The audit record of a team action.
pub(crate) fn team_audit(
    origin: &crate::audit::Origin,
    action: &str,
    team: &TeamRow,
    changes: Option<serde_json::Value>,
    at: NaiveDateTime,
) -> crate::audit::Entry {
    crate::audit::Entry::change(origin, action, "team", team.id, changes, at)
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

/// Adds a member (used by demo seeding).
pub async fn seed_team(
    db: &DbPool,
    tenant: TenantId,
    name: &str,
    members: &[(UserId, bool)],
    now: NaiveDateTime,
) -> AppResult<()> {
    let row = TeamRow {
        id: TeamId::new(),
        tenant_id: tenant,
        name: name.to_owned(),
        description: String::new(),
        created_at: now,
        updated_at: now,
    };
    let origin = crate::audit::Origin::system(tenant);
    insert(
        db,
        &row,
        &team_audit(
            &origin,
            "team.created",
            &row,
            Some(serde_json::json!({ "name": row.name })),
            now,
        ),
    )
    .await?;
    for (user, lead) in members {
        let audit = team_audit(
            &origin,
            "team.member_added",
            &row,
            Some(serde_json::json!({ "userId": user.to_string(), "lead": lead })),
            now,
        );
        put_member(
            db,
            &TeamMemberRow {
                team_id: row.id,
                user_id: *user,
                tenant_id: tenant,
                role: if *lead {
                    TeamRole::Lead
                } else {
                    TeamRole::Member
                },
                created_at: now,
            },
            &audit,
        )
        .await?;
    }
    Ok(())
}
