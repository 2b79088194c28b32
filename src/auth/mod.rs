//! Authentication: who is calling. The [`Principal`] is attached to each GraphQL request
//! (or websocket connection) and is the only source of the caller's tenant.

use async_graphql::Context;

use crate::error::{AppError, AppResult};
use crate::tenancy::TenantId;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The tenant the caller acts in. Never taken from client input.
    pub tenant_id: TenantId,
    /// Platform operators manage tenants and the cluster across tenants.
    pub platform_admin: bool,
}

impl Principal {
    /// Whether this caller may see tenant `id` at all.
    pub fn may_see_tenant(&self, id: TenantId) -> bool {
        self.platform_admin || self.tenant_id == id
    }
}

/// The caller of the current request, or `UNAUTHENTICATED`.
pub fn principal<'a>(ctx: &Context<'a>) -> AppResult<&'a Principal> {
    ctx.data_opt::<Principal>()
        .ok_or_else(|| AppError::unauthenticated("sign in to use this field"))
}
