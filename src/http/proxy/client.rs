//! The proxy's way to the upstream: hyper's HTTP/1.1 client, pooled by hyper-util, with TLS from
//! hyper-rustls on the shared rustls config (system roots plus `upstream_ca_file`).
//!
//! Why hyper and not awc (which still talks to Velox): hyper reads every framing RFC 9112 §6.3
//! allows, a body that ends at the connection's close included, where awc reads that body as
//! empty (actix/actix-web#2287). hyper-util's client adds no `Date`, `User-Agent` or
//! `Accept` (reqwest adds `Accept: */*`), follows no redirects, decodes no `Content-Encoding`, and
//! sets `Host` only when the request has none.
//!
//! actix's types are built on `http` 0.2 and hyper's on `http` 1: heads are converted here, so the
//! rest of the proxy sees actix's types only. actix's request payload is not `Send` and hyper's
//! connection tasks need one, so the payload is pumped into a small channel by a local task.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};

/// One worker's pooled client to the upstream.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Upload>,
    /// `upstream` without a trailing slash; the request's path and query are appended.
    base: String,
    /// `base` as the log shows it: `upstream` may hold a user name and password.
    shown: String,
    pub timeout: Duration,
}

/// The upstream's answer: its head in actix's types, and the body as hyper reads it.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: hyper::body::Incoming,
}

/// How far an upload has got: `last` moves on with every chunk taken from the client, and
/// `failed` tells a broken client body from a broken upstream.
#[derive(Default)]
pub struct Progress {
    last: Cell<Option<Instant>>,
    failed: Cell<bool>,
}

impl Progress {
    fn touch(&self) {
        self.last.set(Some(Instant::now()));
    }
}

impl Upstream {
    /// `None` when proxy mode is off.
    pub fn new(config: &Config, tls: &Arc<rustls::ClientConfig>) -> Option<Upstream> {
        let base = config.upstream.as_deref()?.trim_end_matches('/').to_owned();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.upstream_timeout));
        let https = HttpsConnector::from((http, Arc::clone(tls)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Some(Upstream {
            client,
            shown: crate::redact::url(&base),
            base,
            timeout: config.upstream_timeout,
        })
    }

    fn unavailable(&self, message: String) -> ApiError {
        ApiError::new(ErrorCode::UpstreamUnavailable, message)
    }

    /// Sends one request upstream and waits for the answer's head, for at most `upstream_timeout`
    /// without progress: the wait starts over with every chunk of request body sent, so a long
    /// upload is not cut short, and an upstream that takes the body and then says nothing is.
    pub async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Upload,
        progress: &Progress,
    ) -> Result<Answer, ApiError> {
        let uri = format!("{}{path_and_query}", self.base);
        let mut req = http::Request::builder()
            .method(
                http::Method::from_bytes(method.as_str().as_bytes()).map_err(|_| {
                    ApiError::invalid_request("the request method cannot be forwarded")
                })?,
            )
            .uri(uri.as_str());
        for (name, value) in headers {
            req = req.header(name.as_str(), value.as_bytes());
        }
        let req = req.body(body).map_err(|e| {
            log::warn!("cannot forward to {}: {e}", crate::redact::url(&uri));
            ApiError::invalid_request("the request cannot be forwarded")
        })?;
        progress.touch();
        let resp = match until_idle(self.client.request(req), progress, self.timeout).await {
            Some(Ok(resp)) => resp,
            Some(Err(_)) if progress.failed.get() => {
                return Err(ApiError::invalid_request(
                    "cannot read the request body: the client broke it off",
                ))
            }
            Some(Err(e)) => {
                log::warn!("upstream {}: {}", self.shown, error_chain(&e));
                return Err(self.unavailable(
                    "the upstream application cannot be reached or broke off its answer".into(),
                ));
            }
            None => {
                return Err(self.unavailable(format!(
                    "the upstream application did not answer within {}",
                    humantime::format_duration(self.timeout)
                )))
            }
        };
        let (parts, body) = resp.into_parts();
        let mut out = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            // Both crates check the same grammar; a field one refuses the other never parsed.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                out.append(n, v);
            }
        }
        let status = StatusCode::from_u16(parts.status.as_u16())
            .map_err(|_| self.unavailable("the upstream answered an invalid status".into()))?;
        Ok(Answer {
            status,
            headers: out,
            body,
        })
    }

    /// Reads a whole body of at most `limit` bytes, within `upstream_timeout`. `Ok(None)`: more.
    pub async fn read_limited(
        &self,
        body: hyper::body::Incoming,
        limit: usize,
    ) -> Result<Option<BytesMut>, ApiError> {
        let mut stream = Relay(body);
        let read = async {
            let mut out = BytesMut::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if out.len() + chunk.len() > limit {
                    return Ok(None);
                }
                out.extend_from_slice(&chunk);
            }
            Ok::<_, hyper::Error>(Some(out))
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => {
                log::warn!("reading from upstream {}: {}", self.shown, error_chain(&e));
                Err(self.unavailable("the upstream application broke off its answer".into()))
            }
            Err(_) => Err(self.unavailable(format!(
                "the upstream application did not finish its answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// `e` and its causes, for the log: hyper-util's own message is only "client error (Connect)".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    crate::redact::text(&out)
}

/// Awaits `fut` until it has made no progress for `timeout` (see [`Upstream::send`]).
async fn until_idle<F: Future>(
    fut: F,
    progress: &Progress,
    timeout: Duration,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        let last = progress.last.get().unwrap_or_else(Instant::now);
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep_until(last + timeout) => {
                let last = progress.last.get().unwrap_or(last);
                if last + timeout <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// The request body as hyper takes it: the client's bytes, pumped from actix's payload.
pub struct Upload {
    rx: Option<mpsc::Receiver<Result<Bytes, io::Error>>>,
    length: Option<u64>,
}

impl Upload {
    /// No body at all.
    pub fn none() -> Upload {
        Upload {
            rx: None,
            length: Some(0),
        }
    }

    /// The client's body, `length` bytes when it declared them. A local task reads the payload
    /// one chunk ahead of hyper, so memory stays at a chunk or two whatever the size.
    pub fn stream(payload: web::Payload, length: Option<u64>, progress: Rc<Progress>) -> Upload {
        let (tx, rx) = mpsc::channel(1);
        actix_web::rt::spawn(async move {
            let mut payload = payload;
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    progress.failed.set(true);
                    io::Error::other(e.to_string())
                });
                let failed = chunk.is_err();
                progress.touch();
                // The upstream may answer before it has read everything: then nobody listens.
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
                progress.touch();
            }
        });
        Upload {
            rx: Some(rx),
            length,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|c| c.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// An upstream body as the chunks actix's response bodies take; trailers are dropped (they are
/// not relayed).
pub struct Relay(pub hyper::body::Incoming);

impl Stream for Relay {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let frame = match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn idle_timeout_waits_while_the_body_moves() {
        let progress = Rc::new(Progress::default());
        progress.touch();
        let timeout = Duration::from_millis(200);
        // Progress every 50 ms for 600 ms: three timeouts' worth, never idle for one.
        let mover = Rc::clone(&progress);
        let work = async move {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                mover.touch();
            }
            "done"
        };
        assert_eq!(until_idle(work, &progress, timeout).await, Some("done"));
        let stalled = std::future::pending::<()>();
        assert_eq!(until_idle(stalled, &progress, timeout).await, None);
    }
}
