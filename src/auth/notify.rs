//! Account messages: the one-time tokens of a self-service password reset and of an
//! e-mail change, delivered by the configured notifier (`AGENTPLANE_NOTIFIER`): written to
//! the server log (development), POSTed to a webhook that delivers them (production: an
//! e-mail or chat relay; no SMTP server needed here), or not sent at all.
//!
//! The webhook body is JSON (`{"type", "email", "token", "expiresAt", "tenant"}`) signed
//! with HMAC-SHA256 over `<timestamp>.<body>`: headers `X-Agentplane-Timestamp` (Unix
//! seconds) and `X-Agentplane-Signature: sha256=<hex>`, so the receiver can check the
//! sender and refuse replays. Delivery runs after the request has been answered (the
//! answer never says whether an account exists, nor how long delivery took); a failed
//! delivery is logged and counted, and the user asks again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret as _;

use crate::app::App;
use crate::config::Notifier;

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A password reset the user asked for: the token goes to `setPassword`.
    PasswordReset,
    /// A new e-mail address to confirm: the token goes to `confirmEmailChange`.
    EmailChange,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::EmailChange => "email_change",
        }
    }
}

/// One message.
#[derive(Debug, Clone)]
pub struct Message {
    /// What it is about.
    pub kind: Kind,
    /// Where it goes (for an e-mail change: the new address).
    pub email: String,
    /// The one-time token.
    pub token: String,
    /// When the token stops working.
    pub expires_at: DateTime<Utc>,
    /// The tenant's slug, for the receiver's templates.
    pub tenant: String,
}

/// The webhook's signature of `body` sent at `timestamp`: `sha256=<hex>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", crate::seal::hex(&digest))
}

/// Sends `message` in the background; returns at once.
pub fn send(app: &App, message: Message) {
    match &app.config.auth.notifier {
        Notifier::Off => {
            tracing::info!(
                kind = message.kind.name(),
                "an account message was not sent: AGENTPLANE_NOTIFIER=off"
            );
        }
        Notifier::Log => {
            // Development only: the token is a credential, and the log is where it goes.
            tracing::warn!(
                kind = message.kind.name(),
                email = %message.email,
                token = %message.token,
                expires_at = %message.expires_at.to_rfc3339(),
                "account message (AGENTPLANE_NOTIFIER=log, for development: set \
                 AGENTPLANE_NOTIFIER=webhook in production)"
            );
        }
        Notifier::Webhook { url, secret } => {
            let url = url.clone();
            let secret = secret.expose_secret().as_bytes().to_vec();
            let now = app.clock.now().timestamp();
            tokio::spawn(async move {
                let body = serde_json::json!({
                    "type": message.kind.name(),
                    "email": message.email,
                    "token": message.token,
                    "expiresAt": message.expires_at.to_rfc3339(),
                    "tenant": message.tenant,
                })
                .to_string();
                let sent = reqwest::Client::new()
                    .post(&url)
                    .timeout(Duration::from_secs(10))
                    .header("content-type", "application/json")
                    .header("x-agentplane-timestamp", now.to_string())
                    .header(
                        "x-agentplane-signature",
                        signature(&secret, now, body.as_bytes()),
                    )
                    .body(body)
                    .send()
                    .await;
                let outcome = match &sent {
                    Ok(r) if r.status().is_success() => "delivered",
                    _ => "failed",
                };
                crate::metrics::notification(message.kind.name(), outcome);
                match sent {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(
                        kind = message.kind.name(),
                        status = r.status().as_u16(),
                        "the notifier webhook refused an account message"
                    ),
                    Err(e) => tracing::warn!(
                        kind = message.kind.name(),
                        error = %e,
                        "the notifier webhook could not be reached"
                    ),
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let a = signature(b"k", 1, b"{}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64, "{a}");
        assert_ne!(a, signature(b"k", 2, b"{}"));
        assert_ne!(a, signature(b"k", 1, b"{ }"));
        assert_ne!(a, signature(b"j", 1, b"{}"));
    }
}
