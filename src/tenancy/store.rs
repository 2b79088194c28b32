//! Tenant queries, written once for both backends.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::model::{TenantId, TenantRow};
use crate::db::DbPool;
use crate::db::schema::tenants;
use crate::error::AppResult;

/// Loads one tenant by id.
pub async fn find(db: &DbPool, id: TenantId) -> AppResult<Option<TenantRow>> {
    Ok(crate::db_run!(db, |conn| {
        tenants::table
            .filter(tenants::id.eq(id))
            .select(TenantRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}
