//! Step runners: `llm`, `http`, `transform`, `condition`, `delay`.
//!
//! Templates (minijinja) see `input` (the execution input), `steps.<id>.output` (outputs
//! of finished steps) and `execution.id`. Rendering has a fuel limit, so a template
//! cannot spin forever.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::egress;
use crate::app::App;
use crate::tenancy::TenantId;
use crate::workflows::dag::Step;

/// Default largest response an `http` step reads.
const DEFAULT_MAX_RESPONSE: usize = 1024 * 1024;
/// Default per-request time limit of `http` steps.
const DEFAULT_HTTP_TIMEOUT_MS: u64 = 30_000;

/// What a finished step produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// JSON output, available to later steps as `steps.<id>.output`.
    pub output: Value,
    /// LLM prompt tokens.
    pub prompt_tokens: i64,
    /// LLM completion tokens.
    pub completion_tokens: i64,
    /// Cost in USD from the price table.
    pub cost_usd: f64,
    /// Steps a condition turned off.
    pub skip: Vec<String>,
}

/// A failed attempt.
#[derive(Debug)]
pub struct StepError {
    /// What went wrong (shown to users; never contains secrets).
    pub message: String,
    /// Whether another attempt may succeed (per the step's retry policy).
    pub retryable: bool,
}

impl StepError {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
    fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Everything a runner may read.
pub struct StepInput<'a> {
    /// The application (secrets, config).
    pub app: &'a App,
    /// The shared outbound HTTP client (SSRF-guarded).
    pub http: &'a reqwest::Client,
    /// The egress policy (IP-literal URLs are checked before sending).
    pub policy: &'a egress::Policy,
    /// The execution's tenant.
    pub tenant: TenantId,
    /// The template context: `{input, steps, execution}`.
    pub context: &'a Value,
}

/// Builds the template context.
pub fn context(execution_id: &str, input: &Value, outputs: &HashMap<String, Value>) -> Value {
    let steps: Map<String, Value> = outputs
        .iter()
        .map(|(k, v)| (k.clone(), json!({ "output": v })))
        .collect();
    json!({ "input": input, "steps": steps, "execution": { "id": execution_id } })
}

fn env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(200_000));
    env
}

/// Renders a template against the context.
pub fn render(template: &str, ctx: &Value, field: &str) -> Result<String, StepError> {
    env()
        .render_str(template, ctx)
        .map_err(|e| StepError::fatal(format!("{field}: template error: {e}")))
}

/// Renders every string inside a JSON value.
fn render_json(v: &Value, ctx: &Value, field: &str) -> Result<Value, StepError> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, ctx, field)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, ctx, field))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), render_json(x, ctx, field)?)))
                .collect::<Result<_, StepError>>()?,
        ),
        other => other.clone(),
    })
}

/// Runs one attempt of `step`.
pub async fn run(step: &Step, input: &StepInput<'_>) -> Result<Outcome, StepError> {
    let cfg = &step.config;
    match step.kind.as_str() {
        "delay" => {
            let ms = cfg.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Outcome {
                output: json!({ "waitedMs": ms }),
                ..Outcome::default()
            })
        }
        "transform" => {
            let tpl = cfg.get("template").and_then(Value::as_str).unwrap_or("");
            let text = render(tpl, input.context, "config.template")?;
            let output = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok(Outcome {
                output,
                ..Outcome::default()
            })
        }
        "condition" => {
            let expr = cfg.get("expression").and_then(Value::as_str).unwrap_or("");
            let env = env();
            let compiled = env.compile_expression(expr).map_err(|e| {
                StepError::fatal(format!("config.expression: invalid expression: {e}"))
            })?;
            let result = compiled
                .eval(input.context)
                .map_err(|e| StepError::fatal(format!("config.expression: {e}")))?
                .is_true();
            let list = |name: &str| -> Vec<String> {
                cfg.get(name)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let skip = if result {
                list("ifFalse")
            } else {
                list("ifTrue")
            };
            Ok(Outcome {
                output: json!({ "result": result }),
                skip,
                ..Outcome::default()
            })
        }
        "http" => run_http(cfg, input).await,
        "llm" => run_llm(cfg, input).await,
        other => Err(StepError::fatal(format!("unknown step kind {other:?}"))),
    }
}

fn parse_url(raw: &str, policy: &egress::Policy) -> Result<reqwest::Url, StepError> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| StepError::fatal(format!("config.url: {raw:?} is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepError::fatal(
            "config.url: only http and https are allowed",
        ));
    }
    policy.check_url(&url).map_err(StepError::fatal)?;
    Ok(url)
}

/// Transient: connection problems, timeouts, 408, 429 and 5xx.
fn status_retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
}

fn request_error(e: &reqwest::Error) -> StepError {
    let msg = egress::describe(e);
    // The guarded resolver's refusal is permanent; network trouble is not.
    if msg.contains("refused to connect to") {
        StepError::fatal(msg)
    } else {
        StepError::transient(msg)
    }
}

async fn run_http(cfg: &Value, input: &StepInput<'_>) -> Result<Outcome, StepError> {
    let method = cfg.get("method").and_then(Value::as_str).unwrap_or("GET");
    let raw_url = render(
        cfg.get("url").and_then(Value::as_str).unwrap_or(""),
        input.context,
        "config.url",
    )?;
    let url = parse_url(&raw_url, input.policy)?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| StepError::fatal("config.method: unknown method"))?;
    let timeout = cfg
        .get("timeoutMs")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_HTTP_TIMEOUT_MS);
    let limit = cfg
        .get("maxResponseBytes")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_MAX_RESPONSE, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
    let mut req = input
        .http
        .request(method, url)
        .timeout(Duration::from_millis(timeout));
    if let Some(h) = cfg.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            let v = render(v.as_str().unwrap_or(""), input.context, "config.headers")?;
            req = req.header(k.as_str(), v);
        }
    }
    match cfg.get("body") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            req = req.body(render(s, input.context, "config.body")?);
        }
        Some(other) => {
            req = req.json(&render_json(other, input.context, "config.body")?);
        }
    }
    let resp = req.send().await.map_err(|e| request_error(&e))?;
    let status = resp.status();
    let headers: Map<String, Value> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = egress::read_limited(resp, limit)
        .await
        .map_err(StepError::transient)?;
    let body_value = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let msg = format!("the server answered {status}: {snippet}");
        return Err(if status_retryable(status) {
            StepError::transient(msg)
        } else {
            StepError::fatal(msg)
        });
    }
    Ok(Outcome {
        output: json!({ "status": status.as_u16(), "headers": headers, "body": body_value }),
        ..Outcome::default()
    })
}

async fn run_llm(cfg: &Value, input: &StepInput<'_>) -> Result<Outcome, StepError> {
    let base = cfg.get("baseUrl").and_then(Value::as_str).unwrap_or("");
    let url = parse_url(
        &format!("{}/chat/completions", base.trim_end_matches('/')),
        input.policy,
    )?;
    let model = cfg.get("model").and_then(Value::as_str).unwrap_or("");
    let mut messages = Vec::new();
    for m in cfg
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = render(
            m.get("content").and_then(Value::as_str).unwrap_or(""),
            input.context,
            "config.messages",
        )?;
        messages.push(json!({ "role": role, "content": content }));
    }
    let mut body = json!({ "model": model, "messages": messages });
    if let Some(t) = cfg.get("temperature") {
        body["temperature"] = t.clone();
    }
    if let Some(t) = cfg.get("maxTokens") {
        body["max_tokens"] = t.clone();
    }
    let mut req = input
        .http
        .post(url)
        .timeout(Duration::from_secs(600))
        .json(&body);
    if let Some(name) = cfg.get("apiKeySecret").and_then(Value::as_str) {
        let key = crate::secrets::reveal(input.app, input.tenant, name)
            .await
            .map_err(|e| {
                StepError::fatal(format!(
                    "config.apiKeySecret: secret {name:?} is not available ({})",
                    e.message()
                ))
            })?;
        use secrecy::ExposeSecret as _;
        req = req.bearer_auth(key.expose_secret());
    }
    let resp = req.send().await.map_err(|e| request_error(&e))?;
    let status = resp.status();
    let raw = egress::read_limited(resp, 8 * 1024 * 1024)
        .await
        .map_err(StepError::transient)?;
    if !status.is_success() {
        let snippet: String = String::from_utf8_lossy(&raw).chars().take(300).collect();
        let msg = format!("the provider answered {status}: {snippet}");
        return Err(if status_retryable(status) {
            StepError::transient(msg)
        } else {
            StepError::fatal(msg)
        });
    }
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|e| StepError::transient(format!("the provider's answer is not JSON ({e})")))?;
    let choice = v.get("choices").and_then(|c| c.get(0));
    let content = choice
        .and_then(|c| c.get("message"))
        .and_then(|m| m.get("content"))
        .cloned()
        .unwrap_or(Value::Null);
    let usage = v.get("usage");
    let tokens = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let (prompt, completion) = (tokens("prompt_tokens"), tokens("completion_tokens"));
    let answered_model = v.get("model").and_then(Value::as_str).unwrap_or(model);
    let cost = input
        .app
        .config
        .engine
        .llm_prices
        .get(model)
        .or_else(|| input.app.config.engine.llm_prices.get(answered_model))
        .map_or(0.0, |(p, c)| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "token counts are far below 2^52"
            )]
            let (pt, ct) = (prompt as f64, completion as f64);
            (pt * p + ct * c) / 1_000_000.0
        });
    Ok(Outcome {
        output: json!({
            "content": content,
            "model": answered_model,
            "finishReason": choice.and_then(|c| c.get("finish_reason")).cloned().unwrap_or(Value::Null),
            "usage": { "promptTokens": prompt, "completionTokens": completion },
        }),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cost_usd: cost,
        skip: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_see_input_and_prior_outputs() {
        let mut outs = HashMap::new();
        outs.insert("a".to_owned(), json!({ "n": 2 }));
        let ctx = context("e1", &json!({ "name": "Ada" }), &outs);
        let s =
            render("{{ input.name }} has {{ steps.a.output.n * 3 }}", &ctx, "t").expect("renders");
        assert_eq!(s, "Ada has 6");
        let e = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &ctx,
            "t",
        );
        assert!(e.is_err(), "fuel stops runaway templates");
    }
}
