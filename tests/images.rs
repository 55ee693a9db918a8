//! Channels as OCI images (docs/images.md), pulled by real clients: Debian's `skopeo` copies
//! every platform into an OCI layout, `umoci` unpacks it, `minisign` verifies the unpacked
//! `usr/bin/rr` against the server's key and the binary's signature; the pull API's errors,
//! HEAD, Range, media type negotiation, credentials and the separate registry listener through
//! plain HTTP.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::*;

const HTTP: &str = "github.com/roadrunner-server/http/v5";
const TOKEN: &str = "registry-test-token-0123456789";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

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
    released_as(h, &[]).await
}

/// [`released`], asking with `headers`.
async fn released_as(h: &Harness, headers: &[(&str, &str)]) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = get(&h.url("/_velox/v1/channels/prod"), headers)
            .await
            .json();
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
/// A request with any method and `body`; its answer.
async fn send(method: &str, url: &str, body: &[u8]) -> Resp {
    request(method, url, Some(body)).await
}

fn rr_of_layer(layer: &Path) -> (Vec<u8>, u32) {
    rr_of_layer_bytes(&std::fs::read(layer).expect("layer"))
}

/// `usr/bin/rr` from a layer's bytes, with its tar mode.
fn rr_of_layer_bytes(gz: &[u8]) -> (Vec<u8>, u32) {
    use std::io::Read;
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
    panic!("no usr/bin/rr in the layer");
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

/// Asserts a Distribution Spec error: `status`, JSON, `errors[0].code` = `code` with a message;
/// the message.
fn oci_error(r: &Resp, status: u16, code: &str) -> String {
    assert_eq!(
        r.status,
        status,
        "{code}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let v = r.json();
    assert_eq!(v["errors"][0]["code"], code, "{v}");
    let message = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{v}");
    message.to_owned()
}

/// `sha256:<hex>` of `bytes`.
fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Asserts a document answer: status 200, `Docker-Content-Digest` the body's digest, the media
/// type; the parsed body.
fn document(r: &Resp, media_type: &str) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some(media_type));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest_of(&r.body).as_str())
    );
    r.json()
}

#[actix_web::test]
async fn the_pull_api_answers_as_the_distribution_spec_says() {
    let h = start("[\"linux/amd64\", \"linux/arm64\"]", "", |o| {
        o.env("VELOX_CACHE_REGISTRY_LISTEN", "127.0.0.1:0")
    });
    let channel = released(&h).await;
    let release = channel["current"]["id"].as_str().expect("id").to_owned();
    let v2 = |p: &str| h.url(&format!("/v2/{p}"));

    // The version check, on both listeners.
    let base = get(&v2(""), &[]).await;
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(base.json(), serde_json::json!({}));
    let registry = h.server().registry_url();
    assert_eq!(get(&format!("{registry}/v2/"), &[]).await.status, 200);
    oci_error(
        &get(&format!("{registry}/elsewhere"), &[]).await,
        404,
        "NAME_UNKNOWN",
    );

    // By tag: the OCI index (no Accept, or OCI's); by digest: the same bytes.
    let index = get(&v2("rr/prod/manifests/latest"), &[]).await;
    let index_json = document(&index, OCI_INDEX);
    let oci_accept = get(&v2("rr/prod/manifests/latest"), &[("accept", OCI_INDEX)]).await;
    assert_eq!(oci_accept.body, index.body, "byte-for-byte stable");
    let by_release = get(&v2(&format!("rr/prod/manifests/{release}")), &[]).await;
    assert_eq!(by_release.body, index.body);
    let index_digest = digest_of(&index.body);
    let by_digest = get(&v2(&format!("rr/prod/manifests/{index_digest}")), &[]).await;
    document(&by_digest, OCI_INDEX);
    assert_eq!(by_digest.body, index.body);
    // HEAD: the length and digest, no body.
    let head_index = head(&v2("rr/prod/manifests/latest"), &[]).await;
    assert_eq!(head_index.status, 200);
    assert!(head_index.body.is_empty());
    assert_eq!(
        head_index.header("content-length"),
        Some(index.body.len().to_string().as_str())
    );
    assert_eq!(
        head_index.header("docker-content-digest"),
        Some(index_digest.as_str())
    );

    // Each platform's manifest by digest; its config and layer as blobs.
    let entries = index_json["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2);
    let amd64 = entries
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .expect("amd64");
    assert_eq!(amd64["mediaType"], OCI_MANIFEST);
    let m = get(
        &v2(&format!(
            "rr/prod/manifests/{}",
            amd64["digest"].as_str().expect("d")
        )),
        &[],
    )
    .await;
    let manifest = document(&m, OCI_MANIFEST);
    assert_eq!(m.body.len() as u64, amd64["size"].as_u64().expect("size"));
    let config_digest = manifest["config"]["digest"].as_str().expect("config");
    let config = get(&v2(&format!("rr/prod/blobs/{config_digest}")), &[]).await;
    assert_eq!(config.status, 200);
    assert_eq!(digest_of(&config.body), config_digest);
    assert_eq!(config.header("docker-content-digest"), Some(config_digest));
    assert_eq!(config.json()["architecture"], "amd64");
    let layer_digest = manifest["layers"][0]["digest"].as_str().expect("layer");
    let layer_size = manifest["layers"][0]["size"].as_u64().expect("size");
    let layer = get(&v2(&format!("rr/prod/blobs/{layer_digest}")), &[]).await;
    assert_eq!(layer.status, 200);
    assert_eq!(digest_of(&layer.body), layer_digest);
    assert_eq!(layer.body.len() as u64, layer_size);
    assert_eq!(layer.header("docker-content-digest"), Some(layer_digest));
    // A layer is not a binary answer: no binary digest, nothing negotiated.
    assert_eq!(layer.header("x-binary-sha256"), None);
    assert_eq!(layer.header("vary"), None);
    assert_eq!(layer.header("content-encoding"), None);
    let head_layer = head(&v2(&format!("rr/prod/blobs/{layer_digest}")), &[]).await;
    assert_eq!(head_layer.status, 200);
    assert!(head_layer.body.is_empty());
    assert_eq!(
        head_layer.header("content-length"),
        Some(layer_size.to_string().as_str())
    );
    assert_eq!(
        head_layer.header("docker-content-digest"),
        Some(layer_digest)
    );
    let head_config = head(&v2(&format!("rr/prod/blobs/{config_digest}")), &[]).await;
    assert_eq!(head_config.status, 200);
    assert!(head_config.body.is_empty());
    assert_eq!(
        head_config.header("content-length"),
        Some(config.body.len().to_string().as_str())
    );
    // Range: a part of the layer, as a resumed pull asks for it.
    let part = get(
        &v2(&format!("rr/prod/blobs/{layer_digest}")),
        &[("range", "bytes=10-109")],
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-109/{layer_size}").as_str())
    );
    assert_eq!(&part.body[..], &layer.body[10..110]);
    let tail = get(
        &v2(&format!("rr/prod/blobs/{layer_digest}")),
        &[("range", "bytes=-5")],
    )
    .await;
    assert_eq!(tail.status, 206);
    assert_eq!(&tail.body[..], &layer.body[layer.body.len() - 5..]);

    // Clients that accept only Docker's schema 2 get Docker's list and manifests.
    let docker_accept = format!("{DOCKER_LIST}, {DOCKER_MANIFEST}");
    let list = get(
        &v2("rr/prod/manifests/latest"),
        &[("accept", &docker_accept)],
    )
    .await;
    let list_json = document(&list, DOCKER_LIST);
    assert_eq!(list_json["mediaType"], DOCKER_LIST);
    let docker_amd64 = list_json["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .expect("amd64")
        .clone();
    assert_eq!(docker_amd64["mediaType"], DOCKER_MANIFEST);
    let dm = get(
        &v2(&format!(
            "rr/prod/manifests/{}",
            docker_amd64["digest"].as_str().expect("d")
        )),
        &[],
    )
    .await;
    let docker_manifest = document(&dm, DOCKER_MANIFEST);
    assert_eq!(
        docker_manifest["layers"][0]["digest"], layer_digest,
        "the same layer"
    );
    // One that takes no list gets linux/amd64's manifest, in its flavour.
    let single = get(
        &v2("rr/prod/manifests/latest"),
        &[("accept", DOCKER_MANIFEST)],
    )
    .await;
    document(&single, DOCKER_MANIFEST);
    assert_eq!(single.body, dm.body);
    let single_oci = get(&v2("rr/prod/manifests/latest"), &[("accept", OCI_MANIFEST)]).await;
    document(&single_oci, OCI_MANIFEST);
    assert_eq!(single_oci.body, m.body);

    // Bad input: the spec's error JSON.
    let bad_tag = oci_error(
        &get(&v2("rr/prod/manifests/.latest"), &[]).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    assert!(bad_tag.contains("not a valid tag"), "{bad_tag}");
    let malformed = oci_error(
        &get(
            &v2("rr/prod/manifests/latest"),
            &[("accept", "not a media type")],
        )
        .await,
        400,
        "UNSUPPORTED",
    );
    assert!(malformed.contains("Accept"), "{malformed}");
    let nothing = format!("sha256:{}", "0".repeat(64));
    let refused: &[(String, Option<&str>, u16, &str)] = &[
        ("rr/Prod/manifests/latest".into(), None, 400, "NAME_INVALID"),
        (
            "rr/prod--/blobs/sha256:00".into(),
            None,
            400,
            "NAME_INVALID",
        ),
        (
            "rr/prod/manifests/sha256:abc".into(),
            None,
            400,
            "DIGEST_INVALID",
        ),
        (
            "rr/prod/blobs/sha256:XYZ".into(),
            None,
            400,
            "DIGEST_INVALID",
        ),
        ("rr/prod/blobs/latest".into(), None, 400, "DIGEST_INVALID"),
        (
            "rr/prod/manifests/latest".into(),
            Some("application/json;q=2"),
            400,
            "UNSUPPORTED",
        ),
        (
            "rr/prod/manifests/latest".into(),
            Some("text/html"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        // Well-formed but unknown.
        (
            format!("rr/prod/blobs/{nothing}"),
            None,
            404,
            "BLOB_UNKNOWN",
        ),
        (
            format!("rr/prod/manifests/{nothing}"),
            None,
            404,
            "MANIFEST_UNKNOWN",
        ),
        // A layer is not a manifest; another algorithm is nothing this registry made.
        (
            format!("rr/prod/manifests/{layer_digest}"),
            None,
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "rr/prod/blobs/sha512:abcdef".into(),
            None,
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "rr/prod/manifests/0123abcd".into(),
            None,
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("rr/nope/manifests/latest".into(), None, 404, "NAME_UNKNOWN"),
        (
            format!("rr/nope/blobs/{layer_digest}"),
            None,
            404,
            "NAME_UNKNOWN",
        ),
        (
            "library/alpine/manifests/latest".into(),
            None,
            404,
            "NAME_UNKNOWN",
        ),
    ];
    for (path, accept, status, code) in refused {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        oci_error(&get(&v2(path), &headers).await, *status, code);
    }
    // HEAD errors carry the status and no body.
    let head_missing = head(&v2(&format!("rr/prod/blobs/{nothing}")), &[]).await;
    assert_eq!(head_missing.status, 404);
    assert!(head_missing.body.is_empty());

    // Tags: latest and the kept release.
    let tags = get(&v2("rr/prod/tags/list"), &[]).await;
    assert_eq!(tags.status, 200);
    assert_eq!(
        tags.json(),
        serde_json::json!({"name": "rr/prod", "tags": ["latest", release]})
    );

    // Nothing can be written, and trying changes nothing.
    let writes = [
        ("PUT", v2("rr/prod/manifests/latest")),
        ("PUT", v2(&format!("rr/prod/manifests/{index_digest}"))),
        ("DELETE", v2(&format!("rr/prod/manifests/{index_digest}"))),
        ("DELETE", v2(&format!("rr/prod/blobs/{layer_digest}"))),
        ("POST", v2("rr/prod/blobs/uploads/")),
        ("PATCH", v2("rr/prod/blobs/uploads/some-session")),
        ("PUT", format!("{registry}/v2/rr/prod/manifests/latest")),
    ];
    for (method, url) in &writes {
        let r = send(method, url, br#"{"schemaVersion":2}"#).await;
        oci_error(&r, 405, "UNSUPPORTED");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {url}");
    }
    let after = get(&v2("rr/prod/manifests/latest"), &[]).await;
    assert_eq!(after.body, index.body, "still served");
    let still = get(&v2(&format!("rr/prod/blobs/{layer_digest}")), &[]).await;
    assert_eq!(still.body, layer.body);
    assert_eq!(
        get(
            &format!("{registry}/v2/rr/prod/manifests/{index_digest}"),
            &[]
        )
        .await
        .body,
        index.body,
        "the registry listener serves the same"
    );
    assert_eq!(
        metric(h.server(), "velox_registry_layers_built_total").await,
        2.0,
        "one layer per platform, made once"
    );
}

/// A token made through the admin API with `api_token`; its secret.
async fn make_token(h: &Harness, body: Value) -> String {
    create_token(h.server(), TOKEN, &body).await["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[actix_web::test]
async fn reads_need_a_token_as_basic_password_or_bearer_when_anonymous_is_none() {
    let h = start("[\"linux/amd64\"]", "", |o| {
        o.env("VELOX_CACHE_API_TOKEN", TOKEN)
            .env("VELOX_CACHE_AUTH__ANONYMOUS", "none")
            .env("VELOX_CACHE_REGISTRY_LISTEN", "127.0.0.1:0")
    });
    let admin = format!("Bearer {TOKEN}");
    released_as(&h, &[("authorization", &admin)]).await;
    let read = make_token(&h, serde_json::json!({"name": "ci", "scope": "read"})).await;
    let elsewhere = make_token(
        &h,
        serde_json::json!({"name": "other", "scope": "read", "channels": ["staging-*"]}),
    )
    .await;
    let registry = h.server().registry_url();
    let public = h.server().public.trim_end_matches('/').to_owned();

    for base in [&public, &registry] {
        let url = format!("{base}/v2/rr/prod/manifests/latest");
        // No credential: the challenge docker and skopeo answer with the credentials.
        for path in ["/v2/", "/v2/rr/prod/manifests/latest"] {
            let r = get(&format!("{base}{path}"), &[]).await;
            oci_error(&r, 401, "UNAUTHORIZED");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Basic realm=\"velox-cache\""),
                "{base}{path}"
            );
        }
        // The token as the Basic password (any user name) and as a Bearer token.
        let index = get(&url, &[("authorization", &basic("ci", &read))]).await;
        document(&index, OCI_INDEX);
        let bearer = get(&url, &[("authorization", &format!("Bearer {read}"))]).await;
        assert_eq!(bearer.body, index.body);
        let anyone = get(&url, &[("authorization", &basic("", &read))]).await;
        assert_eq!(anyone.body, index.body);
        let api = get(&url, &[("authorization", &basic("admin", TOKEN))]).await;
        assert_eq!(api.status, 200);
        // A wrong or malformed credential; a token for other channels.
        let wrong = format!("vc_{}", "A".repeat(43));
        oci_error(
            &get(&url, &[("authorization", &basic("ci", &wrong))]).await,
            401,
            "UNAUTHORIZED",
        );
        oci_error(
            &get(&url, &[("authorization", "Basic !!!")]).await,
            401,
            "UNAUTHORIZED",
        );
        let denied = oci_error(
            &get(&url, &[("authorization", &format!("Bearer {elsewhere}"))]).await,
            403,
            "DENIED",
        );
        assert!(denied.contains("prod"), "{denied}");
        // Refused writes stay refused for the token too.
        let put = client()
            .put(&url)
            .insert_header(("authorization", format!("Bearer {read}")))
            .send_body("{}")
            .await
            .expect("sent")
            .status();
        assert_eq!(put.as_u16(), 405);
    }

    // skopeo: with --creds it pulls, without it is refused.
    let host = authority(&public);
    let image = format!("docker://{host}/rr/prod:latest");
    let with = ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("ci:{read}"),
        &image,
    ]));
    let index = get(
        &format!("{public}/v2/rr/prod/manifests/latest"),
        &[("authorization", &format!("Bearer {read}"))],
    )
    .await;
    assert_eq!(with.stdout, index.body.to_vec());
    let without =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &image]));
    assert!(!without.status.success(), "pulled without credentials");
    let said = String::from_utf8_lossy(&without.stderr).to_lowercase();
    assert!(
        said.contains("unauthorized") || said.contains("authentication required"),
        "{said}"
    );
    let bad = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("ci:{}", &read[..read.len() - 1]),
        &format!("docker://{}/rr/prod:latest", authority(&registry)),
    ]));
    assert!(!bad.status.success(), "pulled with a wrong token");
    let work = tempfile::tempdir().expect("tmp");
    ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("ci:{read}"),
        &format!("docker://{}/rr/prod:latest", authority(&registry)),
        &format!("oci:{}:latest", s(&work.path().join("pulled"))),
    ]));
}

#[actix_web::test]
async fn proxy_mode_leaves_v2_to_the_app_and_a_tag_without_a_release_waits_then_404s() {
    let php = support::php::PhpApp::start();
    let h = Harness::start_with(|o| {
        o.env("VELOX_CACHE_UPSTREAM", &php.url)
            .env("VELOX_CACHE_REGISTRY_LISTEN", "127.0.0.1:0")
            .env("VELOX_CACHE_OCI__BUILD_WAIT", "700ms")
            .env("VELOX_CACHE_API_TOKEN", TOKEN)
            .env("VELOX_CACHE_AUTH__ANONYMOUS", "none")
    });
    let registry = h.server().registry_url();
    let bearer = format!("Bearer {TOKEN}");
    let auth: &[(&str, &str)] = &[("authorization", &bearer)];

    // The public listener forwards /v2/ to the PHP app (its own 404 names the path), whose
    // access is its own business (no velox-cache token asked, even with anonymous = none); the
    // registry listener answers it, and wants a token.
    let app = get(&h.url("/v2/"), &[]).await;
    assert_eq!(app.status, 404);
    assert_eq!(
        app.json()["message"],
        "no route for /v2/",
        "the PHP app answered"
    );
    let app = get(&h.url("/v2/rr/edge/manifests/latest"), &[]).await;
    assert_eq!(
        app.json()["message"],
        "no route for /v2/rr/edge/manifests/latest"
    );
    oci_error(
        &get(&format!("{registry}/v2/"), &[]).await,
        401,
        "UNAUTHORIZED",
    );
    let base = get(&format!("{registry}/v2/"), auth).await;
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    oci_error(
        &get(&format!("{registry}/v2/rr/edge/manifests/latest"), auth).await,
        404,
        "NAME_UNKNOWN",
    );

    // A new channel whose build takes longer than oci.build_wait.
    h.velox.set_delay(Duration::from_millis(2500));
    let created = client()
        .put(h.server().admin_url("/v1/channels/edge"))
        .insert_header(("content-type", "application/json"))
        .insert_header(("authorization", bearer.as_str()))
        .send_body(
            serde_json::to_vec(&serde_json::json!({
                "rr_version": "v2025.1.2",
                "plugins": [{"module_name": HTTP, "tag": "v5.2.7"}],
                "platforms": ["linux/amd64"]
            }))
            .expect("json"),
        )
        .await
        .expect("sent")
        .status();
    assert_eq!(created.as_u16(), 201);
    let url = format!("{registry}/v2/rr/edge/manifests/latest");
    let asked = std::time::Instant::now();
    let waiting = get(&url, auth).await;
    let held = asked.elapsed();
    let message = oci_error(&waiting, 404, "MANIFEST_UNKNOWN");
    assert!(message.contains("under way"), "{message}");
    assert!(
        held >= Duration::from_millis(700),
        "answered after {held:?}, before build_wait"
    );
    assert!(h.velox.calls() >= 1, "the build was started");
    // HEAD waits the same way and ends the same way, without a body.
    let head_waiting = head(&url, auth).await;
    assert_eq!(head_waiting.status, 404);
    assert!(head_waiting.body.is_empty());
    // Once the release exists, the same request is the image.
    let mut last = None;
    let served = eventually(Duration::from_secs(30), async || {
        let r = get(&url, auth).await;
        let done = r.status == 200;
        last = Some(r);
        done
    })
    .await;
    let last = last.expect("asked");
    assert!(served, "{}", String::from_utf8_lossy(&last.body));
    let index = document(&last, OCI_INDEX);
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
    // A release id that was never made is unknown (only `latest` waits for a first release).
    let never = format!("{registry}/v2/rr/edge/manifests/{}", "f".repeat(32));
    let unknown = oci_error(&get(&never, auth).await, 404, "MANIFEST_UNKNOWN");
    assert!(unknown.contains("keeps no release"), "{unknown}");
    drop(php);
}

#[actix_web::test]
async fn layers_count_toward_the_size_limit_stay_pinned_with_their_binary_and_go_with_it() {
    // 300 KiB binaries (the stand-in's default, incompressible: no compressed variant is kept)
    // and a limit of 1000 KiB: three binaries fit, three and a layer do not.
    let limit_gb = 1000.0 * 1024.0 / (1024.0 * 1024.0 * 1024.0);
    let h =
        Harness::start_with(|o| o.env("VELOX_CACHE_CACHE__MAX_SIZE_GB", &format!("{limit_gb}")));
    let admin = |p: &str| h.server().admin_url(p);
    let created = client()
        .put(admin("/v1/channels/edge"))
        .insert_header(("content-type", "application/json"))
        .send_body(
            serde_json::to_vec(&serde_json::json!({
                "rr_version": "v2025.1.2",
                "plugins": [{"module_name": HTTP, "tag": "v5.2.7"}],
                "platforms": ["linux/amd64"]
            }))
            .expect("json"),
        )
        .await
        .expect("sent")
        .status();
    assert_eq!(created.as_u16(), 201);
    let mut channel = Value::Null;
    let flipped = eventually(Duration::from_secs(30), async || {
        channel = get(&h.url("/_velox/v1/channels/edge"), &[]).await.json();
        channel["current"]["id"].is_string()
    })
    .await;
    assert!(flipped, "no release: {channel}");
    let binary = channel["current"]["binaries"]["linux/amd64"]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();

    // The image: its layer is kept beside the pinned binary.
    let index = get(&h.url("/v2/rr/edge/manifests/latest"), &[]).await;
    let index = document(&index, OCI_INDEX);
    let manifest = get(
        &h.url(&format!(
            "/v2/rr/edge/manifests/{}",
            index["manifests"][0]["digest"].as_str().expect("digest")
        )),
        &[],
    )
    .await;
    let manifest = document(&manifest, OCI_MANIFEST);
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .to_owned();
    let layer_url = h.url(&format!("/v2/rr/edge/blobs/{layer_digest}"));
    assert_eq!(get(&layer_url, &[]).await.status, 200);
    let layer_file = h
        .server()
        .data_dir
        .join("signatures")
        .join(&binary[..2])
        .join(format!("{binary}.oci-layer.tar.gz"));
    assert!(layer_file.is_file(), "{}", layer_file.display());

    // Two more binaries: the second takes the cache over its limit only because the layer
    // counts, and the oldest unpinned entry goes.
    let artifact = |d: &str| h.url(&format!("/_velox/v1/artifacts/{d}"));
    let first = h.post(&distinct_request(1)).await;
    assert_eq!(first.status, 200);
    let first_digest = first
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    let second = h.post(&distinct_request(2)).await;
    assert_eq!(second.status, 200);
    let second_digest = second
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        get(&artifact(&first_digest), &[]).await.status,
        404,
        "evicted"
    );
    assert_eq!(get(&artifact(&second_digest), &[]).await.status, 200);
    assert_eq!(
        metric(h.server(), "velox_cache_evictions_total{reason=\"size\"}").await,
        1.0
    );
    // The pinned binary and its layer stayed.
    assert_eq!(get(&artifact(&binary), &[]).await.status, 200);
    let layer = get(&layer_url, &[]).await;
    assert_eq!(layer.status, 200);
    assert_eq!(digest_of(&layer.body), layer_digest);

    // Unpinned (the channel deleted), the binary is the oldest entry: the next binary evicts
    // it, and its layer goes with it.
    let deleted = client()
        .delete(admin("/v1/channels/edge"))
        .send()
        .await
        .expect("sent")
        .status();
    assert_eq!(deleted.as_u16(), 204);
    let third = h.post(&distinct_request(3)).await;
    assert_eq!(third.status, 200);
    assert_eq!(get(&artifact(&binary), &[]).await.status, 404, "evicted");
    // An eviction's files go a moment after its answer (docs/storage.md, "Limits and eviction").
    assert!(
        eventually(Duration::from_secs(10), async || !layer_file.exists()).await,
        "the layer went with its binary"
    );
    assert_eq!(get(&artifact(&second_digest), &[]).await.status, 200);
    assert_eq!(
        metric(h.server(), "velox_cache_evictions_total{reason=\"size\"}").await,
        2.0
    );
    // What is left (two binaries) fits; had the layer's bytes stayed counted, the next
    // binary would evict one of them.
    let fourth = h.post(&distinct_request(4)).await;
    assert_eq!(fourth.status, 200);
    assert_eq!(get(&artifact(&second_digest), &[]).await.status, 200);
    assert_eq!(
        metric(h.server(), "velox_cache_evictions_total{reason=\"size\"}").await,
        2.0,
        "the evicted layer no longer counts"
    );
}

/// The image of `name:tag` on `base` (a server's URL): the index's digest and, for each platform
/// of it, the manifest's, config's and layer's digests and the layer's bytes.
async fn image_of(base: &str, name: &str, tag: &str) -> (String, Vec<[String; 3]>, Vec<Vec<u8>>) {
    let url = |p: &str| format!("{}/v2/{name}/{p}", base.trim_end_matches('/'));
    let index = get(&url(&format!("manifests/{tag}")), &[]).await;
    let index_json = document(&index, OCI_INDEX);
    let mut digests = Vec::new();
    let mut layers = Vec::new();
    for entry in index_json["manifests"].as_array().expect("manifests") {
        let d = entry["digest"].as_str().expect("digest");
        let manifest = document(
            &get(&url(&format!("manifests/{d}")), &[]).await,
            OCI_MANIFEST,
        );
        let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
        let bytes = get(&url(&format!("blobs/{layer}")), &[]).await;
        assert_eq!(bytes.status, 200);
        assert_eq!(digest_of(&bytes.body), layer);
        digests.push([
            d.to_owned(),
            manifest["config"]["digest"]
                .as_str()
                .expect("config")
                .to_owned(),
            layer.to_owned(),
        ]);
        layers.push(bytes.body.to_vec());
    }
    (digest_of(&index.body), digests, layers)
}

#[actix_web::test]
async fn two_servers_make_the_same_layer_from_the_same_binary() {
    // Separate data dirs and separate stand-in Velox processes, which write the same bytes for
    // the same first build.
    let a = start("[\"linux/amd64\"]", "", |o| o);
    let b = start("[\"linux/amd64\"]", "", |o| o);
    let (ca, cb) = (released(&a).await, released(&b).await);
    let binary = &ca["current"]["binaries"]["linux/amd64"]["digest"];
    assert_eq!(binary, &cb["current"]["binaries"]["linux/amd64"]["digest"]);
    assert_eq!(
        ca["current"]["id"], cb["current"]["id"],
        "the same release id"
    );
    let (_, da, la) = image_of(&a.server().public, "rr/prod", "latest").await;
    let (_, db, lb) = image_of(&b.server().public, "rr/prod", "latest").await;
    assert_eq!(da[0][2], db[0][2], "the same layer digest");
    assert_eq!(la, lb);
    let (rr, _) = rr_of_layer_bytes(&la[0]);
    assert_eq!(sha256_hex(&rr), binary.as_str().expect("digest"));
    // The configs' diff_ids (the uncompressed tar's digest) agree too; the configs themselves
    // differ only by when each server made its release (`created`).
    let config = |base: &str, d: &str| {
        let url = format!("{}/v2/rr/prod/blobs/{d}", base.trim_end_matches('/'));
        async move { get(&url, &[]).await.json() }
    };
    let (fa, fb) = (
        config(&a.server().public, &da[0][1]).await,
        config(&b.server().public, &db[0][1]).await,
    );
    assert_eq!(fa["rootfs"]["diff_ids"], fb["rootfs"]["diff_ids"]);
    for field in ["Entrypoint", "Cmd"] {
        assert_eq!(fa["config"][field], fb["config"][field]);
    }
    let version = "org.opencontainers.image.version";
    assert_eq!(
        fa["config"]["Labels"][version],
        fb["config"]["Labels"][version]
    );
}

#[actix_web::test]
async fn a_replica_serves_the_image_of_a_release_another_replica_built() {
    let cluster = cluster::Cluster::start("images/");
    let config = cluster.tmp.path().join("velox-cache.toml");
    std::fs::write(
        &config,
        format!(
            "[channels.prod]\nrr_version = \"v2025.1.2\"\nplugins = [{{ module_name = \"{HTTP}\", tag = \"v5.2.7\" }}]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n"
        ),
    )
    .expect("config");
    let mut cluster = cluster
        .with("VELOX_CACHE_CONFIG", config.to_str().expect("utf-8"))
        .with(
            "VELOX_CACHE_AUTH__URL_SECRET",
            "images-test-url-secret-0123456789",
        );
    // The first replica builds the release.
    let builder = cluster.replica();
    let mut channel = Value::Null;
    let built = eventually(Duration::from_secs(40), async || {
        channel = get(&builder.url("/_velox/v1/channels/prod"), &[])
            .await
            .json();
        channel["current"]["id"].is_string()
    })
    .await;
    assert!(built, "no release: {channel}\n{}", builder.log_text());
    let builds = cluster.velox.builds();
    assert_eq!(builds, 2, "one build per platform");
    // The second one starts afterwards with an empty data dir: it makes the image from the
    // binaries in the bucket.
    let other = cluster.replica();
    let mut seen = Value::Null;
    let shared = eventually(Duration::from_secs(30), async || {
        seen = get(&other.url("/_velox/v1/channels/prod"), &[])
            .await
            .json();
        seen["current"]["id"] == channel["current"]["id"]
    })
    .await;
    assert!(shared, "the release never reached the replica: {seen}");
    // A pull behind a load balancer: the tag answered by the builder, every digest asked of the
    // other replica, which has served no tag yet (documents and layers made again from the
    // release: the same bytes).
    by_digest_elsewhere(&builder.public, &other.public).await;
    let (index_other, digests_other, layers_other) =
        image_of(&other.public, "rr/prod", "latest").await;
    for (layer, arch) in layers_other.iter().zip(["amd64", "arm64"]) {
        let (rr, _) = rr_of_layer_bytes(layer);
        let want = &channel["current"]["binaries"][format!("linux/{arch}")]["digest"];
        assert_eq!(sha256_hex(&rr), want.as_str().expect("digest"), "{arch}");
    }
    assert_eq!(cluster.velox.builds(), builds, "nothing was built again");
    assert_eq!(
        metric(&other, "velox_registry_layers_built_total").await,
        2.0
    );
    // The builder makes the very same documents: same release, same created time, same bytes.
    let (index_builder, digests_builder, _) = image_of(&builder.public, "rr/prod", "latest").await;
    assert_eq!(index_builder, index_other);
    assert_eq!(digests_builder, digests_other);
}

/// Asks `tagged` for `rr/prod:latest` (an OCI index, then a Docker list) and `elsewhere` for
/// everything they name, by digest: indexes, manifests, configs and layers, each byte for byte
/// as `tagged` serves it. Unknown digests stay unknown there.
async fn by_digest_elsewhere(tagged: &str, elsewhere: &str) {
    let url = |base: &str, p: &str| format!("{}/v2/rr/prod/{p}", base.trim_end_matches('/'));
    for (index_type, manifest_type) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
        let accept = format!("{index_type}, {manifest_type}");
        let index = get(&url(tagged, "manifests/latest"), &[("accept", &accept)]).await;
        let index_json = document(&index, index_type);
        let again = get(
            &url(elsewhere, &format!("manifests/{}", digest_of(&index.body))),
            &[("accept", &accept)],
        )
        .await;
        document(&again, index_type);
        assert!(again.body == index.body, "{index_type}: the same index");
        for entry in index_json["manifests"].as_array().expect("manifests") {
            let d = entry["digest"].as_str().expect("digest");
            let m = get(&url(elsewhere, &format!("manifests/{d}")), &[]).await;
            let manifest = document(&m, manifest_type);
            let mut blobs = vec![manifest["config"]["digest"].as_str().expect("config")];
            blobs.extend(
                manifest["layers"]
                    .as_array()
                    .expect("layers")
                    .iter()
                    .filter_map(|l| l["digest"].as_str()),
            );
            for b in blobs {
                let there = get(&url(elsewhere, &format!("blobs/{b}")), &[]).await;
                assert_eq!(
                    there.status,
                    200,
                    "{b}: {}",
                    String::from_utf8_lossy(&there.body)
                );
                assert_eq!(digest_of(&there.body), b);
                assert_eq!(there.header("docker-content-digest"), Some(b));
            }
        }
    }
    let unknown = format!("sha256:{}", "0".repeat(64));
    oci_error(
        &get(&url(elsewhere, &format!("manifests/{unknown}")), &[]).await,
        404,
        "MANIFEST_UNKNOWN",
    );
    oci_error(
        &get(&url(elsewhere, &format!("blobs/{unknown}")), &[]).await,
        404,
        "BLOB_UNKNOWN",
    );
}
