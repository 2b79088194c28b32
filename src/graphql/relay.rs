//! Relay conventions: opaque global IDs, the `Node` interface, and cursor connections.
//!
//! A global ID is `base64url("Kind:uuid")`. Decoding never reveals whether an object
//! exists: a malformed ID is `BAD_USER_INPUT`, a well-formed one that the caller may not
//! see is `NOT_FOUND`, exactly as a missing one.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{ID, Object, OutputType};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::{AppError, AppResult};

/// The kinds of object addressable through `node(id:)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// An organization.
    Tenant,
    /// A user.
    User,
    /// A custom role.
    Role,
    /// An API key.
    ApiKey,
    /// A sign-in session.
    Session,
    /// A team.
    Team,
    /// A workflow.
    Workflow,
    /// An execution.
    Execution,
    /// A schedule.
    Schedule,
    /// A cluster node (a serve or worker process).
    ClusterNode,
    /// A GPU memory reservation.
    GpuAllocation,
    /// A trusted (persisted) GraphQL document.
    TrustedDocument,
}

impl NodeKind {
    const ALL: &'static [NodeKind] = &[
        NodeKind::Tenant,
        NodeKind::User,
        NodeKind::Role,
        NodeKind::ApiKey,
        NodeKind::Session,
        NodeKind::Team,
        NodeKind::Workflow,
        NodeKind::Execution,
        NodeKind::Schedule,
        NodeKind::ClusterNode,
        NodeKind::GpuAllocation,
        NodeKind::TrustedDocument,
    ];

    /// The type name used inside the global ID (matches the GraphQL type).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tenant => "Tenant",
            Self::User => "User",
            Self::Role => "Role",
            Self::ApiKey => "ApiKey",
            Self::Session => "Session",
            Self::Team => "Team",
            Self::Workflow => "Workflow",
            Self::Execution => "Execution",
            Self::Schedule => "Schedule",
            Self::ClusterNode => "ClusterNode",
            Self::GpuAllocation => "GpuAllocation",
            Self::TrustedDocument => "TrustedDocument",
        }
    }
}

impl NodeKind {
    /// The kind an audit record's `resource_type` names, when it is a node.
    pub fn of_resource_type(t: &str) -> Option<Self> {
        Some(match t {
            "tenant" => Self::Tenant,
            "user" => Self::User,
            "role" => Self::Role,
            "api_key" | "apikey" => Self::ApiKey,
            "session" => Self::Session,
            "team" => Self::Team,
            "workflow" => Self::Workflow,
            "execution" => Self::Execution,
            "schedule" => Self::Schedule,
            "node" => Self::ClusterNode,
            "gpu_allocation" => Self::GpuAllocation,
            "trusted_document" => Self::TrustedDocument,
            _ => return None,
        })
    }

    /// What an ID of this kind looks like, for error messages.
    fn example(self) -> String {
        let full = to_global_id(self, Uuid::nil()).0;
        format!("{}…", &full[..full.len().min(14)])
    }
}

/// The global ID inside a stored reference such as `user:<uuid>` or `schedule:<uuid>`
/// (what `Execution.trigger` and audit actors hold), if it names a node.
pub fn global_id_of_ref(reference: &str) -> Option<ID> {
    let (kind, raw) = reference.split_once(':')?;
    let kind = NodeKind::of_resource_type(kind)?;
    Uuid::parse_str(raw).ok().map(|u| to_global_id(kind, u))
}

/// A filter value given as either form: a global ID becomes the raw id stored in
/// records; anything else is taken as written.
pub fn raw_id(value: &str) -> String {
    decode_global_id(&ID(value.to_owned()))
        .map_or_else(|_| value.to_owned(), |(_, u)| u.hyphenated().to_string())
}

/// Encodes a global ID.
pub fn to_global_id(kind: NodeKind, id: Uuid) -> ID {
    // `Type:uuid` on the stack: a response holds hundreds of IDs, and formatting each
    // into a String of its own first cost an allocation and the formatter apiece.
    const LONGEST: usize = {
        let mut i = 0;
        let mut n = 0;
        while i < NodeKind::ALL.len() {
            if NodeKind::ALL[i].name().len() > n {
                n = NodeKind::ALL[i].name().len();
            }
            i += 1;
        }
        n
    };
    let mut raw = [0u8; LONGEST + 1 + uuid::fmt::Hyphenated::LENGTH];
    let name = kind.name().as_bytes();
    raw[..name.len()].copy_from_slice(name);
    raw[name.len()] = b':';
    let end = name.len() + 1 + uuid::fmt::Hyphenated::LENGTH;
    id.hyphenated().encode_lower(&mut raw[name.len() + 1..end]);
    ID(URL_SAFE_NO_PAD.encode(&raw[..end]))
}

/// Decodes any global ID into its kind and uuid.
pub fn decode_global_id(id: &ID) -> AppResult<(NodeKind, Uuid)> {
    let invalid = || {
        AppError::bad_input(
            "id",
            "not a valid ID: pass an `id` as the API returned it (an opaque string such as \
             V29ya2Zsb3c6…, base64url of `Type:uuid`)",
        )
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(id.as_bytes())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (kind, raw) = text.split_once(':').ok_or_else(invalid)?;
    let kind = NodeKind::ALL
        .iter()
        .copied()
        .find(|k| k.name() == kind)
        .ok_or_else(invalid)?;
    let uuid = Uuid::parse_str(raw).map_err(|_| invalid())?;
    Ok((kind, uuid))
}

/// Decodes a global ID that must be of `kind`. An ID of another kind is `NOT_FOUND`
/// (it cannot name an object of the expected type).
///
/// The raw UUID inside a global ID is accepted as well (audit records and triggers show
/// both forms, so either can be pasted back).
pub fn decode_expecting(id: &ID, kind: NodeKind, what: &str) -> AppResult<Uuid> {
    if let Ok(uuid) = Uuid::parse_str(id.as_str()) {
        return Ok(uuid);
    }
    let (k, uuid) = decode_global_id(id).map_err(|_| {
        AppError::bad_input(
            "id",
            format!(
                "not a valid {what} ID: pass the `id` the API returned for a {} (an opaque \
                 string such as {}) or the UUID inside it",
                kind.name(),
                kind.example()
            ),
        )
    })?;
    if k != kind {
        return Err(AppError::not_found(what));
    }
    Ok(uuid)
}

/// Extra fields every connection carries.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFields {
    /// Number of objects matching the filter, ignoring pagination.
    pub total_count: i64,
}

#[Object]
impl ConnectionFields {
    /// Number of objects matching the filter, ignoring pagination.
    // Complexity 10: a count visits every matching row, not one.
    #[graphql(complexity = 10)]
    async fn total_count(&self) -> i64 {
        self.total_count
    }
}

/// Complexity of a connection field: what one item costs, times the items a page may
/// hold (`first` or `last`, else the default page), plus one for the field itself. So
/// nested pages multiply, as their work does.
pub fn page_cost(first: Option<i32>, last: Option<i32>, child_complexity: usize) -> usize {
    let items = first.or(last).unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    1 + usize::try_from(items)
        .unwrap_or(1)
        .saturating_mul(child_complexity)
}

/// A connection type with `totalCount`.
pub type Conn<T> = Connection<String, T, ConnectionFields, EmptyFields>;

/// Largest page a client may ask for.
pub const MAX_PAGE: i32 = 100;
/// Page size when the client gives neither `first` nor `last`.
pub const DEFAULT_PAGE: i32 = 20;

pub use crate::db::page::Page;

fn decode_cursor(arg: &'static str, c: &str) -> AppResult<Uuid> {
    let invalid = || AppError::bad_input(arg, format!("`{arg}` is not a valid cursor"));
    let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let raw = text.strip_prefix("c:").ok_or_else(invalid)?;
    Uuid::parse_str(raw).map_err(|_| invalid())
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("c:{}", id.hyphenated()))
}

impl Page {
    /// Validates Relay arguments: at most one of `first`/`last`, each 0..=100.
    pub fn from_args(
        after: Option<String>,
        before: Option<String>,
        first: Option<i32>,
        last: Option<i32>,
    ) -> AppResult<Self> {
        if first.is_some() && last.is_some() {
            return Err(AppError::bad_input(
                "first",
                "pass either `first` or `last`, not both",
            ));
        }
        for (name, v) in [("first", first), ("last", last)] {
            if let Some(n) = v {
                if !(0..=MAX_PAGE).contains(&n) {
                    return Err(AppError::bad_input(
                        name,
                        format!("`{name}` must be between 0 and {MAX_PAGE}"),
                    ));
                }
            }
        }
        Ok(Self {
            after: after
                .as_deref()
                .map(|c| decode_cursor("after", c))
                .transpose()?,
            before: before
                .as_deref()
                .map(|c| decode_cursor("before", c))
                .transpose()?,
            limit: i64::from(last.or(first).unwrap_or(DEFAULT_PAGE)),
            from_end: last.is_some(),
        })
    }

    /// Builds the connection from rows fetched with `limit + 1` in the page's order.
    pub fn finish<T: OutputType>(
        &self,
        mut rows: Vec<T>,
        total_count: i64,
        id_of: impl Fn(&T) -> Uuid,
    ) -> Conn<T> {
        let limit = usize::try_from(self.limit).unwrap_or(0);
        let more = rows.len() > limit;
        rows.truncate(limit);
        if self.from_end {
            rows.reverse();
        }
        let (has_previous, has_next) = if self.from_end {
            (more, self.before.is_some())
        } else {
            (self.after.is_some(), more)
        };
        let mut conn = Connection::with_additional_fields(
            has_previous,
            has_next,
            ConnectionFields { total_count },
        );
        conn.edges.extend(
            rows.into_iter()
                .map(|r| Edge::new(encode_cursor(id_of(&r)), r)),
        );
        conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ids_round_trip_and_reject_garbage() {
        let u = Uuid::now_v7();
        let id = to_global_id(NodeKind::Tenant, u);
        assert_eq!(decode_global_id(&id).expect("valid").1, u);
        assert!(decode_global_id(&ID("nope".into())).is_err());
        assert!(decode_global_id(&ID(URL_SAFE_NO_PAD.encode("Bogus:x"))).is_err());
        // Every kind, byte for byte the `Type:uuid` text clients may have stored.
        for kind in NodeKind::ALL.iter().copied() {
            let id = to_global_id(kind, u);
            let text = format!("{}:{}", kind.name(), u.hyphenated());
            assert_eq!(id.0, URL_SAFE_NO_PAD.encode(text));
            assert_eq!(decode_global_id(&id).expect("valid"), (kind, u));
        }
    }

    #[test]
    fn page_arguments_are_validated() {
        assert!(Page::from_args(None, None, Some(1), Some(1)).is_err());
        assert!(Page::from_args(None, None, Some(101), None).is_err());
        assert!(Page::from_args(Some("zz".into()), None, None, None).is_err());
        let p = Page::from_args(None, None, None, Some(5)).expect("valid");
        assert!(p.from_end);
        assert_eq!(p.limit, 5);
    }
}

/// A validated page over an ordered list, with opaque offset cursors. Used where the
/// order is not the id order (e.g. by name); a concurrent insert can shift a page by one.
#[derive(Debug, Clone, Copy)]
pub struct OffsetPage {
    /// First row (0-based).
    pub offset: i64,
    /// Rows to fetch.
    pub limit: i64,
    /// Rows before this page exist.
    pub has_previous: bool,
    /// Rows after this page exist.
    pub has_next: bool,
}

fn decode_offset(arg: &'static str, c: &str) -> AppResult<i64> {
    let invalid = || AppError::bad_input(arg, format!("`{arg}` is not a valid cursor"));
    let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix("o:")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(invalid)
}

impl OffsetPage {
    /// Validates Relay arguments against a list of `total` rows.
    pub fn from_args(
        after: Option<String>,
        before: Option<String>,
        first: Option<i32>,
        last: Option<i32>,
        total: i64,
    ) -> AppResult<Self> {
        // Reuse the argument rules of keyset pages.
        Page::from_args(None, None, first, last)?;
        let mut start = match after {
            Some(c) => decode_offset("after", &c)? + 1,
            None => 0,
        };
        let mut end = match before {
            Some(c) => decode_offset("before", &c)?.min(total),
            None => total,
        };
        start = start.min(end);
        if let Some(l) = last {
            start = start.max(end - i64::from(l));
        } else {
            end = end.min(start + i64::from(first.unwrap_or(DEFAULT_PAGE)));
        }
        Ok(Self {
            offset: start,
            limit: end - start,
            has_previous: start > 0,
            has_next: end < total,
        })
    }

    /// Builds the connection from the fetched rows.
    pub fn finish<T: OutputType>(&self, rows: Vec<T>, total_count: i64) -> Conn<T> {
        let mut conn = Connection::with_additional_fields(
            self.has_previous,
            self.has_next,
            ConnectionFields { total_count },
        );
        let offset = self.offset;
        conn.edges
            .extend(rows.into_iter().enumerate().map(|(i, r)| {
                let pos = offset + i64::try_from(i).unwrap_or(0);
                Edge::new(URL_SAFE_NO_PAD.encode(format!("o:{pos}")), r)
            }));
        conn
    }
}
