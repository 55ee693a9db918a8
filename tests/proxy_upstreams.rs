//! Proxy mode in front of real upstreams that nobody shaped around velox-cache, each through the
//! same matrix of cases (docs/http-api.md, "Proxy mode"):
//!
//! - PHP's built-in server (`php -S`) running plain scripts that set no `Content-Length`: every
//!   answer is HTTP/1.1 ended by the close;
//! - nginx in front of PHP-FPM running the same scripts: answers chunked;
//! - Python's `http.server`: answers HTTP/1.0, CGI output ended by the close.
//!
//! The cases: a page (GET, HEAD), a POST echoed with what arrived upstream, a large streamed body
//! (to an HTTP/1.1 client and to an HTTP/1.0 one, which must never see chunked encoding), a build
//! instruction MISS then HIT, a gzip-encoded one, and downloads resumed with `curl -C -` and
//! `wget -c`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use serde_json::{json, Value};
use support::http10::PythonHttp10;
use support::nginx::NginxFpm;
use support::php::{plain_scripts, PlainPhp};
use support::*;

/// The upstream of one run, kept alive while it runs.
enum Running {
    Php(PlainPhp),
    Nginx(NginxFpm),
    Python(PythonHttp10),
}

impl Running {
    fn url(&self) -> &str {
        match self {
            Running::Php(p) => &p.url,
            Running::Nginx(n) => &n.url,
            Running::Python(p) => &p.url,
        }
    }

    fn log_text(&self) -> String {
        match self {
            Running::Php(p) => p.log_text(),
            Running::Nginx(n) => n.log_text(),
            Running::Python(p) => p.log_text(),
        }
    }
}

/// How an upstream frames a body of unknown length on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// HTTP/1.1, neither `Content-Length` nor chunked: the body ends at the close.
    Http11Close,
    Chunked,
    /// HTTP/1.0, ended by the close.
    Http10Close,
}

/// One upstream and the paths its scripts answer on.
struct Site {
    name: &'static str,
    up: Running,
    framing: Framing,
    page: &'static str,
    page_text: &'static str,
    echo: &'static str,
    stream: &'static str,
    generate: &'static str,
    /// The echo shows every request header (CGI passes only a few on).
    echoes_all_headers: bool,
}

impl Site {
    fn php_builtin() -> Site {
        Site {
            name: "php -S",
            up: Running::Php(PlainPhp::start()),
            framing: Framing::Http11Close,
            page: "/index.php",
            page_text: "Hello from plain PHP",
            echo: "/echo.php",
            stream: "/stream.php",
            generate: "/generate.php",
            echoes_all_headers: true,
        }
    }

    fn nginx_fpm() -> Site {
        Site {
            name: "nginx + PHP-FPM",
            up: Running::Nginx(NginxFpm::start(&plain_scripts())),
            framing: Framing::Chunked,
            page: "/",
            page_text: "Hello from plain PHP",
            echo: "/echo.php",
            stream: "/stream.php",
            generate: "/generate.php",
            echoes_all_headers: true,
        }
    }

    fn python_http10() -> Site {
        Site {
            name: "python3 -m http.server",
            up: Running::Python(PythonHttp10::start()),
            framing: Framing::Http10Close,
            page: "/index.html",
            page_text: "Hello from Python's http.server",
            echo: "/cgi-bin/echo.py",
            stream: "/cgi-bin/stream.py",
            generate: "/cgi-bin/generate.py",
            echoes_all_headers: false,
        }
    }
}

struct Ctx {
    site: Site,
    h: Harness,
}

impl Ctx {
    /// The server's `host:port`.
    fn public(&self) -> String {
        self.h
            .server()
            .public
            .trim_start_matches("http://")
            .to_owned()
    }
}

type Case = for<'a> fn(&'a Ctx) -> LocalBoxFuture<'a, ()>;

/// Every upstream runs every case, in this order.
const MATRIX: &[(&str, Case)] = &[
    ("page", |c| Box::pin(page(c))),
    ("post echo", |c| Box::pin(post_echo(c))),
    ("nothing of our own", |c| Box::pin(nothing_of_our_own(c))),
    ("large streamed body", |c| Box::pin(large_stream(c))),
    ("to an HTTP/1.0 client", |c| {
        Box::pin(to_an_http10_client(c))
    }),
    ("build MISS then HIT", |c| Box::pin(build_miss_then_hit(c))),
    ("gzip instruction", |c| Box::pin(gzip_instruction(c))),
    ("resume with curl and wget", |c| Box::pin(resume(c))),
];

async fn run_matrix(site: fn() -> Site) {
    let site = site();
    let upstream = site.up.url().to_owned();
    let h = Harness::start_with(|o| o.env("VELOX_CACHE_UPSTREAM", &upstream));
    let ctx = Ctx { site, h };
    for (name, case) in MATRIX {
        // Shown with the failure: which upstream and case, and the upstream's log.
        println!("--- {} / {name}", ctx.site.name);
        let ran = tokio::time::timeout(Duration::from_secs(120), case(&ctx)).await;
        assert!(
            ran.is_ok(),
            "{} / {name} took over 120s\n{}",
            ctx.site.name,
            ctx.site.up.log_text()
        );
    }
    assert_eq!(
        metric(
            ctx.h.server(),
            "velox_proxy_requests_total{outcome=\"error\"}"
        )
        .await,
        0.0,
        "{}",
        ctx.h.server().log_text()
    );
}

#[actix_web::test]
async fn php_builtin_server() {
    run_matrix(Site::php_builtin).await;
}

#[actix_web::test]
async fn nginx_with_php_fpm() {
    run_matrix(Site::nginx_fpm).await;
}

#[actix_web::test]
async fn an_http10_server() {
    run_matrix(Site::python_http10).await;
}

/// One request over a fresh connection, read to the close: the bytes as they came.
fn raw(addr: &str, request: &str) -> (String, Vec<u8>) {
    let addr = addr.trim_start_matches("http://").to_owned();
    let request = request.to_owned();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("write");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .expect("the answer ends with the close");
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
        (head, answer[end + 4..].to_vec())
    })
    .join()
    .expect("raw client")
}

fn has_field(head: &str, name: &str) -> bool {
    head.lines().any(|l| l.starts_with(&format!("{name}:")))
}

/// What `stream.*` sends: 64 KiB blocks, each led by its number.
fn blocks(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|n| {
            let mut b = format!("block {n:08}\n").into_bytes();
            b.resize(65536, b'.');
            b
        })
        .collect()
}

async fn page(c: &Ctx) {
    let page = get(&c.h.url(c.site.page), &[]).await;
    assert_eq!(page.status, 200, "{}", c.site.up.log_text());
    assert!(
        String::from_utf8_lossy(&page.body).contains(c.site.page_text),
        "{:?}",
        page.body
    );
    let head = head(&c.h.url(c.site.page), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

async fn post_echo(c: &Ctx) {
    let upload: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let url = c.h.url(&format!("{}?a=1&b=two%20words", c.site.echo));
    let echo = post_raw(&url, upload.clone()).await;
    assert_eq!(
        echo.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&echo.body),
        c.site.up.log_text()
    );
    let echo = echo.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["query"], "a=1&b=two%20words");
    assert_eq!(echo["body_length"], upload.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&upload));
    let headers = &echo["headers"];
    assert_eq!(headers["content-length"], upload.len().to_string());
    if c.site.echoes_all_headers {
        // A chunked upload (a stream of unknown length) goes on chunked, and arrives whole.
        let chunks: Vec<Result<actix_web::web::Bytes, std::io::Error>> = upload
            .chunks(100_000)
            .map(|c| Ok(actix_web::web::Bytes::copy_from_slice(c)))
            .collect();
        let mut res = client()
            .post(c.h.url(c.site.echo))
            .send_stream(futures_util::stream::iter(chunks))
            .await
            .expect("chunked upload");
        let chunked: Value = res.json().limit(1 << 20).await.expect("echo JSON");
        assert_eq!(chunked["body_length"], upload.len(), "{chunked}");
        assert_eq!(chunked["body_sha256"], sha256_hex(&upload));
        assert!(headers.get("transfer-encoding").is_none(), "{headers}");
        assert_eq!(headers["via"], "1.1 velox-cache");
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], c.public());
    }
}

/// The upstream gets the client's headers and the forwarding ones, and nothing else: no `Date`,
/// `User-Agent`, `Accept` or `Accept-Encoding` of velox-cache's.
async fn nothing_of_our_own(c: &Ctx) {
    if !c.site.echoes_all_headers {
        return;
    }
    let (head, body) = raw(
        &c.h.server().public,
        &format!(
            "GET {} HTTP/1.1\r\nHost: app.example\r\nX-Kept: yes\r\nConnection: close\r\n\r\n",
            c.site.echo
        ),
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // The body is chunked to this HTTP/1.1 client: take the JSON out of the one chunk.
    let text = String::from_utf8_lossy(&body);
    let json = &text[text.find('{').expect("JSON")..=text.rfind('}').expect("JSON")];
    let echo: Value = serde_json::from_str(json).expect("echo JSON");
    // FastCGI always passes CONTENT_TYPE and CONTENT_LENGTH, empty when the request has neither.
    let mut names: Vec<&str> = echo["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .filter(|(_, v)| *v != "")
        .map(|(k, _)| k.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "host",
            "via",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-kept"
        ],
        "{echo}"
    );
    assert_eq!(echo["headers"]["host"], "app.example");
    assert_eq!(echo["headers"]["x-forwarded-host"], "app.example");
}

async fn large_stream(c: &Ctx) {
    let path = format!("{}?mib=5", c.site.stream);
    // What the upstream itself puts on the wire: the framing this run is about.
    let (head, body) = raw(
        c.site.up.url(),
        &format!("GET {path} HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n"),
    );
    let chunked = head.contains("transfer-encoding: chunked");
    match c.site.framing {
        Framing::Http11Close => assert!(
            head.starts_with("http/1.1 200")
                && !chunked
                && !has_field(&head, "content-length")
                && body == blocks(80),
            "{head}"
        ),
        Framing::Chunked => assert!(
            head.starts_with("http/1.1 200") && chunked && body.len() > 5 << 20,
            "{head}"
        ),
        Framing::Http10Close => assert!(
            head.starts_with("http/1.0 200")
                && !has_field(&head, "content-length")
                && body == blocks(80),
            "{head}"
        ),
    }
    let relayed = get(&c.h.url(&path), &[]).await;
    assert_eq!(relayed.status, 200);
    assert_eq!(relayed.header("transfer-encoding"), Some("chunked"));
    assert!(relayed.body == blocks(80), "the 5 MiB arrive whole");
}

/// RFC 9112 §6.1: no chunked encoding to an HTTP/1.0 client; a body of unknown length goes
/// close-delimited, and the connection closes after it even when the client asked to keep it.
async fn to_an_http10_client(c: &Ctx) {
    let path = format!("{}?mib=5", c.site.stream);
    for keep_alive in ["", "Connection: keep-alive\r\n"] {
        let (head, body) = raw(
            &c.h.server().public,
            &format!("GET {path} HTTP/1.0\r\nHost: app.example\r\n{keep_alive}\r\n"),
        );
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(!has_field(&head, "transfer-encoding"), "{head}");
        assert!(!has_field(&head, "content-length"), "{head}");
        assert!(!head.contains("keep-alive"), "{head}");
        assert!(
            body == blocks(80),
            "the body is the bytes, no chunk framing"
        );
    }
}

async fn post_generate(c: &Ctx, query: &str) -> Resp {
    post_json(
        &c.h.url(&format!("{}{query}", c.site.generate)),
        &json!({}),
        &[],
    )
    .await
}

async fn build_miss_then_hit(c: &Ctx) {
    let before = c.h.velox.builds();
    let miss = post_generate(c, "?tag=v5.2.100").await;
    assert_eq!(
        miss.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&miss.body),
        c.site.up.log_text()
    );
    assert_eq!(miss.header("x-cache-status"), Some("MISS"));
    assert_eq!(
        miss.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(miss.header("x-velox-build").is_none());
    assert_eq!(miss.body.len(), 300 * 1024);
    assert_eq!(
        miss.header("etag"),
        Some(format!("\"{}\"", sha256_hex(&miss.body)).as_str())
    );
    let hit = post_generate(c, "?tag=v5.2.100").await;
    assert_eq!(hit.header("x-cache-status"), Some("HIT"));
    assert!(hit.body == miss.body);
    assert_eq!(c.h.velox.builds(), before + 1);
    let sent = c.h.velox.requests().pop().expect("Velox called");
    assert_eq!(sent["plugins"][0]["tag"], "v5.2.100");
}

async fn gzip_instruction(c: &Ctx) {
    // Asked directly (raw: awc could not read a body ended by the close), it is gzip.
    let (head, body) = raw(
        c.site.up.url(),
        &format!(
            "GET {}?encoding=gzip HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n",
            c.site.generate
        ),
    );
    assert!(head.contains("content-encoding: gzip"), "{head}");
    if c.site.framing != Framing::Chunked {
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip's magic");
    }
    let resp = post_generate(c, "?tag=v5.2.101&encoding=gzip").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("x-cache-status"), Some("MISS"));
    assert!(resp.header("content-encoding").is_none());
    let sent = c.h.velox.requests().pop().expect("Velox called");
    assert_eq!(sent["plugins"][0]["tag"], "v5.2.101");
}

async fn resume(c: &Ctx) {
    const SIZE: usize = 2 * 1024 * 1024;
    c.h.velox.set_size(SIZE);
    let before = c.h.velox.builds();
    // A download link (GET): curl's `-C -` resumes GETs only.
    let link = c.h.url(&format!("{}?tag=v5.2.102", c.site.generate));
    let whole = get(&link, &[]).await;
    assert_eq!(
        whole.status,
        200,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    assert_eq!(whole.body.len(), SIZE);
    let dir = tempfile::tempdir().expect("dir");
    download::curl_resumes(dir.path(), &link, &whole.body);
    download::wget_resumes(dir.path(), &link, &whole.body);
    assert_eq!(c.h.velox.builds(), before + 1);
}
