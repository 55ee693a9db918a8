//! In-process hot paths of a hit, timed over many iterations: parsing a build request, its
//! canonical key, and the range/conditional decision on a request's headers.
//!
//! ```sh
//! cargo bench --bench hot_paths
//! ```
//! (The sled lookup at 1,000,000 entries is in `benches/metadata.rs`.)

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use actix_web::http::header::{EntityTag, HttpDate};
use actix_web::test::TestRequest;
use velox_cache::builds::BuildRequest;
use velox_cache::http::artifact::{plan, Plan};

#[path = "support/timing.rs"]
mod timing;

/// Runs `f` in batches of 1,000 for about a second; prints the median batch's time per call.
fn bench(name: &str, f: impl FnMut()) {
    timing::bench(name, 1_000, f);
}

fn request(plugins: usize) -> Vec<u8> {
    let plugins: Vec<serde_json::Value> = (0..plugins)
        .map(|i| serde_json::json!({"module_name": format!("github.com/roadrunner-server/p{i}/v5"), "tag": "v5.2.7"}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "request_id": "b66d5617-64dd-419b-a68b-b002938320ab",
        "target_platform": {"os": "linux", "arch": "amd64"},
        "rr_version": "v2025.1.2",
        "plugins": plugins,
    }))
    .unwrap_or_default()
}

fn main() {
    for n in [3, 50] {
        let body = request(n);
        bench(
            &format!("parse + validate a request with {n} plugins"),
            || {
                black_box(BuildRequest::parse(black_box(&body)).ok());
            },
        );
        if let Ok((req, _)) = BuildRequest::parse(&body) {
            bench(&format!("canonical key of {n} plugins"), || {
                black_box(black_box(&req).cache_key());
            });
        }
    }
    let etag = EntityTag::new_strong(
        "61f24742deccda2358b25be64f53afb3253bae17d24df0fe2226c93f5ac54f99".into(),
    );
    let modified = HttpDate::from(SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_800_000));
    let size = 64 * 1024 * 1024;
    let cases = [
        ("no range", TestRequest::get().to_http_request()),
        (
            "Range: bytes=0-1023",
            TestRequest::get()
                .insert_header(("range", "bytes=0-1023"))
                .to_http_request(),
        ),
        (
            "Range + If-Range (ETag)",
            TestRequest::get()
                .insert_header(("range", "bytes=1048576-"))
                .insert_header(("if-range", etag.to_string()))
                .to_http_request(),
        ),
        (
            "If-None-Match (3 tags)",
            TestRequest::get()
                .insert_header(("if-none-match", format!("\"a\", \"b\", {etag}")))
                .to_http_request(),
        ),
    ];
    for (name, req) in &cases {
        let p = plan(req, &etag, modified, size, true);
        assert!(!matches!(p, Plan::Unsatisfiable));
        bench(&format!("range/conditional decision, {name}"), || {
            black_box(plan(black_box(req), &etag, modified, size, true));
        });
    }
}
