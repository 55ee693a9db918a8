//! The scope checks, route by route, without HTTP (tests/access.rs does them over HTTP).

use super::table::{need, Listener, Need};
use super::token::{Scope, Secret, TokenRecord};
use super::*;
use actix_web::http::Method;

fn auth_with(records: Vec<TokenRecord>, api: Option<&str>, anonymous: Anonymous) -> Auth {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        api_token: api.map(str::to_owned),
        ..Config::default()
    };
    config.auth.anonymous = anonymous;
    let auth = Auth::open(&config).expect("auth");
    auth.set_tokens(records);
    auth
}

fn record(name: &str, scope: Scope, secret: &Secret) -> TokenRecord {
    TokenRecord {
        name: name.into(),
        hash: secret.hash().to_hex(),
        scope,
        channels: vec![],
        created_at: 0,
        expires_at: None,
        max_concurrent_builds: None,
        builds_per_hour: None,
        revoked_at: None,
    }
}

fn bearer(s: &str) -> Vec<u8> {
    format!("Bearer {s}").into_bytes()
}

#[test]
fn without_tokens_everything_is_open() {
    let auth = auth_with(vec![], None, Anonymous::None);
    let c = auth.identify(None, 0).expect("open");
    assert!(matches!(c, Caller::Open));
    let n = need(Listener::Admin, &Method::DELETE, "/v1/cache/x");
    assert!(auth.permit(n, &c, "/v1/cache/x").is_ok());
}

#[test]
fn each_bad_token_has_its_own_error() {
    let good = Secret::generate().expect("rng");
    let old = Secret::generate().expect("rng");
    let gone = Secret::generate().expect("rng");
    let mut expired = record("old", Scope::Read, &old);
    expired.expires_at = Some(10);
    let mut revoked = record("gone", Scope::Read, &gone);
    revoked.revoked_at = Some(5);
    let auth = auth_with(
        vec![record("ci", Scope::Build, &good), expired, revoked],
        None,
        Anonymous::Read,
    );
    let msg = |v: &[u8]| auth.identify(Some(v), 100).expect_err("refused").message;
    assert!(msg(b"Bearer nope").contains("malformed"));
    assert!(msg(b"Token abc").contains("malformed"));
    let unknown = Secret::generate().expect("rng");
    assert!(msg(&bearer(unknown.expose())).contains("not known"));
    assert!(msg(&bearer(old.expose())).contains("expired"));
    assert!(msg(&bearer(gone.expose())).contains("revoked"));
    assert!(matches!(
        auth.identify(Some(&bearer(good.expose())), 100),
        Ok(Caller::Token(_))
    ));
    // No refusal's message carries the secret (the good token is not refused).
    for s in [&old, &gone, &unknown] {
        assert!(!msg(&bearer(s.expose())).contains(s.expose()));
    }
}

#[test]
fn scopes_against_routes() {
    let r = Secret::generate().expect("rng");
    let b = Secret::generate().expect("rng");
    let a = Secret::generate().expect("rng");
    let auth = auth_with(
        vec![
            record("r", Scope::Read, &r),
            record("b", Scope::Build, &b),
            record("a", Scope::Admin, &a),
        ],
        Some("the-api-token"),
        Anonymous::Read,
    );
    let who = |s: &Secret| auth.identify(Some(&bearer(s.expose())), 0).expect("valid");
    let api = auth
        .identify(Some(b"Bearer the-api-token"), 0)
        .expect("api");
    let anon = auth.identify(None, 0).expect("anonymous");
    let check =
        |c: &Caller, l, m: Method, p: &str| auth.permit(need(l, &m, p), c, p).map_err(|e| e.code);
    use crate::error::ErrorCode::{Forbidden, Unauthorized};
    let del = "/v1/cache/abc";
    assert_eq!(
        check(&anon, Listener::Admin, Method::DELETE, del),
        Err(Unauthorized)
    );
    assert_eq!(
        check(&who(&r), Listener::Admin, Method::DELETE, del),
        Err(Forbidden)
    );
    assert_eq!(
        check(&who(&b), Listener::Admin, Method::DELETE, del),
        Err(Forbidden)
    );
    assert_eq!(
        check(&who(&a), Listener::Admin, Method::DELETE, del),
        Ok(())
    );
    assert_eq!(check(&api, Listener::Admin, Method::DELETE, del), Ok(()));
    let builds = "/_velox/v1/builds";
    assert_eq!(
        check(&anon, Listener::Public, Method::POST, builds),
        Err(Unauthorized)
    );
    assert_eq!(
        check(&who(&r), Listener::Public, Method::POST, builds),
        Ok(())
    );
    assert!(auth.may_build(&who(&r)).is_err());
    assert!(auth.may_build(&who(&b)).is_ok());
    let art = format!("/_velox/v1/artifacts/{}", "0".repeat(64));
    assert_eq!(check(&anon, Listener::Public, Method::GET, &art), Ok(()));
    let none = auth_with(
        auth.tokens().records().cloned().collect(),
        None,
        Anonymous::None,
    );
    let anon = none.identify(None, 0).expect("anonymous");
    assert_eq!(
        none.permit(need(Listener::Public, &Method::GET, &art), &anon, &art)
            .map_err(|e| e.code),
        Err(Unauthorized)
    );
    assert_eq!(
        Need::Open,
        need(Listener::Public, &Method::GET, "/anything")
    );
}
