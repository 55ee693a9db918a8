//! `velox-cache token create|list|revoke` and `velox-cache url sign` (docs/access.md). With a
//! server holding the data dir they ask its admin listener (with `api_token`); otherwise they
//! work on the data dir's token file and key. `token create` and `url sign` print the secret
//! (or the URL) alone on standard output, so that `TOKEN=$(velox-cache token create …)` works.

use std::process::ExitCode;

use awc::http::Method;
use serde_json::{json, Value};

use super::{remote, TokenAction, UrlAction};
use crate::auth::token::{self, Scope, Secret, TokenRecord};
use crate::auth::{store::TokenStore, unix_now};
use crate::config::{Config, StorageBackend};
use crate::store::{Store, StoreError};

/// Whether a server holds the data dir (then the admin listener is asked).
fn held(config: &Config) -> Result<bool, String> {
    let dir = &config.data_dir;
    if !dir.join("meta").is_dir() {
        return Err(format!(
            "{} is not a velox-cache data dir with an index (no meta/); start the server once first",
            dir.display()
        ));
    }
    match Store::open(dir) {
        Ok(_) => Ok(false),
        Err(StoreError::Locked(_)) => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("velox-cache: {e}");
    ExitCode::FAILURE
}

fn offline_allowed(config: &Config) -> Result<(), String> {
    if config.storage.backend == StorageBackend::S3 {
        return Err("with storage.backend = \"s3\" the tokens live in the bucket: run this while a server holds the data dir".into());
    }
    Ok(())
}

/// The answer of the admin listener, or its JSON error as the message.
fn answered(result: Result<(u16, Value), String>, ok: u16) -> Result<Value, String> {
    let (status, body) = result?;
    if status == ok {
        return Ok(body);
    }
    let msg = body["message"].as_str().unwrap_or("no message");
    Err(format!("the server answered {status}: {msg}"))
}

pub fn run_token(config: &Config, action: &TokenAction) -> ExitCode {
    let remote = match held(config) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let done = match action {
        TokenAction::Create {
            name,
            scope,
            channels,
            expires,
            max_concurrent_builds,
            builds_per_hour,
        } => {
            let body = json!({"name": name, "scope": scope, "channels": channels,
                "expires_in": expires, "max_concurrent_builds": max_concurrent_builds,
                "builds_per_hour": builds_per_hour});
            if remote {
                answered(
                    remote::admin_call(config, Method::POST, "/v1/tokens", Some(body)),
                    201,
                )
                .and_then(|v| {
                    v["token"]
                        .as_str()
                        .map(|t| println!("{t}"))
                        .ok_or_else(|| "the server's answer has no token".to_string())
                })
            } else {
                offline_allowed(config).and_then(|()| create_offline(config, &body))
            }
        }
        TokenAction::List => {
            let list = if remote {
                answered(
                    remote::admin_call(config, Method::GET, "/v1/tokens", None),
                    200,
                )
                .map(|v| v["tokens"].as_array().cloned().unwrap_or_default())
            } else {
                TokenStore::local(&config.data_dir)
                    .and_then(|s| s.read_local())
                    .map(|r| r.iter().map(TokenRecord::public_json).collect())
            };
            list.map(|list| {
                for t in list {
                    let state = if !t["revoked_at"].is_null() {
                        "revoked"
                    } else if t["expires_at"].as_u64().is_some_and(|e| e <= unix_now()) {
                        "expired"
                    } else {
                        "live"
                    };
                    println!(
                        "{:<24} {:<6} {:<8} channels={} expires_at={}",
                        t["name"].as_str().unwrap_or_default(),
                        t["scope"].as_str().unwrap_or_default(),
                        state,
                        t["channels"]
                            .as_array()
                            .map(|c| c
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(","))
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "*".into()),
                        t["expires_at"]
                            .as_u64()
                            .map_or("never".into(), |e| e.to_string())
                    );
                }
            })
        }
        TokenAction::Revoke { name } => {
            if remote {
                answered(
                    remote::admin_call(config, Method::DELETE, &format!("/v1/tokens/{name}"), None),
                    204,
                )
                .map(|_| ())
            } else {
                offline_allowed(config).and_then(|()| revoke_offline(config, name))
            }
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn create_offline(config: &Config, body: &Value) -> Result<(), String> {
    let name = body["name"].as_str().unwrap_or_default();
    if !token::valid_name(name) {
        return Err(format!("invalid token name `{name}`"));
    }
    let scope = body["scope"]
        .as_str()
        .and_then(Scope::parse)
        .ok_or("the scope is one of read, build, admin")?;
    let channels: Vec<String> = body["channels"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = channels.iter().find(|g| !token::valid_channel_glob(g)) {
        return Err(format!("`{bad}` is not a channel-name glob"));
    }
    let now = unix_now();
    let expires_at = match body["expires_in"].as_str() {
        Some(t) => Some(
            now.saturating_add(
                humantime::parse_duration(t)
                    .map_err(|e| format!("invalid --expires: {e}"))?
                    .as_secs(),
            ),
        ),
        None => None,
    };
    // As the admin route does (docs/access.md): a quota of 0 is refused, not read as 1.
    let quota = |k: &str| match body[k].as_u64() {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or(format!(
                "invalid quota: --{} is at least 1 (leave it out for no limit)",
                k.replace('_', "-")
            )),
    };
    let (max_concurrent_builds, builds_per_hour) =
        (quota("max_concurrent_builds")?, quota("builds_per_hour")?);
    let store = TokenStore::local(&config.data_dir)?;
    let mut records = store.read_local()?;
    if records
        .iter()
        .any(|r| r.name == name && r.revoked_at.is_none())
    {
        return Err(format!("a token named `{name}` exists: revoke it first"));
    }
    let secret = Secret::generate().map_err(|_| "no randomness for a token".to_string())?;
    records.retain(|r| r.name != name);
    records.push(TokenRecord {
        name: name.to_owned(),
        hash: secret.hash().to_hex(),
        scope,
        channels,
        created_at: now,
        expires_at,
        max_concurrent_builds,
        builds_per_hour,
        revoked_at: None,
    });
    store.write_local(&records)?;
    println!("{}", secret.expose());
    Ok(())
}

fn revoke_offline(config: &Config, name: &str) -> Result<(), String> {
    let store = TokenStore::local(&config.data_dir)?;
    let mut records = store.read_local()?;
    let r = records
        .iter_mut()
        .find(|r| r.name == name && r.revoked_at.is_none())
        .ok_or_else(|| format!("no live token is named `{name}`"))?;
    r.revoked_at = Some(unix_now());
    store.write_local(&records)
}

pub fn run_url(config: &Config, action: &UrlAction) -> ExitCode {
    let UrlAction::Sign { path, expires } = action;
    let remote = match held(config) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let url = if remote {
        answered(
            remote::admin_call(
                config,
                Method::POST,
                "/v1/signed-urls",
                Some(json!({"path": path, "expires_in": expires})),
            ),
            200,
        )
        .and_then(|v| {
            v["url"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "the server's answer has no url".to_string())
        })
    } else {
        signed_offline(config, path, expires)
    };
    match url {
        Ok(u) => {
            println!("{u}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn signed_offline(config: &Config, path: &str, expires: &str) -> Result<String, String> {
    let secs = humantime::parse_duration(expires)
        .map_err(|e| format!("invalid --expires: {e}"))?
        .as_secs();
    if secs == 0 || secs > crate::auth::signed::MAX_LIFETIME_SECS {
        return Err("--expires is between 1s and 366 days".into());
    }
    let secret = match &config.auth.url_secret {
        Some(s) => s.clone().into_bytes(),
        None if config.storage.backend == crate::config::StorageBackend::S3 => {
            return Err(crate::auth::SIGNED_URLS_OFF.into())
        }
        None => crate::auth::store::url_secret(&config.data_dir)?,
    };
    let key = crate::auth::signed::UrlKey::new(&secret);
    crate::http::tokens::offline_signed_url(&key, path, secs).map(|(u, _)| u)
}
