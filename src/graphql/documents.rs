//! Persisted documents on the way in (HTTP and websockets): a request that names a
//! document by hash (`extensions.persistedQuery.sha256Hash`, the Apollo convention) gets
//! the registered text of the caller's tenant; a tenant with `trustedDocumentsOnly`
//! runs registered documents and nothing else (`FORBIDDEN`, reason
//! `TRUSTED_DOCUMENTS_ONLY`). Some mutations stay open to such a tenant whatever it
//! registered: signing in, refreshing and out (they read no data), switching the mode
//! off (`updateTenantSettings`) and managing the registered documents
//! (`registerTrustedDocument`, `deleteTrustedDocument`) — the last three need
//! `tenant.update`, which can switch the mode off anyway.

use async_graphql::Request;
use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};

use crate::app::App;
use crate::auth::Principal;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::tenancy::documents::{digest, find_by_hash, is_digest};

/// Root mutation fields a tenant in trusted-documents-only mode may always call.
const ALWAYS_ALLOWED: [&str; 7] = [
    "login",
    "refreshSession",
    "logout",
    "updateTenantSettings",
    "registerTrustedDocument",
    "deleteTrustedDocument",
    "__typename",
];

/// The hash a request names, if it names one; `BAD_USER_INPUT` when the extension is
/// malformed.
fn persisted_hash(r: &Request) -> AppResult<Option<String>> {
    let Some(pq) = r.extensions.get("persistedQuery") else {
        return Ok(None);
    };
    let hash = match pq {
        async_graphql::Value::Object(o) => match o.get("sha256Hash") {
            Some(async_graphql::Value::String(h)) => h.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if !is_digest(&hash) {
        return Err(AppError::bad_input(
            "extensions.persistedQuery",
            "give {\"version\": 1, \"sha256Hash\": \"<64 hex digits: SHA-256 of the document>\"}",
        ));
    }
    Ok(Some(hash.to_ascii_lowercase()))
}

fn not_registered() -> AppError {
    AppError::new(
        ErrorCode::NotFound,
        "no trusted document with this sha256Hash is registered for your organization: \
         register it with registerTrustedDocument, or send the document's text",
    )
    .with_detail("reason", "PERSISTED_QUERY_NOT_FOUND")
}

fn trusted_only() -> AppError {
    AppError::new(
        ErrorCode::Forbidden,
        "your organization runs trusted documents only: an owner registers this document \
         (registerTrustedDocument) and clients send its extensions.persistedQuery.sha256Hash; \
         or an owner switches the mode off (updateTenantSettings(input: \
         {trustedDocumentsOnly: false}))",
    )
    .with_detail("reason", "TRUSTED_DOCUMENTS_ONLY")
}

/// Whether every operation of `query` is a mutation selecting only [`ALWAYS_ALLOWED`]
/// fields, with no fragments.
fn always_allowed(query: &str) -> bool {
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    if !doc.fragments.is_empty() {
        return false;
    }
    let mut ops: Vec<_> = match &doc.operations {
        DocumentOperations::Single(op) => vec![op],
        DocumentOperations::Multiple(ops) => ops.values().collect(),
    };
    !ops.is_empty()
        && ops.drain(..).all(|op| {
            op.node.ty == OperationType::Mutation
                && op
                    .node
                    .selection_set
                    .node
                    .items
                    .iter()
                    .all(|s| match &s.node {
                        Selection::Field(f) => ALWAYS_ALLOWED.contains(&f.node.name.node.as_str()),
                        _ => false,
                    })
        })
}

/// The request to run: its registered text filled in when it names a document by hash,
/// refused when its tenant runs trusted documents only and this is not one.
pub async fn resolve(app: &App, principal: Option<&Principal>, r: Request) -> AppResult<Request> {
    // Resolved once per request (GET resolves early, to see what the document does).
    if r.data.contains_key(&std::any::TypeId::of::<Resolved>()) {
        return Ok(r);
    }
    Ok(resolve_once(app, principal, r).await?.data(Resolved))
}

/// Marks a request whose document [`resolve`] has settled.
struct Resolved;

async fn resolve_once(
    app: &App,
    principal: Option<&Principal>,
    mut r: Request,
) -> AppResult<Request> {
    let hash = persisted_hash(&r)?;
    if let Some(h) = &hash
        && !r.query.is_empty()
        && digest(&r.query) != *h
    {
        return Err(AppError::bad_input(
            "extensions.persistedQuery.sha256Hash",
            "the hash is not the SHA-256 of the query sent with it",
        ));
    }
    let Some(p) = principal else {
        // Callers without credentials have no tenant, so no registered documents.
        return if hash.is_some() && r.query.is_empty() {
            Err(not_registered())
        } else {
            Ok(r)
        };
    };
    let trusted_only_mode = p.limits.trusted_documents_only && !p.platform_admin;
    match hash {
        Some(h) => match find_by_hash(&app.db, p.tenant_id, &h).await? {
            Some(doc) => {
                if r.query.is_empty() {
                    r.query = doc.document;
                }
                Ok(r)
            }
            None if trusted_only_mode || r.query.is_empty() => Err(not_registered()),
            None => Ok(r),
        },
        None if !trusted_only_mode || always_allowed(&r.query) => Ok(r),
        None => match find_by_hash(&app.db, p.tenant_id, &digest(&r.query)).await? {
            Some(_) => Ok(r),
            None => Err(trusted_only()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_credential_and_document_management_mutations_are_always_allowed() {
        assert!(always_allowed(
            "mutation { registerTrustedDocument(input: {document: \"{ me { id } }\"}) { created } }"
        ));
        assert!(always_allowed("mutation { logout { ok } }"));
        assert!(!always_allowed(
            "mutation { updateTenantSettings: createTeam(input: {name: \"x\"}) { team { id } } }"
        ));
        assert!(always_allowed(
            "mutation { updateTenantSettings(input: {trustedDocumentsOnly: false}) { tenant { id } } }"
        ));
        assert!(!always_allowed("query { tenant { id } }"));
        assert!(!always_allowed(
            "mutation { updateTenantSettings(input: {}) { tenant { id } } deleteTeam(input: {teamId: \"x\"}) { deletedTeamId } }"
        ));
        assert!(!always_allowed(
            "mutation { ...F } fragment F on Mutation { deleteTeam(input: {teamId: \"x\"}) { deletedTeamId } }"
        ));
        assert!(!always_allowed(
            "mutation A { updateTenantSettings(input: {}) { tenant { id } } } query B { users { totalCount } }"
        ));
        assert!(!always_allowed("not graphql"));
    }
}
