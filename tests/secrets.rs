//! Secrets stay out of what velox-cache shows (docs/configuration.md, "Secrets"): user names and
//! passwords in the Velox URL, the upstream, GOPROXY and the S3 endpoint are masked in
//! `velox-cache config`, in the log and in error bodies; an `api_token` that could never match
//! an `Authorization` header stops the start, naming the key and not the token.

mod support;

use serde_json::json;
use support::process::free_port;
use support::server::run;
use support::*;

/// Every user name and password the tests put in a URL.
const SECRETS: [&str; 8] = [
    "veloxuser",
    "veloxpass",
    "upuser",
    "uppass",
    "gpuser",
    "gppass",
    "s3user",
    "s3pass",
];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows `{s}`:\n{text}");
    }
}

#[test]
fn config_masks_user_names_and_passwords_in_every_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("velox-cache.toml");
    std::fs::write(
        &file,
        r#"
server_url = "https://veloxuser:veloxpass@velox.example:9000"
upstream = "http://upuser:uppass@php.example:8081/app"
api_token = "file-token"
"#,
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let (code, out, err) = run(
        &["config", "--config", f],
        &[
            (
                "VELOX_CACHE_RESOLVE__GOPROXY",
                "https://gpuser:gppass@goproxy.example,https://proxy.golang.org,direct",
            ),
            ("VELOX_CACHE_STORAGE__BACKEND", "s3"),
            ("VELOX_CACHE_STORAGE__S3__BUCKET", "builds"),
            (
                "VELOX_CACHE_STORAGE__S3__ENDPOINT",
                "https://s3user:s3pass@minio.example:9000",
            ),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_no_secret("config", &out);
    assert_no_secret("config's stderr", &err);
    assert!(!out.contains("file-token"), "{out}");
    for shown in [
        r#"server_url = "https://***:***@velox.example:9000""#,
        r#"upstream = "http://***:***@php.example:8081/app""#,
        r#"goproxy = "https://***:***@goproxy.example,https://proxy.golang.org,direct""#,
        r#"endpoint = "https://***:***@minio.example:9000""#,
        r#"api_token = "********""#,
    ] {
        assert!(out.contains(shown), "missing {shown}:\n{out}");
    }

    // A token alone in the user information, and the command line's form.
    let (code, out, err) = run(
        &[
            "config",
            "--server-url",
            "http://veloxpass@127.0.0.1:9000/",
            "--upstream",
            "http://upuser:uppass@[::1]:8081",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_no_secret("config", &out);
    assert!(
        out.contains(r#"server_url = "http://***@127.0.0.1:9000/""#),
        "{out}"
    );
    assert!(
        out.contains(r#"upstream = "http://***:***@[::1]:8081""#),
        "{out}"
    );
}

#[test]
fn a_rejected_url_is_named_without_its_password() {
    // An upstream that is velox-cache's own listener is refused, and the message quotes it.
    let port = free_port();
    let (code, out, err) = run(
        &["config"],
        &[
            ("VELOX_CACHE_LISTEN", &format!("127.0.0.1:{port}")),
            (
                "VELOX_CACHE_UPSTREAM",
                &format!("http://upuser:uppass@127.0.0.1:{port}"),
            ),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("`upstream`"), "{err}");
    assert!(err.contains("VELOX_CACHE_UPSTREAM"), "{err}");
    assert!(err.contains(&format!("***:***@127.0.0.1:{port}")), "{err}");
    assert_no_secret("the refusal", &err);
}

#[test]
fn an_api_token_that_is_not_visible_ascii_stops_the_start() {
    for (token, what) in [
        ("abc def", "a space"),
        ("abcdef\n", "a trailing newline"),
        ("abc\tdef", "a tab"),
        ("abc\u{7f}def", "DEL"),
        ("abcdéf", "non-ASCII"),
    ] {
        // From the environment: the message names the variable. The environment's values lose
        // the whitespace around them (figment trims every variable), so a trailing newline
        // there is no error.
        let (code, out, err) = run(&["config"], &[("VELOX_CACHE_API_TOKEN", token)]);
        if token.trim() != token {
            assert_eq!(code, 0, "{what}: {err}");
            assert!(out.contains(r#"api_token = "********""#), "{out}");
            assert!(!out.contains("abc"), "{out}");
        } else {
            assert_eq!(code, 2, "{what}: {out}");
            assert!(err.contains("`api_token`"), "{what}: {err}");
            assert!(err.contains("VELOX_CACHE_API_TOKEN"), "{what}: {err}");
            assert!(err.contains("visible ASCII"), "{what}: {err}");
            assert!(!err.contains("abc"), "{what}: the token is echoed: {err}");
            assert!(out.is_empty(), "{what}: {out}");
        }

        // From a file: the message names the file; `serve` refuses it too.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("velox-cache.toml");
        let quoted = toml::Value::String(token.into()).to_string();
        std::fs::write(&file, format!("api_token = {quoted}\n")).expect("write");
        let f = file.to_str().expect("utf-8");
        let data = dir.path().join("data");
        let (code, _, err) = run(
            &[
                "serve",
                "--config",
                f,
                "--listen=127.0.0.1:0",
                "--admin-listen=127.0.0.1:0",
                &format!("--data-dir={}", data.display()),
                &format!("--artifact-root={}", dir.path().display()),
            ],
            &[],
        );
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains("`api_token`"), "{what}: {err}");
        assert!(err.contains(f), "{what}: {err}");
        assert!(!err.contains("abc"), "{what}: the token is echoed: {err}");
        assert!(!data.exists(), "{what}: nothing was started");
    }
    // Every visible ASCII character is fine.
    let visible: String = (0x21u8..=0x7e).map(char::from).collect();
    let (code, out, err) = run(&["config"], &[("VELOX_CACHE_API_TOKEN", &visible)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#"api_token = "********""#), "{out}");
}

#[actix_web::test]
async fn the_log_and_error_bodies_show_no_password_of_velox_goproxy_or_the_upstream() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Nothing listens on these.
    let (velox, goproxy, upstream) = (free_port(), free_port(), free_port());
    let opts = Options::new(
        &tmp.path().join("data"),
        &format!("http://veloxuser:veloxpass@127.0.0.1:{velox}"),
        tmp.path(),
    )
    .env(
        "VELOX_CACHE_RESOLVE__GOPROXY",
        &format!("http://gpuser:gppass@127.0.0.1:{goproxy}"),
    )
    .env(
        "VELOX_CACHE_UPSTREAM",
        &format!("http://upuser:uppass@127.0.0.1:{upstream}"),
    )
    .env("VELOX_CACHE_API_TOKEN", "the-token");
    let server = Server::start(&opts);

    // A floating tag: the proxy is asked first, then Velox.
    let floating = json!({
        "request_id": "b66d5617-64dd-419b-a68b-b002938320ab",
        "target_platform": {"os": "linux", "arch": "amd64"},
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "latest"}]
    });
    let resp = post_json(
        &server.url("/_velox/v1/builds"),
        &floating,
        &[("authorization", "Bearer the-token")],
    )
    .await;
    resp.assert_error(502, "velox_unavailable");
    assert_no_secret(
        "the build's error body",
        &String::from_utf8_lossy(&resp.body),
    );

    // Anything else goes to the upstream.
    let resp = get(&server.url("/index.php?token=client-secret"), &[]).await;
    resp.assert_error(502, "upstream_unavailable");
    assert_no_secret(
        "the proxy's error body",
        &String::from_utf8_lossy(&resp.body),
    );

    let log = server.log_text();
    assert_no_secret("the log", &log);
    for (shown, what) in [
        (
            format!("Velox at http://***:***@127.0.0.1:{velox}"),
            "the start",
        ),
        (
            format!("http://***:***@127.0.0.1:{goproxy}/github.com"),
            "the failed resolution",
        ),
        (
            format!("upstream http://***:***@127.0.0.1:{upstream}"),
            "the unreachable upstream",
        ),
    ] {
        assert!(log.contains(&shown), "{what}: no `{shown}` in\n{log}");
    }
}

#[actix_web::test]
async fn the_log_and_error_bodies_show_no_password_of_the_s3_endpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let velox = FakeVelox::start(&tmp.path().join("velox-out"));
    let bucket = free_port();
    let opts = Options::new(&tmp.path().join("data"), &velox.url, &velox.dir)
        .env("VELOX_CACHE_STORAGE__BACKEND", "s3")
        .env("VELOX_CACHE_STORAGE__S3__BUCKET", "builds")
        .env(
            "VELOX_CACHE_STORAGE__S3__ENDPOINT",
            &format!("http://s3user:s3pass@127.0.0.1:{bucket}"),
        )
        .env("VELOX_CACHE_STORAGE__S3__ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test-key-id")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret");
    let server = Server::start(&opts);

    let resp = post_json(
        &server.url("/_velox/v1/builds"),
        &build_request("linux", "amd64"),
        &[],
    )
    .await;
    assert_no_secret("the build's answer", &String::from_utf8_lossy(&resp.body));
    let ready = get(&server.admin_url("/readyz"), &[]).await;
    assert_no_secret("/readyz", &String::from_utf8_lossy(&ready.body));

    let log = server.log_text();
    assert_no_secret("the log", &log);
    assert!(!log.contains("test-secret"), "{log}");
    let masked = format!("http://***:***@127.0.0.1:{bucket}");
    assert!(
        log.contains(&format!("at {masked}")),
        "the start names the endpoint:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("bucket") && l.contains(&format!("{masked}/builds"))),
        "a failed bucket request names its URL, masked:\n{log}"
    );
}

#[test]
fn a_file_that_does_not_parse_is_reported_without_quoting_its_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("velox-cache.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8080\"\napi_token = \"s3cret-token\nserver_url = \"http://veloxuser:veloxpass@velox:9000\"\n",
    )
    .expect("write");
    let (code, out, err) = run(&["config", "--config", file.to_str().expect("utf-8")], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("TOML parse error at line 2"), "{err}");
    assert!(!err.contains("s3cret-token"), "{err}");
    assert_no_secret("the parse error", &err);
}
