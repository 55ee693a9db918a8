//! The threat model, one attack per test, each through the real binary:
//!
//! - **Damage at rest** (docs/storage.md, "Integrity at rest"): a byte flipped in a stored blob
//!   never reaches a new key with the same bytes, `force_rebuild` repairs it, the scrub finds it,
//!   quarantines it and the next request rebuilds; a blob swapped for a symlink or a FIFO is never
//!   followed; a download under way is cut when its blob is found damaged; SIGKILL during a scrub
//!   loses nothing.
//! - **Slow clients** (docs/http-api.md, "Connections and slow clients"): stalled request bodies
//!   are cut with 408 and the connection closed, while hits and `/healthz` keep answering — 50 and
//!   then 1,100 at once under a 1,024 soft open-file limit, and 1,100 against a hard limit of
//!   1,024 that saturates the public listener; headers that never finish are cut after 5 s.
//! - **Case**: `Authorization: bearer` and `Range: BYTES=` are what RFC 9110 says they are.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::server::run;
use support::*;

const CORRUPT: &str = "velox_cache_store_errors_total{reason=\"corrupt\",tier=\"local\"}";

fn blob_path(data_dir: &Path, hex: &str) -> PathBuf {
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn etag(resp: &Resp) -> String {
    resp.header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned()
}

/// What an attacker (or a failing disk) does: one byte changed in place.
fn flip_byte(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the blob for writing");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read the byte");
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).expect("write the byte");
    f.sync_all().expect("sync");
}

fn quarantined(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("quarantine"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A file with fixed bytes under the stand-in's folder, which it is scripted to answer for the
/// next builds: two different keys then get the very same bytes from "Velox".
fn fixed_artifact(h: &Harness, size: usize) -> (String, Vec<u8>) {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
    let dir = h.velox.dir.join("fixed");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("roadrunner");
    std::fs::write(&path, &bytes).expect("write");
    (path.display().to_string(), bytes)
}

#[actix_web::test]
async fn a_damaged_blob_never_reaches_a_new_key_with_the_same_bytes() {
    use futures_util::StreamExt;
    let h = Harness::start();
    // Large enough to be sent from a memory map of the blob file.
    let (path, bytes) = fixed_artifact(&h, 32 * 1024 * 1024);
    h.velox.script([Behavior::Path(path.clone())]);
    let a = post_json(&h.builds_url(), &distinct_request(1), &[]).await;
    assert_eq!(a.header("x-cache-status"), Some("MISS"));
    assert!(a.body == bytes);
    let digest = etag(&a);
    // A download of the blob stays open throughout, so its mapping of the file stays alive.
    let mut open = client()
        .get(h.url(&format!("/_velox/v1/artifacts/{digest}")))
        .send()
        .await
        .expect("download starts");
    open.next().await.expect("a chunk").expect("chunk");
    flip_byte(&blob_path(&h.server().data_dir, &digest), 1000);

    // A new key whose Velox file has the same bytes: its ingest must not keep the damaged file.
    h.velox.script([Behavior::Path(path)]);
    let b = post_json(&h.builds_url(), &distinct_request(2), &[]).await;
    assert_eq!(b.header("x-cache-status"), Some("MISS"));
    assert_eq!(etag(&b), digest);
    assert!(b.body == bytes, "the new key got the damaged bytes");
    // The copy just hashed replaced the damaged one for every key sharing it.
    let a2 = post_json(&h.builds_url(), &distinct_request(1), &[]).await;
    assert_eq!(a2.header("x-cache-status"), Some("HIT"));
    assert!(a2.body == bytes, "the first key still serves damaged bytes");
    let art = get(&h.url(&format!("/_velox/v1/artifacts/{digest}")), &[]).await;
    assert!(art.body == bytes);
    drop(open);
}

#[actix_web::test]
async fn force_rebuild_replaces_a_damaged_blob() {
    let h = Harness::start();
    let (path, bytes) = fixed_artifact(&h, 200 * 1024);
    h.velox.script([Behavior::Path(path.clone())]);
    let req = build_request("linux", "amd64");
    let a = post_json(&h.builds_url(), &req, &[]).await;
    let digest = etag(&a);
    flip_byte(&blob_path(&h.server().data_dir, &digest), 5);

    let mut forced = req.clone();
    forced["force_rebuild"] = json!(true);
    h.velox.script([Behavior::Path(path)]);
    let rebuilt = post_json(&h.builds_url(), &forced, &[]).await;
    assert_eq!(rebuilt.header("x-cache-status"), Some("MISS"));
    assert!(rebuilt.body == bytes, "force_rebuild kept the damaged blob");
    let hit = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert!(hit.body == bytes);
}

#[actix_web::test]
async fn the_scrub_quarantines_a_damaged_blob_and_the_next_request_rebuilds() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "200ms"));
    let s = h.server();
    for (reason, tier) in [
        ("full", "local"),
        ("io", "local"),
        ("corrupt", "local"),
        ("corrupt", "bucket"),
    ] {
        let name = format!("velox_cache_store_errors_total{{reason=\"{reason}\",tier=\"{tier}\"}}");
        assert_eq!(metric(s, &name).await, 0.0, "{name} is exported at 0");
    }
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    let digest = etag(&first);
    let blob = blob_path(&s.data_dir, &digest);
    flip_byte(&blob, 77);

    let found = eventually(Duration::from_secs(20), async || {
        metric(s, CORRUPT).await == 1.0
    })
    .await;
    assert!(
        found,
        "the scrub did not report the damaged blob:\n{}",
        s.log_text()
    );
    assert!(!blob.exists(), "the damaged blob is still in service");
    let aside = quarantined(&s.data_dir);
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = std::fs::read(&aside[0]).expect("the quarantined copy");
    assert_ne!(
        sha256_hex(&kept),
        digest,
        "the quarantine holds the damaged bytes"
    );
    assert!(s.log_text().contains("does not hash to its name"));
    // Its entry is gone: the artifact is not served, and the next request builds it again.
    let art = get(&h.url(&format!("/_velox/v1/artifacts/{digest}")), &[]).await;
    art.assert_error(404, "not_found");
    let again = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    assert_eq!(sha256_hex(&again.body), etag(&again));
    // Velox was asked again (its own cache may answer with the file it still has).
    assert_eq!(h.velox.calls(), 2);
}

#[actix_web::test]
async fn a_blob_swapped_for_a_symlink_is_never_followed() {
    let h = Harness::start();
    let s = h.server();
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    let digest = etag(&first);
    // The attacker's file, the right size, outside the data dir.
    let evil = h.tmp.path().join("evil");
    let evil_bytes = vec![0x66u8; first.body.len()];
    std::fs::write(&evil, &evil_bytes).expect("evil");
    let blob = blob_path(&s.data_dir, &digest);
    std::fs::remove_file(&blob).expect("rm blob");
    std::os::unix::fs::symlink(&evil, &blob).expect("symlink");

    let art = get(&h.url(&format!("/_velox/v1/artifacts/{digest}")), &[]).await;
    art.assert_error(404, "not_found");
    let again = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    assert!(again.body != evil_bytes, "the symlink's target was served");
    assert_eq!(sha256_hex(&again.body), etag(&again));
    // The link itself is in the quarantine, its target untouched.
    let aside = quarantined(&s.data_dir);
    assert_eq!(aside.len(), 1, "{aside:?}");
    let meta = std::fs::symlink_metadata(&aside[0]).expect("stat");
    assert!(meta.file_type().is_symlink());
    assert_eq!(std::fs::read(&evil).expect("evil"), evil_bytes);
    assert_eq!(metric(s, CORRUPT).await, 1.0);
}

#[actix_web::test]
async fn a_blob_swapped_for_a_fifo_is_refused_without_blocking() {
    let h = Harness::start();
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    let blob = blob_path(&h.server().data_dir, &etag(&first));
    std::fs::remove_file(&blob).expect("rm blob");
    let c = std::ffi::CString::new(blob.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let again = tokio::time::timeout(
        Duration::from_secs(20),
        post_json(&h.builds_url(), &req, &[]),
    )
    .await
    .expect("a FIFO blob must not block the hit path");
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    assert_eq!(sha256_hex(&again.body), etag(&again));
    assert_eq!(
        metric(h.server(), CORRUPT).await,
        1.0,
        "{}",
        h.server().log_text()
    );
}

#[actix_web::test]
async fn a_download_under_way_stops_when_the_scrub_finds_its_blob_damaged() {
    use futures_util::StreamExt;
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "200ms")
            .env("VELOX_CACHE_CACHE__SCRUB_RATE_MB", "1000")
    });
    let size = 32 * 1024 * 1024;
    h.velox.set_size(size);
    let first = post_json(&h.builds_url(), &build_request("linux", "amd64"), &[]).await;
    let digest = etag(&first);
    let mut resp = client()
        .get(h.url(&format!("/_velox/v1/artifacts/{digest}")))
        .send()
        .await
        .expect("download starts");
    let mut got = 0usize;
    let mut body_ok = true;
    if let Some(chunk) = resp.next().await {
        got += chunk.expect("first chunk").len();
    }
    // The last byte goes bad while the client has read only the start.
    flip_byte(&blob_path(&h.server().data_dir, &digest), size as u64 - 1);
    let found = eventually(Duration::from_secs(20), async || {
        metric(h.server(), CORRUPT).await == 1.0
    })
    .await;
    assert!(found, "the scrub did not find the damage");
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), resp.next())
        .await
        .expect("no hang")
    {
        match chunk {
            Ok(c) => got += c.len(),
            Err(_) => {
                body_ok = false;
                break;
            }
        }
    }
    assert!(
        !body_ok || got < size,
        "the whole body, damaged last byte included, reached the client ({got} bytes)"
    );
}

fn count(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

/// A server whose scrub reads at 2 MB/s, with two 4 MiB entries: a pass over them takes 4 s.
/// Returns once a pass that includes both has started.
async fn mid_scrub() -> (Harness, [serde_json::Value; 2], Vec<actix_web::web::Bytes>) {
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "100ms")
            .env("VELOX_CACHE_CACHE__SCRUB_RATE_MB", "2")
    });
    h.velox.set_size(4 * 1024 * 1024);
    let reqs = [distinct_request(1), distinct_request(2)];
    let mut bodies = Vec::new();
    for r in &reqs {
        bodies.push(post_json(&h.builds_url(), r, &[]).await.body);
    }
    let before = count(&h.server().log_text(), "scrub: pass started");
    let started = eventually(Duration::from_secs(20), async || {
        count(&h.server().log_text(), "scrub: pass started") > before
    })
    .await;
    assert!(started, "no scrub pass:\n{}", h.server().log_text());
    (h, reqs, bodies)
}

#[actix_web::test]
async fn sigkill_during_a_scrub_loses_nothing() {
    let (mut h, reqs, bodies) = mid_scrub().await;
    h.take().kill();
    h.restart();
    for (r, body) in reqs.iter().zip(&bodies) {
        let hit = post_json(&h.builds_url(), r, &[]).await;
        assert_eq!(hit.header("x-cache-status"), Some("HIT"));
        assert!(hit.body == *body);
    }
    assert!(quarantined(&h.server().data_dir).is_empty());
    let status = h.take().terminate();
    assert!(status.success());
    let dd = h.opts.data_dir.display().to_string();
    let (code, out, err) = run(&["cache", "verify", "--data-dir", &dd], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

#[actix_web::test]
async fn sigterm_stops_a_scrub_pass_and_the_next_start_goes_on_with_it() {
    let (mut h, _, _) = mid_scrub().await;
    let server = h.take();
    let log_path = server.log.clone();
    assert!(server.terminate().success());
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("scrub: pass stopped"), "{log}");
    // With a day between passes, only a pass cut short is due at once.
    h.opts = h
        .opts
        .clone()
        .env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "1day");
    let before = count(&log, "scrub: pass started");
    h.restart();
    let resumed = eventually(Duration::from_secs(20), async || {
        count(&h.server().log_text(), "scrub: pass started") > before
    })
    .await;
    assert!(
        resumed,
        "the cut pass did not go on:\n{}",
        h.server().log_text()
    );
}

// ---- slow clients ----

fn addr(server: &Server) -> String {
    server.public.trim_start_matches("http://").to_owned()
}

/// A build request whose headers are complete and whose body stops after its first bytes.
fn stalled_body(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(
        b"POST /_velox/v1/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 300\r\n\r\n{\"rr_version\":",
    )
    .expect("write");
    s
}

/// Everything the server sends until it closes the connection, within `by`.
fn read_to_close(s: &mut TcpStream, by: Instant) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = by.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no close; got {:?}",
            String::from_utf8_lossy(&out)
        );
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&out).into_owned()
            }
            Err(e) => panic!("read: {e}; got {:?}", String::from_utf8_lossy(&out)),
        }
    }
}

fn assert_408_and_closed(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("\"error\":\"client_timeout\""),
        "{answer:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
}

/// This process needs a descriptor per stalled connection too.
fn raise_own_open_file_limit(need: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        assert!(
            lim.rlim_max >= need,
            "this test needs a hard open-file limit of at least {need}, not {}",
            lim.rlim_max
        );
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_max
}

fn soft_open_file_limit(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("soft limit")
}

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Hits and `/healthz` while `stalled` bodies hang; returns the slowest of each.
async fn hits_and_healthz(h: &Harness, req: &serde_json::Value, n: usize) -> (Duration, Duration) {
    let (mut hit_max, mut health_max) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        let hit = post_json(&h.builds_url(), req, &[("range", "bytes=0-1023")]).await;
        hit_max = hit_max.max(t.elapsed());
        assert_eq!(hit.status, 206);
        assert_eq!(hit.header("x-cache-status"), Some("HIT"));
        let t = Instant::now();
        let health = get(&h.server().admin_url("/healthz"), &[]).await;
        health_max = health_max.max(t.elapsed());
        assert_eq!(health.status, 200);
    }
    (hit_max, health_max)
}

#[actix_web::test]
async fn stalled_bodies_are_cut_while_hits_and_healthz_keep_answering() {
    let hard = raise_own_open_file_limit(1500);
    let h = Harness::start_with(|mut o| {
        o.wrapper = vec![
            "prlimit".into(),
            format!("--nofile=1024:{hard}"),
            "--".into(),
        ];
        o.env("VELOX_CACHE_REQUEST_BODY_TIMEOUT", "5s")
    });
    // The soft limit of 1,024 the server was started with is raised to the hard one.
    assert_eq!(soft_open_file_limit(h.server().pid()), hard);
    let req = build_request("linux", "amd64");
    assert_eq!(post_json(&h.builds_url(), &req, &[]).await.status, 200);
    let addr = addr(h.server());
    for n in [50usize, 1100] {
        let a = addr.clone();
        let t = Instant::now();
        let mut stalled = actix_web::rt::task::spawn_blocking(move || {
            (0..n).map(|_| stalled_body(&a)).collect::<Vec<_>>()
        })
        .await
        .expect("connect");
        let (hit_max, health_max) = hits_and_healthz(&h, &req, 20).await;
        // None of them has been answered yet: the hits ran while all of them stalled.
        stalled[0].set_nonblocking(true).expect("nonblocking");
        let mut peek = [0u8; 1];
        let waiting = matches!(stalled[0].peek(&mut peek), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(
            waiting,
            "the stalled bodies were answered before the hits finished"
        );
        stalled[0].set_nonblocking(false).expect("blocking");
        println!(
            "{n} stalled bodies: slowest of 20 hits {:.1} ms, slowest /healthz {:.1} ms, server descriptors {}",
            hit_max.as_secs_f64() * 1e3,
            health_max.as_secs_f64() * 1e3,
            open_descriptors(h.server().pid())
        );
        let answers = actix_web::rt::task::spawn_blocking(move || {
            let by = Instant::now() + Duration::from_secs(60);
            stalled
                .iter_mut()
                .map(|s| read_to_close(s, by))
                .collect::<Vec<_>>()
        })
        .await
        .expect("answers");
        for a in &answers {
            assert_408_and_closed(a);
        }
        println!(
            "{n} stalled bodies all answered 408 after {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    assert!(!h.server().log_text().contains("Too many open files"));
}

#[actix_web::test]
async fn a_saturated_public_listener_leaves_healthz_answering() {
    raise_own_open_file_limit(1500);
    // A hard limit of 1,024 cannot be raised: the public listener keeps to 80 % of it.
    let h = Harness::start_with(|mut o| {
        o.wrapper = vec!["prlimit".into(), "--nofile=1024:1024".into(), "--".into()];
        o.env("VELOX_CACHE_REQUEST_BODY_TIMEOUT", "3s")
    });
    let pid = h.server().pid();
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[]).await;
    assert_eq!(first.status, 200);
    let a = addr(h.server());
    let mut stalled = actix_web::rt::task::spawn_blocking(move || {
        (0..1100).map(|_| stalled_body(&a)).collect::<Vec<_>>()
    })
    .await
    .expect("connect");
    // The public side is full (818 held, the rest in the backlog); a hit waits its turn.
    let hit_started = Instant::now();
    let url = h.builds_url();
    let hit_req = req.clone();
    let hit = actix_web::rt::spawn(async move { post_json(&url, &hit_req, &[]).await });
    let mut health_max = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let health = get(&h.server().admin_url("/healthz"), &[]).await;
        assert_eq!(health.status, 200);
        health_max = health_max.max(t.elapsed());
        let metrics = get(&h.server().admin_url("/metrics"), &[]).await;
        assert_eq!(metrics.status, 200);
    }
    let fds = open_descriptors(pid);
    assert!(fds < 1024, "{fds} descriptors open");
    let hit = tokio::time::timeout(Duration::from_secs(60), hit)
        .await
        .expect("the hit is answered once stalled bodies are cut")
        .expect("hit task");
    let hit_after = hit_started.elapsed();
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert!(hit.body == first.body);
    println!(
        "1,100 stalled bodies, hard limit 1,024: slowest /healthz {:.1} ms, server descriptors {fds}, \
         a hit answered after {:.2} s",
        health_max.as_secs_f64() * 1e3,
        hit_after.as_secs_f64()
    );
    let answers = actix_web::rt::task::spawn_blocking(move || {
        let by = Instant::now() + Duration::from_secs(60);
        stalled
            .iter_mut()
            .map(|s| read_to_close(s, by))
            .collect::<Vec<_>>()
    })
    .await
    .expect("answers");
    for a in &answers {
        assert_408_and_closed(a);
    }
    let log = h.server().log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("at most 818 connections"), "{log}");
}

#[actix_web::test]
async fn a_body_that_keeps_moving_is_read_and_a_stalled_chunked_one_is_cut() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_REQUEST_BODY_TIMEOUT", "1s"));
    let a = addr(h.server());
    let body = serde_json::to_vec(&build_request("linux", "amd64")).expect("json");
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a).expect("connect");
        let head = format!(
            "POST /_velox/v1/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("head");
        // Four pieces 600 ms apart: each pause is under the timeout, the whole is over it.
        for piece in body.chunks(body.len().div_ceil(4)) {
            std::thread::sleep(Duration::from_millis(600));
            s.write_all(piece).expect("piece");
        }
        read_to_close(&mut s, Instant::now() + Duration::from_secs(30))
    })
    .await
    .expect("task");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(300)]
    );

    let a = addr(h.server());
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a).expect("connect");
        s.write_all(
            b"POST /_velox/v1/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\n{\"rr_\r\n",
        )
        .expect("write");
        read_to_close(&mut s, Instant::now() + Duration::from_secs(30))
    })
    .await
    .expect("task");
    assert_408_and_closed(&answer);
}

#[actix_web::test]
async fn request_headers_that_never_finish_are_cut_after_5s() {
    let h = Harness::start();
    let a = addr(h.server());
    let (answer, took) = actix_web::rt::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a).expect("connect");
        let t = Instant::now();
        s.write_all(b"POST /_velox/v1/builds HTTP/1.1\r\nHost: x\r\nX-Slow")
            .expect("write");
        let answer = read_to_close(&mut s, Instant::now() + Duration::from_secs(30));
        (answer, t.elapsed())
    })
    .await
    .expect("task");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took >= Duration::from_millis(4500), "cut after {took:?}");
}

// ---- case ----

#[actix_web::test]
async fn the_bearer_scheme_and_the_bytes_unit_are_case_insensitive() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_API_TOKEN", "tok"));
    let req = build_request("linux", "amd64");
    let first = post_json(&h.builds_url(), &req, &[("authorization", "Bearer tok")]).await;
    assert_eq!(first.status, 200);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let auth = format!("{scheme} tok");
        let r = post_json(&h.builds_url(), &req, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{scheme}");
        assert_eq!(r.header("x-cache-status"), Some("HIT"));
    }
    let wrong = post_json(&h.builds_url(), &req, &[("authorization", "bearer nope")]).await;
    wrong.assert_error(401, "unauthorized");
    let basic = post_json(&h.builds_url(), &req, &[("authorization", "Basic tok")]).await;
    basic.assert_error(401, "unauthorized");

    let art = h.url(first.header("content-location").expect("location"));
    for unit in ["bytes", "BYTES", "Bytes"] {
        let range = format!("{unit}=10-19");
        let r = get(&art, &[("range", &range)]).await;
        assert_eq!(r.status, 206, "{unit}");
        assert_eq!(&r.body[..], &first.body[10..20]);
        let size = first.body.len();
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes 10-19/{size}").as_str())
        );
    }
    let other = get(&art, &[("range", "items=0-1")]).await;
    assert_eq!(other.status, 200, "an unknown unit is ignored");
}

// ---- the keys that bound these ----

#[test]
fn the_four_keys_have_their_defaults_and_refuse_bad_values() {
    let (code, out, err) = run(&["config"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("request_body_timeout = \"30s\""), "{out}");
    assert!(out.contains("scrub_interval = \"1day\""), "{out}");
    assert!(out.contains("scrub_rate_mb = 64.0"), "{out}");
    assert!(
        !out.contains("max_connections"),
        "unset: 80 % of the limit\n{out}"
    );
    let (code, out, _) = run(
        &["config"],
        &[
            ("VELOX_CACHE_MAX_CONNECTIONS", "500"),
            ("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "0"),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("max_connections = 500"), "{out}");
    assert!(out.contains("scrub_interval = \"0s\""), "{out}");
    for (var, value, key) in [
        (
            "VELOX_CACHE_REQUEST_BODY_TIMEOUT",
            "0",
            "request_body_timeout",
        ),
        (
            "VELOX_CACHE_REQUEST_BODY_TIMEOUT",
            "soon",
            "request_body_timeout",
        ),
        ("VELOX_CACHE_MAX_CONNECTIONS", "0", "max_connections"),
        (
            "VELOX_CACHE_CACHE__SCRUB_RATE_MB",
            "0",
            "cache.scrub_rate_mb",
        ),
        (
            "VELOX_CACHE_CACHE__SCRUB_INTERVAL",
            "daily",
            "cache.scrub_interval",
        ),
    ] {
        let (code, _, err) = run(&["config"], &[(var, value)]);
        assert_eq!(code, 2, "{var}={value}");
        assert!(err.contains(&format!("`{key}`")), "{var}={value}: {err}");
    }
}

// ---- the scrub in-process ----

#[test]
fn a_scrub_keeps_to_its_rate_goes_on_where_it_stopped_and_leaves_a_clean_index() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use velox_cache::ids::CacheKey;
    use velox_cache::store::{Store, Throttle};

    let dir = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let found = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&found);
    store.on_corrupt(move || {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let mut digests = Vec::new();
    for n in 0..4u8 {
        let path = out.path().join(format!("a{n}"));
        std::fs::write(&path, vec![n; 512 * 1024]).expect("write");
        let src = std::fs::File::open(&path).expect("open");
        let e = store
            .ingest(src, &CacheKey([n; 32]), "roadrunner", json!({}), 1)
            .expect("ingest");
        digests.push(e.digest);
    }
    let never = || false;

    // 2 MiB at 4 MB/s: at least half a second.
    let t = Instant::now();
    let report = store.scrub(&mut Throttle::new(4e6, &never)).expect("scrub");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        (report.checked, report.corrupt, report.stopped),
        (4, 0, false)
    );
    let day = Duration::from_secs(86_400);
    assert!(store.scrub_wait(day).expect("wait") > day - Duration::from_secs(60));

    // Stopped after the first blob (the stop is asked once per blob and once per chunk).
    let asked = AtomicUsize::new(0);
    let soon = || asked.fetch_add(1, Ordering::Relaxed) >= 3;
    let report = store.scrub(&mut Throttle::new(1e12, &soon)).expect("scrub");
    assert_eq!((report.checked, report.stopped), (1, true));
    assert_eq!(
        store.scrub_wait(day).expect("wait"),
        Duration::ZERO,
        "due at once"
    );
    let hex = digests[3].to_hex();
    flip_byte(
        &dir.path().join("blobs/sha256").join(&hex[..2]).join(&hex),
        9,
    );
    let report = store
        .scrub(&mut Throttle::new(1e12, &never))
        .expect("scrub");
    assert_eq!(
        (report.checked, report.corrupt, report.stopped),
        (3, 1, false)
    );
    assert_eq!(found.load(Ordering::Relaxed), 1);
    assert!(store.lookup(&CacheKey([3; 32])).expect("lookup").is_none());
    assert!(store.lookup(&CacheKey([2; 32])).expect("lookup").is_some());
    assert_eq!(quarantined(dir.path()).len(), 1);
    let problems = store.verify().expect("verify");
    assert!(problems.0.is_empty(), "{:?}", problems.0);
}

/// A stalled upload forwarded to the PHP app: cut at `request_body_timeout` with 408 JSON and the
/// connection closed, whatever the upstream made of the cut body.
#[actix_web::test]
async fn a_stalled_upload_to_the_upstream_is_cut_with_408() {
    let php = support::php::PhpApp::start();
    let upstream = php.url.clone();
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_UPSTREAM", &upstream)
            .env("VELOX_CACHE_REQUEST_BODY_TIMEOUT", "1s")
    });
    let a = addr(h.server());
    let started = Instant::now();
    let answer = actix_web::rt::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a).expect("connect");
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 5000\r\n\r\nthe first bytes, then nothing",
        )
        .expect("write");
        read_to_close(&mut s, Instant::now() + Duration::from_secs(30))
    })
    .await
    .expect("task");
    assert_408_and_closed(&answer);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cut at the timeout"
    );
}
