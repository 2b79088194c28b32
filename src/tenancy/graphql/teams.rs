//! Teams over GraphQL: Team, TeamMember, the team queries and mutations.

use super::User;
use crate::auth::principal;
use crate::db::ids::{db_time, utc};
use crate::error::{AppError, AppResult};
use crate::graphql::app;
use crate::graphql::relay::{NodeKind, decode_expecting, to_global_id};
use crate::rbac::{Permission, Require};
use crate::tenancy::model::UserId;
use crate::tenancy::teams::*;
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};

// ---- GraphQL ----

/// A named group of users.
pub struct Team(pub TeamRow);

/// A user's membership in a team.
#[derive(SimpleObject)]
pub struct TeamMember {
    /// The member.
    pub user: User,
    /// Their team role.
    pub role: TeamRole,
    /// When added.
    pub added_at: DateTime<Utc>,
}

#[Object]
impl Team {
    /// Opaque global ID.
    pub async fn id(&self) -> ID {
        to_global_id(NodeKind::Team, self.0.id.0)
    }
    /// Unique within the tenant.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Free text.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Members, by e-mail.
    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TeamMember>> {
        Ok(members(&app(ctx)?.db, self.0.tenant_id, self.0.id)
            .await?
            .into_iter()
            .map(|(m, u)| TeamMember {
                user: User(u),
                role: m.role,
                added_at: utc(m.created_at),
            })
            .collect())
    }
    /// Creation time.
    async fn created_at(&self) -> DateTime<Utc> {
        utc(self.0.created_at)
    }
    /// Last change.
    async fn updated_at(&self) -> DateTime<Utc> {
        utc(self.0.updated_at)
    }
}

/// Input of `createTeam`.
#[derive(InputObject)]
pub struct CreateTeamInput {
    /// Unique within the tenant.
    pub name: String,
    /// Free text.
    #[graphql(default)]
    pub description: String,
}

/// Input of `updateTeam`.
#[derive(InputObject)]
pub struct UpdateTeamInput {
    /// The team's ID.
    pub team_id: ID,
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
}

/// Input of `deleteTeam`.
#[derive(InputObject)]
pub struct DeleteTeamInput {
    /// The team's ID.
    pub team_id: ID,
}

/// Input of `addTeamMember` (also changes an existing member's role).
#[derive(InputObject)]
pub struct AddTeamMemberInput {
    /// The team's ID.
    pub team_id: ID,
    /// The user's ID.
    pub user_id: ID,
    /// Team role.
    #[graphql(default_with = "TeamRole::Member")]
    pub role: TeamRole,
}

/// Input of `removeTeamMember`.
#[derive(InputObject)]
pub struct RemoveTeamMemberInput {
    /// The team's ID.
    pub team_id: ID,
    /// The user's ID.
    pub user_id: ID,
}

/// Result of team changes.
#[derive(SimpleObject)]
pub struct TeamPayload {
    /// The team after the change.
    pub team: Team,
}

/// Result of `deleteTeam`.
#[derive(SimpleObject)]
pub struct DeleteTeamPayload {
    /// The deleted team's ID.
    pub deleted_team_id: ID,
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

async fn team_in_tenant(ctx: &Context<'_>, id: &ID) -> AppResult<TeamRow> {
    let p = principal(ctx)?;
    let uuid = decode_expecting(id, NodeKind::Team, "team")?;
    find(&app(ctx)?.db, p.tenant_id, TeamId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("team"))
}

/// Loads a team of the caller's tenant for `node(id:)`.
pub async fn visible_team(ctx: &Context<'_>, uuid: uuid::Uuid) -> AppResult<Team> {
    let p = principal(ctx)?;
    let t = find(&app(ctx)?.db, p.tenant_id, TeamId(uuid))
        .await?
        .ok_or_else(|| AppError::not_found("team"))?;
    if !p.permissions.contains(&Permission::TeamsRead) {
        return Err(AppError::forbidden(
            "this requires the teams.read permission",
        ));
    }
    Ok(Team(t))
}

/// Team queries.
#[derive(Default)]
pub struct TeamQuery;

#[Object]
impl TeamQuery {
    /// The tenant's teams, by name.
    #[graphql(guard = "Require(Permission::TeamsRead)")]
    async fn teams(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Team>> {
        let p = principal(ctx)?;
        Ok(list(&app(ctx)?.db, p.tenant_id)
            .await?
            .into_iter()
            .map(Team)
            .collect())
    }
}

/// Team mutations.
#[derive(Default)]
pub struct TeamMutation;

#[Object]
impl TeamMutation {
    /// Creates a team.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn create_team(
        &self,
        ctx: &Context<'_>,
        input: CreateTeamInput,
    ) -> async_graphql::Result<TeamPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let now = db_time(a.clock.now());
        let row = TeamRow {
            id: TeamId::new(),
            tenant_id: p.tenant_id,
            name: check_name(&input.name)?,
            description: input.description.trim().to_owned(),
            created_at: now,
            updated_at: now,
        };
        let audit = team_audit(
            &crate::audit::graphql::origin(ctx)?,
            "team.created",
            &row,
            Some(serde_json::json!({ "name": row.name })),
            now,
        );
        insert(&a.db, &row, &audit).await?;
        Ok(TeamPayload { team: Team(row) })
    }

    /// Renames a team or changes its description.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn update_team(
        &self,
        ctx: &Context<'_>,
        input: UpdateTeamInput,
    ) -> async_graphql::Result<TeamPayload> {
        let a = app(ctx)?;
        let mut row = team_in_tenant(ctx, &input.team_id).await?;
        let before = serde_json::json!({ "name": row.name, "description": row.description });
        if let Some(n) = input.name {
            row.name = check_name(&n)?;
        }
        if let Some(d) = input.description {
            row.description = d.trim().to_owned();
        }
        row.updated_at = db_time(a.clock.now());
        let after = serde_json::json!({ "name": row.name, "description": row.description });
        let audit = team_audit(
            &crate::audit::graphql::origin(ctx)?,
            "team.updated",
            &row,
            Some(crate::audit::diff(&before, &after)),
            row.updated_at,
        );
        update(&a.db, &row, &audit).await?;
        Ok(TeamPayload { team: Team(row) })
    }

    /// Deletes a team and its memberships.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn delete_team(
        &self,
        ctx: &Context<'_>,
        input: DeleteTeamInput,
    ) -> async_graphql::Result<DeleteTeamPayload> {
        let row = team_in_tenant(ctx, &input.team_id).await?;
        let a = app(ctx)?;
        let audit = team_audit(
            &crate::audit::graphql::origin(ctx)?,
            "team.deleted",
            &row,
            Some(serde_json::json!({ "name": row.name })),
            db_time(a.clock.now()),
        );
        delete(&a.db, row.tenant_id, row.id, &audit).await?;
        Ok(DeleteTeamPayload {
            deleted_team_id: input.team_id,
        })
    }

    /// Adds a user to a team, or changes their team role.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn add_team_member(
        &self,
        ctx: &Context<'_>,
        input: AddTeamMemberInput,
    ) -> async_graphql::Result<TeamPayload> {
        let a = app(ctx)?;
        let p = principal(ctx)?;
        let team = team_in_tenant(ctx, &input.team_id).await?;
        let uid = decode_expecting(&input.user_id, NodeKind::User, "user")?;
        let user = crate::tenancy::store::find_user(&a.db, p.tenant_id, UserId(uid))
            .await?
            .ok_or_else(|| AppError::not_found("user"))?;
        let now = db_time(a.clock.now());
        let audit = team_audit(
            &crate::audit::graphql::origin(ctx)?,
            "team.member_added",
            &team,
            Some(serde_json::json!({ "userId": user.id.to_string(), "role": input.role.as_str() })),
            now,
        );
        put_member(
            &a.db,
            &TeamMemberRow {
                team_id: team.id,
                user_id: user.id,
                tenant_id: p.tenant_id,
                role: input.role,
                created_at: now,
            },
            &audit,
        )
        .await?;
        Ok(TeamPayload { team: Team(team) })
    }

    /// Removes a user from a team.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn remove_team_member(
        &self,
        ctx: &Context<'_>,
        input: RemoveTeamMemberInput,
    ) -> async_graphql::Result<TeamPayload> {
        let p = principal(ctx)?;
        let team = team_in_tenant(ctx, &input.team_id).await?;
        let uid = decode_expecting(&input.user_id, NodeKind::User, "user")?;
        let a = app(ctx)?;
        let audit = team_audit(
            &crate::audit::graphql::origin(ctx)?,
            "team.member_removed",
            &team,
            Some(serde_json::json!({ "userId": uid.to_string() })),
            db_time(a.clock.now()),
        );
        if !remove_member(&a.db, p.tenant_id, team.id, UserId(uid), &audit).await? {
            return Err(AppError::not_found("team member").into());
        }
        Ok(TeamPayload { team: Team(team) })
    }
}
