//! Password policy and hashing (argon2id with OWASP parameters), e-mail normalisation,
//! and the opaque random secrets used for refresh tokens, API keys and set-password links.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rand::rngs::OsRng;

/// Bounds password hashing, which costs 19 MiB and tens of milliseconds of CPU per call:
/// hashes run on `running` dedicated threads (about the core count; the allocator keeps
/// each thread's 19 MiB, so a fixed set of threads also bounds the memory kept after a
/// burst), at most `queue` more wait, and at most `per_address` are in flight per client
/// address. Beyond that a sign-in fails at once with `RATE_LIMITED` instead of piling up
/// threads and memory.
pub struct HashSlots {
    lane: crate::slots::Lane,
    per_address: usize,
    by_address: crate::slots::KeyedSlots<std::net::IpAddr>,
}

impl HashSlots {
    /// Starts `running` hashing threads (they end when this is dropped).
    pub fn new(running: usize, queue: usize, per_address: usize) -> Self {
        Self {
            lane: crate::slots::Lane::new("password-hash", running, queue),
            per_address: per_address.max(1),
            by_address: crate::slots::KeyedSlots::default(),
        }
    }

    fn busy(why: &str) -> crate::error::AppError {
        crate::error::AppError::new(
            crate::error::ErrorCode::RateLimited,
            format!("{why}; try again in a second"),
        )
        .with_detail("retryAfterSeconds", 1)
    }

    /// Runs `work` (a hash or a verification) on a hashing thread within the bounds.
    pub async fn run<T: Send + 'static>(
        &self,
        addr: Option<std::net::IpAddr>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> crate::error::AppResult<T> {
        let _address = match addr {
            Some(addr) => match self.by_address.try_take(&addr, self.per_address) {
                Some(slot) => Some(slot),
                None => {
                    return Err(Self::busy(
                        "too many sign-ins in progress from your address",
                    ));
                }
            },
            None => None,
        };
        self.lane
            .run(work)
            .await
            .map_err(|_| Self::busy("the server is busy checking passwords"))
    }
}

pub use crate::policy::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, check_policy, normalize_email};

fn argon2() -> Argon2<'static> {
    // OWASP: argon2id, m = 19 MiB, t = 2, p = 1.
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// Verifies a password against a PHC string. Returns false for malformed hashes.
pub fn verify(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash of a random password: verified against when the e-mail is unknown, so unknown
/// and wrong answers take the same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&random_secret(24)).unwrap_or_default())
}

/// `n` random bytes, base64url without padding.
pub fn random_secret(n: usize) -> String {
    let mut buf = vec![0u8; n];
    OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// SHA-256 of a high-entropy secret, hex: how tokens and API keys are looked up.
/// (Secrets here are 256-bit random values, so a fast hash is enough; passwords use
/// argon2id.)
pub use crate::seal::sha256_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_hashing() {
        assert!(check_policy("short").is_err());
        assert!(check_policy("long enough password").is_ok());
        let h = hash("correct horse battery").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(&h, "correct horse battery"));
        assert!(!verify(&h, "wrong horse battery"));
    }

    #[test]
    fn emails_are_normalised() {
        assert_eq!(normalize_email(" A@B.io ").as_deref(), Ok("a@b.io"));
        assert!(normalize_email("nope").is_err());
        assert!(normalize_email("a@@b").is_err());
    }
}
