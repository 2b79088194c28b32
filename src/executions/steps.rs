//! Step runners: `llm`, `http`, `transform`, `condition`, `delay`. Templates render
//! through [`super::templates`], within its limits; a secret sent by a step is redacted
//! from whatever the step returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::egress;
use super::templates::{self, render, render_json};
use crate::app::App;
use crate::db::ids::TenantId;
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
    /// Cost in USD from the price table (0 when the model has no price: see `unpriced`).
    pub cost_usd: f64,
    /// LLM calls whose model has no price, so their cost is unknown.
    pub unpriced_calls: i64,
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
    /// A failure that another attempt would repeat.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
    /// A failure another attempt may not meet.
    pub fn transient(message: impl Into<String>) -> Self {
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
    pub context: &'a Arc<Value>,
}

/// Builds the template context.
pub fn context(execution_id: &str, input: &Value, outputs: &HashMap<String, Value>) -> Value {
    let steps: Map<String, Value> = outputs
        .iter()
        .map(|(k, v)| (k.clone(), json!({ "output": v })))
        .collect();
    json!({ "input": input, "steps": steps, "execution": { "id": execution_id } })
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
            let tpl = cfg
                .get("template")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let ctx = input.context.clone();
            let text = input
                .app
                .templates
                .run(move |l| render(&tpl, &ctx, "config.template", l))
                .await?;
            let output = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok(Outcome {
                output,
                ..Outcome::default()
            })
        }
        "condition" => {
            let expr = cfg
                .get("expression")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let ctx = input.context.clone();
            let result = input
                .app
                .templates
                .run(move |l| templates::eval(&expr, &ctx, l))
                .await?;
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
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| StepError::fatal("config.method: unknown method"))?;
    let timeout = cfg
        .get("timeoutMs")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_HTTP_TIMEOUT_MS);
    // A response larger than a step output may be cannot be kept anyway: read no more.
    let max_output = input.app.config.engine.max_step_output_bytes;
    let limit = cfg
        .get("maxResponseBytes")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_MAX_RESPONSE, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
        .min(max_output);
    let (ctx, cfg_owned) = (input.context.clone(), cfg.clone());
    let (raw_url, headers, body) = input
        .app
        .templates
        .run(move |l| {
            let url = render(
                cfg_owned.get("url").and_then(Value::as_str).unwrap_or(""),
                &ctx,
                "config.url",
                l,
            )?;
            let mut headers = Vec::new();
            if let Some(h) = cfg_owned.get("headers").and_then(Value::as_object) {
                for (k, v) in h {
                    let v = render(v.as_str().unwrap_or(""), &ctx, "config.headers", l)?;
                    headers.push((k.clone(), v));
                }
            }
            let body = match cfg_owned.get("body") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(Err(render(s, &ctx, "config.body", l)?)),
                Some(other) => Some(Ok(render_json(other, &ctx, "config.body", l)?)),
            };
            Ok((url, headers, body))
        })
        .await?;
    let url = parse_url(&raw_url, input.policy)?;
    let mut req = input
        .http
        .request(method, url)
        .timeout(Duration::from_millis(timeout));
    for (k, v) in headers {
        req = req.header(k.as_str(), v);
    }
    match body {
        None => {}
        Some(Err(text)) => req = req.body(text),
        Some(Ok(json)) => req = req.json(&json),
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

/// Secrets a step sent, by name: whatever the step returns is searched for them.
type Sent = Vec<(String, secrecy::SecretString)>;

/// Replaces every secret value `sent` in `text` with `[secret NAME]`.
fn redact_text(text: &str, sent: &Sent) -> String {
    use secrecy::ExposeSecret as _;
    let mut out = text.to_owned();
    for (name, value) in sent {
        let v = value.expose_secret();
        // Shorter values would match ordinary text; secrets are API keys and the like.
        if v.len() >= 4 && out.contains(v) {
            out = out.replace(v, &format!("[secret {name}]"));
        }
    }
    out
}

fn redact_value(v: &mut Value, sent: &Sent) {
    match v {
        Value::String(s) => *s = redact_text(s, sent),
        Value::Array(a) => a.iter_mut().for_each(|x| redact_value(x, sent)),
        Value::Object(o) => {
            let entries = std::mem::take(o);
            for (k, mut x) in entries {
                redact_value(&mut x, sent);
                o.insert(redact_text(&k, sent), x);
            }
        }
        _ => {}
    }
}

/// Runs an `llm` step; the secret it sends is redacted from its output and its error (a
/// server that echoes the request, or a provider error quoting the key, reveals nothing
/// to the step's readers).
async fn run_llm(cfg: &Value, input: &StepInput<'_>) -> Result<Outcome, StepError> {
    let mut sent = Sent::new();
    let result = call_llm(cfg, input, &mut sent).await;
    if sent.is_empty() {
        return result;
    }
    match result {
        Ok(mut o) => {
            redact_value(&mut o.output, &sent);
            Ok(o)
        }
        Err(mut e) => {
            e.message = redact_text(&e.message, &sent);
            Err(e)
        }
    }
}

async fn call_llm(
    cfg: &Value,
    input: &StepInput<'_>,
    sent: &mut Sent,
) -> Result<Outcome, StepError> {
    let base = cfg.get("baseUrl").and_then(Value::as_str).unwrap_or("");
    let url = parse_url(
        &format!("{}/chat/completions", base.trim_end_matches('/')),
        input.policy,
    )?;
    let url_host = url.host_str().map(str::to_owned);
    let model = cfg.get("model").and_then(Value::as_str).unwrap_or("");
    let (ctx, raw_messages) = (
        input.context.clone(),
        cfg.get("messages").cloned().unwrap_or(Value::Null),
    );
    let messages = input
        .app
        .templates
        .run(move |l| {
            let mut messages = Vec::new();
            for m in raw_messages
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = render(
                    m.get("content").and_then(Value::as_str).unwrap_or(""),
                    &ctx,
                    "config.messages",
                    l,
                )?;
                messages.push(json!({ "role": role, "content": content }));
            }
            Ok(messages)
        })
        .await?;
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
        let host = url_host.as_deref().unwrap_or_default();
        let key = crate::secrets::reveal_for_host(input.app, input.tenant, name, host)
            .await
            .map_err(|e| {
                StepError::fatal(format!(
                    "config.apiKeySecret: secret {name:?} is not available ({})",
                    e.message()
                ))
            })?;
        use secrecy::ExposeSecret as _;
        req = req.bearer_auth(key.expose_secret());
        sent.push((name.to_owned(), key));
    }
    let resp = req.send().await.map_err(|e| request_error(&e))?;
    let status = resp.status();
    // The answer is parsed and its content kept: read a bounded multiple of what a step
    // output may hold.
    let max_output = input.app.config.engine.max_step_output_bytes;
    let raw = egress::read_limited(resp, max_output.saturating_mul(2).max(64 * 1024))
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
    // A model without a price has an unknown cost, never $0.
    let cost = input
        .app
        .config
        .engine
        .llm_prices
        .get(model)
        .or_else(|| input.app.config.engine.llm_prices.get(answered_model))
        .map(|(p, c)| {
            #[expect(
                clippy::cast_precision_loss,
                reason = "token counts are far below 2^52"
            )]
            let (pt, ct) = (prompt as f64, completion as f64);
            (pt * p + ct * c) / 1_000_000.0
        });
    // Labelled by the price table's name for the model (a bounded set), else `other`.
    let prices = &input.app.config.engine.llm_prices;
    let priced_as = [model, answered_model]
        .into_iter()
        .find(|m| prices.contains_key(*m));
    crate::metrics::llm_usage(
        priced_as.unwrap_or("other"),
        priced_as.is_some(),
        prompt,
        completion,
        cost.unwrap_or(0.0),
    );
    let cost_note = cost.is_none().then(|| {
        format!(
            "no price for model {answered_model:?}: the cost is unknown; add it to \
             AGENTPLANE_LLM_PRICES (model=input:output USD per million tokens)"
        )
    });
    Ok(Outcome {
        output: json!({
            "content": content,
            "model": answered_model,
            "finishReason": choice.and_then(|c| c.get("finish_reason")).cloned().unwrap_or(Value::Null),
            "usage": { "promptTokens": prompt, "completionTokens": completion },
            "costUsd": cost,
            "costNote": cost_note,
        }),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cost_usd: cost.unwrap_or(0.0),
        unpriced_calls: i64::from(cost.is_none()),
        skip: Vec::new(),
    })
}
