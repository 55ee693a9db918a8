//! A real S3 API for the object-storage tests: moto's server (`moto_server`, from
//! `pip install 'moto[server]'`), started on a free loopback port, with one bucket made by a
//! plain HTTP PUT, and killed on drop. moto accepts any credentials.
//!
//! What moto does with conditional writes (checked by hand with curl and boto3 against moto 5.2):
//! `PUT` with `If-None-Match: *` on an existing key answers 412; `PUT` with `If-Match` answers
//! 412 on another ETag; `CompleteMultipartUpload` with `If-None-Match: *` answers 412 when the
//! key exists. Each is a check followed by a write inside one request thread, not one atomic step;
//! 500 rounds of four concurrent creates of one key, and 500 of four concurrent `If-Match`
//! updates, never had two winners. One difference from S3: `If-Match` on a missing key creates it
//! (S3 answers 404); the tests do not depend on either.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::process::{free_port, Process, Spawn};

pub struct Moto {
    process: Option<Process>,
    pub port: u16,
    pub bucket: String,
    pub log: PathBuf,
}

/// The `moto_server` to run. A pyenv shim costs seconds per start; the script it names does not.
fn program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        Command::new("pyenv")
            .args(["which", "moto_server"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("moto_server"))
    })
}

/// One HTTP/1.1 request without a client library; the status and the body.
fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// One HTTP/1.1 request with a body, without a client library; the status and the body bytes.
fn raw_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut rest = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest = dechunk(&rest)?;
    }
    Some((status, rest))
}

/// The body of a chunked message.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// moto answers unsigned reads with 403 but does not check signatures: any SigV4-shaped header
/// will do for the tests' own look at the bucket.
const ANY_AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, \
                        SignedHeaders=host, Signature=0";

impl Moto {
    /// Starts moto and creates `bucket`; waits (up to two minutes: moto imports a lot of Python,
    /// and slowly on a busy machine) until the bucket exists.
    pub fn start(dir: &Path, bucket: &str) -> Moto {
        let port = free_port();
        let log = dir.join(format!("moto-{port}.log"));
        let mut cmd = Command::new(program());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut process = Spawn::new("moto_server", cmd, &log)
            .start()
            .expect("moto_server runs (pip install 'moto[server]')");
        process.expect_ready(Duration::from_secs(120), |_| {
            matches!(raw(port, "PUT", &format!("/{bucket}"), &[]), Some((200, _))).then_some(())
        });
        Moto {
            process: Some(process),
            port,
            bucket: bucket.to_owned(),
            log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a velox-cache replica needs to use this bucket.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("VELOX_CACHE_STORAGE__BACKEND", "s3".to_owned()),
            ("VELOX_CACHE_STORAGE__S3__BUCKET", self.bucket.clone()),
            ("VELOX_CACHE_STORAGE__S3__ENDPOINT", self.endpoint()),
            ("VELOX_CACHE_STORAGE__S3__ALLOW_HTTP", "true".to_owned()),
            ("VELOX_CACHE_STORAGE__S3__PREFIX", prefix.to_owned()),
            ("AWS_ACCESS_KEY_ID", "moto-test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "moto-test-secret".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The keys under `prefix`, with their sizes (one page: enough for the tests).
    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let (status, body) = raw(
            self.port,
            "GET",
            &format!("/{}?list-type=2&prefix={prefix}", self.bucket),
            &[("Authorization", ANY_AUTH)],
        )
        .expect("moto answers a listing");
        assert_eq!(status, 200, "{body}");
        body.split("<Contents>")
            .skip(1)
            .filter_map(|c| {
                let key = c.split("<Key>").nth(1)?.split("</Key>").next()?;
                let size = c.split("<Size>").nth(1)?.split("</Size>").next()?;
                Some((key.to_owned(), size.parse().ok()?))
            })
            .collect()
    }

    /// The bytes of one object, read through the S3 API as any client would.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let (status, body) = raw_bytes(
            self.port,
            "GET",
            &format!("/{}/{key}", self.bucket),
            &[("Authorization", ANY_AUTH)],
            &[],
        )?;
        (status == 200).then_some(body)
    }

    /// Writes one object through the S3 API, as anyone with write access to the bucket could
    /// (an attacker, a buggy replica), with the headers given (`x-amz-meta-*`, for example).
    pub fn put_object(&self, key: &str, bytes: &[u8], headers: &[(&str, &str)]) {
        let mut all = vec![("Authorization", ANY_AUTH)];
        all.extend_from_slice(headers);
        let (status, body) = raw_bytes(
            self.port,
            "PUT",
            &format!("/{}/{key}", self.bucket),
            &all,
            bytes,
        )
        .expect("moto answers a put");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// Deletes one object, as a lifecycle rule would.
    pub fn delete(&self, key: &str) {
        let (status, body) = raw(
            self.port,
            "DELETE",
            &format!("/{}/{key}", self.bucket),
            &[("Authorization", ANY_AUTH)],
        )
        .expect("moto answers a delete");
        assert_eq!(status, 204, "{body}");
    }

    /// Stops the server: the bucket becomes unreachable.
    pub fn stop(&mut self) {
        // Dropping the process kills it.
        self.process = None;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
