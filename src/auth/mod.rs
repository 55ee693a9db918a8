//! Access for teams (docs/access.md): scoped tokens stored as SHA-256 only, signed URLs, build
//! quotas and fair build slots, and the audit log.
//!
//! [`table::need`] says what each route needs; the guards in [`guard`] ask [`Auth`] who the
//! caller is and whether that suffices, and leave the [`Caller`] in the request for handlers
//! that decide more once they know more (a build request: read scope on a hit, build scope to
//! start one). Tokens live in `<data_dir>/auth/tokens.json` (written whole, atomically); with a
//! bucket, in `<prefix>auth/tokens.json` there, reread every `auth.refresh`.

pub mod audit;
pub mod guard;
pub mod quota;
pub mod signed;
pub mod slots;
pub mod store;
pub mod table;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{Anonymous, Config};
use crate::error::{ApiError, ErrorCode};
use token::{Scope, TokenHash, TokenRecord};

pub use guard::{caller, guard_admin, guard_public, guard_registry};

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token exists at all: everything is open, as before tokens.
    Open,
    /// No credential sent.
    Anonymous,
    /// A valid signed URL (read, on that path only).
    SignedUrl,
    /// The configured `api_token` (admin scope).
    ApiToken,
    Token(Arc<TokenRecord>),
}

impl Caller {
    /// The name the audit log and the build queue know the caller by (never a secret).
    pub fn who(&self) -> &str {
        match self {
            Caller::Open | Caller::Anonymous => "anonymous",
            Caller::SignedUrl => "signed-url",
            Caller::ApiToken => "api_token",
            Caller::Token(t) => &t.name,
        }
    }

    fn scope(&self, anonymous: Anonymous) -> Option<Scope> {
        match self {
            Caller::Open | Caller::ApiToken => Some(Scope::Admin),
            Caller::Anonymous if anonymous == Anonymous::Read => Some(Scope::Read),
            Caller::Anonymous => None,
            Caller::SignedUrl => Some(Scope::Read),
            Caller::Token(t) => Some(t.scope),
        }
    }

    fn scope_name(&self) -> String {
        match self {
            Caller::Token(t) => format!("the token `{}` has `{}`", t.name, t.scope),
            Caller::SignedUrl => "a signed URL grants `read`".into(),
            _ => "anonymous requests may only read".into(),
        }
    }
}

/// The token set in force, indexed by hash.
#[derive(Default)]
pub struct Tokens {
    by_hash: HashMap<TokenHash, Arc<TokenRecord>>,
    list: Vec<Arc<TokenRecord>>,
}

impl Tokens {
    pub fn new(records: Vec<TokenRecord>) -> Tokens {
        let list: Vec<Arc<TokenRecord>> = records.into_iter().map(Arc::new).collect();
        let by_hash = list
            .iter()
            .filter_map(|r| TokenHash::from_hex(&r.hash).map(|h| (h, Arc::clone(r))))
            .collect();
        Tokens { by_hash, list }
    }

    pub fn records(&self) -> impl Iterator<Item = &TokenRecord> {
        self.list.iter().map(|r| &**r)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

/// Why a replica in S3 mode without `auth.url_secret` neither makes nor accepts signed URLs.
pub const SIGNED_URLS_OFF: &str = "signed URLs are off on this server: with storage.backend = \"s3\" set auth.url_secret, the same on every replica";

/// Tokens, the signed-URL key, quotas and the audit log, shared by every worker.
pub struct Auth {
    api_token: Option<String>,
    anonymous: Anonymous,
    /// None in S3 mode without `auth.url_secret`: signed URLs are off.
    url_key: Option<signed::UrlKey>,
    tokens: RwLock<Arc<Tokens>>,
    pub store: store::TokenStore,
    pub quotas: quota::Quotas,
    pub audit: audit::Audit,
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Auth {
    /// Reads the tokens kept in the data dir and the signed-URL key (made there when the
    /// configuration has none), and opens the audit log.
    pub fn open(config: &Config) -> Result<Auth, String> {
        let store = store::TokenStore::local(&config.data_dir)?;
        let secret = match &config.auth.url_secret {
            Some(s) => Some(s.clone().into_bytes()),
            None if config.storage.backend == crate::config::StorageBackend::S3 => {
                log::warn!(
                    "signed URLs are off: storage.backend = \"s3\" needs auth.url_secret, the same on every replica"
                );
                None
            }
            None => Some(store::url_secret(&config.data_dir)?),
        };
        let records = store.read_local()?;
        let audit = audit::Audit::open(config.audit.path.as_deref())
            .map_err(|e| format!("cannot open audit.path: {e}"))?;
        Ok(Auth {
            api_token: config.api_token.clone(),
            anonymous: config.auth.anonymous,
            url_key: secret.as_deref().map(signed::UrlKey::new),
            tokens: RwLock::new(Arc::new(Tokens::new(records))),
            quotas: quota::Quotas::new(&config.data_dir),
            store,
            audit,
            trusted_proxies: config.trusted_proxies.clone(),
        })
    }

    /// The token set in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the token set in force (after a change, or a reread of the bucket).
    pub fn set_tokens(&self, records: Vec<TokenRecord>) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Tokens::new(records));
    }

    /// Whether any token exists (`api_token` or one made): until then everything is open.
    pub fn any_tokens(&self) -> bool {
        self.api_token.is_some() || !self.tokens().list.is_empty()
    }

    /// The key of signed URLs, or why there is none.
    pub fn url_key(&self) -> Result<&signed::UrlKey, &'static str> {
        self.url_key.as_ref().ok_or(SIGNED_URLS_OFF)
    }

    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.trusted_proxies
    }

    /// Who sent `authorization` (the header's value, if any), at `now`.
    pub fn identify(&self, authorization: Option<&[u8]>, now: u64) -> Result<Caller, ApiError> {
        let tokens = self.tokens();
        if self.api_token.is_none() && tokens.list.is_empty() {
            return Ok(Caller::Open);
        }
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let given = guard::credential(value).ok_or_else(|| {
            unauthorized(
                "the Authorization header is malformed: send `Authorization: Bearer <token>` (or the token as a Basic password)",
            )
        })?;
        if let Some(api) = &self.api_token {
            if crate::util::secret_eq(&given, api) {
                return Ok(Caller::ApiToken);
            }
        }
        if !token::well_formed(&given) {
            return Err(unauthorized(format!(
                "the token is malformed: velox-cache tokens start with `{}` and have {} characters",
                token::PREFIX,
                token::PREFIX.len() + 43
            )));
        }
        let record = tokens
            .by_hash
            .get(&TokenHash::of(&given))
            .ok_or_else(|| unauthorized("the token is not known here (never made, or deleted)"))?;
        if record.revoked_at.is_some() {
            return Err(unauthorized(format!(
                "the token `{}` has been revoked",
                record.name
            )));
        }
        if record.expires_at.is_some_and(|t| now >= t) {
            return Err(unauthorized(format!(
                "the token `{}` has expired",
                record.name
            )));
        }
        Ok(Caller::Token(Arc::clone(record)))
    }

    /// Whether `caller` may use a route that needs `need` at `path`.
    pub fn permit(&self, need: table::Need, caller: &Caller, path: &str) -> Result<(), ApiError> {
        use table::Need;
        let wanted = match need {
            Need::Open => return Ok(()),
            _ if matches!(caller, Caller::Open) => return Ok(()),
            Need::Read => Scope::Read,
            // Anonymous callers never reach a build once tokens exist; read tokens may ask for
            // a cached binary (the handler refuses to start a build for them).
            Need::Build => Scope::Read,
            Need::Admin => Scope::Admin,
        };
        let anonymous = matches!(caller, Caller::Anonymous);
        let missing = || {
            unauthorized(format!(
                "this route needs a token with the `{wanted}` scope: send `Authorization: Bearer <token>`"
            ))
        };
        if anonymous && need != Need::Read {
            return Err(missing());
        }
        match caller.scope(self.anonymous) {
            None => return Err(missing()),
            Some(s) if s < wanted => {
                return Err(forbidden(format!(
                    "this route needs the `{wanted}` scope; {}",
                    caller.scope_name()
                )))
            }
            Some(_) => {}
        }
        if let Caller::Token(t) = caller {
            if !t.channels.is_empty() {
                match table::channel_of(path) {
                    Some(name) if !t.allows_channel(name) => {
                        return Err(forbidden(format!(
                            "the token `{}` is limited to the channels {} and may not use `{name}`",
                            t.name,
                            t.channels.join(", ")
                        )))
                    }
                    Some(_) => {}
                    None if need != Need::Read => {
                        return Err(forbidden(format!(
                            "the token `{}` is limited to the channels {}: this route names none",
                            t.name,
                            t.channels.join(", ")
                        )))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// Whether `caller` may start a Velox build (a miss): the build scope.
    pub fn may_build(&self, caller: &Caller) -> Result<(), ApiError> {
        match caller.scope(self.anonymous) {
            Some(s) if s >= Scope::Build => Ok(()),
            _ if matches!(caller, Caller::Anonymous) => Err(unauthorized(
                "starting a build needs a token with the `build` scope: send `Authorization: Bearer <token>`",
            )),
            _ => Err(forbidden(format!(
                "this binary is not cached and starting a build needs the `build` scope; {}",
                caller.scope_name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
