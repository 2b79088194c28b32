//! The template checks of a definition at save time: every template and expression
//! compiles (with the syntax rendering uses), and every `steps.<id>` one reads is a step
//! that runs before it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{Errors, Step};

/// Every template and expression of `steps` compiles, and each `steps.<id>` it reads is a
/// step it runs after.
pub(super) fn check(steps: &[(usize, Step)], errs: &mut Errors) {
    let env = syntax_env();
    let by_id: HashMap<&str, &Step> = steps.iter().map(|(_, s)| (s.id.as_str(), s)).collect();
    let mut all_ids: Vec<&str> = by_id.keys().copied().collect();
    all_ids.sort_unstable();
    for (i, s) in steps {
        let at = format!("steps[{i}]");
        for src in sources(&s.kind, &s.config, &at) {
            // Compiled once: a syntax error, or the variables it reads.
            let vars = if src.expression {
                env.compile_expression(&src.text)
                    .map(|e| e.undeclared_variables(true))
            } else {
                env.template_from_str(&src.text)
                    .map(|t| t.undeclared_variables(true))
            };
            let vars = match vars {
                Ok(v) => v,
                Err(e) => {
                    errs.push(Some(&s.id), src.field.clone(), describe_template_error(&e));
                    continue;
                }
            };
            for id in referenced_steps(&vars) {
                if !by_id.contains_key(id.as_str()) {
                    errs.push(
                        Some(&s.id),
                        src.field.clone(),
                        format!(
                            "reads `steps.{id}`, but there is no step {id:?} (steps: {})",
                            all_ids.join(", ")
                        ),
                    );
                } else if !runs_after(&by_id, &s.id, &id) {
                    errs.push(
                        Some(&s.id),
                        src.field.clone(),
                        format!(
                            "reads `steps.{id}`, but {id:?} is not among this step's \
                             dependencies (direct or indirect): add it to dependsOn"
                        ),
                    );
                }
            }
        }
    }
}

/// Whether `step` runs after `other`: `other` is among its dependencies, directly or
/// through theirs. (A cycle is reported elsewhere; the walk visits each step once.)
fn runs_after(by_id: &HashMap<&str, &Step>, step: &str, other: &str) -> bool {
    let mut seen = HashSet::new();
    let mut todo: Vec<&str> = vec![step];
    while let Some(id) = todo.pop() {
        let Some(s) = by_id.get(id) else { continue };
        for d in &s.depends_on {
            if d == other {
                return true;
            }
            if seen.insert(d.as_str()) {
                todo.push(d.as_str());
            }
        }
    }
    false
}

/// The minijinja environment templates are checked with at save time: the same syntax
/// as at run time (filters and functions are resolved when rendering).
fn syntax_env() -> minijinja::Environment<'static> {
    minijinja::Environment::new()
}

fn describe_template_error(e: &minijinja::Error) -> String {
    let detail = e.detail().unwrap_or("invalid syntax");
    match e.line() {
        Some(line) => format!("does not compile: {detail} (line {line})"),
        None => format!("does not compile: {detail}"),
    }
}

/// A template (or, with `expression`, a minijinja expression) found in a step's config:
/// where it is and what it says.
struct Source {
    field: String,
    text: String,
    expression: bool,
}

/// The templates of a step's config, for the checks at save time.
fn sources(kind: &str, cfg: &Value, at: &str) -> Vec<Source> {
    let mut out = Vec::new();
    let field = |name: &str| format!("{at}.config.{name}");
    let mut push = |field: String, v: Option<&Value>, expression: bool| {
        if let Some(Value::String(text)) = v {
            out.push(Source {
                field,
                text: text.clone(),
                expression,
            });
        }
    };
    match kind {
        "transform" => push(field("template"), cfg.get("template"), false),
        "condition" => push(field("expression"), cfg.get("expression"), true),
        "http" => {
            push(field("url"), cfg.get("url"), false);
            if let Some(h) = cfg.get("headers").and_then(Value::as_object) {
                for (k, v) in h {
                    push(field(&format!("headers.{k}")), Some(v), false);
                }
            }
            fn walk(v: &Value, path: String, push: &mut dyn FnMut(String, Option<&Value>, bool)) {
                match v {
                    Value::String(_) => push(path, Some(v), false),
                    Value::Array(a) => {
                        for (i, x) in a.iter().enumerate() {
                            walk(x, format!("{path}[{i}]"), push);
                        }
                    }
                    Value::Object(o) => {
                        for (k, x) in o {
                            walk(x, format!("{path}.{k}"), push);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(body) = cfg.get("body") {
                walk(body, field("body"), &mut push);
            }
        }
        "llm" => {
            for (i, m) in cfg
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                push(
                    format!("{at}.config.messages[{i}].content"),
                    m.get("content"),
                    false,
                );
            }
        }
        _ => {}
    }
    out
}

/// The step ids a template or expression reads as `steps.<id>`.
fn referenced_steps(vars: &HashSet<String>) -> Vec<String> {
    let mut ids: Vec<String> = vars
        .iter()
        .filter_map(|v| v.strip_prefix("steps."))
        .filter_map(|rest| rest.split('.').next())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}
