//! Channels shared by replicas (docs/channels.md, "With replicas"), through real HTTP:
//! velox-cache processes (the real binary) on one moto S3 bucket, one stand-in Velox, one
//! stand-in Go module proxy. Every replica serves the same release, each release is built once,
//! and a channel changed on one replica reaches the others.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::time::Duration;

use cluster::Cluster;
use serde_json::{json, Value};
use support::goproxy::GoProxy;
use support::*;

const HTTP: &str = "github.com/roadrunner-server/http/v5";

async fn channel(s: &Server, name: &str) -> (u16, Value) {
    let r = get(&s.url(&format!("/_velox/v1/channels/{name}")), &[]).await;
    let status = r.status;
    (status, if status == 200 { r.json() } else { Value::Null })
}

/// Waits until every replica's channel `name` has a current release other than `not`, the same
/// on all; returns its id.
async fn same_release(replicas: &[&Server], name: &str, not: Option<&str>) -> String {
    let mut seen = Vec::new();
    let ok = eventually(Duration::from_secs(40), async || {
        seen.clear();
        for s in replicas {
            seen.push(channel(s, name).await.1["current"]["id"].clone());
        }
        let first = seen[0].as_str();
        first.is_some() && first != not && seen.iter().all(|id| id.as_str() == first)
    })
    .await;
    assert!(
        ok,
        "replicas never agreed: {seen:?}\n{}",
        replicas
            .iter()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    seen[0].as_str().unwrap_or_default().to_owned()
}

/// Replicas on one bucket under `prefix`, resolving with `proxy`, polling every second, each given
/// the same file with channel `prod` (`http/v5@latest`, plus `extra` lines).
fn channel_cluster(prefix: &str, proxy: &GoProxy, extra: &str) -> Cluster {
    let cluster = Cluster::start(prefix);
    let config = cluster.tmp.path().join("velox-cache.toml");
    std::fs::write(
        &config,
        format!(
            "[channels.prod]\nrr_version = \"v2025.1.2\"\nplugins = [{{ module_name = \"{HTTP}\", tag = \"latest\" }}]\n{extra}"
        ),
    )
    .expect("config");
    cluster
        .with("VELOX_CACHE_CONFIG", config.to_str().expect("utf-8"))
        .with("VELOX_CACHE_RESOLVE__GOPROXY", &proxy.url)
        .with("VELOX_CACHE_RESOLVE__TTL", "0s")
        .with("VELOX_CACHE_PREBUILD__POLL", "1s")
        .with("VELOX_CACHE_STORAGE__S3__TOMBSTONE_POLL", "1s")
}

#[actix_web::test]
async fn replicas_serve_one_release_built_once_and_share_changes() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut cluster = channel_cluster(
        "chan/",
        &proxy,
        "platforms = [\"linux/amd64\", \"linux/arm64\"]\n",
    );
    let a = cluster.replica();
    let b = cluster.replica();

    // Both pre-build at start; the bucket's build locks make each platform one Velox build.
    let first = same_release(&[&a, &b], "prod", None).await;
    assert_eq!(
        cluster.velox.builds(),
        2,
        "one build per platform, not per replica"
    );
    let objects: Vec<String> = cluster
        .objects("channels/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(objects, vec!["channels/prod.json"]);
    let from_a = get(&a.url("/_velox/v1/channels/prod/linux/amd64"), &[]).await;
    let from_b = get(&b.url("/_velox/v1/channels/prod/linux/amd64"), &[]).await;
    assert_eq!(from_a.status, 200);
    assert_eq!(from_b.status, 200);
    assert_eq!(from_a.body, from_b.body);
    assert_eq!(
        from_b.header("x-velox-channel-release"),
        Some(first.as_str())
    );

    // The tag moves: both replicas flip to the same new release, built once.
    proxy.set_latest(HTTP, "v5.2.8");
    let second = same_release(&[&a, &b], "prod", Some(&first)).await;
    assert_eq!(cluster.velox.builds(), 4);
    let (_, on_b) = channel(&b, "prod").await;
    assert_eq!(on_b["current"]["id"], second.as_str());
    assert_eq!(on_b["current"]["resolved"][HTTP], "v5.2.8");
    assert_eq!(on_b["releases"][1]["id"], first.as_str());
    // Both replicas pin the release they serve: B may have left the builds to A and hold no copy
    // yet; its first download fills its tier, and the entry is pinned there.
    let key = on_b["current"]["binaries"]["linux/arm64"]["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let from_b = get(&b.url("/_velox/v1/channels/prod/linux/arm64"), &[]).await;
    assert_eq!(from_b.status, 200);
    assert_eq!(
        from_b.header("x-velox-channel-release"),
        Some(second.as_str())
    );
    let pinned_on_b = eventually(Duration::from_secs(10), async || {
        let r = get(&b.admin_url(&format!("/v1/cache/{key}")), &[]).await;
        r.status == 200 && r.json()["pins"] == json!(["channel:prod"])
    })
    .await;
    assert!(pinned_on_b, "{}", b.log_text());

    // A channel defined through one replica's API is served by the other.
    let mut put = client()
        .put(a.admin_url("/v1/channels/workers"))
        .insert_header(("content-type", "application/json"))
        .send_body(
            serde_json::to_vec(&json!({
                "rr_version": "v2025.1.2",
                "plugins": [{"module_name": HTTP, "tag": "v5.2.7"}],
            }))
            .expect("json"),
        )
        .await
        .expect("sent");
    assert_eq!(put.status().as_u16(), 201, "{:?}", put.body().await);
    let workers = same_release(&[&a, &b], "workers", None).await;
    let r = get(&b.url("/_velox/v1/channels/workers/linux/amd64"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-velox-channel-release"), Some(workers.as_str()));
    // A file channel is read-only on every replica.
    let refused = client()
        .delete(b.admin_url("/v1/channels/prod"))
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status().as_u16(), 409);

    // Deleted on the other replica: gone from both.
    let gone = client()
        .delete(b.admin_url("/v1/channels/workers"))
        .send()
        .await
        .expect("sent");
    assert_eq!(gone.status().as_u16(), 204);
    let gone_from_a = eventually(Duration::from_secs(10), async || {
        channel(&a, "workers").await.0 == 404
    })
    .await;
    assert!(gone_from_a, "{}", a.log_text());
    assert!(cluster
        .objects("channels/")
        .iter()
        .all(|(k, _)| k != "channels/workers.json"));

    // Without auth.url_secret a key made by one replica would not be the others': signed URLs
    // are off, said once at start, and neither made nor accepted (the replicas still start).
    let path = "/_velox/v1/channels/prod/linux/arm64";
    let refused = post_json(
        &a.admin_url("/v1/signed-urls"),
        &json!({"path": path, "expires_in": "1h"}),
        &[],
    )
    .await;
    let why = refused.assert_error(409, "conflict");
    assert!(why.to_string().contains("auth.url_secret"), "{why}");
    let forged = get(&b.url(&format!("{path}?expires=4102444800&sig=AAAA")), &[]).await;
    let why = forged.assert_error(403, "forbidden");
    assert!(why.to_string().contains("auth.url_secret"), "{why}");
    assert_eq!(a.log_text().matches("signed URLs are off").count(), 1);
}

#[actix_web::test]
async fn a_damaged_record_in_the_bucket_is_served_around_and_written_again() {
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let mut cluster = channel_cluster("damaged/", &proxy, "");
    let a = cluster.replica();
    let first = same_release(&[&a], "prod", None).await;

    // Someone with write access to the bucket breaks the record.
    let object = format!("{}channels/prod.json", cluster.prefix);
    cluster
        .moto
        .put_object(&object, b"#!/bin/sh\nrm -rf /\n", &[]);
    let noticed = eventually(Duration::from_secs(10), async || {
        a.log_text().contains("is damaged")
    })
    .await;
    assert!(noticed, "{}", a.log_text());
    let (status, c) = channel(&a, "prod").await;
    assert_eq!(status, 200);
    assert_eq!(c["current"]["id"], first.as_str(), "A keeps its copy");
    let r = get(&a.url("/_velox/v1/channels/prod/linux/amd64"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-velox-channel-release"), Some(first.as_str()));
    assert_eq!(r.header("x-cache-status"), Some("HIT"));

    // The next flip writes a good record again, and both replicas follow it.
    proxy.set_latest(HTTP, "v5.2.8");
    let second = same_release(&[&a], "prod", Some(&first)).await;
    let stored = cluster.moto.get_object(&object).expect("the record");
    let record: Value = serde_json::from_slice(&stored).expect("valid JSON again");
    assert_eq!(record["releases"][0]["id"], second.as_str());
    assert_eq!(
        record["releases"][1]["id"],
        first.as_str(),
        "A's history kept"
    );
    // A replica started now follows the repaired record.
    let b = cluster.replica();
    assert_eq!(same_release(&[&a, &b], "prod", None).await, second);

    // A record of a newer version is left alone (a newer velox-cache wrote it).
    let mut newer = record.clone();
    newer["version"] = json!(99);
    let newer_bytes = serde_json::to_vec(&newer).expect("json");
    cluster.moto.put_object(&object, &newer_bytes, &[]);
    proxy.set_latest(HTTP, "v5.2.9");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(cluster.moto.get_object(&object), Some(newer_bytes));
    assert_eq!(
        channel(&a, "prod").await.1["current"]["id"],
        second.as_str()
    );
}
