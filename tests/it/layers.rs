//! The layering check (in the spirit of rust-analyzer's tidy tests): reads every `src/`
//! file, finds which modules it refers to (`use crate::…`, `crate::…` paths, `super::…`,
//! re-exports of child modules, the crate-root macros) and fails when
//!
//! 1. a file refers to a module in a higher layer (bottom to top: base → storage →
//!    domain → API → wiring; see ARCHITECTURE.md), or
//! 2. a file below the API layer names `async_graphql`, or
//! 3. a domain module refers to a domain module that comes after it in [`DOMAIN_ORDER`]
//!    (so the domains form no cycle),
//!
//! unless the arrow is on the debt lists below. The lists only shrink: an entry that no
//! longer occurs fails the test too, so fixing an arrow means deleting its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, bottom to top.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Errors, time, configuration, small shared primitives: know no domain.
    Base,
    /// The database pool, schema, typed ids and enums; the event bus.
    Storage,
    /// Domain models, stores and services (and `App`, the handle services receive).
    Domain,
    /// GraphQL types and resolvers, HTTP and websocket transport.
    Api,
    /// Process wiring: start-up, the CLI.
    Wiring,
}

/// Top-level modules by layer. A module missing here fails the test (say where it goes).
const MODULES: &[(&str, Layer)] = &[
    ("error", Layer::Base),
    ("clock", Layer::Base),
    ("slots", Layer::Base),
    ("telemetry", Layer::Base),
    ("metrics", Layer::Base),
    ("config", Layer::Base),
    ("request", Layer::Base),
    ("net", Layer::Base),
    ("policy", Layer::Base),
    ("seal", Layer::Base),
    ("db", Layer::Storage),
    ("events", Layer::Storage),
    ("ratelimit", Layer::Storage),
    ("rbac", Layer::Domain),
    ("audit", Layer::Domain),
    ("tenancy", Layer::Domain),
    ("auth", Layer::Domain),
    ("secrets", Layer::Domain),
    ("sso", Layer::Domain),
    ("workflows", Layer::Domain),
    ("cluster", Layer::Domain),
    ("executions", Layer::Domain),
    ("app", Layer::Domain),
    ("health", Layer::Domain),
    ("graphql", Layer::Api),
    ("http", Layer::Api),
    ("server", Layer::Wiring),
    ("bootstrap", Layer::Wiring),
    ("admin", Layer::Wiring),
    ("client", Layer::Wiring),
    // Modules of the binary (`main.rs`), not of the library.
    ("cli", Layer::Wiring),
    ("allocator", Layer::Wiring),
];

/// Domain modules, lowest first: a domain may use those before it, never those after.
const DOMAIN_ORDER: &[&str] = &[
    "app",
    "rbac",
    "audit",
    "tenancy",
    "auth",
    "secrets",
    "sso",
    "workflows",
    "cluster",
    "executions",
    "health",
];

/// Macros exported at the crate root, by the module that defines them.
const MACROS: &[(&str, &str)] = &[
    ("db_run", "db"),
    ("db_run_tenant", "db"),
    ("id_type", "db"),
    ("db_enum", "db"),
    ("on_conn", "db"),
];

/// Known upward arrows (file → module path it refers to): debt, to be removed. The
/// data-subject export document spells ids as global IDs (the encoding lives with the
/// relay types in the API layer).
const UPWARD_DEBT: &[(&str, &str)] = &[("audit/privacy.rs", "graphql::relay")];

/// Files below the API layer that still name `async_graphql`: debt (none left: the
/// domain enums get their GraphQL types in `graphql::enums`, guards live in
/// `graphql::guards`, and `AppError` becomes a GraphQL error in `graphql::errors`).
const ASYNC_GRAPHQL_DEBT: &[&str] = &[];

/// Known arrows against [`DOMAIN_ORDER`] (file → domain module): debt. `App`'s fields name
/// domain types; erasure reads tenancy and auth rows; retention deletes executions;
/// tenancy writes auth's set-password tokens; the cluster agent releases execution
/// leases.
const DOMAIN_DEBT: &[(&str, &str)] = &[
    ("app.rs", "audit"),
    ("app.rs", "auth"),
    ("app.rs", "cluster"),
    ("app.rs", "executions"),
    ("audit/privacy.rs", "auth"),
    ("audit/privacy.rs", "tenancy"),
    ("audit/retention.rs", "executions"),
    ("cluster/agent.rs", "executions"),
    ("cluster/store/mod.rs", "executions"),
    ("tenancy/service/mod.rs", "auth"),
];

/// Where a module path sits. A `graphql` module inside a domain is API (`config::graphql`,
/// the GraphQL limits section of the configuration, is not).
fn layer_of(path: &[String]) -> Option<Layer> {
    let top = path.first()?;
    let layer = MODULES.iter().find(|(m, _)| m == top).map(|(_, l)| *l)?;
    if layer == Layer::Domain && path.iter().skip(1).any(|s| s == "graphql") {
        return Some(Layer::Api);
    }
    Some(layer)
}

/// The module path of a source file (`src/tenancy/graphql/teams.rs` → tenancy::graphql::teams).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs").to_owned();
        if stem != "mod" && stem != "lib" {
            parts.push(stem);
        }
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments and string literals (doc links are not dependencies).
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            // A raw string prefix (r#") was copied already; skip to the closing quote.
            let hashes = src[..i].chars().rev().take_while(|c| *c == '#').count();
            let raw = i > hashes && b[i - hashes - 1] == b'r';
            i += 1;
            while i < b.len() {
                if !raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' && b[i + 1..].iter().take(hashes).all(|c| *c == b'#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal like '"'.
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into paths.
fn expand_use(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or("").to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len().saturating_sub(1)];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            expand_use(p)
                .into_iter()
                .map(move |e| format!("{prefix}{e}"))
        })
        .collect()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Resolves a path as written in `module` to an absolute module path.
fn resolve(module: &[String], children: &BTreeSet<String>, written: &str) -> Option<Vec<String>> {
    let segs: Vec<&str> = written.split("::").filter(|s| !s.is_empty()).collect();
    let first = *segs.first()?;
    let mut base: Vec<String> = match first {
        "crate" => Vec::new(),
        "super" => {
            let mut m = module.to_vec();
            m.pop();
            m
        }
        "self" => module.to_vec(),
        c if children.contains(c) => {
            let mut m = module.to_vec();
            m.push(c.to_owned());
            m.extend(segs[1..].iter().map(|s| (*s).to_owned()));
            return Some(m);
        }
        _ => return None,
    };
    for s in &segs[1..] {
        match *s {
            "super" => {
                base.pop();
            }
            s => base.push(s.to_owned()),
        }
    }
    Some(base)
}

/// Every module path a file refers to.
fn references(module: &[String], code: &str) -> BTreeSet<Vec<String>> {
    let mut children = BTreeSet::new();
    for line in code.lines() {
        let l = line.trim();
        let l = l.strip_prefix("pub ").unwrap_or(l);
        let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
        if let Some(name) = l.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            children.insert(name.trim().to_owned());
        }
    }
    let mut written = Vec::new();
    // `use` trees, which may span lines.
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !rest[..at].ends_with(|c: char| is_ident_char(c));
        rest = &rest[at + 4..];
        if !before_ok {
            continue;
        }
        if let Some(end) = rest.find(';') {
            written.extend(expand_use(&rest[..end]));
        }
    }
    // Paths anywhere: crate::…, super::…
    for key in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(key) {
            let before_ok =
                at == 0 || !rest[..at].ends_with(|c: char| is_ident_char(c) || c == ':');
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(is_ident_char(c) || c == ':'))
                .unwrap_or(tail.len());
            if before_ok {
                written.push(tail[..end].trim_end_matches(':').to_owned());
            }
            rest = &rest[at + key.len()..];
        }
    }
    let mut out = BTreeSet::new();
    for w in written {
        let Some(mut path) = resolve(module, &children, &w) else {
            continue;
        };
        // Lower-case segments are modules; the first capitalised one is an item.
        if let Some(i) = path.iter().position(|s| {
            s.starts_with(|c: char| c.is_ascii_uppercase()) || s == "*" || s == "self"
        }) {
            path.truncate(i);
        }
        if path.len() == 1 {
            if let Some((_, m)) = MACROS.iter().find(|(name, _)| *name == path[0]) {
                path = vec![(*m).to_owned()];
            }
        }
        // A trailing lower-case item (a function) may remain; the rules look at the
        // first two segments only, and three keep messages readable.
        path.truncate(3);
        if !path.is_empty() {
            out.insert(path);
        }
    }
    out
}

#[test]
fn layers_hold() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut failures = Vec::new();
    let mut upward_seen = BTreeSet::new();
    let mut graphql_seen = BTreeSet::new();
    let mut domain_seen = BTreeSet::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src");
        let rel_name = rel.to_string_lossy().replace('\\', "/");
        if rel_name == "main.rs" || rel_name == "lib.rs" {
            continue;
        }
        let module = module_of(rel);
        let Some(own) = layer_of(&module) else {
            failures.push(format!(
                "src/{rel_name}: module `{}` has no layer: add it to MODULES in tests/it/layers.rs",
                module[0]
            ));
            continue;
        };
        let src = std::fs::read_to_string(file).expect("read");
        let code = code_only(&src);
        if own < Layer::Api && code.contains("async_graphql") {
            if ASYNC_GRAPHQL_DEBT.contains(&rel_name.as_str()) {
                graphql_seen.insert(rel_name.clone());
            } else {
                failures.push(format!(
                    "src/{rel_name} ({own:?} layer) names async_graphql: GraphQL belongs in a `graphql` module"
                ));
            }
        }
        for target in references(&module, &code) {
            if target.first() == module.first() {
                // Within one top-level module only the graphql rule applies.
                let Some(t) = layer_of(&target) else { continue };
                if t > own {
                    let name = target.join("::");
                    if UPWARD_DEBT.contains(&(rel_name.as_str(), name.as_str())) {
                        upward_seen.insert((rel_name.clone(), name));
                    } else {
                        failures.push(format!(
                            "src/{rel_name} ({own:?}) refers to {name} ({t:?}): upward"
                        ));
                    }
                }
                continue;
            }
            let Some(t) = layer_of(&target) else {
                continue; // std, external crates, items at the crate root
            };
            let name = target
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join("::");
            if t > own {
                let key = (rel_name.clone(), name.clone());
                if UPWARD_DEBT.contains(&(rel_name.as_str(), name.as_str())) {
                    upward_seen.insert(key);
                } else {
                    failures.push(format!(
                        "src/{rel_name} ({own:?}) refers to crate::{name} ({t:?}): upward"
                    ));
                }
                continue;
            }
            if own == Layer::Domain && t == Layer::Domain {
                let (from, to) = (module[0].as_str(), target[0].as_str());
                edges
                    .entry(from.to_owned())
                    .or_default()
                    .insert(to.to_owned());
                let rank = |m: &str| DOMAIN_ORDER.iter().position(|d| *d == m);
                if let (Some(a), Some(b)) = (rank(from), rank(to)) {
                    if b > a {
                        if DOMAIN_DEBT.contains(&(rel_name.as_str(), to)) {
                            domain_seen.insert((rel_name.clone(), to.to_owned()));
                        } else {
                            failures.push(format!(
                                "src/{rel_name}: domain `{from}` uses `{to}`, which comes after it in DOMAIN_ORDER"
                            ));
                        }
                    }
                }
            }
        }
    }
    for (f, t) in UPWARD_DEBT {
        if !upward_seen.contains(&((*f).to_owned(), (*t).to_owned())) {
            failures.push(format!(
                "UPWARD_DEBT lists src/{f} → {t}, which no longer occurs: delete the line"
            ));
        }
    }
    for f in ASYNC_GRAPHQL_DEBT {
        if !graphql_seen.contains(*f) {
            failures.push(format!(
                "ASYNC_GRAPHQL_DEBT lists src/{f}, which no longer names async_graphql: delete the line"
            ));
        }
    }
    for (f, t) in DOMAIN_DEBT {
        if !domain_seen.contains(&((*f).to_owned(), (*t).to_owned())) {
            failures.push(format!(
                "DOMAIN_DEBT lists src/{f} → {t}, which no longer occurs: delete the line"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "layering (see ARCHITECTURE.md, \"Layers\"):\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn the_reader_sees_what_a_file_uses() {
    let module = vec!["tenancy".to_owned(), "store".to_owned()];
    let code = code_only(
        "use crate::{db::{DbPool, schema::users}, error::AppResult};\n\
         // use crate::http::Nothing;\n\
         let s = \"crate::graphql::x\";\n\
         fn f() { crate::on_conn!(conn, |c| e); super::graphql::g(); }",
    );
    let refs: BTreeSet<String> = references(&module, &code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert!(refs.contains("db"), "{refs:?}");
    assert!(refs.contains("db::schema::users"), "{refs:?}");
    assert!(refs.contains("error"), "{refs:?}");
    assert!(refs.contains("tenancy::graphql::g"), "{refs:?}");
    assert!(!refs.iter().any(|r| r.starts_with("http")), "{refs:?}");
    assert!(!refs.iter().any(|r| r.starts_with("graphql")), "{refs:?}");
    assert_eq!(
        layer_of(&["tenancy".into(), "graphql".into()]),
        Some(Layer::Api)
    );
}
