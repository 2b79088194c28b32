//! `graphql`: document limits and what anonymous callers may see.

use super::ConfigError;
use super::layers::{Layers, Raw, err, parse_bool, parse_num, toml_scalar};
use serde::Deserialize;

/// Who may run `__schema` / `__type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Introspection {
    /// Everyone, callers without credentials included (GraphiQL before sign-in).
    All,
    /// Signed-in callers only.
    Authenticated,
    /// Nobody: `schema.graphql` is the published contract.
    Off,
}

impl Introspection {
    /// Whether a caller (signed in or not) may introspect.
    pub fn allows(self, signed_in: bool) -> bool {
        match self {
            Self::All => true,
            Self::Authenticated => signed_in,
            Self::Off => false,
        }
    }
}

/// GraphQL execution limits.
#[derive(Debug, Clone)]
pub struct GraphqlConfig {
    /// Deepest selection nesting accepted.
    pub max_depth: usize,
    /// Highest query complexity accepted.
    pub max_complexity: usize,
    /// Most field selections of an operation with fragments expanded, checked before
    /// validation (so fragment-spread explosions cost nothing).
    pub max_selections: u64,
    /// Most fragment definitions in one document.
    pub max_fragments: usize,
    /// Most fragment spreads written in one document.
    pub max_spreads: usize,
    /// Most operations in one batched HTTP request (they share one complexity budget).
    pub max_batch: usize,
    /// Who may introspect the schema (GraphiQL and code generators need it).
    pub introspection: Introspection,
    /// Whether validation errors to callers without credentials suggest names ("Did you
    /// mean …?"); signed-in callers always get suggestions.
    pub anonymous_suggestions: bool,
    /// Query cost a client address without credentials may spend a minute (0: no
    /// limit); signed-in callers spend their tenant's budget.
    pub anonymous_query_cost_per_minute: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGraphql {
    pub(super) max_depth: Option<toml::Value>,
    pub(super) max_complexity: Option<toml::Value>,
    pub(super) max_selections: Option<toml::Value>,
    pub(super) max_fragments: Option<toml::Value>,
    pub(super) max_spreads: Option<toml::Value>,
    pub(super) max_batch: Option<toml::Value>,
    pub(super) anonymous_query_cost_per_minute: Option<toml::Value>,
    pub(super) introspection: Option<toml::Value>,
    /// Before `introspection`: `false` meant `authenticated`.
    pub(super) anonymous_introspection: Option<toml::Value>,
    pub(super) anonymous_suggestions: Option<toml::Value>,
}

/// Reads the section from its layers.
pub(super) fn load(layers: &Layers<'_>, file: FileGraphql) -> Result<GraphqlConfig, ConfigError> {
    let graphql = GraphqlConfig {
        max_depth: parse_num(
            layers.pick(
                "AGENTPLANE_GRAPHQL_MAX_DEPTH",
                "graphql.max_depth",
                toml_scalar(file.max_depth),
            ),
            12usize,
            2,
            64,
            "a depth between 2 and 64",
        )?,
        anonymous_query_cost_per_minute: parse_num(
            layers.pick(
                "AGENTPLANE_ANONYMOUS_QUERY_COST_PER_MINUTE",
                "graphql.anonymous_query_cost_per_minute",
                toml_scalar(file.anonymous_query_cost_per_minute),
            ),
            100_000u64,
            0,
            60_000_000,
            "a cost a minute between 0 (no limit) and 60000000",
        )?,
        max_complexity: parse_num(
            layers.pick(
                "AGENTPLANE_GRAPHQL_MAX_COMPLEXITY",
                "graphql.max_complexity",
                toml_scalar(file.max_complexity),
            ),
            10_000usize,
            10,
            1_000_000,
            "a complexity between 10 and 1000000",
        )?,
        max_selections: parse_num(
            layers.pick(
                "AGENTPLANE_GRAPHQL_MAX_SELECTIONS",
                "graphql.max_selections",
                toml_scalar(file.max_selections),
            ),
            10_000u64,
            10,
            10_000_000,
            "a number of selections between 10 and 10000000",
        )?,
        max_fragments: parse_num(
            layers.pick(
                "AGENTPLANE_GRAPHQL_MAX_FRAGMENTS",
                "graphql.max_fragments",
                toml_scalar(file.max_fragments),
            ),
            100usize,
            1,
            10_000,
            "a number of fragments between 1 and 10000",
        )?,
        max_spreads: parse_num(
            layers.pick(
                "AGENTPLANE_GRAPHQL_MAX_SPREADS",
                "graphql.max_spreads",
                toml_scalar(file.max_spreads),
            ),
            500usize,
            1,
            100_000,
            "a number of spreads between 1 and 100000",
        )?,
        max_batch: parse_num(
            layers.pick(
                "AGENTPLANE_GRAPHQL_MAX_BATCH",
                "graphql.max_batch",
                toml_scalar(file.max_batch),
            ),
            10usize,
            1,
            1000,
            "a number of operations between 1 and 1000",
        )?,
        introspection: parse_introspection(
            layers.pick(
                "AGENTPLANE_GRAPHQL_INTROSPECTION",
                "graphql.introspection",
                toml_scalar(file.introspection),
            ),
            layers.pick(
                "AGENTPLANE_GRAPHQL_ANONYMOUS_INTROSPECTION",
                "graphql.anonymous_introspection",
                toml_scalar(file.anonymous_introspection),
            ),
        )?,
        anonymous_suggestions: parse_bool(
            layers.pick(
                "AGENTPLANE_GRAPHQL_ANONYMOUS_SUGGESTIONS",
                "graphql.anonymous_suggestions",
                toml_scalar(file.anonymous_suggestions),
            ),
            false,
        )?,
    };

    Ok(graphql)
}

/// `all | authenticated | off`; without it, the older yes/no
/// `anonymous_introspection` (no = `authenticated`).
fn parse_introspection(
    raw: Option<Raw>,
    legacy: Option<Raw>,
) -> Result<Introspection, ConfigError> {
    let Some(raw) = raw else {
        return Ok(if parse_bool(legacy, true)? {
            Introspection::All
        } else {
            Introspection::Authenticated
        });
    };
    match raw.value.trim().to_ascii_lowercase().as_str() {
        "all" => Ok(Introspection::All),
        "authenticated" => Ok(Introspection::Authenticated),
        "off" | "none" => Ok(Introspection::Off),
        _ => Err(err(
            &raw.key,
            format!("{:?} is not an introspection mode", raw.value),
            "all, authenticated or off",
        )),
    }
}
