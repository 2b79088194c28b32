//! Rules for administering people: who may change whom.

use crate::app::App;
use crate::error::{AppError, AppResult};
use crate::tenancy::UserRow;

use super::Principal;

/// Refuses changes to a user who holds permissions the caller does not (an ADMIN cannot
/// demote, disable or erase an OWNER). Platform admins may change anyone.
pub async fn may_change_user(app: &App, p: &Principal, target: &UserRow) -> AppResult<()> {
    if p.platform_admin {
        return Ok(());
    }
    let tenant = crate::tenancy::store::find(&app.db, target.tenant_id)
        .await?
        .ok_or_else(|| AppError::not_found("tenant"))?;
    let (held, platform) = super::role_permissions(app, &tenant, &target.role).await?;
    if platform || !held.is_subset(&p.permissions) {
        return Err(AppError::forbidden(
            "this user holds permissions you do not hold; ask someone with at least their role",
        ));
    }
    Ok(())
}
