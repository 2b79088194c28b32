//! Teams over GraphQL: Team, TeamMember, the team queries and mutations.

use super::User;
use crate::db::ids::utc;
use crate::error::{AppError, AppResult};
use crate::graphql::enums::TeamRole;
use crate::graphql::guards::Require;
use crate::graphql::principal;
use crate::graphql::relay::{NodeKind, decode_expecting, to_global_id};
use crate::graphql::{app, origin};
use crate::rbac::Permission;
use crate::tenancy::model::UserId;
use crate::tenancy::service::teams as service;
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
                role: m.role.into(),
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

/// The team id of an argument.
fn team_id(id: &ID) -> AppResult<TeamId> {
    Ok(TeamId(decode_expecting(id, NodeKind::Team, "team")?))
}

/// The user id of an argument.
fn user_id(id: &ID) -> AppResult<UserId> {
    Ok(UserId(decode_expecting(id, NodeKind::User, "user")?))
}

/// Loads a team of the caller's tenant for `node(id:)`.
pub async fn visible_team(ctx: &Context<'_>, uuid: uuid::Uuid) -> AppResult<Team> {
    let p = principal(ctx)?;
    let t = service::get(app(ctx)?, p.tenant_id, TeamId(uuid)).await?;
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
        let tenant = principal(ctx)?.tenant_id;
        let row = service::create(
            app(ctx)?,
            &origin(ctx)?,
            tenant,
            &input.name,
            &input.description,
        )
        .await?;
        Ok(TeamPayload { team: Team(row) })
    }

    /// Renames a team or changes its description.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn update_team(
        &self,
        ctx: &Context<'_>,
        input: UpdateTeamInput,
    ) -> async_graphql::Result<TeamPayload> {
        let row = service::rename(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?.tenant_id,
            team_id(&input.team_id)?,
            input.name.as_deref(),
            input.description.as_deref(),
        )
        .await?;
        Ok(TeamPayload { team: Team(row) })
    }

    /// Deletes a team and its memberships.
    #[graphql(guard = "Require(Permission::TeamsManage)")]
    async fn delete_team(
        &self,
        ctx: &Context<'_>,
        input: DeleteTeamInput,
    ) -> async_graphql::Result<DeleteTeamPayload> {
        let id = team_id(&input.team_id)?;
        service::remove(app(ctx)?, &origin(ctx)?, principal(ctx)?.tenant_id, id).await?;
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
        let team = service::add_member(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?.tenant_id,
            team_id(&input.team_id)?,
            user_id(&input.user_id)?,
            input.role.into(),
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
        let team = service::remove_member_of(
            app(ctx)?,
            &origin(ctx)?,
            principal(ctx)?.tenant_id,
            team_id(&input.team_id)?,
            user_id(&input.user_id)?,
        )
        .await?;
        Ok(TeamPayload { team: Team(team) })
    }
}
