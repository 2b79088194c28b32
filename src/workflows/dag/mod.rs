//! Workflow definitions and their validation: a DAG of steps, each of a known kind with a
//! checked configuration. Parse, don't validate: [`Definition::parse`] is the only way to
//! get a `Definition`, and every error names the step and the field.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod templates;

/// Most steps in one workflow.
pub const MAX_STEPS: usize = 200;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefinitionError {
    /// The step's id, when the problem is inside a step.
    pub step: Option<String>,
    /// Path of the offending field, e.g. `steps[2].config.model`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Retry policy of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, 1–10 (1 means no retry).
    pub max_attempts: u32,
    /// Wait before the first retry, ms.
    #[serde(default = "default_initial_ms")]
    pub initial_backoff_ms: u64,
    /// Growth factor of the wait per retry, 1–10.
    #[serde(default = "default_multiplier")]
    pub backoff_multiplier: f64,
}

fn default_initial_ms() -> u64 {
    1000
}
fn default_multiplier() -> f64 {
    2.0
}

/// GPU resources a step needs while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// GPU memory to reserve, MiB.
    #[serde(default)]
    pub gpu_memory_mb: u64,
    /// GPUs to reserve.
    #[serde(default)]
    pub gpu_count: u32,
}

/// The keys a step may have.
const STEP_KEYS: &[&str] = &[
    "id",
    "kind",
    "config",
    "dependsOn",
    "retry",
    "timeoutSeconds",
    "resources",
];

/// One step as written by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    /// Unique within the workflow: 1–64 of `A-Za-z0-9_-`.
    pub id: String,
    /// `llm`, `http`, `transform`, `condition` or `delay`.
    pub kind: String,
    /// Kind-specific configuration.
    #[serde(default)]
    pub config: Value,
    /// Steps that must finish first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Retry policy (default: one attempt).
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Per-attempt timeout, 1–86400 s (default 300).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// GPU needs.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// A validated workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    /// Steps, in the order written.
    pub steps: Vec<Step>,
}

struct Errors(Vec<DefinitionError>);

impl Errors {
    fn push(&mut self, step: Option<&str>, field: String, message: impl Into<String>) {
        self.0.push(DefinitionError {
            step: step.map(str::to_owned),
            field,
            message: message.into(),
        });
    }
}

/// "did you mean …?" for a key that differs from a known one only in case, `_` or `-`.
fn suggest(key: &str, known: &[&str]) -> String {
    let norm = |k: &str| {
        k.chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase()
    };
    known.iter().find(|k| norm(k) == norm(key)).map_or_else(
        || format!("; known: {}", known.join(", ")),
        |k| format!("; did you mean `{k}`?"),
    )
}

fn valid_step_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_http_url(s: &str) -> bool {
    url::Url::parse(s)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// The step kinds and their config schemas.
fn check_config(kind: &str, cfg: &Value, step: &str, at: &str, errs: &mut Errors) {
    let field = |name: &str| format!("{at}.config.{name}");
    let Some(obj) = cfg.as_object() else {
        errs.push(
            Some(step),
            format!("{at}.config"),
            "the config must be an object",
        );
        return;
    };
    let known: &[&str] = match kind {
        "llm" => &[
            "baseUrl",
            "model",
            "messages",
            "temperature",
            "maxTokens",
            "apiKeySecret",
        ],
        "http" => &[
            "method",
            "url",
            "headers",
            "body",
            "timeoutMs",
            "maxResponseBytes",
        ],
        "transform" => &["template"],
        "condition" => &["expression", "ifTrue", "ifFalse"],
        "delay" => &["ms"],
        _ => &[],
    };
    if !known.is_empty() {
        for k in obj.keys() {
            if !known.contains(&k.as_str()) {
                errs.push(
                    Some(step),
                    field(k),
                    format!("unknown field for a {kind} step{}", suggest(k, known)),
                );
            }
        }
    }
    let non_empty_str = |name: &str, errs: &mut Errors| match obj.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => {
            errs.push(Some(step), field(name), "must be a non-empty string");
            None
        }
        None => {
            errs.push(Some(step), field(name), "is required");
            None
        }
    };
    let number_in = |name: &str, lo: f64, hi: f64, errs: &mut Errors| {
        if let Some(v) = obj.get(name) {
            match v.as_f64() {
                Some(n) if (lo..=hi).contains(&n) => {}
                _ => errs.push(
                    Some(step),
                    field(name),
                    format!("must be a number from {lo} to {hi}"),
                ),
            }
        }
    };
    match kind {
        "llm" => {
            if let Some(u) = non_empty_str("baseUrl", errs) {
                if !valid_http_url(&u) {
                    errs.push(Some(step), field("baseUrl"), "must be an http(s) URL");
                }
            }
            non_empty_str("model", errs);
            match obj.get("messages") {
                Some(Value::Array(ms)) if !ms.is_empty() => {
                    for (i, m) in ms.iter().enumerate() {
                        for k in m.as_object().into_iter().flat_map(|o| o.keys()) {
                            if k != "role" && k != "content" {
                                errs.push(
                                    Some(step),
                                    format!("{at}.config.messages[{i}].{k}"),
                                    format!(
                                        "unknown field in a message{}",
                                        suggest(k, &["role", "content"])
                                    ),
                                );
                            }
                        }
                        let role_ok = m
                            .get("role")
                            .and_then(Value::as_str)
                            .is_some_and(|r| matches!(r, "system" | "user" | "assistant"));
                        if !role_ok {
                            errs.push(
                                Some(step),
                                format!("{at}.config.messages[{i}].role"),
                                "must be system, user or assistant",
                            );
                        }
                        if !m.get("content").is_some_and(Value::is_string) {
                            errs.push(
                                Some(step),
                                format!("{at}.config.messages[{i}].content"),
                                "must be a string",
                            );
                        }
                    }
                }
                _ => errs.push(
                    Some(step),
                    field("messages"),
                    "must be a non-empty list of {role, content}",
                ),
            }
            number_in("temperature", 0.0, 2.0, errs);
            number_in("maxTokens", 1.0, 1_000_000.0, errs);
            if obj.get("apiKeySecret").is_some_and(|v| !v.is_string()) {
                errs.push(Some(step), field("apiKeySecret"), "must be a secret name");
            }
        }
        "http" => {
            match obj.get("method").and_then(Value::as_str) {
                Some("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD") => {}
                _ => errs.push(
                    Some(step),
                    field("method"),
                    "must be GET, POST, PUT, PATCH, DELETE or HEAD",
                ),
            }
            non_empty_str("url", errs);
            if let Some(h) = obj.get("headers") {
                if !h
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string))
                {
                    errs.push(Some(step), field("headers"), "must be an object of strings");
                }
            }
            number_in("timeoutMs", 1.0, 300_000.0, errs);
            number_in("maxResponseBytes", 1.0, 64.0 * 1024.0 * 1024.0, errs);
        }
        "transform" => {
            non_empty_str("template", errs);
        }
        "condition" => {
            non_empty_str("expression", errs);
            for name in ["ifTrue", "ifFalse"] {
                if let Some(v) = obj.get(name) {
                    if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                        errs.push(Some(step), field(name), "must be a list of step ids");
                    }
                }
            }
        }
        "delay" => match obj.get("ms") {
            Some(v) if v.as_u64().is_some_and(|n| n <= 86_400_000) => {}
            _ => errs.push(
                Some(step),
                field("ms"),
                "must be a whole number of milliseconds up to 86400000",
            ),
        },
        other => errs.push(
            Some(step),
            format!("{at}.kind"),
            format!("unknown kind {other:?}: use llm, http, transform, condition or delay"),
        ),
    }
}

impl Definition {
    /// Parses and validates a definition. On failure returns every problem found.
    pub fn parse(raw: &Value) -> Result<Self, Vec<DefinitionError>> {
        let mut errs = Errors(Vec::new());
        let Some(steps_raw) = raw.get("steps").and_then(Value::as_array) else {
            return Err(vec![DefinitionError {
                step: None,
                field: "steps".into(),
                message: "the definition needs a `steps` list".into(),
            }]);
        };
        if steps_raw.is_empty() || steps_raw.len() > MAX_STEPS {
            errs.push(
                None,
                "steps".into(),
                format!("a workflow has 1 to {MAX_STEPS} steps"),
            );
        }
        if let Some(obj) = raw.as_object() {
            for k in obj.keys().filter(|k| *k != "steps") {
                errs.push(None, k.clone(), "unknown field in a definition");
            }
        }
        let mut steps = Vec::new();
        for (i, s) in steps_raw.iter().enumerate() {
            let at = format!("steps[{i}]");
            let step_name = s.get("id").and_then(Value::as_str).map(str::to_owned);
            // Unknown keys are named one by one (a `depends_on` typo must not silently
            // drop the dependency), then left out of the parse so each is said once.
            let mut s = s.clone();
            if let Some(obj) = s.as_object_mut() {
                let unknown: Vec<String> = obj
                    .keys()
                    .filter(|k| !STEP_KEYS.contains(&k.as_str()))
                    .cloned()
                    .collect();
                for k in unknown {
                    errs.push(
                        step_name.as_deref(),
                        format!("{at}.{k}"),
                        format!("unknown field in a step{}", suggest(&k, STEP_KEYS)),
                    );
                    obj.remove(&k);
                }
            }
            match serde_json::from_value::<Step>(s) {
                Ok(step) => steps.push((i, step)),
                Err(e) => errs.push(step_name.as_deref(), at, format!("not a step: {e}")),
            }
        }
        let mut seen = HashSet::new();
        for (i, s) in &steps {
            let at = format!("steps[{i}]");
            if !valid_step_id(&s.id) {
                errs.push(
                    Some(&s.id),
                    format!("{at}.id"),
                    "1–64 characters of A-Z a-z 0-9 _ -",
                );
            }
            if !seen.insert(s.id.clone()) {
                errs.push(Some(&s.id), format!("{at}.id"), "duplicate step id");
            }
            check_config(&s.kind, &s.config, &s.id, &at, &mut errs);
            if let Some(r) = &s.retry {
                if !(1..=10).contains(&r.max_attempts) {
                    errs.push(
                        Some(&s.id),
                        format!("{at}.retry.maxAttempts"),
                        "must be 1 to 10",
                    );
                }
                if !(1.0..=10.0).contains(&r.backoff_multiplier) {
                    errs.push(
                        Some(&s.id),
                        format!("{at}.retry.backoffMultiplier"),
                        "must be 1 to 10",
                    );
                }
                if r.initial_backoff_ms > 3_600_000 {
                    errs.push(
                        Some(&s.id),
                        format!("{at}.retry.initialBackoffMs"),
                        "at most one hour",
                    );
                }
            }
            if s.timeout_seconds
                .is_some_and(|t| !(1..=86_400).contains(&t))
            {
                errs.push(
                    Some(&s.id),
                    format!("{at}.timeoutSeconds"),
                    "must be 1 to 86400",
                );
            }
            if let Some(r) = &s.resources {
                if r.gpu_count > 16 {
                    errs.push(
                        Some(&s.id),
                        format!("{at}.resources.gpuCount"),
                        "at most 16",
                    );
                }
                if r.gpu_memory_mb > 0 && r.gpu_count == 0 {
                    errs.push(
                        Some(&s.id),
                        format!("{at}.resources.gpuCount"),
                        "GPU memory needs at least one GPU",
                    );
                }
            }
        }
        let ids: HashSet<&str> = steps.iter().map(|(_, s)| s.id.as_str()).collect();
        for (i, s) in &steps {
            for (j, d) in s.depends_on.iter().enumerate() {
                if d == &s.id {
                    errs.push(
                        Some(&s.id),
                        format!("steps[{i}].dependsOn[{j}]"),
                        "a step cannot depend on itself",
                    );
                } else if !ids.contains(d.as_str()) {
                    errs.push(
                        Some(&s.id),
                        format!("steps[{i}].dependsOn[{j}]"),
                        format!("unknown step {d:?}"),
                    );
                }
            }
        }
        // Branches of a condition must be its direct dependents.
        for (i, s) in steps.iter().filter(|(_, s)| s.kind == "condition") {
            for name in ["ifTrue", "ifFalse"] {
                for (j, target) in s
                    .config
                    .get(name)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let t = target.as_str().unwrap_or_default();
                    let ok = steps
                        .iter()
                        .any(|(_, o)| o.id == t && o.depends_on.contains(&s.id));
                    if !ok {
                        errs.push(
                            Some(&s.id),
                            format!("steps[{i}].config.{name}[{j}]"),
                            format!("{t:?} must be a step that depends on {:?}", s.id),
                        );
                    }
                }
            }
        }
        // Every template and expression compiles, and reads only steps it runs after.
        templates::check(&steps, &mut errs);
        if errs.0.is_empty() {
            let def = Self {
                steps: steps.into_iter().map(|(_, s)| s).collect(),
            };
            if let Some(cyc) = def.find_cycle() {
                let (i, _) = def
                    .steps
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.id == cyc)
                    .unwrap_or((0, &def.steps[0]));
                errs.push(
                    Some(&cyc),
                    format!("steps[{i}].dependsOn"),
                    "the dependencies form a cycle through this step",
                );
            } else {
                return Ok(def);
            }
        }
        Err(errs.0)
    }

    /// A step on a cycle, if any (Kahn's algorithm).
    fn find_cycle(&self) -> Option<String> {
        let mut indegree: HashMap<&str, usize> = self
            .steps
            .iter()
            .map(|s| (s.id.as_str(), s.depends_on.len()))
            .collect();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for s in &self.steps {
            for d in &s.depends_on {
                dependents
                    .entry(d.as_str())
                    .or_default()
                    .push(s.id.as_str());
            }
        }
        let mut ready: VecDeque<&str> = indegree
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| *id)
            .collect();
        let mut done = 0;
        while let Some(id) = ready.pop_front() {
            done += 1;
            for next in dependents.get(id).into_iter().flatten() {
                if let Some(n) = indegree.get_mut(next) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push_back(next);
                    }
                }
            }
        }
        if done == self.steps.len() {
            return None;
        }
        self.steps
            .iter()
            .find(|s| indegree.get(s.id.as_str()).is_some_and(|n| *n > 0))
            .map(|s| s.id.clone())
    }

    /// Steps in an order where each comes after its dependencies.
    pub fn topological_order(&self) -> Vec<&Step> {
        let mut placed: HashSet<&str> = HashSet::new();
        let mut out = Vec::with_capacity(self.steps.len());
        while out.len() < self.steps.len() {
            let before = out.len();
            for s in &self.steps {
                if !placed.contains(s.id.as_str())
                    && s.depends_on.iter().all(|d| placed.contains(d.as_str()))
                {
                    placed.insert(s.id.as_str());
                    out.push(s);
                }
            }
            if out.len() == before {
                break; // unreachable for a parsed definition (acyclic)
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delay(id: &str, deps: &[&str]) -> Value {
        json!({ "id": id, "kind": "delay", "config": { "ms": 1 }, "dependsOn": deps })
    }

    #[test]
    fn a_diamond_parses_in_dependency_order() {
        let d = Definition::parse(&json!({ "steps": [
            delay("d", &["b", "c"]), delay("b", &["a"]), delay("c", &["a"]), delay("a", &[]),
        ]}))
        .expect("valid");
        let order: Vec<&str> = d
            .topological_order()
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(order.first(), Some(&"a"));
        assert_eq!(order.last(), Some(&"d"));
    }

    fn errors_of(def: Value) -> Vec<(Option<String>, String, String)> {
        Definition::parse(&def)
            .expect_err("invalid")
            .into_iter()
            .map(|e| (e.step, e.field, e.message))
            .collect()
    }

    #[test]
    fn unknown_keys_are_refused_everywhere_with_a_suggestion() {
        let errs = errors_of(json!({ "steps": [
            delay("a", &[]),
            { "id": "b", "kind": "delay", "config": { "ms": 1 }, "depends_on": ["a"] },
            { "id": "c", "kind": "llm", "config": { "baseUrl": "https://x", "model": "m",
              "messages": [{ "role": "user", "content": "hi", "text": "?" }], "api_key_secret": "K" } },
        ]}));
        let find = |field: &str| {
            errs.iter()
                .find(|e| e.1 == field)
                .unwrap_or_else(|| panic!("no error at {field}: {errs:?}"))
        };
        let dep = find("steps[1].depends_on");
        assert_eq!(dep.0.as_deref(), Some("b"));
        assert!(dep.2.contains("did you mean `dependsOn`"), "{dep:?}");
        assert!(
            find("steps[2].config.messages[0].text")
                .2
                .contains("unknown field")
        );
        assert!(
            find("steps[2].config.api_key_secret")
                .2
                .contains("`apiKeySecret`")
        );
    }

    #[test]
    fn templates_and_expressions_compile_when_saved() {
        let errs = errors_of(json!({ "steps": [
            { "id": "t", "kind": "transform", "config": { "template": "{{ input.x " } },
            { "id": "c", "kind": "condition", "dependsOn": ["t"],
              "config": { "expression": "steps.t.output >", "ifTrue": [] } },
            { "id": "h", "kind": "http", "config": { "method": "POST", "url": "https://x/{% if %}",
              "body": { "a": ["{{ ok }}", "{{ }}"] } } },
        ]}));
        let fields: Vec<&str> = errs.iter().map(|e| e.1.as_str()).collect();
        for f in [
            "steps[0].config.template",
            "steps[1].config.expression",
            "steps[2].config.url",
            "steps[2].config.body.a[1]",
        ] {
            assert!(fields.contains(&f), "{f} not reported: {errs:?}");
        }
        assert!(
            errs.iter().all(|e| e.2.starts_with("does not compile")),
            "{errs:?}"
        );
        assert!(!fields.contains(&"steps[2].config.body.a[0]"), "{errs:?}");
    }

    #[test]
    fn a_template_reads_only_steps_it_runs_after() {
        let errs = errors_of(json!({ "steps": [
            delay("a", &[]),
            delay("b", &["a"]),
            { "id": "t", "kind": "transform", "dependsOn": ["b"],
              "config": { "template": "{{ steps.a.output }} {{ steps.fetc.output }}" } },
            { "id": "u", "kind": "transform", "dependsOn": ["a"],
              "config": { "template": "{{ steps.t.output }}" } },
        ]}));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].2.contains("no step \"fetc\" (steps: a, b, t, u)"),
            "{errs:?}"
        );
        assert!(errs[1].2.contains("add it to dependsOn"), "{errs:?}");
        // Through a dependency's dependency is fine.
        Definition::parse(&json!({ "steps": [
            delay("a", &[]),
            delay("b", &["a"]),
            { "id": "t", "kind": "transform", "dependsOn": ["b"],
              "config": { "template": "{{ steps.a.output.waitedMs }}" } },
        ]}))
        .expect("indirect dependencies are visible");
    }

    #[test]
    fn every_error_names_the_step_and_field() {
        let errs = Definition::parse(&json!({ "steps": [
            delay("a", &["a"]),
            delay("a", &[]),
            { "id": "b", "kind": "llm", "config": { "baseUrl": "ftp://x", "messages": [] } },
            { "id": "c", "kind": "teleport", "config": {} },
            delay("d", &["nope"]),
        ]}))
        .expect_err("invalid");
        let has = |step: &str, field: &str| {
            errs.iter()
                .any(|e| e.step.as_deref() == Some(step) && e.field == field)
        };
        assert!(has("a", "steps[0].dependsOn[0]"), "{errs:?}");
        assert!(has("a", "steps[1].id"));
        assert!(has("b", "steps[2].config.baseUrl"));
        assert!(has("b", "steps[2].config.model"));
        assert!(has("b", "steps[2].config.messages"));
        assert!(has("c", "steps[3].kind"));
        assert!(has("d", "steps[4].dependsOn[0]"));
    }

    #[test]
    fn cycles_are_found() {
        let errs = Definition::parse(&json!({ "steps": [
            delay("a", &["c"]), delay("b", &["a"]), delay("c", &["b"]), delay("root", &[]),
        ]}))
        .expect_err("cycle");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("cycle"));
        assert!(matches!(errs[0].step.as_deref(), Some("a" | "b" | "c")));
    }

    #[test]
    fn condition_branches_must_be_dependents() {
        let errs = Definition::parse(&json!({ "steps": [
            { "id": "check", "kind": "condition", "config": { "expression": "input.x > 1", "ifTrue": ["yes"], "ifFalse": ["other"] } },
            delay("yes", &["check"]),
            delay("other", &[]),
        ]}))
        .expect_err("bad branch");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "steps[0].config.ifFalse[0]");
    }
}
