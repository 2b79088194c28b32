//! Sealing values at rest under the configured master keys: XChaCha20-Poly1305 with
//! associated data that binds a ciphertext to what it belongs to (a tenant secret's tenant
//! and name, a signing key's id, a user's TOTP secret), the master key's id stored beside
//! it for rotation. A primitive the domains share; it knows none of them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use secrecy::ExposeSecret as _;

use crate::config::MasterKey;

/// Encrypts `plaintext` under `key` with `aad` bound in; returns (nonce, ciphertext) in
/// base64.
pub fn seal_bytes(
    key: &MasterKey,
    aad: &[u8],
    plaintext: &[u8],
) -> anyhow::Result<(String, String)> {
    let cipher = XChaCha20Poly1305::new(key.key.expose_secret().into());
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| anyhow::anyhow!("encrypting failed"))?;
    Ok((STANDARD.encode(nonce), STANDARD.encode(ct)))
}

/// Decrypts what [`seal_bytes`] sealed under the master key `key_id` (one of `keys`);
/// `what` names it in errors.
pub fn open_bytes(
    keys: &[MasterKey],
    key_id: &str,
    aad: &[u8],
    nonce: &str,
    ciphertext: &str,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let key = keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
        anyhow::anyhow!("{what} is sealed under master key {key_id}, which is not configured")
    })?;
    let nonce = STANDARD.decode(nonce)?;
    let ct = STANDARD.decode(ciphertext)?;
    if nonce.len() != 24 {
        anyhow::bail!("{what} has a bad nonce");
    }
    let cipher = XChaCha20Poly1305::new(key.key.expose_secret().into());
    cipher
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad })
        .map_err(|_| anyhow::anyhow!("{what} failed authentication"))
}

/// How a sealed value stored as text starts: `sealed:v1:<master key id>:<nonce>:<ciphertext>`.
pub const SEALED: &str = "sealed:v1:";

/// The stored text form of `text`: sealed under the current master key when one is
/// configured, else `text` itself (token-signing keys, TOTP secrets).
pub fn seal_text(master: &[MasterKey], aad: &[u8], text: &str) -> anyhow::Result<String> {
    let Some(key) = master.first() else {
        return Ok(text.to_owned());
    };
    let (nonce, ct) = seal_bytes(key, aad, text.as_bytes())?;
    Ok(format!("{SEALED}{}:{nonce}:{ct}", key.id))
}

/// The text a [`seal_text`] form stands for; `what` names it in errors.
pub fn open_text(
    master: &[MasterKey],
    aad: &[u8],
    stored: &str,
    what: &str,
) -> anyhow::Result<String> {
    let Some(rest) = stored.strip_prefix(SEALED) else {
        return Ok(stored.to_owned());
    };
    // Nonce and ciphertext are base64 without ':'; the key id is what precedes them.
    let mut parts = rest.rsplitn(3, ':');
    let (Some(ct), Some(nonce), Some(key_id)) = (parts.next(), parts.next(), parts.next()) else {
        anyhow::bail!("{what} is sealed in an unknown form");
    };
    let plain = open_bytes(master, key_id, aad, nonce, ct, what)?;
    String::from_utf8(plain).map_err(|_| anyhow::anyhow!("{what} is not text"))
}

/// SHA-256 of `text`, as lowercase hex: what the audit chain, secret lookups (tokens,
/// API keys) and definition digests store.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Lowercase hex of `bytes`, the text form of digests and MACs, in one allocation
/// (`format!("{b:02x}")` per byte allocated 32 strings for a SHA-256, on every
/// authenticated request's token hash).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&bytes), expected);
        assert_eq!(super::hex(&[]), "");
        assert_eq!(super::hex(&[0x0a, 0xf0]), "0af0");
    }
}
