//! Proxy mode (docs/http-api.md) through real HTTP: a real PHP app (`tests/php/router.php` under
//! `php -S`) behind the real binary, beside the stand-in Velox. Pass-through pages, streaming,
//! the velox-app build flow with encoded instructions, resumes with curl and wget, errors, and
//! the memory a large pass-through costs.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::php::PhpApp;
use support::*;

/// The PHP app, and a server proxying to it.
fn start_with(f: impl FnOnce(Options) -> Options) -> (PhpApp, Harness) {
    let php = PhpApp::start();
    let upstream = php.url.clone();
    let h = Harness::start_with(|o| f(o.env("VELOX_CACHE_UPSTREAM", &upstream)));
    (php, h)
}

fn start() -> (PhpApp, Harness) {
    start_with(|o| o)
}

/// A client that neither decodes bodies nor asks for encodings nor follows redirects: what it
/// shows is what came over the wire.
fn wire() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .disable_redirects()
        .finish()
}

async fn collect(req: awc::ClientRequest, body: Option<Vec<u8>>) -> Resp {
    let req = req.no_decompress();
    let sent = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    };
    let mut res = sent.expect("request sent");
    let body = res.body().limit(64 * 1024 * 1024).await.expect("body read");
    Resp {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

/// velox-app's generate request.
fn generate(tag: &str) -> Value {
    json!({
        "plugins": [
            {"module_name": "github.com/roadrunner-server/http/v5", "tag": tag},
            {"module_name": "github.com/roadrunner-server/grpc/v5", "tag": "v5.1.0"}
        ],
        "target_os": "linux",
        "target_arch": "amd64",
        "force_rebuild": false
    })
}

async fn post_generate(h: &Harness, query: &str, body: &Value) -> Resp {
    post_json(
        &h.url(&format!("/api/v1/binary/generate{query}")),
        body,
        &[],
    )
    .await
}

async fn proxy_metric(h: &Harness, outcome: &str) -> f64 {
    metric(
        h.server(),
        &format!("velox_proxy_requests_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

/// What `/stream` and `/big` send: 64 KiB blocks, each led by its number.
fn block(n: usize) -> Vec<u8> {
    let mut b = format!("block {n:08}\n").into_bytes();
    b.resize(65536, b'.');
    b
}

fn blocks(count: usize) -> Vec<u8> {
    (0..count).flat_map(block).collect()
}

#[actix_web::test]
async fn ordinary_requests_pass_through() {
    let (_php, h) = start();

    let page = get(&h.url("/"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-app"), Some("velox-app"));
    assert!(String::from_utf8_lossy(&page.body).contains("Hello from velox-app"));

    // A 3 MiB upload arrives whole, with its length, query and forwarding headers.
    let upload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let req = wire()
        .post(h.url("/echo?a=1&b=two%20words"))
        .insert_header(("content-type", "application/octet-stream"))
        .insert_header(("x-forwarded-for", "203.0.113.9"))
        .append_header(("x-multi", "first"))
        .append_header(("x-multi", "second"));
    let echo = collect(req, Some(upload.clone())).await;
    assert_eq!(echo.status, 200, "{:?}", echo.body);
    let echo = echo.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["query"], "a=1&b=two%20words");
    assert_eq!(echo["body_length"], upload.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&upload));
    let headers = &echo["headers"];
    assert_eq!(headers["content-length"], upload.len().to_string());
    assert!(headers.get("transfer-encoding").is_none(), "{headers}");
    // The test is no trusted proxy: its own X-Forwarded-For is replaced.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["via"], "1.1 velox-cache");
    assert_eq!(headers["x-forwarded-proto"], "http");
    let host = h.server().public.trim_start_matches("http://");
    assert_eq!(headers["host"], host, "the client's Host goes upstream");
    assert_eq!(headers["x-forwarded-host"], host);
    // PHP joins repeated fields; both values arrived.
    assert_eq!(headers["x-multi"], "first, second");
    // Nothing asked for an encoding, so nothing was asked upstream either.
    assert!(headers.get("accept-encoding").is_none(), "{headers}");

    // HEAD: the headers, no body.
    let head = head(&h.url("/"), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(proxy_metric(&h, "passed").await >= 3.0);
}

#[actix_web::test]
async fn hop_by_hop_headers_stop_at_the_proxy() {
    let (_php, h) = start();
    // Raw HTTP/1.1: awc would not let a test write its own Connection header.
    let addr = h.server().public.trim_start_matches("http://").to_owned();
    let echo = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(
            b"GET /echo HTTP/1.1\r\nHost: public.example\r\nConnection: close, X-Hop\r\n\
              X-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
              Proxy-Authorization: Basic eDp5\r\nX-Kept: yes\r\n\r\n",
        )
        .expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("read");
        answer
    })
    .join()
    .expect("raw client");
    let text = String::from_utf8_lossy(&echo);
    let body = text.split("\r\n\r\n").nth(1).expect("a body");
    let echo: Value = serde_json::from_str(body).expect("echo JSON");
    let headers = &echo["headers"];
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(headers["host"], "public.example");
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(headers.get(gone).is_none(), "{gone} reached PHP: {headers}");
    }
}

#[actix_web::test]
async fn first_bytes_arrive_before_the_upstream_finishes() {
    let (php, h) = start();
    // 64 blocks (4 MiB); PHP flushes 32 of them, then waits for the release file.
    for (n, variant) in ["", "&chunked=1"].iter().enumerate() {
        let release = format!("go-{n}");
        let url = h.url(&format!(
            "/stream?size=4194304&pause_after=32&release={release}{variant}"
        ));
        let mut res = wire()
            .get(url)
            .no_decompress()
            .send()
            .await
            .expect("stream head");
        assert_eq!(res.status(), 200);
        let mut got = Vec::new();
        let first_half = async {
            while got.len() < 32 * 65536 {
                let chunk = res.next().await.expect("more body").expect("chunk");
                got.extend_from_slice(&chunk);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), first_half)
            .await
            .expect("the first 2 MiB reach the client while PHP is still paused");
        // PHP cannot have sent more: it is waiting for us.
        assert_eq!(got.len(), 32 * 65536, "{variant}");
        php.release(&release);
        while let Some(chunk) = res.next().await {
            got.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(got.len(), 64 * 65536, "{variant}");
        assert!(
            got == blocks(64),
            "the streamed bytes are PHP's ({variant})"
        );
    }
}

#[actix_web::test]
async fn cookies_redirects_and_errors_pass_as_they_are() {
    let (_php, h) = start();

    let cookies = collect(wire().get(h.url("/cookies")), None).await;
    let set: Vec<&str> = cookies
        .headers
        .get_all("set-cookie")
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        set,
        [
            "session=abc123; Path=/; HttpOnly",
            "theme=dark; Path=/; Max-Age=3600"
        ]
    );

    let redirect = collect(wire().get(h.url("/redirect")), None).await;
    assert_eq!(redirect.status, 302, "returned, not followed");
    assert_eq!(redirect.header("location"), Some("/"));
    assert_eq!(&redirect.body[..], b"moved");

    // An error that carries X-Velox-Build is not an instruction: it passes untouched.
    let refused = collect(wire().get(h.url("/forbidden-build")), None).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("x-velox-build"), Some("true"));
    assert_eq!(
        refused.json(),
        json!({"error": "forbidden", "message": "no binaries for you"})
    );

    // PHP's own 404 comes back as PHP wrote it; an unknown /_velox/ path is ours.
    let missing = collect(wire().get(h.url("/nope")), None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["message"], "no route for /nope");
    get(&h.url("/_velox/v1/nope"), &[])
        .await
        .assert_error(404, "not_found");
    assert_eq!(proxy_metric(&h, "build").await, 0.0);
}

#[actix_web::test]
async fn compressed_pass_through_keeps_its_encoding_and_bytes() {
    let (_php, h) = start();
    let req = wire()
        .get(h.url("/gzip-page"))
        .insert_header(("accept-encoding", "gzip"));
    let page = collect(req, None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-encoding"), Some("gzip"));
    assert_eq!(
        page.header("content-length"),
        Some(page.body.len().to_string().as_str())
    );
    assert_eq!(&page.body[..2], &[0x1f, 0x8b], "still gzip on the wire");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&page.body[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert_eq!(text, "compressible text\n".repeat(1000));
}

#[actix_web::test]
async fn velox_app_flow_misses_then_hits() {
    let (_php, h) = start();
    let miss = post_generate(&h, "", &generate("v5.2.7")).await;
    assert_eq!(
        miss.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&miss.body)
    );
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    assert_eq!(miss.header("x-app"), Some("velox-app"), "PHP's own header");
    assert!(miss.header("x-velox-build").is_none());
    assert_eq!(
        miss.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        miss.header("content-disposition"),
        Some("attachment; filename=\"roadrunner-linux-amd64\"")
    );
    let id = miss.header("x-build-request-id").expect("PHP's request id");
    assert!(uuid::Uuid::try_parse(id).is_ok(), "{id}");
    assert_eq!(miss.body.len(), 300 * 1024);
    assert_eq!(
        miss.header("etag"),
        Some(format!("\"{}\"", sha256_hex(&miss.body)).as_str())
    );

    let hit = post_generate(&h, "", &generate("v5.2.7")).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.body, miss.body);
    assert_ne!(
        hit.header("x-build-request-id"),
        Some(id),
        "PHP made a new id"
    );
    assert_eq!(h.velox.builds(), 1);

    // The app's Content-Disposition wins over ours.
    let named = post_generate(&h, "?filename=rr-custom", &generate("v5.2.7")).await;
    assert_eq!(
        named.header("content-disposition"),
        Some("attachment; filename=\"rr-custom\"")
    );
    assert_eq!(proxy_metric(&h, "build").await, 3.0);
    assert_eq!(proxy_metric(&h, "error").await, 0.0);
}

#[actix_web::test]
async fn encoded_instructions_are_decoded() {
    let (php, h) = start();
    // br: PHP has no brotli, so it serves bytes compressed here.
    let br_instruction = json!({
        "request_id": "0b7c5a52-2f5e-4d0e-9a65-3a1f3c1f9d11",
        "target_platform": {"os": "linux", "arch": "amd64"},
        "rr_version": "v2025.1.2",
        "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.0.0-br"}]
    });
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 9, 22);
        w.write_all(br_instruction.to_string().as_bytes())
            .expect("brotli");
    }
    php.fixture("instruction.json.br", &br);

    for (encoding, tag) in [
        ("gzip", "v5.0.0-gzip"),
        ("deflate", "v5.0.0-deflate"),
        ("br", "v5.0.0-br"),
    ] {
        // What PHP puts on the wire, asked directly: really encoded.
        let direct = collect(
            wire().post(php.url(&format!("/api/v1/binary/generate?encoding={encoding}"))),
            Some(generate(tag).to_string().into_bytes()),
        )
        .await;
        assert_eq!(direct.header("content-encoding"), Some(encoding));
        assert_eq!(direct.header("x-velox-build"), Some("true"));
        assert!(
            serde_json::from_slice::<Value>(&direct.body).is_err(),
            "{encoding}: not plain JSON"
        );

        let resp = post_generate(&h, &format!("?encoding={encoding}"), &generate(tag)).await;
        assert_eq!(
            resp.status,
            200,
            "{encoding}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.header("x-cache-status"), Some("MISS"), "{encoding}");
        assert!(resp.header("content-encoding").is_none(), "{encoding}");
        let sent = h.velox.requests().pop().expect("Velox called");
        assert_eq!(sent["plugins"][0]["tag"], tag, "{encoding}");
    }
    assert_eq!(h.velox.builds(), 3);
}

#[actix_web::test]
async fn plugin_replace_from_the_app_is_dropped_before_velox() {
    let (_php, h) = start();
    let mut body = generate("v5.2.7");
    body["plugins"][0]["replace"] = json!("github.com/acme/http/v5 => github.com/fork/http/v5");
    let resp = post_generate(&h, "", &body).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("x-cache-status"), Some("MISS"));
    let sent = h.velox.requests().pop().expect("Velox called");
    assert!(sent["plugins"][0].get("replace").is_none(), "{sent}");
    assert_eq!(h.velox.builds(), 1);
    assert_eq!(h.velox.unknown_fields(), 0, "nothing unknown reached Velox");
}

#[actix_web::test]
async fn interrupted_downloads_resume_with_curl_and_wget() {
    let (_php, h) = start();
    const SIZE: usize = 4 * 1024 * 1024;
    h.velox.set_size(SIZE);
    let dir = tempfile::tempdir().expect("dir");
    // A download link of the app (GET): curl's `-C -` resumes GETs only (with a body it
    // resumes the upload instead).
    let link = h.url("/download/linux/amd64");
    // HEAD first, as some download tools do: the binary's headers, built once, no body.
    let probe = head(&link, &[]).await;
    assert_eq!(
        probe.status,
        200,
        "{}",
        String::from_utf8_lossy(&probe.body)
    );
    assert_eq!(
        probe.header("content-length"),
        Some(SIZE.to_string().as_str())
    );
    assert_eq!(probe.header("accept-ranges"), Some("bytes"));
    assert_eq!(probe.header("x-app"), Some("velox-app"));
    assert!(probe.body.is_empty());
    let whole = get(&link, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("x-cache-status"), Some("HIT"));
    assert_eq!(whole.body.len(), SIZE);
    assert_eq!(whole.header("etag"), probe.header("etag"));

    download::curl_resumes(dir.path(), &link, &whole.body);
    download::wget_resumes(dir.path(), &link, &whole.body);
    assert_eq!(h.velox.builds(), 1);
}

#[actix_web::test]
async fn concurrent_ranges_share_one_build() {
    let (_php, h) = start();
    h.velox.set_size(1024 * 1024);
    // Long enough for all of them to arrive while the build runs.
    h.velox.set_delay(Duration::from_millis(800));
    let url = h.url("/api/v1/binary/generate");
    let body = generate("v5.3.0");
    let ranges = [
        "bytes=0-99",
        "bytes=1000-1999",
        "bytes=524288-",
        "bytes=-500",
        "bytes=1048000-1048575",
        "bytes=65536-131071",
    ];
    let answers = futures_util::future::join_all(ranges.iter().map(|r| {
        let (url, body) = (url.clone(), body.clone());
        async move { post_json(&url, &body, &[("range", r)]).await }
    }))
    .await;
    let whole = post_json(&url, &body, &[]).await;
    assert_eq!(whole.header("x-cache-status"), Some("HIT"));
    let size = whole.body.len();
    assert_eq!(size, 1024 * 1024);
    for (range, resp) in ranges.iter().zip(&answers) {
        assert_eq!(resp.status, 206, "{range}");
        assert_eq!(resp.header("x-cache-status"), Some("MISS"), "{range}");
        let spec = range.trim_start_matches("bytes=");
        let (start, end) = match spec.split_once('-') {
            Some(("", n)) => (size - n.parse::<usize>().expect("n"), size - 1),
            Some((a, "")) => (a.parse().expect("a"), size - 1),
            Some((a, b)) => (a.parse().expect("a"), b.parse().expect("b")),
            None => unreachable!(),
        };
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str()),
            "{range}"
        );
        assert!(resp.body[..] == whole.body[start..=end], "{range}");
    }
    assert_eq!(
        h.velox.builds(),
        1,
        "one build for every concurrent request"
    );
}

#[actix_web::test]
async fn upstream_down_or_slow_is_a_502() {
    // Down: a port nothing listens on.
    let port = support::process::free_port();
    let h =
        Harness::start_with(|o| o.env("VELOX_CACHE_UPSTREAM", &format!("http://127.0.0.1:{port}")));
    let down = get(&h.url("/"), &[]).await;
    down.assert_error(502, "upstream_unavailable");
    assert_eq!(proxy_metric(&h, "error").await, 1.0);
    drop(h);

    // Slow: no head within upstream_timeout.
    let (php, h) = start_with(|o| o.env("VELOX_CACHE_UPSTREAM_TIMEOUT", "1s"));
    let slow = get(&h.url("/slow?ms=4000"), &[]).await;
    let v = slow.assert_error(502, "upstream_unavailable");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("1s")),
        "{v}"
    );

    // But the timeout bounds the head only: a body that pauses longer still arrives whole.
    let mut res = wire()
        .get(h.url("/stream?size=1048576&pause_after=8&release=late"))
        .send()
        .await
        .expect("stream head");
    assert_eq!(res.status(), 200);
    // Deliberately longer than upstream_timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    php.release("late");
    let body = res.body().limit(2 * 1024 * 1024).await.expect("whole body");
    assert!(body == blocks(16), "the paused body arrives whole");
}

#[actix_web::test]
async fn broken_instructions_are_refused() {
    let (_php, h) = start();
    for kind in ["notjson", "badgzip", "bomb", "toolarge"] {
        let resp = get(&h.url(&format!("/bad-instruction?kind={kind}")), &[]).await;
        resp.assert_error(502, "invalid_build_instruction");
    }
    let invalid = get(&h.url("/bad-instruction?kind=invalid"), &[]).await;
    let v = invalid.assert_error(400, "invalid_request");
    assert_eq!(v["request_id"], "3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f");
    assert_eq!(h.velox.calls(), 0);
    assert_eq!(proxy_metric(&h, "error").await, 5.0);
}

#[actix_web::test]
async fn a_body_ended_by_closing_the_connection_is_relayed_whole() {
    let (php, h) = start();
    // What PHP sends, asked directly: neither Content-Length nor chunked.
    let direct = std::process::Command::new("curl")
        .args(["-sS", "-D", "-"])
        .arg(php.url("/close-delimited"))
        .output()
        .expect("curl");
    let direct = String::from_utf8_lossy(&direct.stdout).to_ascii_lowercase();
    assert!(direct.starts_with("http/1.1 200"), "{direct}");
    assert!(!direct.contains("content-length"), "{direct}");
    assert!(!direct.contains("transfer-encoding"), "{direct}");
    let page = get(&h.url("/close-delimited"), &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(&page.body[..], b"this body ends when the connection does");
    // An HTTP/1.1 client gets it chunked.
    assert_eq!(page.header("transfer-encoding"), Some("chunked"));
}

#[actix_web::test]
async fn without_upstream_other_paths_are_404() {
    let h = Harness::start();
    get(&h.url("/api/v1/binary/generate"), &[])
        .await
        .assert_error(404, "not_found");
}

/// `VmRSS` or `VmHWM` of a process, in KiB.
fn proc_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Drains a 200 MiB pass-through of `/big` (`query` picks its framing) with a stall after the
/// first chunk, and returns how much the server's RSS peaked above where it started, in KiB.
async fn pass_through_growth(query: &str) -> u64 {
    let (_php, h) = start();
    let pid = h.server().pid();
    let drain = |mib: usize| {
        let url = h.url(&format!("/big?mib={mib}{query}"));
        async move {
            let mut res = wire().get(url).no_decompress().send().await.expect("head");
            assert_eq!(res.status(), 200);
            let mut n = 0usize;
            let mut first = true;
            while let Some(chunk) = res.next().await {
                let chunk = chunk.expect("chunk");
                if first {
                    // Stall: a proxy that buffered would now take in the whole body.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    first = false;
                }
                n += chunk.len();
            }
            n
        }
    };
    // Warm up the workers and the allocator, then start the peak count afresh.
    assert_eq!(drain(8).await, 8 << 20);
    let before = proc_kib(pid, "VmRSS");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    assert_eq!(drain(200).await, 200 << 20);
    let peak = proc_kib(pid, "VmHWM");
    let after = proc_kib(pid, "VmRSS");
    println!(
        "200 MiB pass-through ({query:?}): RSS before {before} KiB, peak {peak} KiB (+{} KiB), \
         after {after} KiB",
        peak.saturating_sub(before)
    );
    peak.saturating_sub(before)
}

#[actix_web::test]
async fn a_200_mib_pass_through_costs_little_memory() {
    let grown = pass_through_growth("").await;
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
}

#[actix_web::test]
async fn a_200_mib_close_delimited_pass_through_costs_little_memory() {
    let grown = pass_through_growth("&close=1").await;
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
}
