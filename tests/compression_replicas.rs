//! Compressed variants shared by replicas (docs/compression.md, "With replicas"), through real
//! HTTP: velox-cache processes (the real binary) on one moto S3 bucket, a stand-in Velox building
//! Debian's `promtool`. The replica that built it makes the variants and puts them in the bucket;
//! another replica takes them from there instead of compressing again, and serves the same bytes
//! under the same `ETag` to curl. A variant put in the bucket by someone else — bytes that decode
//! to another binary, or something that is not zstd at all — is never served: the replica deletes
//! it, makes its own and shares that.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::path::Path;
use std::time::Duration;

use cluster::Cluster;
use support::download::tool;
use support::*;

const GO_BINARY: &str = "/usr/bin/promtool";

fn compressions(outcome: &str, coding: &str) -> String {
    format!("velox_cache_compressions_total{{encoding=\"{coding}\",outcome=\"{outcome}\"}}")
}

/// Waits until `server` counted `n` variants of `coding` with `outcome`.
async fn counted(server: &Server, outcome: &str, coding: &str, n: f64) {
    let name = compressions(outcome, coding);
    let mut last = 0.0;
    let ok = eventually(Duration::from_secs(90), async || {
        last = metric(server, &name).await;
        last >= n
    })
    .await;
    assert!(ok, "{name} = {last}, wanted {n}\n{}", server.log_text());
}

/// A curl GET asking for `coding`: the status, `Content-Encoding`, `ETag` and the body as sent.
fn fetch(dir: &Path, url: &str, coding: &str) -> (String, Option<String>, Option<String>, Vec<u8>) {
    let headers = dir.join("h");
    let body = dir.join("b");
    let out = tool("curl")
        .args(["-sS", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}", "-H"])
        .arg(format!("Accept-Encoding: {coding}"))
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&headers).expect("headers");
    let find = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        find("content-encoding"),
        find("etag"),
        std::fs::read(&body).expect("body"),
    )
}

fn unzstd(b: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(b).expect("zstd decodes")
}

/// Waits until the bucket holds both variants of `digest`; the zstd one's bytes.
async fn shared_variants(cluster: &Cluster, server: &Server, digest: &str) -> Vec<u8> {
    let fan = &digest[..2];
    let key = format!("{}variants/{fan}/{digest}.zstd", cluster.prefix);
    let gz = format!("{}variants/{fan}/{digest}.gzip", cluster.prefix);
    let ok = eventually(Duration::from_secs(90), async || {
        cluster.moto.get_object(&key).is_some() && cluster.moto.get_object(&gz).is_some()
    })
    .await;
    assert!(
        ok,
        "{:?}\n{}",
        cluster.objects("variants/"),
        server.log_text()
    );
    cluster.moto.get_object(&key).expect("zstd variant")
}

/// `binary` with `suffix` appended, built by `server` for linux/`arch` (the stand-in writes those
/// bytes) and compressed, both variants shared; the bytes and their digest.
async fn built_and_shared(
    cluster: &Cluster,
    server: &Server,
    dir: &Path,
    binary: &[u8],
    suffix: &str,
    arch: &str,
) -> (Vec<u8>, String) {
    let mut bytes = binary.to_vec();
    bytes.extend_from_slice(suffix.as_bytes());
    let path = dir.join(format!("promtool-{arch}"));
    std::fs::write(&path, &bytes).expect("write");
    let digest = sha256_hex(&bytes);
    cluster.velox.build_binary(&path);
    let built = post_json(&server.builds_url(), &build_request("linux", arch), &[]).await;
    assert_eq!(sha256_hex(&built.body), digest);
    shared_variants(cluster, server, &digest).await;
    (bytes, digest)
}

#[actix_web::test]
async fn a_replica_takes_the_variants_another_made_and_refuses_foreign_ones() {
    let binary =
        std::fs::read(GO_BINARY).expect("promtool is installed (apt-get install prometheus)");
    let digest = sha256_hex(&binary);
    let mut cluster =
        Cluster::start("compression/").with("VELOX_CACHE_COMPRESSION__ZSTD_LEVEL", "3");
    cluster.velox.build_binary(Path::new(GO_BINARY));
    let dir = tempfile::tempdir().expect("tmp");

    // A builds, compresses and shares both variants (the gzip one goes up in parts: > 8 MiB).
    let a = cluster.replica();
    let built = post_json(&a.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(built.status, 200);
    assert_eq!(built.body.len(), binary.len());
    counted(&a, "stored", "zstd", 1.0).await;
    counted(&a, "stored", "gzip", 1.0).await;
    let shared_zstd = shared_variants(&cluster, &a, &digest).await;
    assert_eq!(unzstd(&shared_zstd), binary);
    let artifact = format!("/_velox/v1/artifacts/{digest}");
    let (status, coding, etag_a, body_a) = fetch(dir.path(), &a.url(&artifact), "zstd");
    assert_eq!((status.as_str(), coding.as_deref()), ("200", Some("zstd")));
    assert_eq!(body_a, shared_zstd, "A serves what it shared");

    // B gets the binary from the bucket (its first download fills its tier), then takes the
    // variants from the bucket instead of making them: the same bytes, the same ETag.
    let b = cluster.replica();
    let (status, coding, _, body) = fetch(dir.path(), &b.url(&artifact), "zstd");
    assert_eq!((status.as_str(), coding.as_deref()), ("200", None));
    assert_eq!(body, binary, "identity until B has its variants");
    counted(&b, "fetched", "zstd", 1.0).await;
    counted(&b, "fetched", "gzip", 1.0).await;
    assert_eq!(metric(&b, &compressions("stored", "zstd")).await, 0.0);
    assert_eq!(metric(&b, &compressions("stored", "gzip")).await, 0.0);
    let (status, coding, etag_b, body_b) = fetch(dir.path(), &b.url(&artifact), "zstd");
    assert_eq!((status.as_str(), coding.as_deref()), ("200", Some("zstd")));
    assert_eq!(body_b, body_a);
    assert_eq!(
        etag_b, etag_a,
        "one ETag for one representation on every replica"
    );
    let (_, coding, _, gz) = fetch(dir.path(), &b.url(&artifact), "gzip");
    assert_eq!(coding.as_deref(), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut plain)
        .expect("gunzip");
    assert_eq!(plain, binary);

    // A second binary, whose variants someone replaces in the bucket: the zstd one with a valid
    // zstd frame of other bytes, the gzip one with bytes that are no gzip at all.
    let (other, other_digest) =
        built_and_shared(&cluster, &a, dir.path(), &binary, "another build", "arm64").await;
    let fan = &other_digest[..2];
    let zstd_key = format!("{}variants/{fan}/{other_digest}.zstd", cluster.prefix);
    let gzip_key = format!("{}variants/{fan}/{other_digest}.gzip", cluster.prefix);
    let mut wrong = other.clone();
    wrong[1000] ^= 0xff;
    let forged = zstd::stream::encode_all(wrong.as_slice(), 3).expect("zstd");
    cluster.moto.put_object(&zstd_key, &forged, &[]);
    cluster
        .moto
        .put_object(&gzip_key, &b"x".repeat(1 << 20), &[]);

    // C refuses both, makes its own, and shares them in their place; clients only ever get
    // bytes that decode to the binary.
    let c = cluster.replica();
    let other_artifact = format!("/_velox/v1/artifacts/{other_digest}");
    let (status, _, _, body) = fetch(dir.path(), &c.url(&other_artifact), "identity");
    assert_eq!(status, "200");
    assert_eq!(body, other);
    counted(&c, "refused", "zstd", 1.0).await;
    counted(&c, "refused", "gzip", 1.0).await;
    counted(&c, "stored", "zstd", 1.0).await;
    counted(&c, "stored", "gzip", 1.0).await;
    assert_eq!(metric(&c, &compressions("fetched", "zstd")).await, 0.0);
    let log = c.log_text();
    assert!(
        log.contains("does not decode to the binary's bytes"),
        "{log}"
    );
    assert!(log.contains("does not decode: "), "{log}");
    let (status, coding, _, body) = fetch(dir.path(), &c.url(&other_artifact), "zstd");
    assert_eq!((status.as_str(), coding.as_deref()), ("200", Some("zstd")));
    assert_eq!(unzstd(&body), other);
    let healed = eventually(Duration::from_secs(30), async || {
        cluster
            .moto
            .get_object(&zstd_key)
            .is_some_and(|b| b != forged && unzstd(&b) == other)
            && cluster
                .moto
                .get_object(&gzip_key)
                .is_some_and(|b| b.starts_with(&[0x1f, 0x8b]))
    })
    .await;
    assert!(healed, "the bucket keeps C's variants\n{}", c.log_text());

    // A third binary whose gzip variant someone replaces with an object as large as the binary:
    // refused on its size alone (its bytes are not downloaded), deleted, and made again.
    let (third, third_digest) =
        built_and_shared(&cluster, &a, dir.path(), &binary, "a third build", "386").await;
    let fan = &third_digest[..2];
    let gzip_key = format!("{}variants/{fan}/{third_digest}.gzip", cluster.prefix);
    let mut oversized = vec![0x1f, 0x8b];
    oversized.resize(third.len(), 0);
    cluster.moto.put_object(&gzip_key, &oversized, &[]);
    let d = cluster.replica();
    let third_artifact = format!("/_velox/v1/artifacts/{third_digest}");
    let (status, _, _, body) = fetch(dir.path(), &d.url(&third_artifact), "identity");
    assert_eq!(status, "200");
    assert_eq!(body, third);
    counted(&d, "refused", "gzip", 1.0).await;
    counted(&d, "stored", "gzip", 1.0).await;
    counted(&d, "fetched", "zstd", 1.0).await;
    let log = d.log_text();
    assert!(log.contains("not fewer than"), "{log}");
    let (_, coding, _, gz) = fetch(dir.path(), &d.url(&third_artifact), "gzip");
    assert_eq!(coding.as_deref(), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut plain)
        .expect("gunzip");
    assert_eq!(plain, third);
    let healed = eventually(Duration::from_secs(30), async || {
        cluster
            .moto
            .get_object(&gzip_key)
            .is_some_and(|b| b.len() < third.len() && b.starts_with(&[0x1f, 0x8b]))
    })
    .await;
    assert!(
        healed,
        "the bucket keeps D's gzip variant\n{}",
        d.log_text()
    );
}
