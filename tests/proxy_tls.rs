//! https to the upstream and to Velox, trusted through `upstream_ca_file` (a private CA made in
//! the test with rcgen), through real HTTP against the real binary.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use support::*;

/// A private CA and a server config whose certificate it signed, for 127.0.0.1 and localhost.
fn private_pki() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "velox-cache test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key.into())
    .expect("server config");
    (ca.pem(), server)
}

/// A PHP app's stand-in over https: a page, and a build instruction.
fn tls_upstream(tls: rustls::ServerConfig) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(|| {
                App::new()
                    .route(
                        "/page",
                        web::get().to(|| async { HttpResponse::Ok().body("hello over tls") }),
                    )
                    .route(
                        "/generate",
                        web::post().to(|| async {
                            HttpResponse::Ok()
                                .insert_header(("x-velox-build", "1"))
                                .insert_header(("x-app", "tls-app"))
                                .json(json!({
                                    "rr_version": "v2025.1.2",
                                    "target_platform": {"os": "linux", "arch": "amd64"},
                                    "plugins": [{"module_name": "github.com/roadrunner-server/http/v5", "tag": "v5.2.7"}]
                                }))
                        }),
                    )
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(0)
            .bind_rustls_0_23("127.0.0.1:0", tls)
            .expect("bind the TLS upstream");
            tx.send(server.addrs()[0]).expect("report address");
            let _ = server.run().await;
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("TLS upstream started");
    format!("https://{addr}")
}

struct Tls {
    tmp: tempfile::TempDir,
    velox: FakeVelox,
    upstream: String,
    ca_file: PathBuf,
}

impl Tls {
    fn start() -> Tls {
        let (ca_pem, server) = private_pki();
        let tmp = tempfile::tempdir().expect("temp dir");
        let ca_file = tmp.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("CA file");
        let velox = FakeVelox::start_tls(&tmp.path().join("velox-out"), server.clone());
        assert!(velox.url.starts_with("https://"));
        Tls {
            upstream: tls_upstream(server),
            tmp,
            velox,
            ca_file,
        }
    }

    fn server(&self, ca_file: Option<&Path>) -> Server {
        let mut opts = Options::new(
            &self.tmp.path().join("data"),
            &self.velox.url,
            &self.tmp.path().join("velox-out"),
        )
        .env("VELOX_CACHE_UPSTREAM", &self.upstream)
        // In proxy mode the build API is for token holders only.
        .env("VELOX_CACHE_API_TOKEN", "tls-token");
        if let Some(ca) = ca_file {
            opts = opts.env("VELOX_CACHE_UPSTREAM_CA_FILE", &ca.display().to_string());
        }
        Server::start(&opts)
    }
}

#[actix_web::test]
async fn https_upstream_and_velox_with_a_private_ca() {
    let tls = Tls::start();
    let server = tls.server(Some(&tls.ca_file));

    let page = get(&server.url("/page"), &[]).await;
    assert_eq!(page.status, 200, "{}", server.log_text());
    assert_eq!(&page.body[..], b"hello over tls");

    let binary = post_json(&server.url("/generate"), &json!({}), &[]).await;
    assert_eq!(
        binary.status,
        200,
        "{}",
        String::from_utf8_lossy(&binary.body)
    );
    assert_eq!(binary.header("x-cache-status"), Some("MISS"));
    assert_eq!(binary.header("x-app"), Some("tls-app"));
    assert_eq!(binary.body.len(), 300 * 1024);
    assert_eq!(tls.velox.builds(), 1, "built by Velox over https");
}

#[actix_web::test]
async fn without_the_ca_the_certificates_are_refused() {
    let tls = Tls::start();
    let server = tls.server(None);
    get(&server.url("/page"), &[])
        .await
        .assert_error(502, "upstream_unavailable");
    let build = post_json(
        &server.url("/_velox/v1/builds"),
        &build_request("linux", "amd64"),
        &[("authorization", "Bearer tls-token")],
    )
    .await;
    build.assert_error(502, "velox_unavailable");
    assert_eq!(tls.velox.calls(), 0, "no request got past the handshake");
    let log = server.log_text();
    assert!(log.contains("UnknownIssuer"), "{log}");
}

#[test]
fn a_bad_ca_file_stops_the_start_naming_the_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("file");
    let missing = tmp.path().join("missing.pem");
    for file in [&empty, &missing] {
        let (code, _, stderr) = server::run(
            &["config"],
            &[("VELOX_CACHE_UPSTREAM_CA_FILE", &file.display().to_string())],
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("`upstream_ca_file`"), "{stderr}");
    }

    let (ca_pem, _) = private_pki();
    let good = tmp.path().join("ca.pem");
    std::fs::write(&good, ca_pem).expect("CA file");
    let shown = good.display().to_string();
    let (code, stdout, stderr) =
        server::run(&["config"], &[("VELOX_CACHE_UPSTREAM_CA_FILE", &shown)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("upstream_ca_file = \"{shown}\"")),
        "{stdout}"
    );
}
