//! Channels as OCI images (docs/images.md), pulled by real clients: Debian's `skopeo` copies
//! every platform into an OCI layout, `umoci` unpacks it, `minisign` verifies the unpacked
//! `usr/bin/rr` against the server's key and the binary's signature; the pull API's errors,
//! HEAD, Range, media type negotiation, credentials and the separate registry listener through
//! plain HTTP.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::*;

const HTTP: &str = "github.com/roadrunner-server/http/v5";
const TOKEN: &str = "registry-test-token-0123456789";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("{shown}: {e} (scripts/test installs skopeo, umoci, minisign)"))
}

fn ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A config file with channel `prod` (pinned plugins, `platforms`) and `extra` lines.
fn config(dir: &Path, platforms: &str, extra: &str) -> String {
    let path = dir.join("velox-cache.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[channels.prod]\nrr_version = \"v2025.1.2\"\nplugins = [{{ module_name = \"{HTTP}\", tag = \"v5.2.7\" }}]\nplatforms = {platforms}\n"
        ),
    )
    .expect("config");
    path.display().to_string()
}

fn start(platforms: &str, extra: &str, f: impl FnOnce(Options) -> Options) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let file = config(dir.path(), platforms, extra);
    let h = Harness::start_with(|o| f(o.env("VELOX_CACHE_CONFIG", &file)));
    std::mem::forget(dir);
    h
}

/// Waits for channel `prod`'s first release; its JSON.
async fn released(h: &Harness) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = get(&h.url("/_velox/v1/channels/prod"), &[]).await.json();
        last["current"]["id"].is_string()
    })
    .await;
    assert!(ok, "no release: {last}\n{}", h.server().log_text());
    last
}

/// `host:port` of a URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

fn blob_file(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

/// `usr/bin/rr` from a layer blob of an OCI layout, with its tar mode.
fn rr_of_layer(layer: &Path) -> (Vec<u8>, u32) {
    use std::io::Read;
    let gz = std::fs::File::open(layer).expect("layer");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").to_str() == Some("usr/bin/rr") {
            let mode = entry.header().mode().expect("mode");
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("rr");
            return (bytes, mode);
        }
    }
    panic!("no usr/bin/rr in {}", layer.display());
}

#[actix_web::test]
async fn skopeo_pulls_every_platform_and_umoci_unpacks_a_signed_rr() {
    let h = start("[\"linux/amd64\", \"linux/arm64\"]", "", |o| {
        o.env("VELOX_CACHE_API_TOKEN", TOKEN)
    });
    let channel = released(&h).await;
    let release = channel["current"]["id"].as_str().expect("id").to_owned();
    let host = authority(&h.server().public);
    let work = tempfile::tempdir().expect("tmp");

    // Every platform into an OCI layout; each layer's usr/bin/rr is the channel's binary.
    let layout = work.path().join("all");
    ok(Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{host}/rr/prod:latest"),
        &format!("oci:{}:latest", s(&layout)),
    ]));
    let index = read_json(&layout.join("index.json"));
    let top = index["manifests"][0]["digest"].as_str().expect("digest");
    let image_index = read_json(&blob_file(&layout, top));
    assert_eq!(image_index["mediaType"], OCI_INDEX);
    let manifests = image_index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 2);
    for m in manifests {
        let arch = m["platform"]["architecture"].as_str().expect("arch");
        assert_eq!(m["platform"]["os"], "linux");
        let manifest = read_json(&blob_file(&layout, m["digest"].as_str().expect("d")));
        let config = read_json(&blob_file(
            &layout,
            manifest["config"]["digest"].as_str().expect("config"),
        ));
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/rr");
        assert_eq!(config["config"]["Cmd"][0], "serve");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            release.as_str()
        );
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1);
        let (rr, mode) = rr_of_layer(&blob_file(
            &layout,
            layers[0]["digest"].as_str().expect("layer"),
        ));
        assert_eq!(mode, 0o755);
        let want = &channel["current"]["binaries"][format!("linux/{arch}")]["digest"];
        assert_eq!(sha256_hex(&rr), want.as_str().expect("digest"), "{arch}");
    }

    // The raw index, and one platform chosen by the client.
    let raw = ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{host}/rr/prod:latest"),
    ]));
    assert_eq!(
        raw.stdout,
        std::fs::read(blob_file(&layout, top)).expect("index"),
        "served byte for byte"
    );
    let arm = ok(Command::new("skopeo").args([
        "inspect",
        "--override-arch",
        "arm64",
        "--tls-verify=false",
        &format!("docker://{host}/rr/prod:{release}"),
    ]));
    let arm: Value = serde_json::from_slice(&arm.stdout).expect("inspect json");
    assert_eq!(arm["Architecture"], "arm64");
    assert_eq!(arm["Os"], "linux");

    // With the token as the Basic password (skopeo sends it once challenged; reads are open
    // here, so this checks that presented credentials do not get in the way).
    let single = work.path().join("arm");
    ok(Command::new("skopeo").args([
        "copy",
        "--override-arch",
        "arm64",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("ci:{TOKEN}"),
        &format!("docker://{host}/rr/prod:latest"),
        &format!("oci:{}:arm", s(&single)),
    ]));
    // umoci unpacks it; the binary in the root filesystem verifies with minisign.
    let bundle = work.path().join("bundle");
    ok(Command::new("umoci").args([
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:arm", s(&single)),
        s(&bundle),
    ]));
    let rr = bundle.join("rootfs/usr/bin/rr");
    let bytes = std::fs::read(&rr).expect("unpacked rr");
    let digest = channel["current"]["binaries"]["linux/arm64"]["digest"]
        .as_str()
        .expect("digest");
    assert_eq!(sha256_hex(&bytes), digest);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&rr).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let public = work.path().join("minisign.pub");
    let key = get(&h.url("/_velox/v1/keys/minisign.pub"), &[]).await;
    assert_eq!(key.status, 200);
    std::fs::write(&public, &key.body).expect("pub");
    let sig = get(
        &h.url(&format!("/_velox/v1/artifacts/{digest}.minisig")),
        &[],
    )
    .await;
    assert_eq!(sig.status, 200);
    let sig_path = work.path().join("rr.minisig");
    std::fs::write(&sig_path, &sig.body).expect("sig");
    ok(Command::new("minisign").args(["-V", "-m", s(&rr), "-x", s(&sig_path), "-p", s(&public)]));

    // Each layer was made once, however many pulls.
    assert_eq!(
        metric(h.server(), "velox_registry_layers_built_total").await,
        2.0
    );
    assert!(
        metric(
            h.server(),
            "velox_registry_requests_total{route=\"blob\",status=\"2xx\"}"
        )
        .await
            >= 4.0
    );
}
