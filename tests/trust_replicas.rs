//! Signatures and provenance shared by replicas (docs/signing.md, "With replicas"), through real
//! HTTP: velox-cache processes (the real binary) on one moto S3 bucket with one key file. A
//! replica that never held a binary serves the signature and provenance the building replica
//! kept in the bucket, byte for byte, and `minisign` verifies them; a signature put in the bucket
//! by anyone without our key is never served.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster::Cluster;
use support::*;

fn minisign_verifies(file: &Path, sig: &Path, public: &Path) -> (bool, String) {
    let out = Command::new("minisign")
        .arg("-Vm")
        .arg(file)
        .arg("-x")
        .arg(sig)
        .arg("-p")
        .arg(public)
        .stdin(Stdio::null())
        .output()
        .expect("minisign runs (scripts/test installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A key pair from `velox-cache keygen` in `dir`, named `name`.
fn keygen(dir: &Path, name: &str) {
    let d = dir.to_str().expect("utf-8");
    let (code, _, err) = server::run(&["keygen", "--dir", d, "--name", name], &[]);
    assert_eq!(code, 0, "{err}");
}

#[actix_web::test]
async fn a_replica_serves_the_signature_and_provenance_another_built_and_refuses_forged_ones() {
    let cluster = Cluster::start("trust/");
    let keys = cluster.tmp.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    keygen(&keys, "shared");
    let key_file = keys.join("shared.key");
    let mut cluster = cluster.with(
        "VELOX_CACHE_SIGNING__KEY_FILE",
        key_file.to_str().expect("utf-8"),
    );
    let a = cluster.replica();
    let b = cluster.replica();

    let built = post_json(&a.builds_url(), &build_request("linux", "amd64"), &[]).await;
    assert_eq!(built.status, 200);
    let digest = sha256_hex(&built.body);
    let fan = &digest[..2];
    // A keeps both in the bucket right after the build.
    let in_bucket = eventually(Duration::from_secs(15), async || {
        let names: Vec<String> = cluster
            .objects("trust/")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        names.contains(&format!("trust/{fan}/{digest}.minisig"))
            && names.contains(&format!("trust/{fan}/{digest}.provenance.json"))
    })
    .await;
    assert!(in_bucket, "{:?}\n{}", cluster.objects(""), a.log_text());

    // B never built nor downloaded it: no local copy.
    assert!(!b
        .data_dir
        .join("blobs/sha256")
        .join(fan)
        .join(&digest)
        .exists());
    let sig_a = get(
        &a.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    let sig_b = get(
        &b.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    assert_eq!(
        sig_b.status,
        200,
        "{}",
        String::from_utf8_lossy(&sig_b.body)
    );
    assert_eq!(sig_a.body, sig_b.body, "one signature for every replica");
    let dir = tempfile::tempdir().expect("tmp");
    let public = get(&b.url("/_velox/v1/keys/minisign.pub"), &[]).await;
    assert_eq!(public.status, 200);
    let (bin, sig, pubf) = (
        dir.path().join("rr"),
        dir.path().join("rr.minisig"),
        dir.path().join("b.pub"),
    );
    std::fs::write(&bin, &built.body).expect("write");
    std::fs::write(&sig, &sig_b.body).expect("write");
    std::fs::write(&pubf, &public.body).expect("write");
    let (ok, out) = minisign_verifies(&bin, &sig, &pubf);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("sha256:{digest}")), "{out}");
    assert!(out.contains("rr_version:v2025.1.2"), "{out}");

    let prov_a = get(
        &a.url(&format!("/_velox/v1/artifacts/{digest}/provenance")),
        &[],
    )
    .await;
    let prov_b = get(
        &b.url(&format!("/_velox/v1/artifacts/{digest}/provenance")),
        &[],
    )
    .await;
    assert_eq!(
        prov_b.status,
        200,
        "{}",
        String::from_utf8_lossy(&prov_b.body)
    );
    assert_eq!(
        prov_a.body, prov_b.body,
        "the building replica's provenance"
    );

    // The SBOM route reads the bucket's bytes on B (the stand-in's binaries are not Go).
    let sbom = get(&b.url(&format!("/_velox/v1/artifacts/{digest}/sbom")), &[]).await;
    sbom.assert_error(404, "not_found");
    assert!(
        String::from_utf8_lossy(&sbom.body).contains("Go build information"),
        "{}",
        String::from_utf8_lossy(&sbom.body)
    );

    // A signature of another key, put in the bucket by someone with write access to it: a third
    // replica (nothing kept locally) signs for itself rather than serve it.
    let arm = post_json(&a.builds_url(), &build_request("linux", "arm64"), &[]).await;
    let arm_digest = sha256_hex(&arm.body);
    let arm_fan = &arm_digest[..2];
    let sig_key = format!("{}trust/{arm_fan}/{arm_digest}.minisig", cluster.prefix);
    let signed = eventually(Duration::from_secs(15), async || {
        cluster.moto.get_object(&sig_key).is_some()
    })
    .await;
    assert!(signed, "{}", a.log_text());
    keygen(&keys, "forger");
    std::fs::write(dir.path().join("arm"), &arm.body).expect("write");
    // Signed with the forger's key (a velox-cache key pair is unencrypted: no password asked).
    let out = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(keys.join("forger.key"))
        .arg("-m")
        .arg(dir.path().join("arm"))
        .arg("-t")
        .arg(format!("sha256:{arm_digest}"))
        .stdin(Stdio::null())
        .output()
        .expect("minisign");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forged = std::fs::read(dir.path().join("arm.minisig")).expect("forged sig");
    cluster.moto.put_object(&sig_key, &forged, &[]);
    let c = cluster.replica();
    let sig_c = get(
        &c.url(&format!("/_velox/v1/artifacts/{arm_digest}.minisig")),
        &[],
    )
    .await;
    assert_eq!(
        sig_c.status,
        200,
        "{}",
        String::from_utf8_lossy(&sig_c.body)
    );
    assert_ne!(sig_c.body, forged, "a forged signature was served");
    std::fs::write(dir.path().join("arm.minisig"), &sig_c.body).expect("write");
    let (ok, out) = minisign_verifies(
        &dir.path().join("arm"),
        &dir.path().join("arm.minisig"),
        &pubf,
    );
    assert!(ok, "{out}");
    assert!(
        c.log_text().contains("is not one of this server's keys'"),
        "{}",
        c.log_text()
    );
}
