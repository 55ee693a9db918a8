//! Tokens (docs/access.md): what a scope allows, the secret shown once and the SHA-256 that is
//! the only form ever stored, and the record kept about each token.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Every secret starts with this, so a string that does not is refused before any lookup (and
/// a leaked one is easy to find with a secret scanner).
pub const PREFIX: &str = "vxc_";
/// Random bytes in a secret (base64url without padding: 43 characters).
const SECRET_BYTES: usize = 32;
const SECRET_LEN: usize = PREFIX.len() + 43;

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Binaries, artifacts, channels, images, signatures, build status, and a build request
    /// whose binary is cached.
    Read,
    /// Read, plus requests that start a Velox build.
    Build,
    /// Build, plus the admin routes that change things (channels, pins, tokens, signed URLs).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Build => "build",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "build" => Some(Scope::Build),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token's secret, as made and shown once. Its `Debug` prints nothing of it.
pub struct Secret(String);

impl Secret {
    /// A new random secret from the system's CSPRNG.
    pub fn generate() -> Result<Secret, ring::error::Unspecified> {
        use base64::Engine as _;
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; SECRET_BYTES];
        ring::rand::SystemRandom::new().fill(&mut bytes)?;
        Ok(Secret(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The SHA-256 of a secret: what is stored and looked up. A lookup by hash leaks nothing of the
/// secret through timing, since the attacker does not control the hash's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> TokenHash {
        TokenHash(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<TokenHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// Whether `given` has the shape of a secret this server makes (checked before any lookup).
pub fn well_formed(given: &str) -> bool {
    given.len() == SECRET_LEN
        && given.starts_with(PREFIX)
        && given[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What is kept about a token: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    pub scope: Scope,
    /// Channel-name globs the token is limited to; empty: not limited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_builds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builds_per_hour: Option<u32>,
    /// Unix seconds; a revoked token is kept so that its use gets its own answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl TokenRecord {
    /// Whether the token may use channel `name` (always, when it is not limited).
    pub fn allows_channel(&self, name: &str) -> bool {
        self.channels.is_empty()
            || self.channels.iter().any(|g| {
                glob::Pattern::new(g)
                    .map(|p| p.matches(name))
                    .unwrap_or(false)
            })
    }

    /// The JSON the admin API and `token list` show: everything but the hash.
    pub fn public_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "scope": self.scope,
            "channels": self.channels,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "max_concurrent_builds": self.max_concurrent_builds,
            "builds_per_hour": self.builds_per_hour,
            "revoked_at": self.revoked_at,
        })
    }
}

/// Whether `name` is a valid token name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Whether `glob` is a usable channel glob (channel-name characters plus `*`, `?`, `[`, `]`).
pub fn valid_channel_glob(glob: &str) -> bool {
    !glob.is_empty()
        && glob.len() <= 64
        && glob::Pattern::new(glob).is_ok()
        && glob.bytes().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'.' | b'_' | b'-' | b'*' | b'?' | b'[' | b']' | b'!')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_well_formed_and_hash_to_what_is_stored() {
        let s = Secret::generate().expect("random");
        assert!(well_formed(s.expose()), "{}", s.expose());
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(s.hash(), TokenHash::of(s.expose()));
        let hex = s.hash().to_hex();
        assert_eq!(TokenHash::from_hex(&hex), Some(s.hash()));
        assert!(!well_formed("vxc_short"));
        assert!(!well_formed(&s.expose().replacen("vxc_", "abc_", 1)));
        assert!(!well_formed(&format!(
            "{}!",
            &s.expose()[..s.expose().len() - 1]
        )));
    }

    #[test]
    fn scopes_include_the_ones_before() {
        assert!(Scope::Admin > Scope::Build && Scope::Build > Scope::Read);
        assert_eq!(Scope::parse("build"), Some(Scope::Build));
        assert_eq!(Scope::parse("Build"), None);
    }

    #[test]
    fn channel_globs_limit_a_token() {
        let mut r = TokenRecord {
            name: "ci".into(),
            hash: String::new(),
            scope: Scope::Read,
            channels: vec![],
            created_at: 0,
            expires_at: None,
            max_concurrent_builds: None,
            builds_per_hour: None,
            revoked_at: None,
        };
        assert!(r.allows_channel("prod"));
        r.channels = vec!["team-a-*".into()];
        assert!(r.allows_channel("team-a-web"));
        assert!(!r.allows_channel("prod"));
        assert!(valid_channel_glob("team-*"));
        assert!(!valid_channel_glob("a/b"));
        assert!(valid_name("ci-main.1") && !valid_name("-x") && !valid_name(""));
    }
}
