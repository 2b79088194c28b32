//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) and
//! recovery codes: pure functions, no storage. The rules around them (enrolment,
//! challenges, replay, throttling) are in `auth::service::mfa`.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;

use crate::auth::passwords::sha256_hex;

/// Seconds per TOTP step.
pub const PERIOD_SECS: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Recovery codes handed out at a time.
pub const RECOVERY_CODES: usize = 10;
/// The code for `secret` at time step `step` (RFC 4226 dynamic truncation).
pub fn totp_code(secret: &[u8], step: i64) -> String {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    let bin = (u32::from(h[offset]) & 0x7f) << 24
        | u32::from(h[offset + 1]) << 16
        | u32::from(h[offset + 2]) << 8
        | u32::from(h[offset + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The time step `now` falls in.
pub fn step_at(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(PERIOD_SECS)
}

/// The latest step within one step of `now`, later than `after`, whose code is `code`.
pub fn matching_step(secret: &[u8], code: &str, now: DateTime<Utc>, after: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = step_at(now);
    [t + 1, t, t - 1]
        .into_iter()
        .filter(|s| *s > after)
        .find(|s| constant_time_eq(totp_code(secret, *s).as_bytes(), code.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Base32 (RFC 4648, no padding) as authenticator apps expect.
pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// A new secret (160 random bits, RFC 4226's recommendation), in base32.
pub fn new_secret() -> String {
    let mut raw = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base32(&raw)
}

/// The provisioning URI authenticator apps read from a QR code.
pub fn otpauth_uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECS}",
        enc(issuer).replace('+', "%20"),
        enc(account).replace('+', "%20"),
        enc(issuer).replace('+', "%20"),
    )
}

/// A recovery code as typed: lower case, without separators.
pub fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Ten new recovery codes, `xxxxx-xxxxx` (50 random bits each), and their digests.
pub fn new_recovery_codes() -> Vec<(String, String)> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut b = [0u8; 7];
            rand::rngs::OsRng.fill_bytes(&mut b);
            let s = data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase();
            let code = format!("{}-{}", &s[..5], &s[5..10]);
            let hash = sha256_hex(&normalize_recovery(&code));
            (code, hash)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA-1 seed), last 6 of the 8 digits.
        let seed = b"12345678901234567890";
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(totp_code(seed, t / PERIOD_SECS), code, "T={t}");
        }
    }

    #[test]
    fn codes_match_one_step_either_way_and_only_after_the_last_used() {
        let seed = b"12345678901234567890";
        let now = DateTime::from_timestamp(1_111_111_111, 0).unwrap_or_default();
        let t = step_at(now);
        let prev = totp_code(seed, t - 1);
        assert_eq!(matching_step(seed, &prev, now, 0), Some(t - 1));
        assert_eq!(matching_step(seed, &prev, now, t - 1), None, "replay");
        assert_eq!(matching_step(seed, &totp_code(seed, t - 2), now, 0), None);
        assert_eq!(matching_step(seed, "12345", now, 0), None);
        assert_eq!(matching_step(seed, "abcdef", now, 0), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalize() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut hashes: Vec<_> = codes.iter().map(|(_, h)| h.clone()).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), RECOVERY_CODES);
        let (code, hash) = &codes[0];
        assert_eq!(code.len(), 11);
        assert_eq!(
            sha256_hex(&normalize_recovery(&format!(" {} ", code.to_uppercase()))),
            *hash
        );
    }

    #[test]
    fn otpauth_uri_names_issuer_and_account() {
        let uri = otpauth_uri("agentplane", "ann@acme.example", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            uri,
            "otpauth://totp/agentplane:ann%40acme.example?secret=JBSWY3DPEHPK3PXP&issuer=agentplane&algorithm=SHA1&digits=6&period=30"
        );
    }
}
