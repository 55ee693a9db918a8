//! `[auth]` and `[audit]` (docs/access.md): what a request without a token may do, how often a
//! replica rereads the shared token store, the key of signed URLs, and where the audit log goes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lenient::lenient_opt_string;

/// What a request without a token may do once any token exists (`auth.anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Read routes stay open (the behaviour before tokens existed).
    #[default]
    Read,
    /// Every route but health, readiness, metrics and a build's status needs a token.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub anonymous: Anonymous,
    /// How often a replica rereads the token store in the bucket (S3 mode).
    #[serde(with = "super::duration")]
    pub refresh: Duration,
    /// The HMAC key of signed URLs; generated in the data dir when absent. In S3 mode a key made
    /// by one replica would not be the others', so there signed URLs are off until it is set.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_secret: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: Anonymous::Read,
            refresh: Duration::from_secs(30),
            url_secret: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// A file (reopened on SIGHUP), `-` for standard output; none: no audit log.
    #[serde(
        deserialize_with = "lenient_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub path: Option<String>,
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.refresh.is_zero() {
            return Err(("auth.refresh".into(), "must be more than 0".into()));
        }
        match &self.url_secret {
            Some(s) if s.len() < 16 => Err((
                "auth.url_secret".into(),
                "must be at least 16 characters (use a random value)".into(),
            )),
            _ => Ok(()),
        }
    }
}
