//! Access tokens: JWTs signed with Ed25519 (default, keys kept in the database so a
//! restart signs nobody out, published at `/.well-known/jwks.json`) or HS256 (a configured
//! secret, never stored). Verification pins the algorithm, requires a known `kid`, checks
//! `iss`/`aud`, and checks `exp`/`nbf` against the application clock with 60 s leeway.
//!
//! With a master key configured, private keys are sealed at rest under it
//! (XChaCha20-Poly1305, the `kid` bound in), so a copy of the database (a backup, a
//! replica) cannot mint tokens; keys found unsealed, or sealed under an older master key,
//! are sealed under the current one when the key ring loads.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Instant;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::rngs::OsRng;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtAlgorithm, MasterKey};
use crate::db::DbPool;
use crate::db::ids::db_time;
use crate::db::schema::signing_keys;

/// Leeway applied to `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 60;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Role name (built-in) or custom role id.
    pub role: String,
    /// Issued at (seconds).
    pub iat: i64,
    /// Not before (seconds).
    pub nbf: i64,
    /// Expiry (seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Token id (revocable).
    pub jti: String,
    /// Session (refresh-token family) id.
    pub sid: String,
    /// Whether the sign-in behind the session passed a second factor (absent: no).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa: bool,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct KeyRow {
    kid: String,
    alg: String,
    private_pem: String,
    public_x: String,
    active: bool,
    created_at: chrono::NaiveDateTime,
    retired_at: Option<chrono::NaiveDateTime>,
}

struct Keys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: Vec<serde_json::Value>,
    loaded_at: Instant,
}

/// The signing key and every key still valid for verification.
pub struct KeyRing {
    algorithm: Algorithm,
    keys: RwLock<Keys>,
}

/// Why a token was refused (never shown to clients in detail).
#[derive(Debug)]
pub struct Rejected(pub &'static str);

impl Rejected {
    /// The token is well-formed and signed by us, only past its expiry.
    pub fn is_expiry(&self) -> bool {
        self.0 == "expired"
    }
}

fn hs_kid(secret: &str) -> String {
    format!("hs256-{}", &super::passwords::sha256_hex(secret)[..12])
}

use crate::seal::SEALED;

fn sealing_aad(kid: &str) -> Vec<u8> {
    format!("agentplane-signing-key:{kid}").into_bytes()
}

/// The stored form of a private key: sealed under the current master key when one is
/// configured, else the PEM itself.
fn stored_form(kid: &str, pem: &str, master: &[MasterKey]) -> anyhow::Result<String> {
    crate::seal::seal_text(master, &sealing_aad(kid), pem)
}

/// The master key a stored private key is sealed under (`None`: unsealed).
fn sealed_under(stored: &str) -> Option<&str> {
    let rest = stored.strip_prefix(SEALED)?;
    // Nonce and ciphertext are base64 without ':'; the key id is what precedes them.
    let mut parts = rest.rsplitn(3, ':');
    let (_ct, _nonce) = (parts.next()?, parts.next()?);
    parts.next()
}

/// The PEM of a stored private key.
fn open_pem(kid: &str, stored: &str, master: &[MasterKey]) -> anyhow::Result<String> {
    crate::seal::open_text(
        master,
        &sealing_aad(kid),
        stored,
        &format!("signing key {kid}"),
    )
}

/// Seals every private key not yet sealed under the current master key; returns how
/// many were (re)sealed.
async fn seal_stored_keys(
    db: &DbPool,
    rows: &[KeyRow],
    master: &[MasterKey],
) -> anyhow::Result<usize> {
    let Some(current) = master.first() else {
        return Ok(0);
    };
    let mut n = 0;
    for r in rows {
        if sealed_under(&r.private_pem) == Some(current.id.as_str()) {
            continue;
        }
        let pem = open_pem(&r.kid, &r.private_pem, master)?;
        let stored = stored_form(&r.kid, &pem, master)?;
        crate::db_run!(db, |conn| {
            diesel::update(signing_keys::table.filter(signing_keys::kid.eq(&r.kid)))
                .set(signing_keys::private_pem.eq(&stored))
                .execute(conn)
                .await?;
        });
        n += 1;
    }
    Ok(n)
}

/// The `typ` header of access tokens (RFC 9068); tokens without it are refused.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

impl KeyRing {
    /// Loads keys; on an empty table (EdDSA) generates the first key. With `master` keys
    /// configured, private keys are sealed under the first.
    pub async fn load(db: &DbPool, cfg: &AuthConfig, master: &[MasterKey]) -> anyhow::Result<Self> {
        let algorithm = match cfg.algorithm {
            JwtAlgorithm::EdDsa => Algorithm::EdDSA,
            JwtAlgorithm::Hs256 => Algorithm::HS256,
        };
        let keys = Self::read(db, cfg, master).await?;
        Ok(Self {
            algorithm,
            keys: RwLock::new(keys),
        })
    }

    async fn read(db: &DbPool, cfg: &AuthConfig, master: &[MasterKey]) -> anyhow::Result<Keys> {
        if let (JwtAlgorithm::Hs256, Some(secret)) = (cfg.algorithm, &cfg.hs256_secret) {
            let kid = hs_kid(secret.expose_secret());
            let mut decoding = HashMap::new();
            decoding.insert(
                kid.clone(),
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
            );
            return Ok(Keys {
                kid,
                encoding: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
                decoding,
                jwks: Vec::new(),
                loaded_at: Instant::now(),
            });
        }
        let mut rows = load_rows(db).await?;
        if let Some(pem) = &cfg.signing_key_pem {
            return Self::with_file_key(pem.expose_secret(), &rows);
        }
        if !rows.iter().any(|r| r.active) {
            insert_new_key(db, master).await?;
            rows = load_rows(db).await?;
        }
        if seal_stored_keys(db, &rows, master).await? > 0 {
            tracing::info!("signing keys sealed under the current master key");
        } else if master.is_empty() && rows.iter().any(|r| sealed_under(&r.private_pem).is_none()) {
            tracing::warn!(
                "token-signing keys are stored unsealed: anyone who can read the database can \
                 mint tokens; set AGENTPLANE_MASTER_KEY to seal them"
            );
        }
        let active = rows
            .iter()
            .filter(|r| r.active)
            .max_by_key(|r| r.created_at)
            .context("no active signing key")?;
        let pem = open_pem(&active.kid, &active.private_pem, master)?;
        let encoding =
            EncodingKey::from_ed_pem(pem.as_bytes()).context("reading the active signing key")?;
        let mut decoding = HashMap::new();
        let mut jwks = Vec::new();
        for r in &rows {
            decoding.insert(
                r.kid.clone(),
                DecodingKey::from_ed_components(&r.public_x).context("reading a public key")?,
            );
            jwks.push(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                "kid": r.kid, "x": r.public_x,
            }));
        }
        Ok(Keys {
            kid: active.kid.clone(),
            encoding,
            decoding,
            jwks,
            loaded_at: Instant::now(),
        })
    }

    /// The configured PEM key signs; database keys keep verifying (so moving from generated
    /// keys to a managed key logs nobody out).
    fn with_file_key(pem: &str, rows: &[KeyRow]) -> anyhow::Result<Keys> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("reading the signing key file: {e}"))?;
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        let kid = format!("file-{}", &super::passwords::sha256_hex(&x)[..16]);
        let mut decoding = HashMap::new();
        let mut jwks = Vec::new();
        for (kid, x) in std::iter::once((kid.clone(), x))
            .chain(rows.iter().map(|r| (r.kid.clone(), r.public_x.clone())))
        {
            decoding.insert(
                kid.clone(),
                DecodingKey::from_ed_components(&x).context("reading a public key")?,
            );
            jwks.push(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x,
            }));
        }
        Ok(Keys {
            kid,
            encoding: EncodingKey::from_ed_pem(pem.as_bytes())
                .context("reading the signing key file")?,
            decoding,
            jwks,
            loaded_at: Instant::now(),
        })
    }

    /// Re-reads keys (after a rotation by another process).
    pub async fn reload(
        &self,
        db: &DbPool,
        cfg: &AuthConfig,
        master: &[MasterKey],
    ) -> anyhow::Result<()> {
        let keys = Self::read(db, cfg, master).await?;
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        Ok(())
    }

    /// Signs claims with the active key (header `typ: at+jwt`).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut header = Header::new(self.algorithm);
        header.kid = Some(keys.kid.clone());
        // RFC 9068: access tokens say what they are, so no other JWT signed with the
        // same key (an ID token, a link) can be replayed as one.
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        jsonwebtoken::encode(&header, claims, &keys.encoding).context("signing a token")
    }

    /// Whether `kid` is unknown and a reload is allowed (at most every 5 s).
    pub fn should_reload_for(&self, token: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        header.kid.is_some_and(|k| !keys.decoding.contains_key(&k))
            && keys.loaded_at.elapsed().as_secs() >= 5
    }

    /// Verifies a token and returns its claims.
    pub fn verify(
        &self,
        token: &str,
        cfg: &AuthConfig,
        now: DateTime<Utc>,
    ) -> Result<Claims, Rejected> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejected("malformed"))?;
        if header.alg != self.algorithm {
            return Err(Rejected("algorithm not allowed"));
        }
        if !header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        }) {
            return Err(Rejected("not an access token (typ)"));
        }
        let kid = header.kid.ok_or(Rejected("no kid"))?;
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = keys.decoding.get(&kid).ok_or(Rejected("unknown kid"))?;
        let mut v = Validation::new(self.algorithm);
        v.algorithms = vec![self.algorithm];
        v.set_issuer(&[cfg.issuer.as_str()]);
        v.set_audience(&[cfg.audience.as_str()]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Time is checked below against the application clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &v)
            .map_err(|_| Rejected("signature or claims invalid"))?;
        let c = data.claims;
        let now = now.timestamp();
        if now > c.exp + LEEWAY_SECS {
            return Err(Rejected("expired"));
        }
        if now + LEEWAY_SECS < c.nbf {
            return Err(Rejected("not yet valid"));
        }
        Ok(c)
    }

    /// The public keys as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::json!({ "keys": keys.jwks })
    }
}

async fn load_rows(db: &DbPool) -> anyhow::Result<Vec<KeyRow>> {
    Ok(crate::db_run!(db, |conn| {
        signing_keys::table
            .filter(signing_keys::alg.eq("EdDSA"))
            .select(KeyRow::as_select())
            .load(conn)
            .await?
    }))
}

async fn insert_new_key(db: &DbPool, master: &[MasterKey]) -> anyhow::Result<String> {
    let key = SigningKey::generate(&mut OsRng);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| anyhow::anyhow!("encoding key: {e}"))?;
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let kid = uuid::Uuid::now_v7().simple().to_string();
    let row = KeyRow {
        kid: kid.clone(),
        alg: "EdDSA".into(),
        private_pem: stored_form(&kid, &pem, master)?,
        public_x: x,
        active: true,
        created_at: db_time(Utc::now()),
        retired_at: None,
    };
    crate::db_run!(db, |conn| {
        diesel::insert_into(signing_keys::table)
            .values(&row)
            .execute(conn)
            .await?;
    });
    Ok(kid)
}

/// Makes a new active Ed25519 key (sealed under the current master key, if any); older
/// keys stay valid for verification.
pub async fn rotate(db: &DbPool, master: &[MasterKey]) -> anyhow::Result<String> {
    let now = db_time(Utc::now());
    crate::db_run!(db, |conn| {
        diesel::update(signing_keys::table.filter(signing_keys::active.eq(true)))
            .set((
                signing_keys::active.eq(false),
                signing_keys::retired_at.eq(Some(now)),
            ))
            .execute(conn)
            .await?;
    });
    insert_new_key(db, master).await
}
