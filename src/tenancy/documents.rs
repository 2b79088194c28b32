//! Trusted documents (persisted queries): GraphQL documents a tenant registered, found
//! by the SHA-256 of their text. A client may send `extensions.persistedQuery.sha256Hash`
//! instead of the text; a tenant switched to "trusted documents only"
//! (`trustedDocumentsOnly`) runs registered documents and nothing else. The documents
//! are checked to parse and to fit the document limits where they are registered (the
//! API layer); here are the rows and the rules: at most [`MAX_DOCUMENTS`] a tenant, each
//! at most [`MAX_DOCUMENT_BYTES`], registering the same text twice returns the first
//! registration, and every change is audited.

use chrono::NaiveDateTime;
use diesel::{ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, SelectableHelper};
use diesel_async::RunQueryDsl as _;

use super::model::TenantId;
use crate::app::App;
use crate::audit::{Entry, Origin};
use crate::db::DbPool;
use crate::db::ids::db_time;
use crate::db::page::Page;
use crate::db::schema::trusted_documents;
use crate::error::{AppError, AppResult, ErrorCode};

pub use crate::db::ids::TrustedDocumentId;

/// Most documents one tenant registers.
pub const MAX_DOCUMENTS: i64 = 1_000;

/// Largest document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// One row of `trusted_documents`.
#[derive(diesel::Queryable, diesel::Selectable, diesel::Insertable, Debug, Clone)]
#[diesel(table_name = trusted_documents)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct TrustedDocumentRow {
    /// Primary key.
    pub id: TrustedDocumentId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Lower-case hex SHA-256 of `document`.
    pub sha256: String,
    /// A name for people (e.g. the operation's name).
    pub name: String,
    /// The document's text, as registered.
    pub document: String,
    /// Who registered it (`user:<id>` / `apikey:<id>`).
    pub created_by: String,
    /// When.
    pub created_at: NaiveDateTime,
}

/// The hash clients send for `document`: lower-case hex SHA-256 of its UTF-8 text (the
/// Apollo persisted-query convention).
pub fn digest(document: &str) -> String {
    crate::seal::sha256_hex(document)
}

/// Whether `s` looks like a hash [`digest`] makes.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The document of `tenant` whose hash is `sha256`.
pub async fn find_by_hash(
    db: &DbPool,
    tenant: TenantId,
    sha256: &str,
) -> AppResult<Option<TrustedDocumentRow>> {
    let sha256 = sha256.to_ascii_lowercase();
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        trusted_documents::table
            .filter(trusted_documents::tenant_id.eq(tenant))
            .filter(trusted_documents::sha256.eq(&sha256))
            .select(TrustedDocumentRow::as_select())
            .first(conn)
            .await
            .optional()?
    }))
}

/// A document of `tenant`, or `NOT_FOUND`.
pub async fn get(
    db: &DbPool,
    tenant: TenantId,
    id: TrustedDocumentId,
) -> AppResult<TrustedDocumentRow> {
    let row: Option<TrustedDocumentRow> = crate::db_run_tenant!(db, tenant, |conn| {
        trusted_documents::table
            .filter(trusted_documents::tenant_id.eq(tenant))
            .filter(trusted_documents::id.eq(id))
            .select(TrustedDocumentRow::as_select())
            .first(conn)
            .await
            .optional()?
    });
    row.ok_or_else(|| AppError::not_found("trusted document"))
}

/// A page of `tenant`'s documents, and how many it has.
pub async fn list(
    db: &DbPool,
    tenant: TenantId,
    page: &Page,
) -> AppResult<(Vec<TrustedDocumentRow>, i64)> {
    Ok(crate::db_run_tenant!(db, tenant, |conn| {
        let mut q = trusted_documents::table
            .filter(trusted_documents::tenant_id.eq(tenant))
            .select(TrustedDocumentRow::as_select())
            .into_boxed();
        if let Some(a) = page.after {
            q = q.filter(trusted_documents::id.gt(a.hyphenated().to_string()));
        }
        if let Some(b) = page.before {
            q = q.filter(trusted_documents::id.lt(b.hyphenated().to_string()));
        }
        q = if page.from_end {
            q.order(trusted_documents::id.desc())
        } else {
            q.order(trusted_documents::id.asc())
        };
        let rows = q.limit(page.limit + 1).load(conn).await?;
        let total: i64 = trusted_documents::table
            .filter(trusted_documents::tenant_id.eq(tenant))
            .count()
            .get_result(conn)
            .await?;
        (rows, total)
    }))
}

/// Registers `document` for `tenant` (already checked to parse); the same text again
/// returns the first registration (`false`: nothing new).
pub async fn register(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    name: &str,
    document: &str,
) -> AppResult<(TrustedDocumentRow, bool)> {
    if document.trim().is_empty() {
        return Err(AppError::bad_input("document", "the document is empty"));
    }
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(AppError::bad_input(
            "document",
            format!("a trusted document is at most {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    let name = name.trim();
    if name.chars().count() > 200 {
        return Err(AppError::bad_input("name", "at most 200 characters"));
    }
    let sha256 = digest(document);
    if let Some(existing) = find_by_hash(&app.db, tenant, &sha256).await? {
        return Ok((existing, false));
    }
    let now = db_time(app.clock.now());
    let row = TrustedDocumentRow {
        id: TrustedDocumentId::new(),
        tenant_id: tenant,
        sha256,
        name: name.to_owned(),
        document: document.to_owned(),
        created_by: origin.actor_ref.clone().unwrap_or_default(),
        created_at: now,
    };
    let audit = Entry::change(
        origin,
        "trusted_document.registered",
        "trusted_document",
        row.id,
        Some(serde_json::json!({ "name": row.name, "sha256": row.sha256 })),
        now,
    );
    let inserted = app
        .db
        .tx(tenant, async |conn| {
            // Counted after the audit append, which holds the tenant's chain lock: two
            // registrations at once cannot both take the last place.
            crate::audit::append(conn, &audit).await?;
            let count: i64 = crate::on_conn!(conn, |conn| {
                trusted_documents::table
                    .filter(trusted_documents::tenant_id.eq(tenant))
                    .count()
                    .get_result(conn)
                    .await?
            });
            if count >= MAX_DOCUMENTS {
                return Err(AppError::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "a tenant registers at most {MAX_DOCUMENTS} trusted documents: delete \
                         ones no client sends any more (deleteTrustedDocument)"
                    ),
                ));
            }
            crate::on_conn!(conn, |conn| {
                diesel::insert_into(trusted_documents::table)
                    .values(&row)
                    .execute(conn)
                    .await?;
            });
            Ok(())
        })
        .await;
    match inserted {
        Ok(()) => Ok((row, true)),
        // The same text registered at the same moment: the other registration stands.
        Err(e) if e.code() == ErrorCode::Conflict => {
            match find_by_hash(&app.db, tenant, &row.sha256).await? {
                Some(existing) => Ok((existing, false)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Deletes a document of `tenant`: clients sending its hash get `NOT_FOUND` from now on.
pub async fn delete(
    app: &App,
    origin: &Origin,
    tenant: TenantId,
    id: TrustedDocumentId,
) -> AppResult<TrustedDocumentRow> {
    let row = get(&app.db, tenant, id).await?;
    let now = db_time(app.clock.now());
    let audit = Entry::change(
        origin,
        "trusted_document.deleted",
        "trusted_document",
        row.id,
        Some(serde_json::json!({ "name": row.name, "sha256": row.sha256 })),
        now,
    );
    app.db
        .tx(tenant, async |conn| {
            let n = crate::on_conn!(conn, |conn| {
                diesel::delete(
                    trusted_documents::table
                        .filter(trusted_documents::tenant_id.eq(tenant))
                        .filter(trusted_documents::id.eq(id)),
                )
                .execute(conn)
                .await?
            });
            if n == 0 {
                return Err(AppError::not_found("trusted document"));
            }
            crate::audit::append(conn, &audit).await?;
            Ok(())
        })
        .await?;
    Ok(row)
}
