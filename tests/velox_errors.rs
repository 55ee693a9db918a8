//! What velox-cache does with each answer Velox can give (docs/velox.md, docs/build-requests.md, docs/http-api.md): the retry matrix,
//! failure memory, timeouts, artifact path checks, bad input, overload, the token.

mod support;

use std::time::Duration;

use serde_json::json;
use support::process::free_port;
use support::*;
use tempfile::TempDir;

/// A server whose Velox is at `velox_url` (no stand-in there), with `f`'s changes to the
/// options; the temp dir holds its data dir.
fn server_for(velox_url: &str, f: impl FnOnce(Options) -> Options) -> (TempDir, Server) {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = f(Options::new(
        &tmp.path().join("data"),
        velox_url,
        tmp.path(),
    ));
    let server = Server::start(&opts);
    (tmp, server)
}

#[actix_web::test]
async fn unavailable_twice_then_success() {
    let h = Harness::start();
    h.velox
        .script([Behavior::Status(503), Behavior::Code("unavailable")]);
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(h.velox.calls(), 3);
    assert_eq!(
        metric(
            h.server(),
            "velox_velox_retries_total{reason=\"unavailable\"}"
        )
        .await,
        2.0
    );
    // Every call says how long Velox has left.
    let timeouts = h.velox.timeouts_ms();
    assert_eq!(timeouts.len(), 3);
    assert!(
        timeouts.iter().all(|t| *t > 0 && *t <= 300_000),
        "{timeouts:?}"
    );
}

#[actix_web::test]
async fn already_exists_then_success() {
    let h = Harness::start();
    h.velox.script([Behavior::Code("already_exists")]);
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.velox.calls(), 2);
    assert_eq!(
        metric(
            h.server(),
            "velox_velox_retries_total{reason=\"already_exists\"}"
        )
        .await,
        1.0
    );
}

#[actix_web::test]
async fn velox_down_is_velox_unavailable_after_max_attempts() {
    // A port nothing listens on.
    let (_tmp, server) = server_for(&format!("http://127.0.0.1:{}", free_port()), |o| {
        o.env("VELOX_CACHE_RETRY__MAX_ATTEMPTS", "4")
    });
    let r = post_json(&server.builds_url(), &build_request("linux", "amd64"), &[]).await;
    let v = r.assert_error(502, "velox_unavailable");
    assert_eq!(v["request_id"], "b66d5617-64dd-419b-a68b-b002938320ab");
    assert_eq!(
        metric(&server, "velox_velox_retries_total{reason=\"unreachable\"}").await,
        3.0
    );
    let ready = get(&server.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.json()["velox_last_call"], "unreachable");
}

#[actix_web::test]
async fn retryable_errors_exhaust_attempts() {
    let h = Harness::start();
    h.velox.script([
        Behavior::Status(502),
        Behavior::Code("resource_exhausted"),
        Behavior::Code("aborted"),
    ]);
    let r = h.post(&build_request("linux", "amd64")).await;
    r.assert_error(502, "velox_unavailable");
    assert_eq!(h.velox.calls(), 3);
    // Not remembered: the next request calls Velox again, and succeeds.
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.velox.calls(), 4);
}

#[actix_web::test]
async fn invalid_argument_is_400_after_one_call() {
    let h = Harness::start();
    for code in ["invalid_argument", "failed_precondition", "out_of_range"] {
        h.velox.script([Behavior::Code(code)]);
    }
    for (i, n) in [1, 2, 3].into_iter().enumerate() {
        let r = h.post(&distinct_request(n)).await;
        let v = r.assert_error(400, "invalid_request");
        assert!(
            v["message"].as_str().expect("message").contains("scripted"),
            "{v}"
        );
        assert_eq!(h.velox.calls(), i + 1);
    }
    // Velox's refusal is not remembered: the same keys call Velox again, and build.
    for n in [1, 2, 3] {
        let r = h.post(&distinct_request(n)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(h.velox.calls(), 6);
}

#[actix_web::test]
async fn internal_is_build_failed_and_remembered() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_FAILURE_TTL", "60s"));
    h.velox.script([Behavior::Code("internal")]);
    let req = build_request("linux", "amd64");
    let r = h.post(&req).await;
    let v = r.assert_error(502, "build_failed");
    assert_eq!(v["request_id"], "b66d5617-64dd-419b-a68b-b002938320ab");
    assert_eq!(h.velox.calls(), 1);
    // Within failure_ttl: the same answer, no call.
    let again = h.post(&req).await;
    assert_eq!(
        again.assert_error(502, "build_failed")["message"],
        v["message"]
    );
    assert_eq!(h.velox.calls(), 1);
    // force_rebuild skips the memory.
    let mut forced = req.clone();
    forced["force_rebuild"] = json!(true);
    let r = h.post(&forced).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.velox.calls(), 2);
}

#[actix_web::test]
async fn failure_memory_expires() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_FAILURE_TTL", "300ms"));
    h.velox.script([Behavior::Code("unknown")]);
    let req = build_request("linux", "amd64");
    h.post(&req).await.assert_error(502, "build_failed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.post(&req).await.status, 200);
    assert_eq!(h.velox.calls(), 2);
}

#[actix_web::test]
async fn build_timeout_is_504() {
    // 2s: the second build below must fit its copy and fsync in it on a busy machine.
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_BUILD_TIMEOUT", "2s"));
    h.velox.set_delay(Duration::from_secs(6));
    let started = std::time::Instant::now();
    let r = h.post(&build_request("linux", "amd64")).await;
    r.assert_error(504, "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(h.server(), "velox_builds_total{status=\"timeout\"}").await,
        1.0
    );
    // A timeout is not remembered either: once Velox is quick, the same key builds.
    h.velox.set_delay(Duration::ZERO);
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Velox built it again (the first build may still hold its lock for a moment when the second
    // call arrives: that 409 is waited out).
    assert_eq!(h.velox.builds(), 2);
}

#[actix_web::test]
async fn an_answer_that_never_comes_is_waited_for_until_build_timeout() {
    // request_timeout is far shorter, but the request was sent: cutting the attempt would cancel
    // a real Velox build.
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_REQUEST_TIMEOUT", "1s")
            .env("VELOX_CACHE_BUILD_TIMEOUT", "3s")
    });
    h.velox.script([Behavior::Hang(Duration::from_secs(30))]);
    let r = h.post(&build_request("linux", "amd64")).await;
    r.assert_error(504, "timeout");
    assert_eq!(h.velox.calls(), 1, "never cut and called again");
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
fn unconnectable() -> (std::net::TcpListener, std::net::TcpStream, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the address is a valid
    // sockaddr_in of the size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let port = listener.local_addr().expect("addr").port();
        // Fills the queue of one; nobody ever accepts it.
        let filler = std::net::TcpStream::connect(("127.0.0.1", port)).expect("filler");
        (listener, filler, port)
    }
}

#[actix_web::test]
async fn connecting_past_request_timeout_is_retried() {
    let (_listener, _filler, port) = unconnectable();
    let (_tmp, server) = server_for(&format!("http://127.0.0.1:{port}"), |o| {
        o.env("VELOX_CACHE_REQUEST_TIMEOUT", "1s")
            .env("VELOX_CACHE_BUILD_TIMEOUT", "30s")
            .env("VELOX_CACHE_RETRY__MAX_ATTEMPTS", "2")
    });
    let r = post_json(&server.builds_url(), &build_request("linux", "amd64"), &[]).await;
    // Two cut attempts, well before build_timeout.
    r.assert_error(502, "velox_unavailable");
    assert_eq!(
        metric(&server, "velox_velox_retries_total{reason=\"unreachable\"}").await,
        1.0
    );
}

#[actix_web::test]
async fn bad_artifact_paths_are_build_failed_and_never_read() {
    // A hung open would end in 504 timeout, not the 502 asserted below.
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_BUILD_TIMEOUT", "20s"));
    let root = h.velox.dir.clone();
    let outside = h.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    let secret = outside.join("secret");
    std::fs::write(&secret, b"TOP-SECRET-BYTES").expect("write");
    let link = root.join("link-out");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let dir = root.join("a-directory");
    std::fs::create_dir_all(&dir).expect("dir");
    let empty = root.join("empty");
    std::fs::write(&empty, b"").expect("write");
    let dotdot = format!("{}/../outside/secret", root.display());
    // No writer will ever open it: a blocking open would hang until build_timeout.
    let fifo = root.join("fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo_link = root.join("fifo-link");
    std::os::unix::fs::symlink(&fifo, &fifo_link).expect("symlink");
    let cases = [
        ("outside artifact_root", secret.display().to_string()),
        ("dot-dot", dotdot),
        ("symlink leading outside", link.display().to_string()),
        ("directory", dir.display().to_string()),
        ("empty file", empty.display().to_string()),
        ("FIFO", fifo.display().to_string()),
        ("symlink to a FIFO", fifo_link.display().to_string()),
        ("missing file", root.join("missing").display().to_string()),
        ("relative", "roadrunner".to_string()),
    ];
    for (i, (name, path)) in cases.iter().enumerate() {
        // A missing file gets one more call (with force_rebuild): it names the same path again.
        let answers = if *name == "missing file" { 2 } else { 1 };
        h.velox
            .script(std::iter::repeat_n(Behavior::Path(path.clone()), answers));
        let r = h.post(&distinct_request(100 + i)).await;
        let v = r.assert_error(502, "build_failed");
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("TOP-SECRET"), "{name}: {text}");
        assert!(
            !text.contains(&*root.to_string_lossy()),
            "{name} leaks a path: {text}"
        );
        assert!(!text.contains("/outside"), "{name} leaks a path: {v}");
    }
    // Only the missing file was asked for twice.
    assert_eq!(h.velox.calls(), cases.len() + 1);
    // Nothing was cached.
    assert_eq!(metric(h.server(), "velox_cache_entries_count").await, 0.0);
    let blobs = walk_files(&h.server().data_dir.join("blobs"));
    assert!(blobs.is_empty(), "{blobs:?}");
}

#[actix_web::test]
async fn path_map_rewrites_the_velox_prefix() {
    // Velox "sees" the shared volume as /velox-host/out; velox-cache sees it at its artifact
    // root.
    let h = Harness::start_with(|o| {
        let real = o.artifact_root.display().to_string();
        o.arg(format!("--path-map=/velox-host/out={real}"))
    });
    let real = h.velox.dir.clone();
    std::fs::create_dir_all(real.join("b1")).expect("dir");
    std::fs::write(real.join("b1/roadrunner"), vec![42u8; 5000]).expect("write");
    h.velox
        .script([Behavior::Path("/velox-host/out/b1/roadrunner".into())]);
    let r = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, vec![42u8; 5000]);
}

#[actix_web::test]
async fn bad_input_is_refused_without_calling_velox() {
    let h = Harness::start();
    let url = h.builds_url();
    let r = post_raw(&url, b"{not json".to_vec()).await;
    r.assert_error(400, "invalid_request");
    let r = post_raw(&url, br#"{"rr_version": 5, "plugins": []}"#.to_vec()).await;
    r.assert_error(400, "invalid_request");
    let r = post_raw(&url, vec![b' '; 1024 * 1024 + 1]).await;
    r.assert_error(413, "payload_too_large");

    let mut many = build_request("linux", "amd64");
    many["plugins"] = serde_json::Value::Array(
        (0..300)
            .map(|i| json!({"module_name": format!("github.com/p/{i}"), "tag": "v1.0.0"}))
            .collect(),
    );
    let bad_id = {
        let mut v = build_request("linux", "amd64");
        v["request_id"] = json!("not-a-uuid");
        v
    };
    let bad_version = {
        let mut v = build_request("linux", "amd64");
        v["rr_version"] = json!("2025.1.2");
        v
    };
    let empty_plugins = {
        let mut v = build_request("linux", "amd64");
        v["plugins"] = json!([]);
        v
    };
    let wrong_type = {
        let mut v = build_request("linux", "amd64");
        v["plugins"] = json!("http");
        v
    };
    for (name, body) in [
        ("300 plugins", many),
        ("request_id", bad_id),
        ("rr_version", bad_version),
        ("empty plugins", empty_plugins),
        ("wrong type", wrong_type),
    ] {
        let r = post_json(&url, &body, &[]).await;
        let v = r.assert_error(400, "invalid_request");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{name}");
    }
    // The request id comes back when the request had one.
    let mut v = build_request("linux", "amd64");
    v["plugins"] = json!([]);
    let r = post_json(&url, &v, &[]).await;
    assert_eq!(
        r.json()["request_id"],
        "b66d5617-64dd-419b-a68b-b002938320ab"
    );
    assert_eq!(h.velox.calls(), 0);

    // Unknown fields are dropped before Velox: v3 would ignore them, but they must reach neither
    // Velox nor the key (the stand-in counts any it receives).
    let mut extra = build_request("linux", "amd64");
    extra["plugins"][0]["replace"] = json!("github.com/x/http");
    extra["something_new"] = json!(true);
    let r = post_json(&url, &extra, &[]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(h.velox.calls(), 1);
    let sent = &h.velox.requests()[0];
    assert!(sent.get("something_new").is_none());
    assert!(sent["plugins"][0].get("replace").is_none());
    assert_eq!(h.velox.unknown_fields(), 0);
    let plain = post_json(&url, &build_request("linux", "amd64"), &[]).await;
    assert_eq!(plain.header("x-cache-status"), Some("HIT"), "same key");

    // Methods and routes. (GET on the build route is the build activity list, SPEC §22.)
    let r = delete(&url).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, POST"),
        "{:?}",
        r.headers
    );
    get(&h.url("/anything"), &[])
        .await
        .assert_error(404, "not_found");
}

#[actix_web::test]
async fn overload_is_503_with_retry_after() {
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_MAX_CONCURRENT_BUILDS", "1")
            .env("VELOX_CACHE_MAX_QUEUED_BUILDS", "1")
    });
    h.velox.set_delay(Duration::from_millis(1500));
    let url = h.builds_url();
    let first = actix_web::rt::spawn({
        let url = url.clone();
        async move { post_json(&url, &distinct_request(1), &[]).await }
    });
    let second = actix_web::rt::spawn({
        let url = url.clone();
        async move { post_json(&url, &distinct_request(2), &[]).await }
    });
    let server = h.server();
    assert!(
        eventually(Duration::from_secs(10), async || {
            metric(server, "velox_builds_active").await == 1.0
                && metric(server, "velox_builds_queued").await == 1.0
        })
        .await,
        "the first two builds were not admitted"
    );
    let third = post_json(&url, &distinct_request(3), &[]).await;
    third.assert_error(503, "overloaded");
    assert!(third
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(second.await.expect("second").status, 200);
    assert_eq!(h.velox.calls(), 2);
}

#[actix_web::test]
async fn api_token_is_required_when_set() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "s3cret-token"));
    let req = build_request("linux", "amd64");
    h.post(&req).await.assert_error(401, "unauthorized");
    post_json(&h.builds_url(), &req, &[("authorization", "Bearer wrong")])
        .await
        .assert_error(401, "unauthorized");
    let ok = post_json(
        &h.builds_url(),
        &req,
        &[("authorization", "Bearer s3cret-token")],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(h.velox.calls(), 1);
}
