//! TLS for the connections velox-cache opens (to `upstream` and to Velox's `server_url`): rustls
//! with the ring provider, trusting the system's roots plus an optional private CA file
//! (`upstream_ca_file`, PEM).
//!
//! The config is built once at start-up and shared by every worker's clients: awc's to Velox and
//! hyper's to the upstream.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid value for `upstream_ca_file`: {0}")]
    CaFile(String),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Every certificate of a PEM file. A file with none is refused: it would trust nothing, which
/// is surely not what the operator meant.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    let mut probe = RootCertStore::empty();
    for cert in &certs {
        probe
            .add(cert.clone())
            .map_err(|e| format!("{} holds a certificate rustls refuses: {e}", path.display()))?;
    }
    Ok(certs)
}

/// The client config for every outgoing connection.
pub fn client_config(config: &Config) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // The Go module proxy (a list of URLs) and the webhook speak https too, most often.
    let https = config
        .upstream
        .iter()
        .chain(std::iter::once(&config.server_url))
        .chain(config.prebuild.webhook_url.iter())
        .any(|u| u.starts_with("https://"))
        || config
            .builders()
            .iter()
            .any(|b| b.url.starts_with("https://"))
        || config
            .resolve
            .goproxy
            .as_deref()
            .is_some_and(|p| p.contains("https://"));
    // Reading the system store costs a few hundred file reads: only when something speaks https.
    if https {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            log::warn!("some system root certificates could not be read: {e}");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            log::warn!("{ignored} system root certificate(s) ignored as unparsable");
        }
        log::info!("trusting {added} system root certificate(s) for https");
    }
    if let Some(path) = &config.upstream_ca_file {
        for cert in load_ca_file(path).map_err(TlsError::CaFile)? {
            roots.add(cert)?;
        }
    }
    if https && roots.is_empty() {
        log::warn!(
            "no trusted root certificates: https connections will fail; set upstream_ca_file"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: the proxy's hop-by-hop handling and Velox's Connect calls are HTTP/1.1.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
