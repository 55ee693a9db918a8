//! What proxy mode does at the hop (docs/http-api.md, "Proxy mode"), through the real binary in
//! front of the real PHP app: `Via` and loops (a start refused, a request answered 508, a real
//! loop through nginx), forwarding headers and `trusted_proxies`, the build API closed to
//! everyone but token holders, the token on cleanup, and CORS on binaries.

mod support;

use std::io::Write;

use serde_json::{json, Value};
use support::nginx::NginxProxy;
use support::php::PhpApp;
use support::process::free_port;
use support::*;

fn start_with(f: impl FnOnce(Options) -> Options) -> (PhpApp, Harness) {
    let php = PhpApp::start();
    let upstream = php.url.clone();
    let h = Harness::start_with(|o| f(o.env("VELOX_CACHE_UPSTREAM", &upstream)));
    (php, h)
}

async fn echo(h: &Harness, headers: &[(&str, &str)]) -> Value {
    let resp = get(&h.url("/echo"), headers).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    resp.json()["headers"].clone()
}

#[actix_web::test]
async fn a_request_that_already_passed_through_is_a_508() {
    let (_php, h) = start_with(|o| o);
    for via in ["1.1 velox-cache", "1.1 lb.example, 1.0 velox-cache"] {
        get(&h.url("/echo"), &[("via", via)])
            .await
            .assert_error(508, "loop_detected");
    }
    // Another proxy's entry is kept, and ours follows it.
    let seen = echo(&h, &[("via", "1.1 lb.example")]).await;
    assert_eq!(seen["via"], "1.1 lb.example, 1.1 velox-cache");
    assert_eq!(
        metric(h.server(), "velox_proxy_requests_total{outcome=\"error\"}").await,
        2.0
    );
}

#[actix_web::test]
async fn a_loop_through_another_proxy_ends_at_the_first_round() {
    // velox-cache → nginx → velox-cache: nginx passes Via on, so the second arrival is refused.
    let nginx_port = free_port();
    let h = Harness::start_with(|o| {
        o.env(
            "VELOX_CACHE_UPSTREAM",
            &format!("http://127.0.0.1:{nginx_port}"),
        )
    });
    let _nginx = NginxProxy::start(nginx_port, &h.server().public);
    let resp = get(&h.url("/anything"), &[]).await;
    let v = resp.assert_error(508, "loop_detected");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("upstream")),
        "{v}"
    );
    // One trip round: the outer request was passed (nginx's answer), the inner one refused.
    assert_eq!(
        metric(h.server(), "velox_proxy_requests_total{outcome=\"error\"}").await,
        1.0
    );
    assert_eq!(
        metric(h.server(), "velox_proxy_requests_total{outcome=\"passed\"}").await,
        1.0
    );
}

#[test]
fn an_upstream_that_is_the_listen_address_stops_the_start() {
    let port = free_port();
    let data = tempfile::tempdir().expect("dir");
    let data_dir = format!("--data-dir={}", data.path().display());
    for (listen, upstream) in [
        (
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        ),
        (
            format!("0.0.0.0:{port}"),
            format!("http://127.0.0.1:{port}/"),
        ),
        (
            format!("0.0.0.0:{port}"),
            format!("http://localhost:{port}"),
        ),
    ] {
        let (code, _, stderr) = server::run(
            &[
                "serve",
                &format!("--listen={listen}"),
                &format!("--upstream={upstream}"),
                &data_dir,
            ],
            &[],
        );
        assert_eq!(code, 2, "{listen} / {upstream}: {stderr}");
        assert!(stderr.contains("invalid value for `upstream`"), "{stderr}");
        assert!(stderr.contains("`listen`"), "{stderr}");
    }
    // Another port is fine (`config` only checks and prints).
    let (code, out, stderr) = server::run(
        &[
            "config",
            &format!("--listen=0.0.0.0:{port}"),
            &format!("--upstream=http://127.0.0.1:{}", port.wrapping_add(1)),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(out.contains("upstream = "), "{out}");
}

/// What a client claims about itself and the way it came.
const CLAIMS: &[(&str, &str)] = &[
    ("x-forwarded-for", "203.0.113.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "shop.example"),
    ("x-forwarded-port", "443"),
    ("forwarded", "for=203.0.113.9;proto=https"),
    ("x-real-ip", "203.0.113.9"),
    ("true-client-ip", "203.0.113.9"),
];

#[actix_web::test]
async fn an_untrusted_client_cannot_claim_an_address_or_https() {
    // The peer (127.0.0.1) is not in the list: as if a load balancer elsewhere were trusted.
    let (_php, h) = start_with(|o| o.env("VELOX_CACHE_TRUSTED_PROXIES", "10.0.0.0/8"));
    let seen = echo(&h, CLAIMS).await;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    let host = h.server().public.trim_start_matches("http://").to_owned();
    assert_eq!(seen["x-forwarded-host"], host.as_str());
    for gone in [
        "x-forwarded-port",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
    ] {
        assert!(seen.get(gone).is_none(), "{gone} reached PHP: {seen}");
    }
}

#[actix_web::test]
async fn a_trusted_balancer_keeps_its_forwarding_headers() {
    // The test plays a TLS-terminating load balancer on loopback.
    let (_php, h) = start_with(|o| o.env("VELOX_CACHE_TRUSTED_PROXIES", "192.0.2.0/24, 127.0.0.1"));
    let seen = echo(&h, CLAIMS).await;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(seen["x-forwarded-port"], "443");
    assert_eq!(seen["forwarded"], "for=203.0.113.9;proto=https");
    assert_eq!(seen["x-real-ip"], "203.0.113.9");
    // A trusted peer that sends none gets velox-cache's own.
    let bare = echo(&h, &[]).await;
    assert_eq!(bare["x-forwarded-for"], "127.0.0.1");
    assert_eq!(bare["x-forwarded-proto"], "http");
}

#[test]
fn trusted_proxies_come_from_the_file_or_the_environment_and_bad_ones_stop_the_start() {
    let tmp = tempfile::tempdir().expect("dir");
    let file = tmp.path().join("config.toml");
    let mut f = std::fs::File::create(&file).expect("file");
    writeln!(
        f,
        "trusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\"]"
    )
    .expect("write");
    let shown = file.display().to_string();
    let (code, out, err) = server::run(&["config", "--config", &shown], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"trusted_proxies = ["10.0.0.0/8", "fd00::/8", "192.0.2.1/32"]"#),
        "{out}"
    );
    let (code, out, err) = server::run(
        &["config"],
        &[("VELOX_CACHE_TRUSTED_PROXIES", "10.1.2.3/8,::1")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#"trusted_proxies = ["10.0.0.0/8", "::1/128"]"#),
        "{out}"
    );
    let (code, out, _) = server::run(&["config"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("trusted_proxies = []"), "{out}");

    for bad in ["10.0.0.0/33", "10.0.0/8", "lb.example", "10.0.0.0/8,,nope"] {
        let (code, _, err) = server::run(&["config"], &[("VELOX_CACHE_TRUSTED_PROXIES", bad)]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains("invalid value for `trusted_proxies`"),
            "{bad}: {err}"
        );
    }
    std::fs::write(&file, "trusted_proxies = [\"10.0.0.0/40\"]\n").expect("write");
    let (code, _, err) = server::run(&["config", "--config", &shown], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`trusted_proxies`"), "{err}");
}

#[actix_web::test]
async fn in_proxy_mode_the_build_api_is_closed_without_a_token() {
    let (_php, h) = start_with(|o| o);
    let body = build_request("linux", "amd64");
    post_json(&h.builds_url(), &body, &[])
        .await
        .assert_error(404, "not_found");
    post_json(&h.builds_url(), &body, &[("authorization", "Bearer guess")])
        .await
        .assert_error(404, "not_found");
    assert_eq!(h.velox.calls(), 0);
    // The PHP app's way still works.
    let via_app = post_json(
        &h.url("/api/v1/binary/generate"),
        &json!({"plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"}]}),
        &[],
    )
    .await;
    assert_eq!(via_app.status, 200);
    assert_eq!(via_app.header("x-cache-status"), Some("MISS"));
}

#[actix_web::test]
async fn in_proxy_mode_the_build_api_needs_the_token() {
    let (_php, h) = start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "lb-token"));
    let body = build_request("linux", "amd64");
    post_json(&h.builds_url(), &body, &[])
        .await
        .assert_error(401, "unauthorized");
    post_json(&h.builds_url(), &body, &[("authorization", "Bearer wrong")])
        .await
        .assert_error(401, "unauthorized");
    let built = post_json(
        &h.builds_url(),
        &body,
        &[("authorization", "Bearer lb-token")],
    )
    .await;
    assert_eq!(
        built.status,
        200,
        "{}",
        String::from_utf8_lossy(&built.body)
    );
    assert_eq!(built.header("x-cache-status"), Some("MISS"));
}

#[actix_web::test]
async fn cleanup_needs_the_token_when_one_is_set() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "admin-token"));
    let cleanup = |token: Option<&'static str>| {
        let mut req = client().post(h.server().admin_url("/v1/cache/cleanup"));
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        async move {
            let mut res = req.send_body("").await.expect("sent");
            let body = res.body().await.expect("body");
            Resp {
                status: res.status().as_u16(),
                headers: res.headers().clone(),
                body,
            }
        }
    };
    cleanup(None).await.assert_error(401, "unauthorized");
    cleanup(Some("nope"))
        .await
        .assert_error(401, "unauthorized");
    let done = cleanup(Some("admin-token")).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.json()["evicted"], 0);

    // Without a token configured, cleanup stays open (the admin listener is loopback).
    let open = Harness::start();
    let resp = client()
        .post(open.server().admin_url("/v1/cache/cleanup"))
        .send_body("")
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
}

#[actix_web::test]
async fn a_cors_answer_exposes_our_headers_to_the_browser() {
    let (_php, h) = start_with(|o| o);
    let url = h.url("/api/v1/binary/generate?spa_cors=1");
    let body = json!({"plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"}]});
    for expected in ["MISS", "HIT"] {
        let resp = post_json(&url, &body, &[("origin", "https://spa.example")]).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.header("x-cache-status"), Some(expected));
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some("https://spa.example")
        );
        let exposed: Vec<String> = resp
            .headers
            .get_all("access-control-expose-headers")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        for name in [
            "x-app",
            "x-cache-status",
            "x-cache-age",
            "x-build-time",
            "x-build-request-id",
            "x-velox-cache-key",
            "etag",
            "content-disposition",
            "content-location",
            "repr-digest",
        ] {
            assert!(exposed.iter().any(|t| t == name), "{name}: {exposed:?}");
        }
        // The app's `Vary: Origin` kept beside the cache's own `Vary: Accept-Encoding`.
        let vary: Vec<String> = resp
            .headers
            .get_all("vary")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        assert!(vary.contains(&"origin".to_owned()), "{vary:?}");
        assert!(vary.contains(&"accept-encoding".to_owned()), "{vary:?}");
    }
    // Without the app's CORS, nothing is exposed.
    let plain = post_json(&h.url("/api/v1/binary/generate"), &body, &[]).await;
    assert_eq!(plain.status, 200);
    assert!(plain.header("access-control-expose-headers").is_none());
}
