//! Signatures of what is served (docs/signing.md), through the real binary: every binary from
//! the build API, the artifact route and a channel URL verifies with Debian's `minisign` against
//! the key the server publishes; a flipped byte does not. Keys: made in the data dir, given as
//! `signing.key_file` (from `velox-cache keygen`), retired ones listed, bad ones refused.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// `minisign -Vm file -x sig -p pub`: whether it verifies, and what it printed.
fn verify(file: &Path, sig: &Path, public: &Path) -> (bool, String) {
    let out = Command::new("minisign")
        .args(["-Vm"])
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

/// Downloads `url`'s binary and its signature into `dir`, and verifies them with `public`.
async fn check(h: &Harness, dir: &Path, body: &[u8], public: &Path) -> String {
    let digest = sha256_hex(body);
    let sig = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    assert_eq!(sig.status, 200, "{}", String::from_utf8_lossy(&sig.body));
    assert!(sig
        .header("cache-control")
        .is_some_and(|c| c.contains("immutable")));
    let (file, sig_path) = (dir.join(&digest), dir.join(format!("{digest}.minisig")));
    std::fs::write(&file, body).expect("write");
    std::fs::write(&sig_path, &sig.body).expect("write");
    let (ok, out) = verify(&file, &sig_path, public);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("sha256:{digest}")), "{out}");
    // One byte changed: refused.
    let mut flipped = body.to_vec();
    flipped[body.len() / 2] ^= 1;
    std::fs::write(&file, &flipped).expect("write");
    let (ok, out) = verify(&file, &sig_path, public);
    assert!(!ok, "a flipped byte verified: {out}");
    digest
}

#[actix_web::test]
async fn every_binary_served_verifies_with_the_published_key() {
    let h = Harness::start();
    let dir = tempfile::tempdir().expect("tmp");
    let public = get(&h.url("/_velox/v1/keys/minisign.pub"), &[]).await;
    assert_eq!(public.status, 200);
    let pub_path = dir.path().join("minisign.pub");
    std::fs::write(&pub_path, &public.body).expect("write");
    // The key made at the first start, kept in the data dir, private.
    let secret = h.opts.data_dir.join("signing/minisign.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret)
            .expect("the key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let keys = get(&h.url("/_velox/v1/keys"), &[]).await.json();
    let id = keys["current"]["id"].as_str().expect("id").to_owned();
    assert!((1..=16).contains(&id.len()), "{id}");
    assert_eq!(keys["previous"], serde_json::json!([]));
    assert!(String::from_utf8_lossy(&public.body)
        .contains(keys["current"]["minisign"].as_str().expect("b64")));

    // From the build API: a miss, then a hit; both carry the Link.
    let built = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(built.status, 200);
    let digest = check(&h, dir.path(), &built.body, &pub_path).await;
    let link = format!(
        "</_velox/v1/artifacts/{digest}.minisig>; rel=\"signature\", </_velox/v1/artifacts/{digest}/provenance>; rel=\"provenance\""
    );
    assert_eq!(built.header("link"), Some(link.as_str()));
    let hit = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert_eq!(hit.header("link"), Some(link.as_str()));

    // From the artifact route; the signature is made once and kept.
    let first = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    let art = get(&h.url(&format!("/_velox/v1/artifacts/{digest}")), &[]).await;
    assert_eq!(art.header("link"), Some(link.as_str()));
    check(&h, dir.path(), &art.body, &pub_path).await;
    let again = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    assert_eq!(first.body, again.body, "kept, not made again");

    // From a ranged download's whole: the same bytes.
    let arm = h.post(&build_request("linux", "arm64")).await;
    check(&h, dir.path(), &arm.body, &pub_path).await;

    // Unknown and malformed digests.
    get(
        &h.url(&format!("/_velox/v1/artifacts/{}.minisig", "ab".repeat(32))),
        &[],
    )
    .await
    .assert_error(404, "not_found");
    get(&h.url("/_velox/v1/artifacts/nothex.minisig"), &[])
        .await
        .assert_error(404, "not_found");

    // The key survives a restart.
    let mut h = h;
    h.stop();
    h.restart();
    let keys = get(&h.url("/_velox/v1/keys"), &[]).await.json();
    assert_eq!(keys["current"]["id"], id.as_str());
}

#[actix_web::test]
async fn a_key_from_keygen_signs_and_a_retired_one_is_listed() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    let (code, out, err) = server::run(&["keygen", "--dir", d, "--name", "old"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("key id"), "{out}");
    let (code, _, _) = server::run(&["keygen", "--dir", d, "--name", "new"], &[]);
    assert_eq!(code, 0);
    let (code, _, err) = server::run(&["keygen", "--dir", d, "--name", "new"], &[]);
    assert_eq!(code, 2, "never overwrites: {err}");
    let old_pub = std::fs::read_to_string(dir.path().join("old.pub")).expect("old.pub");
    let new_key = dir.path().join("new.key");
    let h = Harness::start_with(|o| {
        o.env(
            "VELOX_CACHE_SIGNING__KEY_FILE",
            new_key.to_str().expect("utf-8"),
        )
        .env(
            "VELOX_CACHE_SIGNING__PREVIOUS_PUBLIC_KEYS",
            &format!("[\"{}\"]", old_pub.lines().nth(1).expect("the base64 line")),
        )
    });
    let keys = get(&h.url("/_velox/v1/keys"), &[]).await.json();
    let new_pub = std::fs::read_to_string(dir.path().join("new.pub")).expect("new.pub");
    assert!(
        new_pub.contains(keys["current"]["minisign"].as_str().expect("b64")),
        "{keys}"
    );
    assert!(
        old_pub.contains(keys["previous"][0]["minisign"].as_str().expect("b64")),
        "{keys}"
    );
    assert!(
        !h.opts.data_dir.join("signing").exists(),
        "no key made beside a key file"
    );
    let built = h.post(&build_request("linux", "amd64")).await;
    check(&h, dir.path(), &built.body, &dir.path().join("new.pub")).await;
    // Not with the retired key.
    let digest = sha256_hex(&built.body);
    let sig = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    std::fs::write(dir.path().join("b"), &built.body).expect("write");
    std::fs::write(dir.path().join("b.minisig"), &sig.body).expect("write");
    let (ok, _) = verify(
        &dir.path().join("b"),
        &dir.path().join("b.minisig"),
        &dir.path().join("old.pub"),
    );
    assert!(!ok);
}

#[test]
fn a_bad_key_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "untrusted comment: no\nAAAA\n").expect("write");
    let public = dir.path().join("k.pub");
    let d = dir.path().to_str().expect("utf-8");
    assert_eq!(
        server::run(&["keygen", "--dir", d, "--name", "k"], &[]).0,
        0
    );
    for (env, value, key) in [
        (
            "VELOX_CACHE_SIGNING__KEY_FILE",
            garbage.to_str().expect("utf-8").to_owned(),
            "signing.key_file",
        ),
        (
            "VELOX_CACHE_SIGNING__KEY_FILE",
            "/nonexistent/key".to_owned(),
            "signing.key_file",
        ),
        // A public key where the secret one is due.
        (
            "VELOX_CACHE_SIGNING__KEY_FILE",
            public.to_str().expect("utf-8").to_owned(),
            "signing.key_file",
        ),
        (
            "VELOX_CACHE_SIGNING__PREVIOUS_PUBLIC_KEYS",
            "[\"not a key\"]".to_owned(),
            "signing.previous_public_keys[0]",
        ),
        (
            "VELOX_CACHE_SIGNING__BUILDER_ID",
            "no uri".to_owned(),
            "signing.builder_id",
        ),
    ] {
        let (code, _, err) = server::run(&["config"], &[(env, value.as_str())]);
        assert_eq!(code, 2, "{env}={value}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
}

/// Python's `cryptography` checks the envelope's Ed25519 signature over DSSE's PAE, computed in
/// Python, with the key of the server's `minisign.pub`; prints the payload.
const DSSE_VERIFY: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
env = json.load(open(sys.argv[1]))
key = base64.b64decode(open(sys.argv[2]).read().splitlines()[1])[10:42]
payload = base64.b64decode(env["payload"])
t = env["payloadType"].encode()
pae = b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)
Ed25519PublicKey.from_public_bytes(key).verify(base64.b64decode(env["signatures"][0]["sig"]), pae)
sys.stdout.write(payload.decode())
"#;

#[actix_web::test]
async fn each_build_has_a_signed_provenance_naming_what_was_asked_and_resolved() {
    use support::goproxy::GoProxy;
    const HTTP: &str = "github.com/roadrunner-server/http/v5";
    let proxy = GoProxy::start();
    proxy.set_latest(HTTP, "v5.2.7");
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_RESOLVE__GOPROXY", &proxy.url).env(
            "VELOX_CACHE_SIGNING__BUILDER_ID",
            "https://ci.example.com/velox-cache",
        )
    });
    let dir = tempfile::tempdir().expect("tmp");
    let public = get(&h.url("/_velox/v1/keys/minisign.pub"), &[]).await;
    std::fs::write(dir.path().join("k.pub"), &public.body).expect("write");
    let mut asked = build_request("linux", "amd64");
    asked["plugins"][0]["tag"] = serde_json::json!("latest");
    let built = h.post(&asked).await;
    assert_eq!(built.status, 200);
    let digest = sha256_hex(&built.body);
    let url = h.url(&format!("/_velox/v1/artifacts/{digest}/provenance"));
    let mut envelope = get(&url, &[]).await;
    // Made beside the answer, on the blocking pool: a moment later at most.
    for _ in 0..100 {
        if envelope.status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        envelope = get(&url, &[]).await;
    }
    assert_eq!(
        envelope.status,
        200,
        "{}",
        String::from_utf8_lossy(&envelope.body)
    );
    assert_eq!(
        envelope.header("content-type"),
        Some("application/vnd.dsse.envelope.v1+json")
    );
    let env_path = dir.path().join("env.json");
    std::fs::write(&env_path, &envelope.body).expect("write");
    let out = Command::new("python3")
        .args(["-c", DSSE_VERIFY])
        .arg(&env_path)
        .arg(dir.path().join("k.pub"))
        .output()
        .expect("python3 runs (scripts/test installs cryptography)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statement: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the statement");
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.as_str());
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let def = &statement["predicate"]["buildDefinition"];
    assert_eq!(
        def["externalParameters"]["plugins"][0]["tag"], "latest",
        "{statement}"
    );
    assert_eq!(
        def["internalParameters"]["resolved"][HTTP], "v5.2.7",
        "{statement}"
    );
    let deps = def["resolvedDependencies"].to_string();
    assert!(
        deps.contains("pkg:golang/github.com/roadrunner-server/http/v5@v5.2.7"),
        "{deps}"
    );
    assert!(
        deps.contains("pkg:golang/github.com/roadrunner-server/roadrunner/v2025@v2025.1.2"),
        "{deps}"
    );
    let run = &statement["predicate"]["runDetails"];
    assert_eq!(run["builder"]["id"], "https://ci.example.com/velox-cache");
    assert_eq!(
        run["metadata"]["invocationId"],
        built.header("x-build-request-id").expect("id")
    );

    // The build signed its binary too, naming its cache key and RoadRunner version.
    let kept = h
        .opts
        .data_dir
        .join(format!("signatures/{}/{digest}.minisig", &digest[..2]));
    let signed = eventually(std::time::Duration::from_secs(5), async || kept.exists()).await;
    assert!(signed, "{}", kept.display());
    let pub_path = dir.path().join("k.pub");
    check(&h, dir.path(), &built.body, &pub_path).await;
    let sig = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    let text = String::from_utf8_lossy(&sig.body);
    let key = built.header("x-velox-cache-key").expect("key");
    assert!(text.contains(&format!("key:{key}")), "{text}");
    assert!(text.contains("rr_version:v2025.1.2"), "{text}");

    // A changed byte of the payload does not verify.
    let mut tampered: serde_json::Value = serde_json::from_slice(&envelope.body).expect("json");
    tampered["payloadType"] = serde_json::json!("application/json");
    std::fs::write(&env_path, tampered.to_string()).expect("write");
    let out = Command::new("python3")
        .args(["-c", DSSE_VERIFY])
        .arg(&env_path)
        .arg(dir.path().join("k.pub"))
        .output()
        .expect("python3");
    assert!(!out.status.success());

    // No provenance for an unknown digest.
    get(
        &h.url(&format!(
            "/_velox/v1/artifacts/{}/provenance",
            "ab".repeat(32)
        )),
        &[],
    )
    .await
    .assert_error(404, "not_found");
}

/// One byte changed in place, as an attacker or a failing disk does.
fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
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

/// The files kept about a blob: its blob path, signature and provenance.
fn kept(data_dir: &Path, digest: &str) -> [std::path::PathBuf; 3] {
    let fan = &digest[..2];
    [
        data_dir.join("blobs/sha256").join(fan).join(digest),
        data_dir
            .join("signatures")
            .join(fan)
            .join(format!("{digest}.minisig")),
        data_dir
            .join("signatures")
            .join(fan)
            .join(format!("{digest}.provenance.json")),
    ]
}

#[actix_web::test]
async fn a_blob_the_scrub_condemns_loses_its_signature_and_provenance() {
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "200ms"));
    let dir = tempfile::tempdir().expect("tmp");
    let built = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(built.status, 200);
    let digest = sha256_hex(&built.body);
    let [blob, sig, prov] = kept(&h.opts.data_dir, &digest);
    // Both are made in the background right after the build.
    let made = eventually(Duration::from_secs(10), async || {
        sig.exists() && prov.exists()
    })
    .await;
    assert!(
        made,
        "no signature or provenance kept: {}",
        h.server().log_text()
    );

    flip_byte(&blob, 77);
    let gone = eventually(Duration::from_secs(20), async || {
        !blob.exists() && !sig.exists() && !prov.exists()
    })
    .await;
    assert!(
        gone,
        "blob {} signature {} provenance {}:\n{}",
        blob.exists(),
        sig.exists(),
        prov.exists(),
        h.server().log_text()
    );
    for path in [
        format!("/_velox/v1/artifacts/{digest}.minisig"),
        format!("/_velox/v1/artifacts/{digest}/provenance"),
    ] {
        get(&h.url(&path), &[]).await.assert_error(404, "not_found");
    }

    // Built again: signed again, and the signature verifies.
    let again = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(again.header("x-cache-status"), Some("MISS"));
    let public = get(&h.url("/_velox/v1/keys/minisign.pub"), &[]).await;
    let pub_path = dir.path().join("minisign.pub");
    std::fs::write(&pub_path, &public.body).expect("write");
    check(&h, dir.path(), &again.body, &pub_path).await;
}

#[actix_web::test]
async fn a_blob_signed_at_its_first_request_names_its_key_and_is_hashed_first() {
    let h = Harness::start();
    let dir = tempfile::tempdir().expect("tmp");
    let public = get(&h.url("/_velox/v1/keys/minisign.pub"), &[]).await;
    let pub_path = dir.path().join("minisign.pub");
    std::fs::write(&pub_path, &public.body).expect("write");
    let built = h.post(&build_request("linux", "amd64")).await;
    let key = built.header("x-velox-cache-key").expect("a key").to_owned();
    let digest = sha256_hex(&built.body);
    let [blob, sig, _] = kept(&h.opts.data_dir, &digest);
    assert!(
        eventually(Duration::from_secs(10), async || sig.exists()).await,
        "never signed"
    );
    // As for an entry stored before signing existed: no signature yet.
    std::fs::remove_file(&sig).expect("rm");
    let out = check(&h, dir.path(), &built.body, &pub_path).await;
    let sig_text = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    let text = String::from_utf8_lossy(&sig_text.body).into_owned();
    assert_eq!(out, digest);
    assert!(text.contains(&format!("\tkey:{key}")), "{text}");
    assert!(text.contains("\trr_version:v2025.1.2"), "{text}");

    // A damaged blob is never signed: it is taken out of service instead.
    std::fs::remove_file(&sig).expect("rm");
    flip_byte(&blob, 99);
    get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await
    .assert_error(404, "not_found");
    assert!(!sig.exists(), "a damaged blob was signed");
    assert!(!blob.exists(), "the damaged blob is still in service");
    let rebuilt = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(rebuilt.header("x-cache-status"), Some("MISS"));
    assert!(rebuilt.body == built.body);
}
