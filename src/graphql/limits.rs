//! Document limits checked right after parsing, before validation.
//!
//! Validation walks every fragment spread as written out, so a small document whose
//! fragments each spread the next one twice costs time exponential in its size before the
//! depth and complexity limits ever see it (22 fragments: seconds of CPU on a runtime
//! thread, which the request timeout cannot interrupt). This module measures the
//! document once, with each fragment's size computed once (memoised), and refuses it when
//! it has too many fragment definitions, too many spreads, too many selections after
//! expanding fragments, or a fragment cycle. HTTP requests are checked before they reach
//! async-graphql (whose own recursion-depth check also walks spreads as written); the
//! same check runs in the schema's extension (`extensions::Hooks`) after parsing for
//! every other path (websockets).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::ValidationResult;
use async_graphql::extensions::ExtensionContext;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, Name, ServerError};

/// The bounds, from `graphql.max_selections`, `graphql.max_fragments` and
/// `graphql.max_spreads`.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// Most field selections of an operation once fragments are expanded.
    pub max_selections: u64,
    /// Most fragment definitions in a document.
    pub max_fragments: usize,
    /// Most fragment spreads written in a document.
    pub max_spreads: usize,
    /// Deepest field nesting of an operation, fragments expanded, not counting what is
    /// under `__schema` / `__type`: introspection is as deep as the type system it
    /// describes, and the standard query tools send (graphql-js'
    /// `getIntrospectionQuery`, 13 levels) must pass the default.
    pub max_depth: usize,
}

/// What [`measure`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Measure {
    /// Fragment definitions.
    pub fragments: usize,
    /// Fragment spreads as written.
    pub spreads: usize,
    /// Field selections of the largest operation with fragments expanded (saturating).
    pub selections: u64,
    /// Field nesting of the deepest operation, introspection subtrees not counted.
    pub depth: u64,
}

/// Measures `doc` in time linear in its size; `Err` names a fragment that spreads
/// itself (such a document is invalid, and walking it as written never ends).
pub fn measure(doc: &ExecutableDocument) -> Result<Measure, String> {
    let mut memo: HashMap<Name, u64> = HashMap::new();
    let mut spreads = 0;
    for f in doc.fragments.values() {
        spreads += count_spreads(&f.node.selection_set.node);
    }
    let mut selections = 0;
    let mut depth = 0;
    let mut depths: HashMap<Name, u64> = HashMap::new();
    for (_, op) in doc.operations.iter() {
        spreads += count_spreads(&op.node.selection_set.node);
        let size = expanded(&op.node.selection_set.node, doc, &mut memo, &mut Vec::new())?;
        selections = selections.max(size);
        // No fragment cycle past `expanded`: the walk below ends.
        depth = depth.max(nesting(&op.node.selection_set.node, doc, &mut depths));
    }
    Ok(Measure {
        fragments: doc.fragments.len(),
        spreads,
        selections,
        depth,
    })
}

/// Field nesting under `set`, fragments expanded (each sized once); an introspection
/// root field (`__schema`, `__type`) counts one level, whatever it selects.
fn nesting(set: &SelectionSet, doc: &ExecutableDocument, memo: &mut HashMap<Name, u64>) -> u64 {
    let mut deepest = 0;
    for s in &set.items {
        let d = match &s.node {
            Selection::Field(f) => {
                let name = f.node.name.node.as_str();
                if name == "__schema" || name == "__type" {
                    1
                } else {
                    1 + nesting(&f.node.selection_set.node, doc, memo)
                }
            }
            Selection::InlineFragment(i) => nesting(&i.node.selection_set.node, doc, memo),
            Selection::FragmentSpread(sp) => {
                let name = &sp.node.fragment_name.node;
                if let Some(n) = memo.get(name) {
                    *n
                } else if let Some(def) = doc.fragments.get(name) {
                    let n = nesting(&def.node.selection_set.node, doc, memo);
                    memo.insert(name.clone(), n);
                    n
                } else {
                    0
                }
            }
        };
        deepest = deepest.max(d);
    }
    deepest
}

fn count_spreads(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|s| match &s.node {
            Selection::Field(f) => count_spreads(&f.node.selection_set.node),
            Selection::FragmentSpread(_) => 1,
            Selection::InlineFragment(i) => count_spreads(&i.node.selection_set.node),
        })
        .sum()
}

/// Selections under `set` with fragments expanded — fields, spreads and inline fragments
/// each count one, so the number bounds any walk of the document as written. Each
/// fragment is sized once.
fn expanded(
    set: &SelectionSet,
    doc: &ExecutableDocument,
    memo: &mut HashMap<Name, u64>,
    visiting: &mut Vec<Name>,
) -> Result<u64, String> {
    let mut total: u64 = 0;
    for s in &set.items {
        let inner = match &s.node {
            Selection::Field(f) => expanded(&f.node.selection_set.node, doc, memo, visiting)?,
            Selection::InlineFragment(i) => {
                expanded(&i.node.selection_set.node, doc, memo, visiting)?
            }
            Selection::FragmentSpread(sp) => {
                let name = &sp.node.fragment_name.node;
                if let Some(n) = memo.get(name) {
                    *n
                } else if visiting.contains(name) {
                    return Err(format!("fragment {name} spreads itself"));
                } else if let Some(def) = doc.fragments.get(name) {
                    visiting.push(name.clone());
                    let n = expanded(&def.node.selection_set.node, doc, memo, visiting)?;
                    visiting.pop();
                    memo.insert(name.clone(), n);
                    n
                } else {
                    0 // unknown fragment: validation reports it
                }
            }
        };
        total = total.saturating_add(1).saturating_add(inner);
    }
    Ok(total)
}

impl DocumentLimits {
    /// Why `doc` is refused, if it is: (message, the setting that bounds it).
    pub fn check(&self, doc: &ExecutableDocument) -> Result<(), (String, &'static str)> {
        let m = measure(doc).map_err(|cycle| (cycle, "fragmentCycle"))?;
        if m.fragments > self.max_fragments {
            return Err((
                format!(
                    "the document defines {} fragments; at most {} are accepted",
                    m.fragments, self.max_fragments
                ),
                "maxFragments",
            ));
        }
        if m.spreads > self.max_spreads {
            return Err((
                format!(
                    "the document spreads fragments {} times; at most {} are accepted",
                    m.spreads, self.max_spreads
                ),
                "maxSpreads",
            ));
        }
        if m.depth > self.max_depth as u64 {
            return Err((
                format!(
                    "the query is nested too deep: {} levels; at most {} are accepted \
                     (introspection under __schema and __type is not counted)",
                    m.depth, self.max_depth
                ),
                "maxDepth",
            ));
        }
        let (schemas, types) = introspection_fields(doc);
        if schemas > 1 || types > MAX_TYPE_LOOKUPS {
            return Err((
                format!(
                    "the document introspects {schemas} times with __schema and {types} times \
                     with __type; at most once with __schema and {MAX_TYPE_LOOKUPS} times with \
                     __type are accepted (one __schema answers everything)"
                ),
                "introspection",
            ));
        }
        if m.selections > self.max_selections {
            return Err((
                format!(
                    "the operation has {} selections once fragments are expanded; at most {} \
                     are accepted",
                    m.selections, self.max_selections
                ),
                "maxSelections",
            ));
        }
        Ok(())
    }
}

/// Most `__type` lookups in one document.
pub const MAX_TYPE_LOOKUPS: usize = 10;

/// `__schema` and `__type` fields written in `doc` (each alias is one more answer of the
/// whole type system, so the count as written is what bounds the answer's size).
fn introspection_fields(doc: &ExecutableDocument) -> (usize, usize) {
    fn walk(set: &SelectionSet, out: &mut (usize, usize)) {
        for s in &set.items {
            match &s.node {
                Selection::Field(f) => {
                    match f.node.name.node.as_str() {
                        "__schema" => out.0 += 1,
                        "__type" => out.1 += 1,
                        _ => {}
                    }
                    walk(&f.node.selection_set.node, out);
                }
                Selection::InlineFragment(i) => walk(&i.node.selection_set.node, out),
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    let mut out = (0, 0);
    for f in doc.fragments.values() {
        walk(&f.node.selection_set.node, &mut out);
    }
    for (_, op) in doc.operations.iter() {
        walk(&op.node.selection_set.node, &mut out);
    }
    out
}

impl DocumentLimits {
    /// The configured bounds.
    pub fn from_config(c: &crate::config::GraphqlConfig) -> Self {
        Self {
            max_selections: c.max_selections,
            max_fragments: c.max_fragments,
            max_spreads: c.max_spreads,
            max_depth: c.max_depth,
        }
    }

    /// Parses `req` (keeping the document for execution, so it is parsed once) and
    /// checks it, before async-graphql's own pre-validation walk, which follows spreads
    /// as written. Admitted requests are marked, so the schema extension does not
    /// measure them again; a document that does not parse is left to the executor's own
    /// error.
    pub fn admit(
        &self,
        mut req: async_graphql::Request,
    ) -> Result<async_graphql::Request, ServerError> {
        if let Ok(doc) = req.parsed_query() {
            if let Err((message, limit)) = self.check(doc) {
                return Err(refusal(message, limit));
            }
        }
        Ok(req.data(Checked))
    }
}

/// Request data: the document was measured before execution (HTTP).
struct Checked;

fn refusal(message: String, limit: &str) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", crate::error::ErrorCode::BadUserInput.as_str());
    ext.set("limit", limit);
    err.extensions = Some(ext);
    err
}

impl DocumentLimits {
    /// Checks a parsed document, unless the HTTP handler already did (`admit`).
    pub(super) fn check_parsed(
        &self,
        ctx: &ExtensionContext<'_>,
        doc: &ExecutableDocument,
    ) -> Result<(), ServerError> {
        if ctx.data_opt::<Checked>().is_some() {
            return Ok(());
        }
        self.check(doc)
            .map_err(|(message, limit)| refusal(message, limit))
    }
}

/// Request data: one complexity budget shared by every operation of a batched HTTP
/// request (each operation is also held to the limit alone by async-graphql).
#[derive(Debug)]
pub struct SharedBudget {
    max: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl SharedBudget {
    /// A budget of `max` complexity for one HTTP request.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Charges a validated operation's complexity to the request's [`SharedBudget`] (a
/// batched HTTP request's operations share one).
pub(super) fn charge_batch(
    ctx: &ExtensionContext<'_>,
    result: &ValidationResult,
) -> Result<(), Vec<ServerError>> {
    if let Some(budget) = ctx.data_opt::<Arc<SharedBudget>>() {
        let used = budget
            .used
            .fetch_add(result.complexity, std::sync::atomic::Ordering::SeqCst)
            .saturating_add(result.complexity);
        if used > budget.max {
            return Err(vec![refusal(
                format!(
                    "the operations of this batch together have complexity {used}; at \
                     most {} is accepted per request: send fewer or smaller operations",
                    budget.max
                ),
                "maxComplexity",
            )]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(q: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(q).expect("parses")
    }

    /// `depth` fragments, each spreading the next twice.
    fn bomb(depth: usize) -> String {
        let mut q = String::from("query { ...F0 }\n");
        for i in 0..depth {
            q.push_str(&format!(
                "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
                n = i + 1
            ));
        }
        q.push_str(&format!(
            "fragment F{depth} on Query {{ serverInfo {{ version }} }}\n"
        ));
        q
    }

    #[test]
    fn expansion_is_counted_without_expanding() {
        let m = measure(&doc(&bomb(40))).expect("acyclic");
        assert_eq!(m.fragments, 41);
        assert_eq!(m.spreads, 81);
        // 2^41 - 1 spreads walked, 2^40 `serverInfo` and as many `version` fields.
        assert_eq!(m.selections, (2u64.pow(41) - 1) + 2u64.pow(40) * 2);
    }

    #[test]
    fn plain_documents_are_measured_as_written() {
        let m = measure(&doc(
            "query { a { b c } ...X ... on Query { d } } fragment X on Query { e { f } }",
        ))
        .expect("acyclic");
        assert_eq!(m.fragments, 1);
        assert_eq!(m.spreads, 1);
        // a b c, the spread, e f, the inline fragment, d
        assert_eq!(m.selections, 8);
        // a { b }, and e { f } through the fragment
        assert_eq!(m.depth, 2);
    }

    #[test]
    fn introspection_subtrees_do_not_count_towards_depth() {
        let m = measure(&doc(
            "query { __schema { types { fields { type { ofType { ofType { name } } } } } } \
             a { b { c } } }",
        ))
        .expect("acyclic");
        assert_eq!(m.depth, 3);
    }

    #[test]
    fn self_spreading_fragments_are_refused() {
        let err = measure(&doc("query { ...A } fragment A on Query { a ...A ...A }"))
            .expect_err("a cycle");
        assert!(err.contains("fragment A spreads itself"), "{err}");
    }
}
