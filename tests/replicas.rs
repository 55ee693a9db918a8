//! What replicas sharing a bucket know of each other's keys (docs/object-storage.md), through
//! real HTTP: velox-cache processes (the real binary), one stand-in Velox, moto's S3 server. The
//! status route of a key built or being built on another replica, and a DELETE on one replica
//! reaching the local tiers of the others.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::time::Duration;

use cluster::Cluster;
use support::sse::EventStream;
use support::*;

fn builds(s: &Server) -> String {
    s.url("/_velox/v1/builds")
}

fn status(s: &Server, key: &str) -> String {
    s.url(&format!("/_velox/v1/builds/{key}"))
}

async fn delete(s: &Server, key: &str) -> u16 {
    client()
        .delete(s.admin_url(&format!("/v1/cache/{key}")))
        .send()
        .await
        .expect("delete")
        .status()
        .as_u16()
}

async fn has_entry(s: &Server, key: &str) -> bool {
    get(&s.admin_url(&format!("/v1/cache/{key}")), &[])
        .await
        .status
        == 200
}

#[actix_web::test]
async fn the_status_of_another_replicas_build_comes_from_the_bucket() {
    let mut c = Cluster::start("status/");
    let (a, b) = (c.replica(), c.replica());
    c.velox.set_delay(Duration::from_secs(4));
    let req = build_request("linux", "amd64");

    let accepted = post_json(&builds(&a), &req, &[("prefer", "respond-async")]).await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let key = accepted
        .header("x-velox-cache-key")
        .expect("key")
        .to_owned();

    // B did not see the build: A's lock in the bucket makes it `building` there too.
    assert!(
        eventually(Duration::from_secs(10), async || c.objects("locks/").len()
            == 1)
        .await,
        "A took no lock"
    );
    let building = get(&status(&b, &key), &[]).await;
    assert_eq!(building.status, 200, "{:?}", building.body);
    assert_eq!(building.header("cache-control"), Some("no-store"));
    let json = building.json();
    assert_eq!(json["status"], "building", "{json}");
    assert_eq!(json["key"], key.as_str());
    assert!(json["elapsed_ms"].as_u64().is_some(), "{json}");
    assert!(
        json.get("velox_attempts").is_none(),
        "B cannot know A's attempts: {json}"
    );

    // B's event stream follows A's build through the bucket and ends with `ready`.
    let events = {
        let url = status(&b, &key);
        std::thread::spawn(move || {
            let mut stream = EventStream::open(&url, &[]);
            assert_eq!(stream.status, 200);
            let mut seen = Vec::new();
            while let Some(event) = stream.next_event() {
                seen.push(event);
            }
            seen
        })
    };

    let ready_on_a = async || get(&status(&a, &key), &[]).await.json()["status"] == "ready";
    assert!(eventually(Duration::from_secs(30), ready_on_a).await);
    let on_a = get(&status(&a, &key), &[]).await.json();
    let on_b = get(&status(&b, &key), &[]).await;
    assert_eq!(on_b.status, 200);
    let on_b = on_b.json();
    assert_eq!(on_b["status"], "ready", "{on_b}");
    for field in ["artifact_url", "size", "digest"] {
        assert_eq!(on_b[field], on_a[field], "{field}: {on_b} against {on_a}");
    }
    let seen = events.join().expect("the event stream");
    assert_eq!(
        seen.first().map(|e| e["status"].clone()),
        Some("building".into())
    );
    assert_eq!(seen.last().expect("events")["status"], "ready", "{seen:?}");
    assert_eq!(seen.last().expect("events")["digest"], on_a["digest"]);
    // The status route only looked: B's local tier is as empty as before, Velox built once.
    assert!(!has_entry(&b, &key).await);
    assert_eq!(c.velox.calls(), 1);

    // A key nobody built is unknown on every replica.
    let unknown = "ab".repeat(32);
    get(&status(&b, &unknown), &[])
        .await
        .assert_error(404, "not_found");

    // Without the bucket, B cannot tell: 503 with Retry-After. A still answers from what it
    // holds itself, without the bucket.
    c.moto.stop();
    let down = get(&status(&b, &key), &[]).await;
    down.assert_error(503, "storage_unavailable");
    assert!(down.header("retry-after").is_some());
    let local = get(&status(&a, &key), &[]).await;
    assert_eq!(local.status, 200);
    assert_eq!(local.json()["status"], "ready");
}

#[actix_web::test]
async fn a_build_that_ends_without_a_binary_elsewhere_ends_the_event_stream() {
    let mut c = Cluster::start("vanished/");
    let (a, b) = (c.replica(), c.replica());
    c.velox.set_delay(Duration::from_secs(3));
    c.velox.script([Behavior::Fail("undefined: main".into())]);
    let req = build_request("linux", "arm64");
    let accepted = post_json(&builds(&a), &req, &[("prefer", "respond-async")]).await;
    assert_eq!(accepted.status, 202);
    let key = accepted
        .header("x-velox-cache-key")
        .expect("key")
        .to_owned();
    assert!(
        eventually(Duration::from_secs(10), async || c.objects("locks/").len()
            == 1)
        .await
    );
    let url = status(&b, &key);
    let seen = std::thread::spawn(move || {
        let mut stream = EventStream::open(&url, &[]);
        let mut seen = Vec::new();
        while let Some(event) = stream.next_event() {
            seen.push(event);
        }
        seen
    })
    .join()
    .expect("the event stream");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["status"], "building");
    assert_eq!(seen[1]["status"], "failed");
    assert_eq!(seen[1]["error"], "build_failed");
    // Afterwards B knows nothing of the key; A remembers the failure.
    get(&status(&b, &key), &[])
        .await
        .assert_error(404, "not_found");
    assert_eq!(get(&status(&a, &key), &[]).await.json()["status"], "failed");
}

#[actix_web::test]
async fn a_delete_on_one_replica_reaches_the_others_and_a_rebuild_stays() {
    let mut c = Cluster::start("tomb/").with("VELOX_CACHE_STORAGE__S3__TOMBSTONE_POLL", "1s");
    let (a, b, third) = (c.replica(), c.replica(), c.replica());
    let req = build_request("linux", "amd64");
    let miss = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    let key = miss.header("x-velox-cache-key").expect("key").to_owned();
    for r in [&b, &third] {
        let hit = post_json(&builds(r), &req, &[]).await;
        assert_eq!(hit.header("x-cache-status"), Some("HIT"));
        assert!(
            eventually(Duration::from_secs(10), async || has_entry(r, &key).await).await,
            "the local tier was not filled"
        );
    }

    assert_eq!(delete(&a, &key).await, 200);
    assert!(!has_entry(&a, &key).await);
    let stones = c.objects("tombstones/");
    assert_eq!(stones.len(), 1, "{stones:?}");
    assert_eq!(stones[0].0, format!("tombstones/{key}"));
    assert!(c.objects("manifests/").is_empty());

    // Within a poll or two, B and the third replica drop their local copies.
    for r in [&b, &third] {
        assert!(
            eventually(Duration::from_secs(10), async || !has_entry(r, &key).await).await,
            "a replica kept serving a deleted key"
        );
        // Counted once the removal has returned: a moment after the entry is gone.
        let mut applied = 0.0;
        let counted = eventually(Duration::from_secs(5), async || {
            applied = metric(r, "velox_bucket_tombstones_applied_total").await;
            applied >= 1.0
        })
        .await;
        assert!(counted && applied == 1.0, "tombstones applied: {applied}");
    }

    // The next request rebuilds, once; the others then hit the rebuild.
    let rebuilt = post_json(&builds(&b), &req, &[]).await;
    assert_eq!(rebuilt.header("x-cache-status"), Some("MISS"));
    assert_eq!(c.velox.calls(), 2);
    let hit = post_json(&builds(&third), &req, &[]).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert!(hit.body == rebuilt.body, "another binary");
    assert!(
        eventually(Duration::from_secs(10), async || has_entry(&third, &key)
            .await)
        .await
    );

    // The old tombstone is still there, and does not take the rebuild away: after more looks
    // at it, both replicas still hold the key, and Velox was not called again.
    assert_eq!(c.objects("tombstones/").len(), 1);
    for r in [&b, &third] {
        let lists = "velox_bucket_requests_total{op=\"tombstone_list\"}";
        let before = metric(r, lists).await;
        assert!(
            eventually(Duration::from_secs(10), async || metric(r, lists).await
                >= before + 2.0)
            .await
        );
        assert!(has_entry(r, &key).await, "a rebuild was dropped");
        assert_eq!(
            metric(r, "velox_bucket_tombstones_applied_total").await,
            1.0
        );
    }
    let again = post_json(&builds(&a), &req, &[]).await;
    assert_eq!(again.header("x-cache-status"), Some("HIT"));
    assert!(again.body == rebuilt.body, "another binary");
    assert_eq!(c.velox.calls(), 2);
}

#[actix_web::test]
async fn tombstones_that_are_not_keys_are_ignored_and_a_bad_poll_interval_is_refused() {
    let mut c = Cluster::start("junk/").with("VELOX_CACHE_STORAGE__S3__TOMBSTONE_POLL", "1s");
    let a = c.replica();
    let req = build_request("darwin", "arm64");
    let miss = post_json(&builds(&a), &req, &[]).await;
    let key = miss.header("x-velox-cache-key").expect("key").to_owned();
    // Anyone with write access may put anything there: names that are no key change nothing.
    c.moto.put_object("junk/tombstones/not-a-key", b"{}", &[]);
    c.moto
        .put_object(&format!("junk/tombstones/{key}/deeper"), b"{}", &[]);
    let lists = "velox_bucket_requests_total{op=\"tombstone_list\"}";
    let before = metric(&a, lists).await;
    assert!(
        eventually(Duration::from_secs(10), async || metric(&a, lists).await
            >= before + 2.0)
        .await
    );
    assert!(has_entry(&a, &key).await);
    assert_eq!(
        metric(&a, "velox_bucket_tombstones_applied_total").await,
        0.0
    );
    assert_eq!(
        metric(&a, "velox_bucket_errors_total{op=\"tombstone_list\"}").await,
        0.0
    );

    for bad in ["0s", "500ms", "2h", "soon"] {
        let (code, _, err) = server::run(
            &["config"],
            &[
                ("VELOX_CACHE_STORAGE__BACKEND", "s3"),
                ("VELOX_CACHE_STORAGE__S3__BUCKET", "b"),
                ("VELOX_CACHE_STORAGE__S3__TOMBSTONE_POLL", bad),
            ],
        );
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("tombstone_poll"), "{bad}: {err}");
    }
}
