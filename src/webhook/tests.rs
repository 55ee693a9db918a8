//! The signature against Standard Webhooks' published vectors, and delivery against a real HTTP
//! receiver on a loopback port (the same sink the integration tests use).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use ring::hmac;
use serde_json::json;

use super::*;

#[allow(dead_code)]
#[path = "../../tests/support/webhook_sink.rs"]
pub(super) mod webhook_sink;

use webhook_sink::{Recorded, Reply, WebhookSink};

/// 24 random bytes, as Standard Webhooks makes them.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(super) const WAIT: Duration = Duration::from_secs(20);

fn key_of(secret: &str) -> Vec<u8> {
    parse_secret(secret).expect("key")
}

fn tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}

/// A schedule with short waits: `retries` in milliseconds, no jitter.
pub(super) fn quick(retries: &[u64]) -> Schedule {
    Schedule {
        retries: retries.iter().copied().map(Duration::from_millis).collect(),
        jitter: 0.0,
        attempt_timeout: Duration::from_secs(5),
        retry_after_min: Duration::from_millis(10),
        retry_after_max: Duration::from_secs(5),
        max_pending: 256,
    }
}

pub(super) fn webhook(url: &str, schedule: Schedule) -> (Webhook, Arc<WebhookStats>) {
    let stats = Arc::new(WebhookStats::default());
    let hook = Webhook::with_schedule(url, SECRET, tls(), Arc::clone(&stats), schedule)
        .expect("valid webhook");
    (hook, stats)
}

fn counts(stats: &WebhookStats) -> (u64, u64, u64) {
    (
        stats.delivered.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    )
}

/// Waits until the counters read `want` (delivered, retried, failed); panics with what they read.
pub(super) async fn wait_counts(stats: &WebhookStats, want: (u64, u64, u64)) {
    let deadline = Instant::now() + WAIT;
    while counts(stats) != want {
        assert!(
            Instant::now() < deadline,
            "counters (delivered, retried, failed) are {:?}, expected {want:?}",
            counts(stats)
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks one request as a receiver would, computing the HMAC here with `ring` directly.
pub(super) fn assert_verifies(r: &Recorded) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let signature = r.header("webhook-signature").expect("webhook-signature");
    let ts_num: i64 = ts.parse().expect("timestamp in integer seconds");
    let now = unix_now();
    assert!(
        (now - ts_num).abs() <= 5,
        "webhook-timestamp {ts} is not now ({now})"
    );
    let encoded = signature.strip_prefix("v1,").expect("a v1 signature");
    let tag = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64 signature");
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("test secret");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&r.body);
    hmac::verify(&key, &signed, &tag).expect("the signature verifies");
}

#[test]
fn sign_reproduces_the_published_vectors() {
    // From standard-webhooks/standard-webhooks, libraries/php/tests/WebhookTest.php
    // (testSignFunctionWorks) and libraries/rust/src/lib.rs (test_sign).
    let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
    assert_eq!(
        sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    let key = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").expect("key");
    assert_eq!(
        sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#
        ),
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    );
    // The example request of docs/webhooks.md, read from the page itself.
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks.md"))
        .expect("docs/webhooks.md");
    let example = page
        .split("```http\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the example request");
    let header = |name: &str| {
        example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in the example"))
    };
    let body = example
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("the example body");
    assert_eq!(
        sign(
            &key_of(SECRET),
            header("webhook-id"),
            header("webhook-timestamp").parse().expect("seconds"),
            body.as_bytes()
        ),
        header("webhook-signature")
    );
    // The bare base64 is the same key.
    assert_eq!(
        parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("bare key"),
        parse_secret(SECRET).expect("key")
    );
}

#[test]
fn bad_secrets_and_urls_are_refused_saying_why() {
    let stats = || Arc::new(WebhookStats::default());
    let new =
        |url: &str, secret: &str| Webhook::new(url, secret, tls(), stats()).expect_err("refused");
    let ok_url = "http://127.0.0.1:9/hook";
    // Not base64; the message must not quote it.
    let e = new(ok_url, "whsec_not*base64!seCret");
    assert!(e.contains("base64"), "{e}");
    assert!(!e.contains("not*base64!seCret"), "{e}");
    // Empty, with or without the prefix.
    for empty in ["", "whsec_", "  "] {
        let e = new(ok_url, empty);
        assert!(e.contains("empty"), "{empty:?}: {e}");
    }
    // Too short a key: 8 bytes.
    let e = new(ok_url, "whsec_c2hvcnRrZXk=");
    assert!(e.contains("8-byte") && e.contains("24"), "{e}");
    assert!(!e.contains("c2hvcnRrZXk"), "{e}");

    for (url, says) in [
        ("not a url", "not a URL"),
        ("ftp://host/hook", "http:// or https://"),
        ("/relative/hook", "http:// or https://"),
        ("http:///hook", "not a URL"),
    ] {
        let e = new(url, SECRET);
        assert!(e.contains(says), "{url}: {e}");
    }
    // Credentials in a bad URL are masked in the message.
    let e = new("ftp://user:hunter2@host/hook", SECRET);
    assert!(!e.contains("hunter2"), "{e}");
    // Both forms of a good one are accepted.
    Webhook::new(ok_url, SECRET, tls(), stats()).expect("http");
    Webhook::new("https://hooks.example/x", SECRET, tls(), stats()).expect("https");
}

#[actix_web::test]
async fn debug_shows_neither_the_secret_nor_url_credentials() {
    let (hook, _) = webhook("http://user:hunter2@127.0.0.1:9/hook?token=abc", quick(&[]));
    let shown = format!("{hook:?}");
    assert!(shown.contains("127.0.0.1:9"), "{shown}");
    for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2", "abc"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[actix_web::test]
async fn an_event_arrives_signed_in_standard_webhooks_shape() {
    let sink = WebhookSink::start();
    let (hook, stats) = webhook(&sink.url(), quick(&[]));
    hook.send(
        "channel.release.flipped",
        json!({"channel": "prod", "release": "r1"}),
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_verifies(&got[0]);
    assert_eq!(got[0].path, "/hook");
    let id = got[0].header("webhook-id").expect("id");
    assert!(id.starts_with("msg_") && id.len() > 20, "webhook-id {id}");
    let body = got[0].json();
    assert_eq!(body["type"], "channel.release.flipped");
    assert_eq!(body["data"], json!({"channel": "prod", "release": "r1"}));
    let when = body["timestamp"].as_str().expect("timestamp");
    let when = humantime::parse_rfc3339(when).expect("RFC 3339 timestamp");
    let age = SystemTime::now().duration_since(when).unwrap_or_default();
    assert!(age < Duration::from_secs(60), "timestamp {body}");
    wait_counts(&stats, (1, 0, 0)).await;

    // A second event has its own id.
    hook.send("channel.prebuild.failed", json!({"channel": "prod"}));
    let got = sink.wait_for(2, WAIT).await;
    assert_verifies(&got[1]);
    assert_ne!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    wait_counts(&stats, (2, 0, 0)).await;
    assert_eq!(hook.pending(), 0);
}

#[actix_web::test]
async fn failed_answers_are_retried_with_the_same_id() {
    let sink = WebhookSink::start();
    sink.fail_next(2, 500);
    let (hook, stats) = webhook(&sink.url(), quick(&[20, 20, 20, 20]));
    hook.send("channel.release.flipped", json!({"channel": "prod"}));
    wait_counts(&stats, (1, 2, 0)).await;
    let got = sink.received();
    assert_eq!(got.len(), 3, "attempts: {got:?}");
    for r in &got {
        assert_verifies(r);
        assert_eq!(r.header("webhook-id"), got[0].header("webhook-id"));
        assert_eq!(r.body, got[0].body, "the body is the same on every attempt");
    }
}

#[actix_web::test]
async fn redirects_and_other_statuses_are_failures_not_followed() {
    let sink = WebhookSink::start();
    sink.reply_next(Reply::Status(302));
    sink.reply_next(Reply::Status(404));
    let (hook, stats) = webhook(&sink.url(), quick(&[20, 20]));
    hook.send("channel.release.flipped", json!({}));
    wait_counts(&stats, (1, 2, 0)).await;
    assert_eq!(sink.received().len(), 3);
}

#[actix_web::test]
async fn retry_after_is_honoured() {
    let sink = WebhookSink::start();
    // The schedule says 20 ms; the receiver asks for 1 s.
    sink.reply_next(Reply::RetryAfter(503, "1".into()));
    let (hook, stats) = webhook(&sink.url(), quick(&[20]));
    hook.send("channel.release.flipped", json!({}));
    wait_counts(&stats, (1, 1, 0)).await;
    let got = sink.received();
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[actix_web::test]
async fn retry_after_is_kept_within_bounds() {
    let sink = WebhookSink::start();
    sink.reply_next(Reply::RetryAfter(503, "3600".into()));
    sink.reply_next(Reply::RetryAfter(429, "0".into()));
    sink.reply_next(Reply::RetryAfter(
        503,
        "Wed, 21 Oct 2065 07:28:00 GMT".into(),
    ));
    let schedule = Schedule {
        retry_after_min: Duration::from_millis(300),
        retry_after_max: Duration::from_millis(600),
        ..quick(&[10, 10, 10])
    };
    let (hook, stats) = webhook(&sink.url(), schedule);
    hook.send("channel.release.flipped", json!({}));
    // An hour was asked for: delivered anyway, within the test's wait.
    wait_counts(&stats, (1, 3, 0)).await;
    let got = sink.received();
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Capped at the maximum, raised to the minimum; a date is not seconds, so the schedule's.
    assert!(gaps[0] >= Duration::from_millis(590), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(290), "{gaps:?}");
    assert!(gaps[0] < Duration::from_secs(60), "{gaps:?}");
}

#[actix_web::test]
async fn a_receiver_that_is_down_is_given_up_after_the_schedule() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (hook, stats) = webhook(&format!("http://127.0.0.1:{port}/hook"), quick(&[20, 20]));
    hook.send("channel.prebuild.failed", json!({"channel": "prod"}));
    wait_counts(&stats, (0, 2, 1)).await;
    // The event no longer counts as pending.
    let deadline = Instant::now() + WAIT;
    while hook.pending() != 0 {
        assert!(Instant::now() < deadline, "still pending");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn a_receiver_that_does_not_answer_times_out_and_is_retried() {
    let sink = WebhookSink::start();
    sink.reply_next(Reply::Hang(Duration::from_secs(30)));
    let schedule = Schedule {
        attempt_timeout: Duration::from_millis(300),
        ..quick(&[20])
    };
    let (hook, stats) = webhook(&sink.url(), schedule);
    hook.send("channel.release.flipped", json!({}));
    wait_counts(&stats, (1, 1, 0)).await;
    let got = sink.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
}

#[actix_web::test]
async fn send_returns_while_the_receiver_holds_the_request() {
    let sink = WebhookSink::start();
    sink.hold();
    let (hook, stats) = webhook(&sink.url(), quick(&[]));
    // On a thread of its own, so that a `send` that waited for the receiver would show as a
    // timeout here rather than hang the test.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let sender = hook.clone();
    std::thread::spawn(move || {
        sender.send("channel.release.flipped", json!({}));
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("send returned while the receiver held the request");
    // The receiver had recorded nothing yet: it is still held.
    assert!(sink.received().is_empty());
    assert_eq!(counts(&stats), (0, 0, 0));
    sink.release();
    sink.wait_for(1, WAIT).await;
    wait_counts(&stats, (1, 0, 0)).await;
}

#[actix_web::test]
async fn events_beyond_the_queue_bound_are_dropped_and_counted() {
    let sink = WebhookSink::start();
    sink.hold();
    let schedule = Schedule {
        max_pending: 2,
        ..quick(&[])
    };
    let (hook, stats) = webhook(&sink.url(), schedule);
    for n in 0..5 {
        hook.send("channel.release.flipped", json!({"n": n}));
    }
    // Counted at once, in `send`.
    assert_eq!(counts(&stats), (0, 0, 3));
    assert_eq!(hook.pending(), 2);
    sink.release();
    wait_counts(&stats, (2, 0, 3)).await;
    let mut ns: Vec<i64> = sink
        .wait_for(2, WAIT)
        .await
        .iter()
        .filter_map(|r| r.json()["data"]["n"].as_i64())
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, [0, 1], "the first two were kept");
    // With room again, the next event goes.
    hook.send("channel.release.flipped", json!({"n": 5}));
    wait_counts(&stats, (3, 0, 3)).await;
}

/// Runs docs/examples/verify-webhook.php on `headers` and `body`: its exit status and output.
fn php_verify(headers: &serde_json::Value, body: &[u8]) -> (bool, String) {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let headers_file = dir.path().join("headers.json");
    std::fs::write(&headers_file, headers.to_string()).expect("headers file");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/verify-webhook.php"
    );
    let mut child = std::process::Command::new("php")
        .arg(script)
        .arg(&headers_file)
        .env("WEBHOOK_SECRET", SECRET)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the tests need `php` (apt-get install php-cli; scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("body to php");
    let out = child.wait_with_output().expect("php ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[actix_web::test]
async fn the_documented_php_receiver_verifies_a_delivery() {
    let sink = WebhookSink::start();
    sink.fail_next(1, 500);
    let (hook, stats) = webhook(&sink.url(), quick(&[20]));
    hook.send(
        "channel.prebuild.failed",
        json!({"channel": "prod", "error": "é \"quoted\""}),
    );
    wait_counts(&stats, (1, 1, 0)).await;
    let got = sink.received();
    let headers = |r: &Recorded| {
        json!({
            "Webhook-Id": r.header("webhook-id"),
            "webhook-timestamp": r.header("webhook-timestamp"),
            "webhook-signature": r.header("webhook-signature"),
        })
    };
    // Both attempts verify, as received.
    for r in &got {
        let (ok, out) = php_verify(&headers(r), &r.body);
        assert!(ok, "php refused a genuine delivery: {out}");
        assert_eq!(out.trim(), "channel.prebuild.failed");
    }
    // A changed body, another event's id, another key: refused.
    let mut tampered = got[0].body.clone();
    tampered.extend_from_slice(b" ");
    let (ok, out) = php_verify(&headers(&got[0]), &tampered);
    assert!(!ok && out.contains("no valid signature"), "{out}");
    let key = parse_secret(SECRET).expect("key");
    let ts: i64 = got[0]
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .expect("timestamp");
    let mut other_id = headers(&got[0]);
    other_id["webhook-signature"] = json!(sign(&key, "msg_other", ts, &got[0].body));
    let (ok, out) = php_verify(&other_id, &got[0].body);
    assert!(!ok && out.contains("no valid signature"), "{out}");
    let mut other_key = headers(&got[0]);
    let id = got[0].header("webhook-id").expect("id");
    other_key["webhook-signature"] = json!(sign(&[7u8; 32], id, ts, &got[0].body));
    let (ok, out) = php_verify(&other_key, &got[0].body);
    assert!(!ok && out.contains("no valid signature"), "{out}");
    // An old delivery, correctly signed, is a replay.
    let old = unix_now() - 600;
    let replay = json!({
        "webhook-id": id,
        "webhook-timestamp": old.to_string(),
        "webhook-signature": sign(&key, id, old, &got[0].body),
    });
    let (ok, out) = php_verify(&replay, &got[0].body);
    assert!(!ok && out.contains("too far"), "{out}");
}

/// Every log line of this module, from every test of the process (the logger is global).
fn captured_logs() -> &'static std::sync::Mutex<Vec<(log::Level, String)>> {
    struct Capture;
    static LINES: std::sync::OnceLock<std::sync::Mutex<Vec<(log::Level, String)>>> =
        std::sync::OnceLock::new();
    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target()
                .starts_with(module_path!().trim_end_matches("::tests"))
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let mut lines = captured_logs().lock().unwrap_or_else(|e| e.into_inner());
                lines.push((r.level(), r.args().to_string()));
            }
        }
        fn flush(&self) {}
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        if log::set_boxed_logger(Box::new(Capture)).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    });
    LINES.get_or_init(Default::default)
}

#[actix_web::test]
async fn the_log_names_type_and_id_and_never_the_secret_or_url_credentials() {
    let logs = captured_logs();
    let sink = WebhookSink::start();
    sink.fail_next(2, 500);
    let url = sink
        .url()
        .replace("/hook", "/hook?token=s3cr3t")
        .replace("http://", "http://whuser:hunter2@");
    let schedule = Schedule {
        max_pending: 1,
        ..quick(&[20])
    };
    let (hook, stats) = webhook(&url, schedule);
    hook.send("channel.prebuild.failed", json!({"channel": "logged"}));
    // Beyond the bound of 1: dropped at once.
    hook.send("channel.release.flipped", json!({"channel": "dropped"}));
    wait_counts(&stats, (0, 1, 2)).await;
    // The URL's user information went as Basic authentication, not in the request line.
    let first = &sink.received()[0];
    assert_eq!(
        first.header("authorization"),
        Some("Basic d2h1c2VyOmh1bnRlcjI="),
        "whuser:hunter2"
    );
    assert_eq!(first.path, "/hook");
    let id = sink.received()[0]
        .header("webhook-id")
        .expect("id")
        .to_owned();
    let lines: Vec<(log::Level, String)> = logs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, l)| l.contains(&sink.addr.port().to_string()) || l.contains(&id))
        .cloned()
        .collect();
    assert!(
        lines.iter().any(|(level, l)| *level == log::Level::Warn
            && l.contains("given up")
            && l.contains("channel.prebuild.failed")
            && l.contains(&id)),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|(level, l)| *level == log::Level::Warn
            && l.contains("dropped")
            && l.contains("channel.release.flipped")),
        "{lines:#?}"
    );
    for (_, l) in &lines {
        for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "hunter2", "s3cr3t"] {
            assert!(!l.contains(secret), "{l}");
        }
    }
}

#[test]
fn user_information_becomes_basic_authentication() {
    assert_eq!(
        split_userinfo("https://hooks.example/x?a=b@c"),
        ("https://hooks.example/x?a=b@c".to_owned(), None)
    );
    let (url, auth) = split_userinfo("https://us%40er:p%3Aa%zzss@hooks.example:8443/x");
    assert_eq!(url, "https://hooks.example:8443/x");
    let decoded = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    assert_eq!(decoded.as_deref(), Some(&b"us@er:p:a%zzss"[..]));
    let (url, auth) = split_userinfo("http://token@hooks.example");
    assert_eq!(url, "http://hooks.example");
    assert_eq!(auth.as_deref(), Some("Basic dG9rZW46"), "token:");
}
