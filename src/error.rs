//! The error type shared by every domain, and how it reaches clients.
//!
//! Three tiers: `anyhow` for start-up, CLI and background loops; `diesel::QueryResult`
//! inside store code; [`AppError`] at the API boundary. `AppError` deliberately does **not**
//! implement `Display`: async-graphql converts any `Display` type into an error *without*
//! `extensions.code`, so leaving `Display` out forces every resolver error through our own
//! `From<AppError> for async_graphql::Error` (in `graphql::errors`), which always sets the code. Internal errors
//! are logged once, with their cause chain, at that conversion; the client sees only
//! "internal error" and the request id.

use std::fmt;

/// The stable, client-visible error codes (`extensions.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No or invalid credentials.
    Unauthenticated,
    /// Authenticated but not allowed.
    Forbidden,
    /// The object does not exist, or belongs to someone else.
    NotFound,
    /// The input is malformed or violates a rule.
    BadUserInput,
    /// A plan quota would be exceeded.
    QuotaExceeded,
    /// Too many attempts; try later.
    RateLimited,
    /// The change conflicts with current state (duplicate, stale).
    Conflict,
    /// A fault on our side; details are in the server log.
    Internal,
    /// A dependency (the database) is unreachable, overloaded or out of space: retry
    /// after `extensions.retryAfterSeconds`.
    Unavailable,
}

impl ErrorCode {
    /// The wire form used in `extensions.code`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::RateLimited => "RATE_LIMITED",
            Self::Conflict => "CONFLICT",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status used by plain HTTP endpoints (exports, health).
    pub const fn http_status(self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::BadUserInput => 400,
            Self::QuotaExceeded | Self::RateLimited => 429,
            Self::Conflict => 409,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// An error at the API boundary: a code, a client-safe message, optional structured
/// details, and (for internal errors) the hidden cause.
pub struct AppError {
    code: ErrorCode,
    message: String,
    /// Extra client-safe extensions, e.g. `field` for input errors or `reason`.
    details: Vec<(&'static str, serde_json::Value)>,
    /// Hidden cause: logged, never returned.
    source: Option<anyhow::Error>,
}

/// What `UNAVAILABLE` errors tell clients to wait before retrying.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// Result alias for service and resolver code.
pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    /// An error with a code and a client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            source: None,
        }
    }

    /// `NOT_FOUND` naming the kind of object, never whether it exists elsewhere.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// `BAD_USER_INPUT` about one input field.
    pub fn bad_input(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadUserInput, message).with_detail("field", field)
    }

    /// `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `QUOTA_EXCEEDED` for plan quota `quota` (e.g. `maxWorkflows`) of `limit`.
    pub fn quota_exceeded(quota: &'static str, limit: i64, what: &str) -> Self {
        Self::new(
            ErrorCode::QuotaExceeded,
            format!("the plan allows {limit} {what}"),
        )
        .with_detail("quota", quota)
    }

    /// `CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// `INTERNAL`, keeping the cause for the log.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: "internal error".into(),
            details: Vec::new(),
            source: Some(cause.into()),
        }
    }

    /// `UNAVAILABLE`: the database cannot serve the request now (`what` says why, for the
    /// client); the cause is logged. Carries `retryAfterSeconds`.
    pub fn unavailable(what: &str, cause: impl Into<anyhow::Error>) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            message: format!("{what}; retry in {RETRY_AFTER_SECONDS} s"),
            details: vec![(
                "retryAfterSeconds",
                serde_json::Value::from(RETRY_AFTER_SECONDS),
            )],
            source: Some(cause.into()),
        }
    }

    /// Adds a client-safe extension value.
    pub fn with_detail(mut self, key: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.details.push((key, value.into()));
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The client-safe message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `field` an input error concerns, if any.
    pub fn field(&self) -> Option<String> {
        self.detail_str("field").map(str::to_owned)
    }

    /// The `reason` a refusal carries (e.g. `TOKEN_EXPIRED`), if any.
    pub fn reason(&self) -> Option<&str> {
        self.detail_str("reason")
    }

    /// An extension value, if set.
    pub fn detail(&self, key: &str) -> Option<&serde_json::Value> {
        self.details
            .iter()
            .find_map(|(k, v)| (*k == key).then_some(v))
    }

    fn detail_str(&self, key: &str) -> Option<&str> {
        self.details.iter().find_map(|(k, v)| match (*k, v) {
            (k, serde_json::Value::String(f)) if k == key => Some(f.as_str()),
            _ => None,
        })
    }

    /// For CLI and start-up code (the `anyhow` tier): the message, internal causes logged.
    pub fn into_anyhow(self) -> anyhow::Error {
        self.log_if_internal();
        anyhow::anyhow!("{}", self.message)
    }

    /// Where the error leaves the process (an API response): logs an internal cause once
    /// and returns what a client may see: the code, the message and the extensions.
    pub fn into_client_parts(self) -> (ErrorCode, String, Vec<(&'static str, serde_json::Value)>) {
        self.log_if_internal();
        (self.code, self.message, self.details)
    }

    /// Logs an internal cause once; called where the error leaves the process.
    fn log_if_internal(&self) {
        if let Some(src) = &self.source {
            tracing::error!(error = format!("{src:#}"), "internal error");
        }
    }
}

impl fmt::Debug for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AppError");
        d.field("code", &self.code.as_str())
            .field("message", &self.message);
        if let Some(src) = &self.source {
            d.field("source", &format_args!("{src:#}"));
        }
        d.finish()
    }
}
