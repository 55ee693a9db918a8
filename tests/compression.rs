//! Compressed downloads (docs/compression.md) with a real Go binary: the stand-in Velox builds
//! Debian's `promtool` (48 MB), the server makes its zstd and gzip variants in the background, and
//! real clients fetch it from every route that answers a binary: curl (`--compressed`, and each
//! coding asked for by name), wget, aria2c with several ranged connections, and headless
//! Chromium's `fetch`. Then the variants' life on disk: a damaged one is never served, but deleted
//! and made again (found by a request, by the scrub, and at start), they are counted by the size
//! limit, and they go with their binary.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::download::tool;
use support::*;
use tempfile::TempDir;

/// A real Go binary (Debian's `prometheus` package; scripts/test installs it).
const GO_BINARY: &str = "/usr/bin/promtool";

/// A low zstd level keeps the tests quick; the default level's ratio is measured in benches/.
const TEST_ZSTD_LEVEL: &str = "3";

const CHANNEL: &str = r#"
[channels.prod]
rr_version = "v2025.1.2"
plugins = [{ module_name = "github.com/roadrunner-server/http/v5", tag = "v5.2.7" }]
platforms = ["linux/amd64"]
"#;

fn go_binary() -> Vec<u8> {
    std::fs::read(GO_BINARY).expect("promtool is installed (apt-get install prometheus)")
}

/// A stand-in Velox that builds `binary`, and a server in front of it (with channel `prod`
/// when `channel`).
fn start(binary: &Path, channel: bool, f: impl FnOnce(Options) -> Options) -> Harness {
    let tmp = tempfile::tempdir().expect("temp dir");
    let artifacts = tmp.path().join("velox-out");
    let velox = FakeVelox::start(&artifacts);
    velox.build_binary(binary);
    let config = tmp.path().join("velox-cache.toml");
    std::fs::write(&config, if channel { CHANNEL } else { "" }).expect("config");
    let opts = f(
        Options::new(&tmp.path().join("data"), &velox.url, &artifacts)
            .env("VELOX_CACHE_CONFIG", &config.display().to_string())
            .env("VELOX_CACHE_COMPRESSION__ZSTD_LEVEL", TEST_ZSTD_LEVEL),
    );
    let server = Server::start(&opts);
    Harness {
        tmp,
        velox,
        opts,
        server: Some(server),
    }
}

/// What curl saw: the last response's status and headers (names in lower case, repeated ones
/// kept) and the body as written.
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn varies_on_accept_encoding(&self) -> bool {
        self.all("vary").iter().any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    }
}

/// Runs curl with `args` on `url`, the body to a file in `dir`.
fn curl<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(dir: &Path, url: &str, args: &[S]) -> Seen {
    let headers = dir.join("curl.headers");
    let body = dir.join("curl.body");
    let _ = std::fs::remove_file(&body);
    let out = tool("curl")
        .args(["-sS", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = std::fs::read_to_string(&headers).expect("headers");
    // The last response's headers (after any 100 Continue).
    let block = text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Seen {
        status: status.trim().parse().expect("status"),
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("a gzip stream");
    out
}

fn unzstd(b: &[u8]) -> Vec<u8> {
    // As a browser decodes: at most an 8 MiB window (RFC 9659).
    let mut d = zstd::stream::read::Decoder::new(b).expect("a zstd decoder");
    d.window_log_max(23).expect("window limit");
    let mut out = Vec::new();
    d.read_to_end(&mut out)
        .expect("a zstd stream within an 8 MiB window");
    out
}

fn repr_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
    )
}

/// Checks an answer that sends `binary` as `coding` (`None`: identity): the coding's headers, the
/// length, ETag and `Repr-Digest` of the bytes sent, `X-Binary-SHA256` of the binary, `Vary`.
fn assert_sent_as(seen: &Seen, binary: &[u8], coding: Option<&str>, what: &str) {
    assert_eq!(seen.status, 200, "{what}");
    assert_eq!(seen.header("content-encoding"), coding, "{what}");
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str()),
        "{what}: the length is the encoded body's"
    );
    assert_eq!(
        seen.header("etag"),
        Some(format!("\"{}\"", sha256_hex(&seen.body)).as_str()),
        "{what}: a strong ETag of the bytes sent"
    );
    assert_eq!(
        seen.header("repr-digest"),
        Some(repr_digest(&seen.body).as_str()),
        "{what}"
    );
    assert_eq!(
        seen.header("x-binary-sha256"),
        Some(sha256_hex(binary).as_str()),
        "{what}"
    );
    assert!(
        seen.varies_on_accept_encoding(),
        "{what}: {:?}",
        seen.headers
    );
    let decoded = match coding {
        None => seen.body.clone(),
        Some("gzip") => gunzip(&seen.body),
        Some("zstd") => unzstd(&seen.body),
        Some(other) => panic!("{what}: unexpected coding {other}"),
    };
    assert!(
        decoded == binary,
        "{what}: the decoded bytes are the binary"
    );
    if coding.is_some() {
        assert!(
            seen.body.len() * 10 < binary.len() * 9,
            "{what}: {} bytes for a binary of {}",
            seen.body.len(),
            binary.len()
        );
    }
}

fn counter(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

async fn made(h: &Harness, coding: &str) -> f64 {
    metric(
        h.server(),
        &counter(
            "velox_cache_compressions_total",
            &format!("encoding=\"{coding}\",outcome=\"stored\""),
        ),
    )
    .await
}

/// Waits until `zstd` zstd and `gzip` gzip variants were stored by this server process.
async fn variants_made(h: &Harness, zstd: f64, gzip: f64) {
    let mut last = (0.0, 0.0);
    let ok = eventually(Duration::from_secs(60), async || {
        last = (made(h, "zstd").await, made(h, "gzip").await);
        last.0 >= zstd && last.1 >= gzip
    })
    .await;
    assert!(
        ok,
        "variants made (zstd, gzip): {last:?}, wanted ({zstd}, {gzip})\n{}",
        h.server().log_text()
    );
}

async fn sent(h: &Harness, coding: &str) -> f64 {
    metric(
        h.server(),
        &counter(
            "velox_cache_sent_bytes_total",
            &format!("encoding=\"{coding}\""),
        ),
    )
    .await
}

async fn channel_digest(h: &Harness) -> String {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(30), async || {
        last = get(&h.url("/_velox/v1/channels/prod"), &[]).await.json();
        last["current"]["binaries"]["linux/amd64"]["digest"].is_string()
    })
    .await;
    assert!(ok, "channel prod has no release: {last}");
    last["current"]["binaries"]["linux/amd64"]["digest"]
        .as_str()
        .expect("digest")
        .to_owned()
}

/// Every route that answers a binary, as curl arguments and a URL.
fn routes(h: &Harness, dir: &Path, digest: &str) -> Vec<(&'static str, Vec<String>, String)> {
    let request = dir.join("request.json");
    std::fs::write(
        &request,
        serde_json::to_vec(&build_request("linux", "amd64")).expect("json"),
    )
    .expect("request file");
    vec![
        (
            "build hit",
            vec![
                "-H".into(),
                "content-type: application/json".into(),
                "--data-binary".into(),
                format!("@{}", request.display()),
            ],
            h.builds_url(),
        ),
        (
            "artifact",
            Vec::new(),
            h.url(&format!("/_velox/v1/artifacts/{digest}")),
        ),
        (
            "channel",
            Vec::new(),
            h.url("/_velox/v1/channels/prod/linux/amd64"),
        ),
    ]
}

#[actix_web::test]
async fn real_clients_get_a_real_go_binary_compressed_on_every_route() {
    let binary = go_binary();
    let digest = sha256_hex(&binary);
    let h = start(Path::new(GO_BINARY), true, |o| o);
    let dir = h.tmp.path().join("clients");
    std::fs::create_dir_all(&dir).expect("dir");

    // The first answer is a miss, sent as it is while its variants are made.
    let first = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("x-cache-status"), Some("MISS"));
    assert_eq!(first.header("x-binary-sha256"), Some(digest.as_str()));
    assert!(first.body == binary, "the miss sends the binary");
    assert_eq!(
        channel_digest(&h).await,
        digest,
        "the channel built the same bytes"
    );
    variants_made(&h, 1.0, 1.0).await;
    assert_eq!(
        metric(h.server(), "velox_cache_compression_backlog").await,
        0.0
    );

    for (route, args, url) in routes(&h, &dir, &digest) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let with = |extra: &[&str]| -> Vec<String> {
            args.iter().chain(extra).map(|a| a.to_string()).collect()
        };

        // Without Accept-Encoding: the binary itself, and still `Vary`.
        let plain = curl(&dir, &url, &args);
        assert_sent_as(&plain, &binary, None, &format!("{route}, identity"));
        if route == "channel" {
            assert_eq!(plain.header("x-cache-status"), Some("HIT"), "{route}");
        }

        // `curl --compressed` (it offers deflate, gzip, br, zstd): zstd, decoded by curl to the
        // very same bytes, in fewer bytes on the wire.
        let compressed = curl(&dir, &url, &with(&["--compressed"]));
        assert_eq!(compressed.status, 200, "{route}");
        assert_eq!(
            compressed.header("content-encoding"),
            Some("zstd"),
            "{route}"
        );
        assert!(
            compressed.body == binary,
            "{route}: curl --compressed decodes the binary"
        );
        let wire: u64 = compressed
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert!(
            wire * 10 < binary.len() as u64 * 9,
            "{route}: {wire} bytes on the wire for {}",
            binary.len()
        );
        assert!(compressed.varies_on_accept_encoding(), "{route}");

        // Each coding by name, read raw.
        for coding in ["zstd", "gzip"] {
            let ae = format!("Accept-Encoding: {coding}");
            let raw = curl(&dir, &url, &with(&["-H", &ae]));
            assert_sent_as(&raw, &binary, Some(coding), &format!("{route}, {coding}"));
        }

        // A range is served from the binary itself, whatever the request accepts. (curl's
        // `-r` sends no Range with a POST: the header by hand.)
        let ranged = curl(
            &dir,
            &url,
            &with(&[
                "-H",
                "Accept-Encoding: zstd, gzip",
                "-H",
                "Range: bytes=1000-1999",
            ]),
        );
        assert_eq!(ranged.status, 206, "{route}");
        assert_eq!(ranged.header("content-encoding"), None, "{route}");
        assert_eq!(
            ranged.header("content-range"),
            Some(format!("bytes 1000-1999/{}", binary.len()).as_str()),
            "{route}"
        );
        assert!(ranged.body == binary[1000..2000], "{route}: the range");
        assert_eq!(ranged.header("x-binary-sha256"), Some(digest.as_str()));
        assert!(ranged.varies_on_accept_encoding(), "{route}");
    }

    // q-values, on the artifact route: what is chosen for each Accept-Encoding.
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let cases: &[(&str, Option<&str>)] = &[
        ("gzip, zstd", Some("zstd")),
        ("gzip;q=1, zstd;q=0.5", Some("gzip")),
        ("zstd;q=0, gzip", Some("gzip")),
        ("zstd;q=0, gzip;q=0", None),
        ("zstd;q=0.5, identity", None),
        ("identity;q=0, gzip;q=0.2", Some("gzip")),
        ("x-gzip", Some("gzip")),
        ("GZIP;Q=0.5", Some("gzip")),
        ("br, deflate", None),
        ("*", None),
        ("gzip, *;q=0", Some("gzip")),
        // Malformed elements are skipped; the rest of the header counts; never a 400.
        ("zstd;q=2, gzip", Some("gzip")),
        ("zstd;q=abc, gzip;q=0.3", Some("gzip")),
        (",,;, gzip ,", Some("gzip")),
        ("zstd;q=0.5;;, gzip;q=0.1", Some("gzip")),
        ("bogus/%%%", None),
        ("", None),
    ];
    // HEADs (the same choice as a GET, without 48 MB each): the coding, and the length and
    // ETag of the representation the entry records for it.
    let key = first.header("x-velox-cache-key").expect("key");
    let entry = h.admin_json(&format!("/v1/cache/{key}")).await;
    let representation = |coding: Option<&str>| -> (u64, String) {
        match coding {
            None => (binary.len() as u64, digest.clone()),
            Some(c) => (
                entry["variants"][c]["size"]
                    .as_u64()
                    .expect("a variant size"),
                entry["variants"][c]["digest"]
                    .as_str()
                    .expect("a variant digest")
                    .to_owned(),
            ),
        }
    };
    for (accept, want) in cases {
        let what = format!("Accept-Encoding: {accept:?}");
        let ae = format!("Accept-Encoding: {accept}");
        let seen = curl(&dir, &artifact, &["-I", "-H", &ae]);
        assert_eq!(seen.status, 200, "{what}");
        assert_eq!(seen.header("content-encoding"), *want, "{what}");
        let (size, sha) = representation(*want);
        assert_eq!(
            seen.header("content-length"),
            Some(size.to_string().as_str()),
            "{what}"
        );
        assert_eq!(
            seen.header("etag"),
            Some(format!("\"{sha}\"").as_str()),
            "{what}"
        );
        assert_eq!(
            seen.header("x-binary-sha256"),
            Some(digest.as_str()),
            "{what}"
        );
        assert!(seen.varies_on_accept_encoding(), "{what}");
    }

    // Conditional requests and errors vary too: a 304 for the zstd ETag, a 416, a HEAD.
    let zstd_etag = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"])
        .header("etag")
        .expect("etag")
        .to_owned();
    let not_modified = curl(
        &dir,
        &artifact,
        &[
            "-H",
            "Accept-Encoding: zstd",
            "-H",
            &format!("If-None-Match: {zstd_etag}"),
        ],
    );
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.varies_on_accept_encoding());
    let identity_etag = format!("\"{digest}\"");
    let changed = curl(
        &dir,
        &artifact,
        &[
            "-H",
            "Accept-Encoding: zstd",
            "-H",
            &format!("If-None-Match: {identity_etag}"),
        ],
    );
    assert_sent_as(
        &changed,
        &binary,
        Some("zstd"),
        "the identity ETag does not match zstd",
    );
    let unsatisfiable = curl(&dir, &artifact, &["-r", "999999999-"]);
    assert_eq!(unsatisfiable.status, 416);
    assert!(unsatisfiable.varies_on_accept_encoding());
    let head = curl(&dir, &artifact, &["-I", "-H", "Accept-Encoding: gzip"]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-encoding"), Some("gzip"));
    assert_eq!(head.header("x-binary-sha256"), Some(digest.as_str()));
    assert!(head.varies_on_accept_encoding());

    // Bytes sent, counted per coding: exactly the wire bytes of one more answer each.
    for coding in ["zstd", "gzip", "identity"] {
        let before = sent(&h, coding).await;
        let ae = format!("Accept-Encoding: {coding}");
        let seen = curl(&dir, &artifact, &["-H", &ae]);
        assert_eq!(
            sent(&h, coding).await - before,
            seen.body.len() as f64,
            "velox_cache_sent_bytes_total{{encoding=\"{coding}\"}}"
        );
    }

    // wget: as it is, asking for gzip (then decoding it), and resuming a cut download (a range:
    // the binary itself; wget turns compression off to resume).
    for args in [&[][..], &["--compression=gzip"][..]] {
        let file = dir.join("rr-wget");
        let _ = std::fs::remove_file(&file);
        let out = tool("wget")
            .args(["-S", "-O"])
            .arg(&file)
            .args(args)
            .arg(&artifact)
            .output()
            .expect("wget");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "wget {args:?}: {log}");
        assert!(
            std::fs::read(&file).expect("file") == binary,
            "wget {args:?}: the binary\n{log}"
        );
    }
    support::download::wget_resumes(&dir, &artifact, &binary);

    // curl resuming a cut download with --compressed: a range, identity.
    let file = dir.join("rr-curl-resumed");
    std::fs::write(&file, &binary[..binary.len() / 2 + 5]).expect("a cut download");
    let status = tool("curl")
        .args(["-sS", "-f", "--compressed", "-C", "-", "-o"])
        .arg(&file)
        .arg(&artifact)
        .status()
        .expect("curl -C -");
    assert!(status.success());
    assert!(
        std::fs::read(&file).expect("file") == binary,
        "curl -C -: the binary"
    );

    // aria2c: four ranged connections, with and without asking for gzip.
    for (name, args) in [
        ("rr-aria2c", &[][..]),
        ("rr-aria2c-gzip", &["--http-accept-gzip=true"][..]),
    ] {
        let out = tool("aria2c")
            .args([
                "-q",
                "-x4",
                "-s4",
                "-k1M",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "-d",
            ])
            .arg(&dir)
            .args(["-o", name])
            .args(args)
            .arg(&artifact)
            .output()
            .expect("aria2c");
        assert!(
            out.status.success(),
            "aria2c {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(dir.join(name)).expect("file") == binary,
            "aria2c {args:?}: the binary"
        );
    }
}

/// Headless Chromium through `tests/browser/fetch_digest.py`: fetches `url` from a page of the
/// same origin and reports what the browser saw.
fn chromium_fetch(page: &str, url: &str) -> Value {
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/fetch_digest.py");
    let out = Command::new("python3")
        .args([driver, page, url])
        .output()
        .expect("python3 runs (scripts/test installs playwright and chromium)");
    assert!(
        out.status.success(),
        "the driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the driver's JSON")
}

#[actix_web::test]
async fn chromium_decodes_the_zstd_variant_to_the_binary() {
    let binary = go_binary();
    let digest = sha256_hex(&binary);
    let h = start(Path::new(GO_BINARY), false, |o| o);
    let first = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(first.status, 200);
    variants_made(&h, 1.0, 1.0).await;
    let before = sent(&h, "zstd").await;

    let seen = chromium_fetch(
        &h.url("/_velox/v1/channels"),
        &h.url(&format!("/_velox/v1/artifacts/{digest}")),
    );
    assert!(
        seen["accept_encoding"]
            .as_str()
            .is_some_and(|a| a.contains("zstd")),
        "Chromium offers zstd: {seen}"
    );
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["content_encoding"], "zstd", "{seen}");
    assert_eq!(seen["sha256"], digest.as_str(), "{seen}");
    assert_eq!(seen["x_binary_sha256"], digest.as_str(), "{seen}");
    assert_eq!(seen["decoded_bytes"], json!(binary.len()), "{seen}");
    // The browser's own account: fewer bytes received than decoded.
    let encoded = seen["encoded_body_size"].as_f64().expect("encodedBodySize");
    assert!(
        encoded > 0.0 && encoded * 10.0 < binary.len() as f64 * 9.0,
        "{seen}"
    );
    assert_eq!(seen["decoded_body_size"], json!(binary.len()), "{seen}");
    let wire = sent(&h, "zstd").await - before;
    assert!(
        wire > 0.0 && wire * 10.0 < binary.len() as f64 * 9.0,
        "zstd bytes sent to Chromium: {wire}"
    );
}

/// The variant file of `binary` in `coding`, named by its digest (the ETag of its answers).
async fn variant_file(h: &Harness, dir: &Path, digest: &str, coding: &str) -> PathBuf {
    let seen = curl(
        dir,
        &h.url(&format!("/_velox/v1/artifacts/{digest}")),
        &["-I", "-H", &format!("Accept-Encoding: {coding}")],
    );
    assert_eq!(
        seen.header("content-encoding"),
        Some(coding),
        "{coding} served"
    );
    let name = seen
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    h.opts
        .data_dir
        .join("variants/sha256")
        .join(&name[..2])
        .join(name)
}

/// Flips one byte in the middle of `file`, in place.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).expect("variant file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open the variant");
    f.write_all(&bytes).expect("rewrite the variant");
}

async fn corrupt_count(h: &Harness) -> f64 {
    metric(
        h.server(),
        "velox_cache_store_errors_total{reason=\"corrupt\",tier=\"local\"}",
    )
    .await
}

fn files_under(dir: &Path) -> (usize, u64) {
    let files = walk_files(dir);
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    (files.len(), bytes)
}

#[actix_web::test]
async fn a_damaged_variant_is_never_served_and_variants_live_and_die_with_their_binary() {
    let binary = go_binary();
    let digest = sha256_hex(&binary);
    let mut h = start(Path::new(GO_BINARY), false, |o| {
        o.env("VELOX_CACHE_CACHE__SCRUB_INTERVAL", "2s")
    });
    let dir = h.tmp.path().join("clients");
    std::fs::create_dir_all(&dir).expect("dir");
    let variants_dir = h.opts.data_dir.join("variants/sha256");
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));

    let built = h.post(&build_request("linux", "amd64")).await;
    assert_eq!(built.status, 200);
    let key = built.header("x-velox-cache-key").expect("key").to_owned();
    variants_made(&h, 1.0, 1.0).await;
    // One binary, two variant files, recorded on its entry.
    let (files, bytes) = files_under(&variants_dir);
    assert_eq!(files, 2, "{:?}", walk_files(&variants_dir));
    assert_eq!(
        metric(h.server(), "velox_cache_variant_bytes").await,
        bytes as f64
    );
    let entry = h.admin_json(&format!("/v1/cache/{key}")).await;
    let recorded: u64 = ["zstd", "gzip"]
        .iter()
        .map(|c| {
            entry["variants"][c]["size"]
                .as_u64()
                .expect("a variant size")
        })
        .sum();
    assert_eq!(recorded, bytes, "{entry}");

    // Damaged through the filesystem: the next request gets another representation, the
    // variant is found damaged, deleted and made again, and then served whole.
    let zstd = variant_file(&h, &dir, &digest, "zstd").await;
    let corrupt = corrupt_count(&h).await;
    damage(&zstd);
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    assert_sent_as(&seen, &binary, None, "a damaged zstd variant is not served");
    let mut last = None;
    let ok = eventually(Duration::from_secs(30), async || {
        let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
        last = seen.header("content-encoding").map(str::to_owned);
        last.as_deref() == Some("zstd")
    })
    .await;
    assert!(ok, "zstd served again: {last:?}\n{}", h.server().log_text());
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    assert_sent_as(&seen, &binary, Some("zstd"), "the remade zstd variant");
    assert_eq!(corrupt_count(&h).await, corrupt + 1.0, "counted as damage");

    // Damaged with no request to notice: the scrub finds it, and it is made again.
    let gzip = variant_file(&h, &dir, &digest, "gzip").await;
    damage(&gzip);
    variants_made(&h, 2.0, 2.0).await;
    assert_eq!(
        corrupt_count(&h).await,
        corrupt + 2.0,
        "the scrub counted it"
    );
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: gzip"]);
    assert_sent_as(&seen, &binary, Some("gzip"), "the remade gzip variant");

    // Damaged while the server was down: checked at start before it is served.
    h.stop();
    damage(&gzip);
    h.restart();
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: gzip"]);
    assert_eq!(seen.status, 200);
    let decoded = match seen.header("content-encoding") {
        Some("gzip") => gunzip(&seen.body),
        None => seen.body.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        decoded == binary,
        "after a restart: never the damaged bytes"
    );
    variants_made(&h, 0.0, 1.0).await;
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: gzip"]);
    assert_sent_as(
        &seen,
        &binary,
        Some("gzip"),
        "gzip made again after the restart",
    );
    let (files, bytes) = files_under(&variants_dir);
    assert_eq!(files, 2, "{:?}", walk_files(&variants_dir));
    assert_eq!(
        metric(h.server(), "velox_cache_variant_bytes").await,
        bytes as f64
    );

    // Evicted with their binary: its entry deleted, the blob and its variants go.
    let r = delete(&h.server().admin_url(&format!("/v1/cache/{key}"))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        files_under(&variants_dir).0,
        0,
        "{:?}",
        walk_files(&variants_dir)
    );
    assert_eq!(metric(h.server(), "velox_cache_variant_bytes").await, 0.0);
}

#[actix_web::test]
async fn the_size_limit_counts_the_variants() {
    let binary = go_binary();
    let tmp = TempDir::new().expect("tmp");
    // A second real binary: promtool with a few bytes more (another digest, as compressible).
    let other = tmp.path().join("promtool-2");
    let mut bytes = binary.clone();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&other, &bytes).expect("second binary");

    // Two binaries fit (96 MB), two binaries and the first one's variants (~30 MB) do not.
    let h = start(Path::new(GO_BINARY), false, |o| {
        o.env("VELOX_CACHE_CACHE__MAX_SIZE_GB", "0.11")
    });
    let first = h.post(&distinct_request(1)).await;
    assert_eq!(first.status, 200);
    let first_key = first.header("x-velox-cache-key").expect("key").to_owned();
    variants_made(&h, 1.0, 1.0).await;
    let variants = metric(h.server(), "velox_cache_variant_bytes").await;
    assert!(variants > 0.0);
    assert!(
        2.0 * binary.len() as f64 + 13.0 <= 0.11e9
            && 2.0 * binary.len() as f64 + 13.0 + variants > 0.11e9,
        "the limit sits between the binaries alone and the binaries with variants"
    );

    h.velox.build_binary(&other);
    let second = h.post(&distinct_request(2)).await;
    assert_eq!(second.status, 200);
    assert!(second.body == bytes);
    let gone = get(
        &h.server().admin_url(&format!("/v1/cache/{first_key}")),
        &[],
    )
    .await;
    assert_eq!(
        gone.status, 404,
        "the first entry was evicted for the variants' bytes"
    );
}

#[actix_web::test]
async fn binaries_stored_while_compression_was_off_are_compressed_at_the_next_start() {
    let binary = go_binary();
    let tmp = TempDir::new().expect("tmp");
    let other = tmp.path().join("promtool-2");
    let mut bytes = binary.clone();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&other, &bytes).expect("second binary");
    let mut h = start(Path::new(GO_BINARY), false, |o| {
        o.env("VELOX_CACHE_COMPRESSION__ENABLED", "false")
    });
    let dir = h.tmp.path().join("clients");
    std::fs::create_dir_all(&dir).expect("dir");

    // Off: the binary itself to every client, and nothing made.
    assert_eq!(h.post(&distinct_request(1)).await.status, 200);
    h.velox.build_binary(&other);
    assert_eq!(h.post(&distinct_request(2)).await.status, 200);
    let digest = sha256_hex(&binary);
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(
        &dir,
        &artifact,
        &["-I", "-H", "Accept-Encoding: zstd, gzip"],
    );
    assert_eq!(seen.status, 200);
    assert_eq!(seen.header("content-encoding"), None);
    assert_eq!(seen.header("x-binary-sha256"), Some(digest.as_str()));
    // `Vary` with compression off too: a shared cache may hold a zstd answer from before.
    assert!(seen.varies_on_accept_encoding(), "{:?}", seen.headers);
    assert_eq!(
        metric(h.server(), "velox_cache_compression_backlog").await,
        0.0
    );
    assert_eq!(metric(h.server(), "velox_cache_variant_bytes").await, 0.0);

    // On: the start-up pass queues both; one is worked on while the other waits.
    h.stop();
    h.restart_with(|o| o.env("VELOX_CACHE_COMPRESSION__ENABLED", "true"));
    let mut backlog = -1.0;
    let waited = eventually(Duration::from_secs(20), async || {
        backlog = metric(h.server(), "velox_cache_compression_backlog").await;
        backlog == 1.0
    })
    .await;
    assert!(waited, "one binary waiting: {backlog}");
    variants_made(&h, 2.0, 2.0).await;
    assert_eq!(
        metric(h.server(), "velox_cache_compression_backlog").await,
        0.0
    );
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    assert_sent_as(&seen, &binary, Some("zstd"), "compressed after the restart");

    // `cache rebuild-index` re-reads the manifests and keeps what it knew of the variants, their
    // bytes counted again: nothing is made again.
    let variant_bytes = metric(h.server(), "velox_cache_variant_bytes").await;
    let (files, bytes) = files_under(&h.opts.data_dir.join("variants"));
    assert_eq!(
        (files, bytes as f64),
        (4, variant_bytes),
        "two binaries, two codings"
    );
    h.stop();
    let dd = h.opts.data_dir.display().to_string();
    let (code, out, err) = server::run(&["cache", "rebuild-index", "--data-dir", &dd], &[]);
    assert_eq!(code, 0, "{out}{err}");
    h.restart_with(|o| o.env("VELOX_CACHE_COMPRESSION__ENABLED", "true"));
    assert_eq!(
        metric(h.server(), "velox_cache_variant_bytes").await,
        variant_bytes
    );
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    assert_sent_as(&seen, &binary, Some("zstd"), "after rebuild-index");
    assert_eq!(made(&h, "zstd").await + made(&h, "gzip").await, 0.0);

    // An index damaged beyond use is set aside and rebuilt from the manifests with no record of
    // any variant: the files on disk are recognised (each decodes to a stored binary) and kept,
    // none is made again.
    h.stop();
    for file in walk_files(&h.opts.data_dir.join("meta")) {
        let len = std::fs::metadata(&file)
            .map(|m| m.len())
            .unwrap_or(0)
            .max(4096);
        let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(&file, garbage).expect("overwrite");
    }
    h.restart_with(|o| o.env("VELOX_CACHE_COMPRESSION__ENABLED", "true"));
    let mut last = 0.0;
    let kept = eventually(Duration::from_secs(30), async || {
        last = metric(h.server(), "velox_cache_variant_bytes").await;
        last == variant_bytes
    })
    .await;
    assert!(kept, "variant bytes {last}\n{}", h.server().log_text());
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    assert_sent_as(&seen, &binary, Some("zstd"), "after the index was rebuilt");
    assert_eq!(made(&h, "zstd").await + made(&h, "gzip").await, 0.0);
    assert_eq!(files_under(&h.opts.data_dir.join("variants")).0, 4);
    let log = h.server().log_text();
    assert!(log.contains("rebuilding from the manifests"), "{log}");
    assert_eq!(log.matches(": kept").count(), 4, "{log}");
}

/// Waits for the start-up check of the `n`th start (the log file is appended to by every start)
/// and returns the bytes it hashed, from its log line.
async fn hashed_at_start(h: &Harness, n: usize) -> u64 {
    let server = h.server();
    assert!(
        eventually(Duration::from_secs(20), async || server
            .log_text()
            .matches("variants checked,")
            .count()
            == n)
        .await,
        "{}",
        server.log_text()
    );
    hashed_in(&server.log_text())
}

fn hashed_in(log: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("variants checked,"))
        .unwrap_or_else(|| panic!("no start-up check in the log:\n{log}"));
    line.split("variants checked, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// A restart does not hash every variant again: the stamp each was seen whole in is kept in
/// the index, and one damaged while the server was stopped has another (docs/compression.md,
/// "Damage").
#[actix_web::test]
async fn a_restart_hashes_only_the_variants_changed_while_it_was_down() {
    let binary = go_binary();
    let digest = sha256_hex(&binary);
    let mut h = start(Path::new(GO_BINARY), false, |o| o);
    let dir = h.tmp.path().join("clients");
    std::fs::create_dir_all(&dir).expect("dir");
    assert_eq!(h.post(&build_request("linux", "amd64")).await.status, 200);
    variants_made(&h, 1.0, 1.0).await;
    let zstd = variant_file(&h, &dir, &digest, "zstd").await;
    let zstd_size = std::fs::metadata(&zstd).expect("zstd").len();

    h.stop();
    h.restart();
    assert_eq!(hashed_at_start(&h, 2).await, 0, "nothing changed");
    // Served at once, compressed, and whole.
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    assert_sent_as(&seen, &binary, Some("zstd"), "after the restart");

    h.stop();
    damage(&zstd);
    h.restart();
    assert_eq!(
        hashed_at_start(&h, 3).await,
        zstd_size,
        "the damaged one, and only it"
    );
    let artifact = h.url(&format!("/_velox/v1/artifacts/{digest}"));
    let seen = curl(&dir, &artifact, &["-H", "Accept-Encoding: zstd"]);
    // The damaged variant is never sent: what is sent decodes to the binary, whether it is the
    // binary itself or the variant the compressor has made again since (it may have already).
    assert_sent_as(
        &seen,
        &binary,
        seen.header("content-encoding"),
        "the damaged variant is not served",
    );
    assert_eq!(corrupt_count(&h).await, 1.0);
}
