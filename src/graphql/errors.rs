//! Errors at the GraphQL boundary: every [`AppError`] becomes a GraphQL error whose
//! `extensions.code` is always set (see `crate::error` for why `AppError` has no
//! `Display`), with its client-safe extensions; internal causes are logged here, once.

use async_graphql::ErrorExtensions;

use crate::error::AppError;

impl From<AppError> for async_graphql::Error {
    fn from(e: AppError) -> Self {
        let (code, message, details) = e.into_client_parts();
        async_graphql::Error::new(message).extend_with(|_, ext| {
            ext.set("code", code.as_str());
            for (k, v) in details {
                ext.set(k, async_graphql::Value::from_json(v).unwrap_or_default());
            }
        })
    }
}

/// A request-level error that belongs to no place in the document (a refusal before
/// execution): no `locations`, rather than a made-up line 0, column 0.
pub fn unplaced(e: AppError) -> async_graphql::ServerError {
    let e: async_graphql::Error = e.into();
    let mut s = e.into_server_error(async_graphql::Pos::default());
    s.locations.clear();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_survives_into_graphql_error() {
        let e: async_graphql::Error = AppError::bad_input("email", "bad email").into();
        let ext = e.extensions.expect("extensions");
        assert_eq!(
            ext.get("code"),
            Some(&async_graphql::Value::from("BAD_USER_INPUT"))
        );
        assert_eq!(ext.get("field"), Some(&async_graphql::Value::from("email")));
    }

    #[test]
    fn internal_detail_is_not_returned() {
        let e: async_graphql::Error =
            AppError::internal(anyhow::anyhow!("password=hunter2 connection refused")).into();
        assert_eq!(e.message, "internal error");
        assert!(!format!("{:?}", e.extensions).contains("hunter2"));
    }

    #[test]
    fn extension_values_keep_their_json_type() {
        let e: async_graphql::Error = AppError::unavailable("db down", anyhow::anyhow!("x")).into();
        let ext = e.extensions.expect("extensions");
        assert_eq!(
            ext.get("retryAfterSeconds"),
            Some(&async_graphql::Value::from(
                crate::error::RETRY_AFTER_SECONDS
            ))
        );
    }
}
