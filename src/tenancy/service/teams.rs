//! Team rules: a team name is 1 to 100 characters, members are users of the team's
//! tenant, and every change is audited in its own transaction. The tenant is always the
//! caller's (from its principal), never client input.

use chrono::NaiveDateTime;

use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::db::ids::db_time;
use crate::error::{AppError, AppResult};
use crate::tenancy::model::{TenantId, UserId};
use crate::tenancy::teams::{
    TeamId, TeamMemberRow, TeamRole, TeamRow, delete, find, insert, put_member, remove_member,
    update,
};

/// A team of `tenant`, or `NOT_FOUND`.
pub async fn get(app: &App, tenant: TenantId, id: TeamId) -> AppResult<TeamRow> {
    app.db
        .read(tenant, async |conn| find(conn, tenant, id).await)
        .await?
        .ok_or_else(|| AppError::not_found("team"))
}

/// Creates a team in `tenant`.
pub async fn create(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    name: &str,
    description: &str,
) -> AppResult<TeamRow> {
    let now = db_time(app.clock.now());
    let row = TeamRow {
        id: TeamId::new(),
        tenant_id: tenant,
        name: check_name(name)?,
        description: description.trim().to_owned(),
        created_at: now,
        updated_at: now,
    };
    let audit = team_audit(
        origin,
        "team.created",
        &row,
        Some(serde_json::json!({ "name": row.name })),
        now,
    );
    app.db
        .tx(tenant, async |conn| {
            insert(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Renames a team or changes its description; `None` keeps a value.
pub async fn rename(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    id: TeamId,
    name: Option<&str>,
    description: Option<&str>,
) -> AppResult<TeamRow> {
    let mut row = get(app, tenant, id).await?;
    let before = serde_json::json!({ "name": row.name, "description": row.description });
    if let Some(n) = name {
        row.name = check_name(n)?;
    }
    if let Some(d) = description {
        row.description = d.trim().to_owned();
    }
    row.updated_at = db_time(app.clock.now());
    let after = serde_json::json!({ "name": row.name, "description": row.description });
    let audit = team_audit(
        origin,
        "team.updated",
        &row,
        Some(crate::audit::diff(&before, &after)),
        row.updated_at,
    );
    app.db
        .tx(tenant, async |conn| {
            update(conn, &row).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Deletes a team and its memberships; returns what was deleted.
pub async fn remove(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    id: TeamId,
) -> AppResult<TeamRow> {
    let row = get(app, tenant, id).await?;
    let audit = team_audit(
        origin,
        "team.deleted",
        &row,
        Some(serde_json::json!({ "name": row.name })),
        db_time(app.clock.now()),
    );
    app.db
        .tx(tenant, async |conn| {
            delete(conn, tenant, row.id).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}

/// Adds a user of the tenant to a team, or changes their team role.
pub async fn add_member(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    team: TeamId,
    user: UserId,
    role: TeamRole,
) -> AppResult<TeamRow> {
    let team = get(app, tenant, team).await?;
    let user = crate::tenancy::store::find_user(&app.db, tenant, user)
        .await?
        .ok_or_else(|| AppError::not_found("user"))?;
    let now = db_time(app.clock.now());
    let audit = team_audit(
        origin,
        "team.member_added",
        &team,
        Some(serde_json::json!({ "userId": user.id.to_string(), "role": role.as_str() })),
        now,
    );
    let member = TeamMemberRow {
        team_id: team.id,
        user_id: user.id,
        tenant_id: tenant,
        role,
        created_at: now,
    };
    app.db
        .tx(tenant, async |conn| {
            put_member(conn, &member).await?;
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(team)
}

/// Removes a user from a team; `NOT_FOUND` when they were not a member (and nothing is
/// recorded then).
pub async fn remove_member_of(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    team: TeamId,
    user: UserId,
) -> AppResult<TeamRow> {
    let team = get(app, tenant, team).await?;
    let audit = team_audit(
        origin,
        "team.member_removed",
        &team,
        Some(serde_json::json!({ "userId": user.to_string() })),
        db_time(app.clock.now()),
    );
    app.db
        .tx(tenant, async |conn| {
            if !remove_member(conn, tenant, team.id, user).await? {
                return Err(AppError::not_found("team member"));
            }
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(team)
}

/// Creates a team with members (leads when `true`) in one transaction: demo seeding.
pub async fn seed(
    app: &App,
    tenant: TenantId,
    name: &str,
    members: &[(UserId, bool)],
    now: NaiveDateTime,
) -> AppResult<TeamRow> {
    let row = TeamRow {
        id: TeamId::new(),
        tenant_id: tenant,
        name: check_name(name)?,
        description: String::new(),
        created_at: now,
        updated_at: now,
    };
    let origin = Origin::system(tenant);
    app.db
        .tx(tenant, async |conn| {
            insert(conn, &row).await?;
            crate::audit::append(
                conn,
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
                put_member(
                    conn,
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
                )
                .await?;
                crate::audit::append(
                    conn,
                    &team_audit(
                        &origin,
                        "team.member_added",
                        &row,
                        Some(serde_json::json!({ "userId": user.to_string(), "lead": lead })),
                        now,
                    ),
                )
                .await?;
            }
            Ok(())
        })
        .await?;
    Ok(row)
}

fn check_name(name: &str) -> AppResult<String> {
    let n = name.trim();
    if n.is_empty() || n.len() > 100 {
        return Err(AppError::bad_input(
            "name",
            "the name must be 1 to 100 characters",
        ));
    }
    Ok(n.to_owned())
}

/// The audit record of a team action.
fn team_audit(
    origin: &Origin,
    action: &str,
    team: &TeamRow,
    changes: Option<serde_json::Value>,
    at: NaiveDateTime,
) -> Entry {
    Entry::change(origin, action, "team", team.id, changes, at)
}
