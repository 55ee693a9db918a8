//! Checks of a loaded configuration that need more than its values: reading the CA file
//! (`upstream_ca_file`), compiling the GOPRIVATE patterns (`resolve.private`) as the resolver
//! will, and resolving the upstream's name to see whether it is velox-cache itself. They live
//! above `config` so that the configuration layer reads no file and calls no resolver; the binary
//! hands [`check`] to `Config::load_checked`, so a failure stops it with exit code 2 naming the
//! key and where its value came from, as a bad value does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::config::{Config, ConfigError};

/// Every check of this module, in turn; the first failure names its key.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let fail = |key: &str, why: &str| Err(ConfigError(format!("invalid value for `{key}`: {why}")));
    if let Some(ca) = &config.upstream_ca_file {
        // Read now so that a bad file stops the start naming the key, not the first request.
        if let Err(why) = crate::tls::load_ca_file(ca) {
            return fail("upstream_ca_file", &why);
        }
    }
    if let Some(p) = &config.resolve.private {
        if let Err(why) = crate::builds::resolve::parse_private(p) {
            return fail(
                "resolve.private",
                &format!("a pattern does not parse: {why}"),
            );
        }
    }
    for (name, channel) in &config.channels {
        if let Err((field, why)) = crate::channels::check_recipe(channel) {
            return fail(&format!("channels.{name}"), &format!("{field}: {why}"));
        }
    }
    if let Some(path) = &config.signing.key_file {
        // Read now: a damaged or encrypted key stops the start naming the key.
        if let Err(why) = crate::trust::keys::SigningKey::load(path) {
            return fail("signing.key_file", &why);
        }
    }
    for (i, k) in config.signing.previous_public_keys.iter().enumerate() {
        if let Err(why) = crate::trust::keys::PublicKey::parse(k) {
            return fail(&format!("signing.previous_public_keys[{i}]"), &why);
        }
    }
    if let Some(secret) = &config.prebuild.webhook_secret {
        if let Err(why) = crate::webhook::parse_secret(secret) {
            return fail("prebuild.webhook_secret", &why);
        }
    }
    if let Some(u) = &config.upstream {
        if upstream_is_listen(u, config.listen) {
            let why = format!(
                "`{}` is velox-cache's own `listen` address ({}): every request would come \
                 back to velox-cache; point it at the PHP app",
                crate::redact::url(u),
                config.listen
            );
            return fail("upstream", &why);
        }
    }
    Ok(())
}

/// Whether connecting to `upstream` would reach the `listen` socket: the same port, and one of
/// the upstream host's addresses is the listen address or, when that is unspecified
/// (`0.0.0.0`, `[::]`), any address of this host. Names are resolved only when the ports match.
fn upstream_is_listen(upstream: &str, listen: SocketAddr) -> bool {
    let Ok(uri) = upstream.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    if port != listen.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs.map(|a| a.ip().to_canonical()).any(|ip| {
        // Connecting to an unspecified address reaches this host's loopback.
        let ip = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        match listen.ip().to_canonical() {
            // An IPv6 wildcard takes IPv4 connections too (Linux's default, bindv6only=0).
            IpAddr::V4(any) if any.is_unspecified() => ip.is_ipv4() && is_own(ip),
            IpAddr::V6(any) if any.is_unspecified() => is_own(ip),
            bound => ip == bound,
        }
    })
}

/// Whether `ip` is an address of this host: only those can be bound.
fn is_own(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_that_is_the_listen_address_is_a_loop() {
        let listen = |s: &str| s.parse::<SocketAddr>().expect("addr");
        for (upstream, bound) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "0.0.0.0:8080"),
            ("http://localhost:8080/app", "0.0.0.0:8080"),
            ("http://0.0.0.0:8080", "127.0.0.1:8080"),
            ("http://[::1]:8080", "[::]:8080"),
            ("http://127.0.0.1:8080", "[::]:8080"),
            ("http://127.0.0.1", "0.0.0.0:80"),
            ("https://127.0.0.1", "0.0.0.0:443"),
        ] {
            assert!(
                upstream_is_listen(upstream, listen(bound)),
                "{upstream} vs {bound}"
            );
        }
        for (upstream, bound) in [
            ("http://127.0.0.1:8081", "0.0.0.0:8080"),
            ("http://127.0.0.1:8080", "127.0.0.2:8080"),
            ("http://[::1]:8080", "0.0.0.0:8080"),
            ("http://192.0.2.1:8080", "0.0.0.0:8080"),
            ("https://127.0.0.1", "0.0.0.0:80"),
            ("http://no-such-host.invalid:8080", "0.0.0.0:8080"),
        ] {
            assert!(
                !upstream_is_listen(upstream, listen(bound)),
                "{upstream} vs {bound}"
            );
        }
    }

    #[test]
    fn each_check_names_its_key() {
        let refused = |edit: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            edit(&mut c);
            check(&c).expect_err("refused").0
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let why = refused(&|c| c.upstream_ca_file = Some(missing.clone()));
        assert!(
            why.starts_with("invalid value for `upstream_ca_file`"),
            "{why}"
        );
        let why = refused(&|c| c.resolve.private = Some("[".into()));
        assert!(
            why.starts_with("invalid value for `resolve.private`"),
            "{why}"
        );
        let why = refused(&|c| {
            c.listen = "127.0.0.1:8080".parse().expect("addr");
            c.upstream = Some("http://127.0.0.1:8080".into());
        });
        assert!(why.starts_with("invalid value for `upstream`"), "{why}");
        check(&Config::default()).expect("the defaults pass");
    }
}
