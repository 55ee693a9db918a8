//! Every error velox-cache answers itself is docs/http-api.md's JSON, on both listeners: bad query
//! strings, wrong methods (405 with `Allow`), unknown routes, with and without an upstream.

mod support;

use support::*;

async fn send(method: &str, url: &str) -> Resp {
    request(method, url, None).await
}

#[actix_web::test]
async fn the_admin_listener_answers_json() {
    let h = Harness::start();
    let admin = |p: &str| h.server().admin_url(p);

    for query in ["limit=abc", "limit=-1", "limit=1&limit=2x"] {
        let v = get(&admin(&format!("/v1/cache?{query}")), &[])
            .await
            .assert_error(400, "invalid_request");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("query string")),
            "{query}: {v}"
        );
    }
    get(&admin("/nope"), &[])
        .await
        .assert_error(404, "not_found");
    get(&admin("/v1/cache/not-a-key"), &[])
        .await
        .assert_error(404, "not_found");

    for (method, path, allow) in [
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/readyz", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("POST", "/v1/cache", "GET, HEAD"),
        ("DELETE", "/v1/cache/stats", "GET, HEAD"),
        ("GET", "/v1/cache/cleanup", "POST"),
        (
            "PUT",
            &format!("/v1/cache/{}", "a".repeat(64)),
            "GET, HEAD, DELETE",
        ),
    ] {
        let resp = send(method, &admin(path)).await;
        resp.assert_error(405, "method_not_allowed");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
    }
    // HEAD is as good as GET for probes.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/cache/stats"] {
        let resp = send("HEAD", &admin(path)).await;
        assert_eq!(resp.status, 200, "HEAD {path}");
        assert!(resp.body.is_empty());
    }
}

#[actix_web::test]
async fn the_public_listener_answers_json() {
    let h = Harness::start();
    for (method, path, allow) in [
        ("PUT", "/_velox/v1/builds", "GET, HEAD, POST"),
        ("DELETE", "/_velox/v1/builds", "GET, HEAD, POST"),
        (
            "POST",
            &format!("/_velox/v1/artifacts/{}", "0".repeat(64)),
            "GET, HEAD",
        ),
    ] {
        let resp = send(method, &h.url(path)).await;
        resp.assert_error(405, "method_not_allowed");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
    }
    for path in ["/", "/_velox", "/_velox/v1/nope", "/index.php?x=1"] {
        get(&h.url(path), &[]).await.assert_error(404, "not_found");
    }
    get(&h.url("/_velox/v1/artifacts/not-hex"), &[])
        .await
        .assert_error(404, "not_found");
}
