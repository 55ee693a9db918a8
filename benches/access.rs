//! The added cost of access checking on a hit (docs/access.md), in process: what the guard does
//! for every request before the handler runs — the scope table's lookup, identifying the caller
//! (a bearer token hashed with SHA-256 and looked up among 1,000 tokens; `api_token`; a signed
//! URL's HMAC) and the scope check — timed over many iterations.
//!
//! ```sh
//! cargo bench --bench access
//! ```
//! The hit itself (key, sled lookup, blob open) is `velox_cache_lookup_duration_seconds` and
//! benches/hit_ttfb.sh; SPEC §12's budgets are in BENCHMARKS.md.

use std::hint::black_box;

use actix_web::http::Method;
use velox_cache::auth::table::{self, Listener};
use velox_cache::auth::token::{Scope, Secret, TokenRecord};
use velox_cache::auth::{unix_now, Auth};
use velox_cache::config::Config;

#[path = "support/timing.rs"]
mod timing;

/// Runs `f` in batches of 1,000 for about a second; prints the median batch's time per call.
fn bench(name: &str, f: impl FnMut()) {
    timing::bench(name, 1_000, f);
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        api_token: Some("bench-api-token-0123456789".into()),
        ..Config::default()
    };
    config.auth.url_secret = Some("bench-url-secret-0123456789".into());
    let auth = Auth::open(&config).expect("auth");
    let digest = "ab".repeat(32);
    let path = format!("/_velox/v1/artifacts/{digest}");
    let check = |authorization: Option<&[u8]>| {
        let need = table::need(Listener::Public, &Method::GET, &path);
        let caller = auth.identify(authorization, unix_now()).expect("caller");
        auth.permit(need, &caller, &path).expect("permitted");
    };

    bench("no token exists (everything open)", || {
        check(black_box(None));
    });

    let mut secrets = Vec::new();
    let records: Vec<TokenRecord> = (0..1000)
        .map(|i| {
            let secret = Secret::generate().expect("random");
            let r = TokenRecord {
                name: format!("t{i}"),
                hash: secret.hash().to_hex(),
                scope: Scope::Read,
                channels: if i % 2 == 0 {
                    vec!["team-*".into()]
                } else {
                    vec![]
                },
                created_at: 0,
                expires_at: None,
                max_concurrent_builds: None,
                builds_per_hour: None,
                revoked_at: None,
            };
            secrets.push(secret);
            r
        })
        .collect();
    auth.set_tokens(records);
    let header = format!("Bearer {}", secrets[500].expose());
    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("docker:{}", secrets[777].expose()))
        )
    };
    bench("anonymous read (1,000 tokens exist)", || {
        check(black_box(None));
    });
    bench(
        "bearer token among 1,000 (SHA-256 + lookup + scope)",
        || {
            check(black_box(Some(header.as_bytes())));
        },
    );
    bench(
        "Basic password among 1,000 (base64 + SHA-256 + lookup)",
        || {
            check(black_box(Some(basic.as_bytes())));
        },
    );
    let api = b"Bearer bench-api-token-0123456789".as_slice();
    bench("api_token (constant-time compare)", || {
        check(black_box(Some(api)));
    });
    let key = auth
        .url_key()
        .expect("a local data dir has a signed-URL key");
    let query = key.sign(&path, unix_now() + 3600);
    bench("signed URL (HMAC-SHA256 verify)", || {
        black_box(key.verify(black_box(&path), black_box(&query), unix_now())).expect("valid");
    });
    bench("scope table lookup alone", || {
        black_box(table::need(
            Listener::Public,
            &Method::GET,
            black_box(&path),
        ));
    });
}
