//! Prepared-statement caching for the statements diesel will not cache on its own.
//!
//! diesel caches a prepared statement only when it can prove the SQL text never changes
//! for the query's type. It cannot for `UPDATE … SET` (a changeset may skip `None`
//! columns) nor for raw `sql_query`, so those are parsed anew on every call: on
//! PostgreSQL one more round trip and a parse per statement, on SQLite a prepare. The
//! hot ones (the engine's claim and writes, the audit head, the monthly counter) have
//! fixed text, so they are wrapped in [`Cached`]: the cache is then keyed by the SQL text
//! itself, which stays correct even if the text did vary (it would only add entries).

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A query whose prepared statement is cached under its SQL text. Only for statements
/// whose text is the same on every call, or takes one of a few shapes (a boxed list query
/// with optional filters): each distinct text takes a cache entry for the life of the
/// connection, so never for text that grows with the data (a list of ids written inline).
#[derive(Debug, Clone, Copy)]
pub struct Cached<Q>(pub Q);

/// Wraps `query` so its prepared statement is cached (see [`Cached`]).
pub fn cached<Q>(query: Q) -> Cached<Q> {
    Cached(query)
}

impl<Q, DB> QueryFragment<DB> for Cached<Q>
where
    Q: QueryFragment<DB>,
    DB: Backend,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Cached<Q> {
    // No type-level id: the cache is keyed by the SQL text.
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}
