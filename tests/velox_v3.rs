//! velox-cache against Velox v3's real behaviour (docs/velox.md): builds longer than
//! `request_timeout`, a required `request_id`, `already_exists` while someone else builds, files
//! that vanish from Velox's cache, the compiler's stderr in failures, oversized answers, FIFOs.
//! The first tests check the stand-in itself, since the others lean on what it counts.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;

fn retries(reason: &str) -> String {
    format!("velox_velox_retries_total{{reason=\"{reason}\"}}")
}

#[actix_web::test]
async fn the_stand_in_answers_as_velox_v3_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    let velox = FakeVelox::start(&tmp.path().join("out"));
    let url = velox.build_url();

    // request_id is required (string.uuid_empty), and must be a UUID.
    let mut req = build_request("linux", "amd64");
    req.as_object_mut().expect("object").remove("request_id");
    let r = post_json(&url, &req, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "invalid_argument");
    assert_eq!(
        r.json()["message"],
        "validation error: request_id: value is empty, which is not a valid UUID"
    );
    let r = post_raw(&url, b"{}".to_vec()).await;
    assert_eq!(
        r.json()["message"],
        "validation errors:\n - request_id: value is empty, which is not a valid UUID\n - rr_version: value is required\n - plugins: value is required"
    );
    assert_eq!(velox.builds(), 0);

    // Unknown fields are ignored (and counted); the build goes ahead.
    let mut req = build_request("linux", "amd64");
    req["something_new"] = json!(1);
    req["plugins"][0]["replace"] = json!("x");
    let r = post_json(&url, &req, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(velox.unknown_fields(), 2);
    let path = r.json()["path"].as_str().expect("path").to_owned();
    assert!(path.ends_with("/rr"), "{path}");
    assert!(r.json().get("logs").is_none(), "a fresh build has no logs");
    assert!(std::path::Path::new(&path).is_file());

    // Its cache answers the same path, with the fixed text.
    let r = post_json(&url, &build_request("linux", "amd64"), &[]).await;
    assert_eq!(r.json()["path"], path.as_str());
    assert_eq!(
        r.json()["logs"],
        "cached output, logs are available only on the first build"
    );
    assert_eq!((velox.builds(), velox.cache_hits()), (1, 1));

    // While a hash builds, a second caller gets 409, force_rebuild included.
    velox.set_delay(Duration::from_secs(2));
    let mut forced = build_request("linux", "amd64");
    forced["force_rebuild"] = json!(true);
    let first = actix_web::rt::spawn({
        let (url, forced) = (url.clone(), forced.clone());
        async move { post_json(&url, &forced, &[]).await }
    });
    assert!(
        eventually(Duration::from_secs(10), async || velox.in_progress() == 1).await,
        "the rebuild did not start"
    );
    for body in [&forced, &build_request("linux", "amd64")] {
        let r = post_json(&url, body, &[]).await;
        assert_eq!(r.status, 409);
        assert_eq!(r.json()["code"], "already_exists");
    }
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(velox.builds(), 2);
    velox.set_delay(Duration::ZERO);

    // Failures are `internal` with the stderr tail; windows targets are refused.
    velox.script([Behavior::Fail("cannot find module\n".into())]);
    let r = post_json(&url, &distinct_request(1), &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["code"], "internal");
    assert_eq!(
        r.json()["message"],
        "building plugins: compile: go failed: exit status 1\n--- stderr (last 19 bytes) ---\ncannot find module\n"
    );
    let r = post_json(&url, &build_request("windows", "amd64"), &[]).await;
    assert_eq!(r.json()["code"], "internal");

    // Connect's own refusals.
    let r = post_raw(&url, Vec::new()).await;
    assert_eq!(r.status, 400);
    let r = get(&url, &[]).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = post_json(
        &url,
        &distinct_request(2),
        &[("connect-timeout-ms", "soon")],
    )
    .await;
    assert_eq!(r.status, 400);
}

#[actix_web::test]
async fn the_stand_in_kills_a_build_whose_caller_leaves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let velox = FakeVelox::start(&tmp.path().join("out"));
    velox.set_delay(Duration::from_secs(3));
    let url = velox.build_url();
    let call = actix_web::rt::spawn(async move {
        post_json(&url, &build_request("linux", "amd64"), &[]).await
    });
    assert!(
        eventually(Duration::from_secs(10), async || velox.in_progress() == 1).await,
        "the build did not start"
    );
    call.abort();
    assert!(
        eventually(Duration::from_secs(2), async || velox.killed() == 1).await,
        "the stand-in did not notice its caller leave"
    );
    assert_eq!(velox.in_progress(), 0, "the lock went with the build");
    assert!(walk_files(&velox.dir).is_empty(), "nothing was written");

    // Its Connect-Timeout-Ms running out kills it too.
    let r = post_json(
        &velox.build_url(),
        &build_request("linux", "amd64"),
        &[("connect-timeout-ms", "200")],
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("context deadline exceeded")),
        "{}",
        r.json()
    );
    assert_eq!(velox.killed(), 2);
}

#[actix_web::test]
async fn a_build_longer_than_request_timeout_finishes_with_one_velox_build() {
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_REQUEST_TIMEOUT", "1s")
            .env("VELOX_CACHE_BUILD_TIMEOUT", "30s")
    });
    h.velox.set_delay(Duration::from_millis(2500));
    let r = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    assert_eq!(h.velox.calls(), 1);
    assert_eq!(h.velox.builds(), 1);
    assert_eq!(h.velox.killed(), 0, "no attempt was cut mid-build");
    // Connect-Timeout-Ms carried the time left of build_timeout, not request_timeout.
    let sent = h.velox.timeouts_ms();
    assert!(sent[0] > 25_000 && sent[0] <= 30_000, "{sent:?}");
}

#[actix_web::test]
async fn a_request_without_request_id_builds_with_one_made_up() {
    let h = Harness::start();
    let mut req = build_request("linux", "amd64");
    req["request_id"] = json!("");
    let miss = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(miss.status, 200, "{}", String::from_utf8_lossy(&miss.body));
    let id = miss.header("x-build-request-id").expect("an id").to_owned();
    assert_eq!(h.velox.requests()[0]["request_id"], id.as_str());
    assert_eq!(
        uuid::Uuid::parse_str(&id).expect("uuid").get_version_num(),
        4
    );

    // A hit made up its own.
    req.as_object_mut().expect("object").remove("request_id");
    let hit = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    let hit_id = hit.header("x-build-request-id").expect("an id on hits too");
    assert!(uuid::Uuid::parse_str(hit_id).is_ok());
    assert_ne!(hit_id, id);

    // And an error carries the id Velox was given.
    h.velox.script([Behavior::Fail("boom".into())]);
    let mut other = distinct_request(70);
    other.as_object_mut().expect("object").remove("request_id");
    let v = post_json(&h.builds_url(), &other, &[])
        .await
        .assert_error(502, "build_failed");
    let sent = h.velox.requests().pop().expect("Velox called");
    assert_eq!(v["request_id"], sent["request_id"]);
    assert!(
        v["request_id"].as_str().is_some_and(|s| s.len() == 36),
        "{v}"
    );
}

#[actix_web::test]
async fn request_ids_and_strings_velox_would_misread_are_refused() {
    let h = Harness::start();
    let id = "b66d5617-64dd-419b-a68b-b002938320ab";
    let edits: Vec<(&str, serde_json::Value)> = vec![
        ("request_id", json!(format!("urn:uuid:{id}"))),
        ("request_id", json!(format!("{{{id}}}"))),
        ("request_id", json!(id.replace('-', ""))),
        ("rr_version", json!("v2025.1.2\nv9.9.9")),
    ];
    for (field, value) in edits {
        let mut req = build_request("linux", "amd64");
        req[field] = value.clone();
        let v = post_json(&h.builds_url(), &req, &[])
            .await
            .assert_error(400, "invalid_request");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(field)),
            "{value}: {v}"
        );
        if field == "request_id" {
            assert!(v.get("request_id").is_none(), "a bad id is not echoed: {v}");
        }
    }
    let mut req = build_request("linux", "amd64");
    req["plugins"][0]["tag"] = json!("v5.2.7\u{1b}[2J");
    let v = post_json(&h.builds_url(), &req, &[])
        .await
        .assert_error(400, "invalid_request");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("control character")),
        "{v}"
    );
    assert_eq!(v["request_id"], id);
    assert_eq!(h.velox.calls(), 0);
}

#[actix_web::test]
async fn already_exists_from_a_build_started_elsewhere_is_waited_out() {
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_RETRY__MAX_ATTEMPTS", "2")
            .env("VELOX_CACHE_RETRY__INITIAL_DELAY", "100ms")
            .env("VELOX_CACHE_RETRY__MAX_DELAY", "300ms")
            .env("VELOX_CACHE_BUILD_TIMEOUT", "30s")
    });
    h.velox.set_delay(Duration::from_secs(3));
    // A CI job (or another replica) asks Velox directly for the same binary.
    let direct = actix_web::rt::spawn({
        let url = h.velox.build_url();
        async move { post_json(&url, &build_request("linux", "amd64"), &[]).await }
    });
    let velox = &h.velox;
    assert!(
        eventually(Duration::from_secs(10), async || velox.in_progress() == 1).await,
        "the direct build did not start"
    );
    let r = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(direct.await.expect("direct").status, 200);
    let waits = metric(h.server(), &retries("already_exists")).await;
    assert!(waits > 2.0, "waited past max_attempts: {waits} waits");
    assert_eq!(h.velox.builds(), 1, "Velox built once");
    assert_eq!(
        h.velox.cache_hits(),
        1,
        "velox-cache got Velox's cached result"
    );
    assert_eq!(h.velox.calls(), 1 + waits as usize + 1);
    assert_eq!(h.velox.killed(), 0);
    // The bytes are the file the direct build wrote.
    let file = walk_files(&h.velox.dir);
    assert_eq!(file.len(), 1);
    assert!(std::fs::read(&file[0]).expect("read") == r.body);
}

#[actix_web::test]
async fn already_exists_past_build_timeout_is_504() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_BUILD_TIMEOUT", "2s"));
    h.velox.set_delay(Duration::from_secs(10));
    let _direct = actix_web::rt::spawn({
        let url = h.velox.build_url();
        async move { post_json(&url, &build_request("linux", "amd64"), &[]).await }
    });
    let velox = &h.velox;
    assert!(eventually(Duration::from_secs(10), async || velox.in_progress() == 1).await);
    post_json(&h.builds_url(), &build_request("linux", "amd64"), &[])
        .await
        .assert_error(504, "timeout");
    assert!(metric(h.server(), &retries("already_exists")).await >= 3.0);
}

#[actix_web::test]
async fn a_vanished_file_is_rebuilt_once() {
    let h = Harness::start();
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(first.status, 200);
    // velox-cache forgets it; a tmp cleaner deletes Velox's file, which Velox's cache still names.
    let key = first.header("x-velox-cache-key").expect("key");
    let del = support::client()
        .delete(h.server().admin_url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .expect("delete");
    assert!(del.status().is_success(), "{}", del.status());
    h.velox.delete_files();
    let again = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    assert_eq!(h.velox.calls(), 3);
    assert_eq!(
        h.velox.cache_hits(),
        1,
        "Velox answered the deleted file from its cache"
    );
    assert_eq!(h.velox.builds(), 2, "and then rebuilt it");
    let asked = h.velox.requests();
    assert_eq!(asked[1]["force_rebuild"], json!(false));
    assert_eq!(asked[2]["force_rebuild"], json!(true));
    assert_eq!(metric(h.server(), &retries("vanished")).await, 1.0);

    // Gone again after the rebuild: only then a failed build.
    h.velox.vanish_next(2);
    let v = post_json(&h.builds_url(), &distinct_request(3), &[])
        .await
        .assert_error(502, "build_failed");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("missing")),
        "{v}"
    );
    assert_eq!(h.velox.calls(), 5);
    assert_eq!(metric(h.server(), &retries("vanished")).await, 2.0);
}

#[actix_web::test]
async fn the_compilers_stderr_tail_reaches_the_client() {
    let h = Harness::start();
    // Longer than Velox's 8 KiB ring buffer: its start never leaves Velox.
    let mut stderr = String::from("NEVER-SHOWN first line\n");
    for i in 0..400 {
        stderr.push_str(&format!(
            "# github.com/acme/plugin\nplugin.go:{i}: undefined: Foo\n"
        ));
    }
    stderr.push_str("THE-LAST-LINE: exit status 1\n");
    h.velox.script([Behavior::Fail(stderr)]);
    let v = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[])
        .await
        .assert_error(502, "build_failed");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.starts_with("building plugins: compile: go failed"),
        "{message}"
    );
    assert!(
        message.contains("THE-LAST-LINE: exit status 1"),
        "{message}"
    );
    assert!(message.contains("plugin.go:399: undefined: Foo"));
    assert!(!message.contains("NEVER-SHOWN"));
    assert!(message.len() <= 8 * 1024, "{} bytes", message.len());
    // It is a failed build of exactly this key: remembered, Velox not called again.
    let again = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(again.assert_error(502, "build_failed")["message"], message);
    assert_eq!(h.velox.calls(), 1);
}

#[actix_web::test]
async fn a_refusal_for_a_reason_outside_the_key_is_not_remembered() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_FAILURE_TTL", "60s"));
    let refused = "0b4e2c4e-6a1f-4e0e-9d55-6a3b0f0e7a11";
    h.velox.refuse_request_id(refused);
    let mut req = build_request("linux", "amd64");
    req["request_id"] = json!(refused);
    let v = post_json(&h.builds_url(), &req, &[])
        .await
        .assert_error(400, "invalid_request");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("refused")),
        "{v}"
    );
    // The same key with another id builds.
    let ok = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(h.velox.calls(), 2);
}

#[actix_web::test]
async fn every_retry_reason_is_exported_at_zero() {
    let h = Harness::start();
    for reason in [
        "unreachable",
        "unavailable",
        "resource_exhausted",
        "aborted",
        "already_exists",
        "vanished",
    ] {
        assert_eq!(metric(h.server(), &retries(reason)).await, 0.0, "{reason}");
    }
}

/// A Velox that answers 200 with a body that never ends: `head` is the response head.
struct EndlessVelox {
    url: String,
    accepted: Arc<AtomicUsize>,
    written: Arc<AtomicU64>,
}

fn endless_velox(head: &'static str) -> EndlessVelox {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let (a, w) = (Arc::clone(&accepted), Arc::clone(&written));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            a.fetch_add(1, Ordering::SeqCst);
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                // The request: its head, then as many body bytes as it declares.
                let mut got = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = conn.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunked = head.contains("chunked");
                let piece = vec![b'x'; 64 * 1024];
                // Stops when velox-cache hangs up, or at 1 GiB, which would fail the test.
                while w.load(Ordering::SeqCst) < 1 << 30 {
                    let sent = if chunked {
                        conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                            .and_then(|_| conn.write_all(&piece))
                            .and_then(|_| conn.write_all(b"\r\n"))
                    } else {
                        conn.write_all(&piece)
                    };
                    if sent.is_err() {
                        return;
                    }
                    w.fetch_add(piece.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    EndlessVelox {
        url,
        accepted,
        written,
    }
}

#[actix_web::test]
async fn an_answer_over_16_mib_is_build_failed_and_not_read_whole() {
    for head in [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let tmp = tempfile::tempdir().expect("tmp");
        let velox = endless_velox(head);
        let opts = Options::new(&tmp.path().join("data"), &velox.url, tmp.path());
        let server = Server::start(&opts);
        let v = post_json(
            &server.url("/_velox/v1/builds"),
            &build_request("linux", "amd64"),
            &[],
        )
        .await
        .assert_error(502, "build_failed");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains("16 MiB")),
            "{v}"
        );
        assert_eq!(velox.accepted.load(Ordering::SeqCst), 1, "not retried");
        // Whatever velox-cache read, plus what the sockets buffer: far below the body's size.
        let written = velox.written.load(Ordering::SeqCst);
        assert!(written < 128 << 20, "{head:?}: {written} bytes sent");
        server.terminate();
    }
}

#[actix_web::test]
async fn a_fifo_named_by_velox_is_refused_at_once() {
    // A blocking open of a FIFO with no writer waits forever: the build would end in 504, and
    // the thread that opened it would never come back.
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_BUILD_TIMEOUT", "60s"));
    let fifo = h.velox.dir.join("cafe").join("rr");
    std::fs::create_dir_all(fifo.parent().expect("dir")).expect("dir");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let n = 4;
    h.velox.script(std::iter::repeat_n(
        Behavior::Path(fifo.display().to_string()),
        n,
    ));
    let answers = futures_util::future::join_all((0..n).map(|i| {
        let url = h.builds_url();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                post_json(&url, &distinct_request(200 + i), &[]),
            )
            .await
            .expect("answered well before build_timeout")
        }
    }))
    .await;
    for r in answers {
        r.assert_error(502, "build_failed");
    }
    // Still serving builds.
    let ok = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(ok.status, 200);
}
