//! Step templates (minijinja) and `condition` expressions, rendered within limits.
//!
//! Templates see `input` (the execution input), `steps.<id>.output` (outputs of finished
//! steps) and `execution.id`. A template is untrusted code written by any DEVELOPER, so:
//! it renders on the dedicated threads of [`Templates`] (never on a runtime worker, so a
//! slow one stalls no HTTP request), into a writer that refuses more than
//! `engine.max_step_output_bytes`, with instruction fuel, and against a deadline
//! (`engine.template_timeout_ms`) that the step's wait enforces and that `range` loops
//! and every write check, so a render that overruns stops at its next loop step or write.
//! Every limit is a non-retryable step failure (the same template fails the same way).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::steps::StepError;

/// Instructions one render may execute.
const FUEL: u64 = 200_000;

/// The threads templates render on, and the limits they render within.
pub struct Templates {
    lane: crate::slots::Lane,
    max_output: usize,
    timeout: Duration,
}

/// The limits of one step's renders.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest rendered text.
    pub max_output: usize,
    /// When rendering must have finished.
    pub deadline: Instant,
    timeout: Duration,
}

impl Templates {
    /// Two rendering threads, 64 renders waiting at most.
    pub fn new(config: &crate::config::EngineConfig) -> Self {
        Self {
            lane: crate::slots::Lane::new("template", 2, 64),
            max_output: config.max_step_output_bytes,
            timeout: config.template_timeout,
        }
    }

    /// Runs `work` (renders of one step) on a template thread. The step waits at most the
    /// template timeout; a render still running then fails the step and is stopped at
    /// its next loop step or write.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Limits) -> Result<T, StepError> + Send + 'static,
    ) -> Result<T, StepError> {
        let limits = Limits {
            max_output: self.max_output,
            deadline: Instant::now() + self.timeout,
            timeout: self.timeout,
        };
        match tokio::time::timeout(self.timeout, self.lane.run(move || work(&limits))).await {
            Ok(Ok(result)) => result,
            Ok(Err(crate::slots::Busy)) => Err(StepError::transient(
                "every template thread is busy; the step is tried again",
            )),
            Err(_) => Err(over_time(&limits)),
        }
    }
}

fn over_time(limits: &Limits) -> StepError {
    StepError::fatal(format!(
        "rendering took longer than {} ms (AGENTPLANE_TEMPLATE_TIMEOUT_MS)",
        limits.timeout.as_millis()
    ))
}

/// `range` as minijinja's, except that iterating stops at the deadline.
fn bounded_range(
    deadline: Instant,
) -> impl Fn(isize, Option<isize>, Option<isize>) -> Result<minijinja::Value, minijinja::Error>
+ Send
+ Sync
+ 'static {
    move |lower, upper, step| {
        let items: Arc<Vec<minijinja::Value>> = Arc::new(
            minijinja::functions::range(lower, upper, step)?
                .try_iter()?
                .collect(),
        );
        Ok(minijinja::Value::make_iterable(move || {
            let items = items.clone();
            (0..items.len())
                .map_while(move |i| (Instant::now() <= deadline).then(|| items[i].clone()))
        }))
    }
}

fn env(limits: &Limits) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(FUEL));
    // Printing an undefined value is an error that names it (see `undefined_detail`),
    // never a silent empty string; `default(…)`, `is defined` and `if` still see it.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    env.add_function("range", bounded_range(limits.deadline));
    env
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Size,
    Time,
}

/// Collects rendered text up to the size limit and until the deadline.
struct Bounded<'a> {
    out: Vec<u8>,
    limits: &'a Limits,
    over: Option<Over>,
}

impl std::io::Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limits.max_output {
            self.over = Some(Over::Size);
            return Err(std::io::Error::other("output limit"));
        }
        if Instant::now() > self.limits.deadline {
            self.over = Some(Over::Time);
            return Err(std::io::Error::other("deadline"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The failure for output larger than the limit.
pub fn too_large(field: &str, limits_max: usize) -> StepError {
    StepError::fatal(format!(
        "{field}: the result is larger than {limits_max} bytes (AGENTPLANE_MAX_STEP_OUTPUT_BYTES)"
    ))
}

/// For an undefined-value error: the first variable the source reads that the context
/// does not have, and what is there instead (the known steps, the input's keys).
fn undefined_detail(vars: std::collections::HashSet<String>, ctx: &Value) -> Option<String> {
    let mut vars: Vec<String> = vars.into_iter().collect();
    vars.sort();
    let keys = |v: &Value| {
        v.as_object().map_or_else(String::new, |o| {
            let mut k: Vec<&str> = o.keys().map(String::as_str).collect();
            k.sort_unstable();
            k.join(", ")
        })
    };
    for var in vars {
        let mut cur = ctx;
        let mut walked: Vec<&str> = Vec::new();
        for part in var.split('.') {
            if let Some(next) = cur.get(part) {
                cur = next;
                walked.push(part);
                continue;
            }
            let missing = walked
                .iter()
                .copied()
                .chain(std::iter::once(part))
                .collect::<Vec<_>>()
                .join(".");
            let here = match walked.as_slice() {
                [] => format!("templates see {}", keys(ctx)),
                ["steps"] => match keys(cur) {
                    k if k.is_empty() => "no step has finished yet".to_owned(),
                    k => format!("finished steps: {k}"),
                },
                _ => match keys(cur) {
                    k if k.is_empty() => format!("`{}` has no fields", walked.join(".")),
                    k => format!("`{}` has: {k}", walked.join(".")),
                },
            };
            return Some(format!("`{missing}` is undefined; {here}"));
        }
    }
    None
}

fn template_error(
    field: &str,
    e: &minijinja::Error,
    vars: impl FnOnce() -> std::collections::HashSet<String>,
    ctx: &Value,
) -> StepError {
    if e.kind() == minijinja::ErrorKind::UndefinedError
        && let Some(detail) = undefined_detail(vars(), ctx)
    {
        return StepError::fatal(format!("{field}: {detail}"));
    }
    StepError::fatal(format!("{field}: template error: {e}"))
}

/// Renders a template against the context.
pub fn render(
    template: &str,
    ctx: &Value,
    field: &str,
    limits: &Limits,
) -> Result<String, StepError> {
    let env = env(limits);
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| StepError::fatal(format!("{field}: template error: {e}")))?;
    let mut w = Bounded {
        out: Vec::new(),
        limits,
        over: None,
    };
    let rendered = tmpl.render_captured_to(ctx, &mut w).map(|_| ());
    match w.over {
        Some(Over::Size) => return Err(too_large(field, limits.max_output)),
        Some(Over::Time) => return Err(over_time(limits)),
        None => {}
    }
    if Instant::now() > limits.deadline {
        return Err(over_time(limits));
    }
    rendered.map_err(|e| template_error(field, &e, || tmpl.undeclared_variables(true), ctx))?;
    Ok(String::from_utf8_lossy(&w.out).into_owned())
}

/// Renders every string inside a JSON value.
pub fn render_json(
    v: &Value,
    ctx: &Value,
    field: &str,
    limits: &Limits,
) -> Result<Value, StepError> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, ctx, field, limits)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, ctx, field, limits))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, ctx, field, limits)?)))
                .collect::<Result<_, StepError>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates a `condition` step's expression.
pub fn eval(expr: &str, ctx: &Value, limits: &Limits) -> Result<bool, StepError> {
    let env = env(limits);
    let compiled = env
        .compile_expression(expr)
        .map_err(|e| StepError::fatal(format!("config.expression: invalid expression: {e}")))?;
    let result = compiled.eval(ctx).map_err(|e| {
        template_error(
            "config.expression",
            &e,
            || compiled.undeclared_variables(true),
            ctx,
        )
    });
    if Instant::now() > limits.deadline {
        return Err(over_time(limits));
    }
    Ok(result?.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_output: usize, ms: u64) -> Limits {
        Limits {
            max_output,
            deadline: Instant::now() + Duration::from_millis(ms),
            timeout: Duration::from_millis(ms),
        }
    }

    #[test]
    fn templates_see_input_and_prior_outputs() {
        let mut outs = std::collections::HashMap::new();
        outs.insert("a".to_owned(), serde_json::json!({ "n": 2 }));
        let ctx = super::super::steps::context("e1", &serde_json::json!({ "name": "Ada" }), &outs);
        let l = limits(1024, 2000);
        let s = render(
            "{{ input.name }} has {{ steps.a.output.n * 3 }}",
            &ctx,
            "t",
            &l,
        )
        .expect("renders");
        assert_eq!(s, "Ada has 6");
        let e = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &ctx,
            "t",
            &limits(usize::MAX, 60_000),
        );
        assert!(e.is_err(), "fuel stops runaway templates");
    }

    #[test]
    fn an_undefined_variable_names_itself_and_what_is_there() {
        let mut outs = std::collections::HashMap::new();
        outs.insert("greet".to_owned(), serde_json::json!({ "text": "hi" }));
        let ctx = super::super::steps::context("e1", &serde_json::json!({ "name": "Ada" }), &outs);
        let l = limits(1024, 2000);
        let e =
            render("{{ steps.gret.output }}", &ctx, "config.template", &l).expect_err("undefined");
        assert_eq!(
            e.message,
            "config.template: `steps.gret` is undefined; finished steps: greet"
        );
        let e = render("Hello {{ input.nme }}", &ctx, "config.url", &l).expect_err("undefined");
        assert_eq!(
            e.message,
            "config.url: `input.nme` is undefined; `input` has: name"
        );
        let e = eval("steps.greet.output.txt == 'hi'", &ctx, &l).expect_err("undefined");
        assert_eq!(
            e.message,
            "config.expression: `steps.greet.output.txt` is undefined; `steps.greet.output` has: text"
        );
        // Testing for it is how a condition reads an optional field.
        assert!(!eval("steps.greet.output.txt is defined", &ctx, &l).expect("test"));
        // A default still applies.
        let ok = render("{{ input.nme | default('you') }}", &ctx, "t", &l).expect("default");
        assert_eq!(ok, "you");
    }

    #[test]
    fn output_is_bounded_while_it_is_written() {
        let ctx = serde_json::json!({});
        let e = render(
            r#"{{ "x" * 100000 }}"#,
            &ctx,
            "config.template",
            &limits(1000, 2000),
        )
        .expect_err("too large");
        assert!(
            e.message.contains("larger than 1000 bytes"),
            "{}",
            e.message
        );
        assert!(!e.retryable);
        let ok = render(r#"{{ "x" * 1000 }}"#, &ctx, "t", &limits(1000, 2000)).expect("fits");
        assert_eq!(ok.len(), 1000);
    }

    #[test]
    fn loops_stop_at_the_deadline() {
        let ctx = serde_json::json!({});
        let t = Instant::now();
        let e = render(
            r#"{% for i in range(5000) %}{% set s = "y" * 50000000 %}{{ s|length }}{% endfor %}"#,
            &ctx,
            "t",
            &limits(100_000, 100),
        )
        .expect_err("over time");
        assert!(e.message.contains("longer than 100 ms"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
