//! Pending events kept on disk ([`super::spool`]): through a real HTTP receiver, a "restart"
//! being a second sender on the same folder after the first was dropped.

use std::time::{Duration, Instant};

use serde_json::json;

use super::tests::webhook_sink::WebhookSink;
use super::tests::{assert_verifies, quick, wait_counts, webhook, WAIT};

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn eventually_empty(dir: &std::path::Path) {
    let deadline = Instant::now() + WAIT;
    while !files(dir).is_empty() {
        assert!(Instant::now() < deadline, "still kept: {:?}", files(dir));
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn an_event_pending_at_a_stop_is_sent_after_the_restart_under_its_own_id() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = dir.path().join("webhooks");
    // A receiver that fails every attempt, and a retry far away: the event stays pending.
    let down = WebhookSink::start();
    down.fail_next(1000, 503);
    let (first, _) = webhook(&down.url(), quick(&[600_000]));
    assert_eq!(first.spool_in(&spool), 0, "nothing left by a previous run");
    first.send("channel.release.flipped", json!({"channel": "prod"}));
    let deadline = Instant::now() + WAIT;
    while down.received().is_empty() || files(&spool).len() != 1 {
        assert!(Instant::now() < deadline, "no failed attempt, or not kept");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = down.received().remove(0);
    let id = failed.header("webhook-id").expect("id").to_owned();
    assert_eq!(files(&spool), vec![format!("{id}.json")]);
    drop(first);

    // The next run, its receiver up: the same event, by id and body, signed anew.
    let up = WebhookSink::start();
    let (second, stats) = webhook(&up.url(), quick(&[20]));
    assert_eq!(second.spool_in(&spool), 1);
    wait_counts(&stats, (1, 0, 0)).await;
    let got = up.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_verifies(&got[0]);
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(
        got[0].body, failed.body,
        "the event's own body and timestamp"
    );
    eventually_empty(&spool).await;
}

#[actix_web::test]
async fn delivered_and_given_up_events_are_not_kept_and_a_damaged_file_is_dropped() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = dir.path().join("webhooks");
    std::fs::create_dir_all(&spool).expect("dir");
    std::fs::write(
        spool.join("msg_0123456789abcdef0123456789abcdef.json"),
        b"{not json",
    )
    .expect("damage");
    let sink = WebhookSink::start();
    sink.fail_next(2, 500);
    let (hook, stats) = webhook(&sink.url(), quick(&[20]));
    assert_eq!(hook.spool_in(&spool), 0, "the damaged file is not an event");
    assert!(files(&spool).is_empty(), "{:?}", files(&spool));
    hook.send("channel.release.flipped", json!({"n": 1}));
    // Two attempts, both refused: given up, and no longer kept.
    wait_counts(&stats, (0, 1, 1)).await;
    eventually_empty(&spool).await;
    hook.send("channel.release.flipped", json!({"n": 2}));
    wait_counts(&stats, (1, 1, 1)).await;
    eventually_empty(&spool).await;
}
