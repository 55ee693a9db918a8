//! The audit log (docs/access.md, "Audit log"): one JSON line per build started and finished,
//! per binary download, per admin change and per token change, naming the caller (a token's
//! name, `api_token`, `anonymous` or `signed-url`: never a secret) and the client's address as
//! `trusted_proxies` resolves it. `audit.path` is reopened on SIGHUP, for logrotate.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;

use serde_json::{Map, Value};

enum Target {
    Stdout,
    File(std::fs::File),
}

pub struct Audit {
    path: Option<String>,
    target: Option<Mutex<Target>>,
}

fn open_file(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Audit {
    pub fn open(path: Option<&str>) -> std::io::Result<Audit> {
        let target = match path {
            None => None,
            Some("-") => Some(Mutex::new(Target::Stdout)),
            Some(p) => Some(Mutex::new(Target::File(open_file(p)?))),
        };
        Ok(Audit {
            path: path.map(str::to_owned),
            target,
        })
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        let (Some(target), Some(path)) = (&self.target, &self.path) else {
            return;
        };
        if path == "-" {
            return;
        }
        match open_file(path) {
            Ok(f) => {
                *target.lock().unwrap_or_else(|p| p.into_inner()) = Target::File(f);
                log::info!("audit log reopened");
            }
            Err(e) => log::error!("cannot reopen the audit log {path}: {e}"),
        }
    }

    /// Writes one event: `event` and the fields of `fields`, after the time.
    pub fn write(&self, event: &str, fields: Value) {
        let Some(target) = &self.target else {
            return;
        };
        let mut line = Map::new();
        line.insert(
            "time".into(),
            Value::from(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()),
        );
        line.insert("event".into(), Value::from(event));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        let mut bytes = match serde_json::to_vec(&Value::Object(line)) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot render an audit line: {e}");
                return;
            }
        };
        bytes.push(b'\n');
        // One write per line, on a file opened for appending: lines never interleave.
        let written = match &mut *target.lock().unwrap_or_else(|p| p.into_inner()) {
            Target::Stdout => std::io::stdout().lock().write_all(&bytes),
            Target::File(f) => f.write_all(&bytes),
        };
        if let Err(e) = written {
            log::error!("cannot write the audit log: {e}");
        }
    }
}

/// The client's address: the peer, or (when the peer is a trusted proxy) the right-most
/// `X-Forwarded-For` address that is not one.
pub fn client_addr(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return Some(peer);
    }
    let mut client = peer;
    if let Some(xff) = forwarded_for {
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted.iter().any(|n| n.contains(&ip)) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(
            client_addr(ip("1.2.3.4"), Some("9.9.9.9"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), Some("6.6.6.6, 5.5.5.5, 10.0.0.2"), &trusted),
            ip("5.5.5.5")
        );
        assert_eq!(client_addr(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
    }
}
