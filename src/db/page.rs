//! A page of rows, as the stores read it: keyset bounds over time-ordered ids. The API
//! layer builds one from Relay arguments (`graphql::relay`).

use uuid::Uuid;

/// A validated page request, in keyset form over time-ordered ids.
#[derive(Debug, Clone)]
pub struct Page {
    /// Exclusive lower bound (from `after`).
    pub after: Option<Uuid>,
    /// Exclusive upper bound (from `before`).
    pub before: Option<Uuid>,
    /// Rows wanted; the store fetches one more to learn whether more exist.
    pub limit: i64,
    /// True when paging backwards (`last`): the store orders descending.
    pub from_end: bool,
}
