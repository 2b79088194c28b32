//! Secret queries over the caller's connection; no transaction of their own.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::SecretRow;
use crate::db::Conn;
use crate::db::ids::TenantId;
use crate::db::schema::secrets;
use crate::error::AppResult;

/// A secret of `tenant` by name.
pub(super) async fn find(
    conn: &mut Conn<'_>,
    tenant: TenantId,
    name: &str,
) -> AppResult<Option<SecretRow>> {
    Ok(crate::on_conn!(conn, |conn| {
        secrets::table
            .filter(secrets::tenant_id.eq(tenant))
            .filter(secrets::name.eq(name))
            .select(SecretRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// Inserts a secret, or replaces the value, key and hosts of the one with its name.
pub(super) async fn upsert(conn: &mut Conn<'_>, row: &SecretRow) -> AppResult<()> {
    crate::on_conn!(conn, |conn| {
        diesel::insert_into(secrets::table)
            .values(row)
            .on_conflict((secrets::tenant_id, secrets::name))
            .do_update()
            .set((
                secrets::key_id.eq(&row.key_id),
                secrets::nonce.eq(&row.nonce),
                secrets::ciphertext.eq(&row.ciphertext),
                secrets::updated_at.eq(row.updated_at),
                secrets::allowed_hosts.eq(&row.allowed_hosts),
            ))
            .execute(conn)
            .await?;
    });
    Ok(())
}

/// Deletes a secret; `false` when there was none by that name.
pub(super) async fn remove(conn: &mut Conn<'_>, tenant: TenantId, name: &str) -> AppResult<bool> {
    Ok(crate::on_conn!(conn, |conn| {
        diesel::delete(
            secrets::table
                .filter(secrets::tenant_id.eq(tenant))
                .filter(secrets::name.eq(name)),
        )
        .execute(conn)
        .await?
            == 1
    }))
}

/// The secrets of `tenant`, by name.
pub(super) async fn list(conn: &mut Conn<'_>, tenant: TenantId) -> AppResult<Vec<SecretRow>> {
    Ok(crate::on_conn!(conn, |conn| {
        secrets::table
            .filter(secrets::tenant_id.eq(tenant))
            .order(secrets::name.asc())
            .select(SecretRow::as_select())
            .load(conn)
            .await?
    }))
}

/// Every secret not under the current master key (rotation), across tenants.
pub(super) async fn stale(conn: &mut Conn<'_>, current: &str) -> AppResult<Vec<SecretRow>> {
    Ok(crate::on_conn!(conn, |conn| {
        secrets::table
            .filter(secrets::key_id.ne(current))
            .select(SecretRow::as_select())
            .load(conn)
            .await?
    }))
}
