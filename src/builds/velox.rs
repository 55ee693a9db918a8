//! The Velox client (docs/velox.md): Connect unary over HTTP/1.1 with JSON, and the retry matrix.
//! The checks on the path Velox answers with are in `artifact`.
//!
//! Velox v3 cancels a build when its caller goes away, so an attempt is never cut while Velox may
//! be building: `request_timeout` bounds connecting and sending the request only, and once it is
//! sent the attempt waits for the answer until `build_timeout`. `already_exists` (someone else is
//! building the key) is waited out with backoff until `build_timeout`, outside `max_attempts`.
//!
//! awc's `Client` is not `Send`: one is made per worker and this client runs on that worker's
//! runtime.

use std::cell::Cell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header;
use actix_web::web::Bytes;
use serde::Deserialize;
use tokio::time::Instant;

use super::pool::{Pool, Seen};
use crate::config::RetryConfig;
use crate::metrics::RetryReason;

/// The Connect procedure Velox serves.
pub const BUILD_PROCEDURE: &str = "/api.service.v1.BuildService/Build";
/// Most bytes read of one Velox answer; a longer one is a failed build, never read whole.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of Velox's failure message passed to the client. Velox keeps the last 8 KiB of the
/// compiler's stderr and puts its stage in front; the cut keeps the start and the end.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;
/// The request body goes to awc in pieces this large, so that "the body stream has ended" means
/// all but the last few KiB are in the kernel (awc buffers at most 8 KiB before it flushes).
const SEND_CHUNK: usize = 4 * 1024;
/// The last wait for a build someone else runs ends this long before `build_timeout`, so that one
/// more call can still fetch its result.
pub(super) const LAST_CALL_MARGIN: Duration = Duration::from_millis(250);

/// How a call to Velox ended, when it did not give a usable artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VeloxError {
    /// Velox refused the request itself; retrying cannot help.
    #[error("Velox refused the request: {0}")]
    InvalidArgument(String),
    /// The build failed, or its result is unusable.
    #[error("the build failed: {message}")]
    Failed {
        message: String,
        logs: Option<String>,
    },
    /// Velox could not be reached or stayed busy through every attempt.
    #[error("Velox is unavailable: {0}")]
    Unavailable(String),
    /// `build_timeout` passed.
    #[error("the build did not finish within build_timeout")]
    Timeout,
    /// In a pool, no builder can take builds: every one is down or draining
    /// (docs/builders.md). The client is told to come back after a probe.
    #[error("no Velox builder is up: {0}")]
    NoBuilder(String),
}

/// What Velox answered on success.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VeloxSuccess {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub logs: String,
}

#[derive(Deserialize)]
struct ConnectError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// One attempt's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Success(VeloxSuccess),
    Retry(RetryReason, String),
    Fatal(VeloxError),
}

/// Cuts `message` to at most [`MAX_MESSAGE_BYTES`], keeping its start (Velox's stage) and its end
/// (the last lines of the compiler's stderr), on character boundaries.
pub fn cap_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    const HEAD: usize = 1024;
    let floor = |mut i: usize| {
        while !message.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let ceil = |mut i: usize| {
        while !message.is_char_boundary(i) {
            i += 1;
        }
        i
    };
    let head_end = floor(HEAD);
    // Room for the marker, whose digits are at most 20.
    let tail_len = MAX_MESSAGE_BYTES - HEAD - 48;
    let tail_start = ceil(message.len() - tail_len);
    let left_out = tail_start - head_end;
    format!(
        "{}\n[... {left_out} bytes left out ...]\n{}",
        &message[..head_end],
        &message[tail_start..]
    )
}

/// Classifies Velox's answer per docs/velox.md's table.
pub fn classify(status: u16, body: &[u8]) -> Attempt {
    if status == 200 {
        return match serde_json::from_slice::<VeloxSuccess>(body) {
            Ok(ok) if ok.path.is_empty() => Attempt::Fatal(VeloxError::Failed {
                message: "Velox answered without an artifact path".into(),
                logs: Some(cap_message(ok.logs)).filter(|l| !l.is_empty()),
            }),
            Ok(ok) => Attempt::Success(ok),
            Err(_) => Attempt::Fatal(VeloxError::Failed {
                message: "Velox's answer is not a build response".into(),
                logs: None,
            }),
        };
    }
    match serde_json::from_slice::<ConnectError>(body) {
        Ok(e) if !e.code.is_empty() => {
            let message = if e.message.is_empty() {
                format!("Velox answered `{}`", e.code)
            } else {
                cap_message(e.message)
            };
            let retry = |reason| Attempt::Retry(reason, format!("{}: {message}", e.code));
            match e.code.as_str() {
                "unavailable" => retry(RetryReason::Unavailable),
                "resource_exhausted" => retry(RetryReason::ResourceExhausted),
                "aborted" => retry(RetryReason::Aborted),
                "already_exists" => retry(RetryReason::AlreadyExists),
                "invalid_argument" | "failed_precondition" | "out_of_range" => {
                    Attempt::Fatal(VeloxError::InvalidArgument(message))
                }
                "deadline_exceeded" => Attempt::Fatal(VeloxError::Timeout),
                // Velox v3 wraps every build error as `internal`, the end of its request
                // context's deadline (our Connect-Timeout-Ms) included: that is a timeout, not a
                // failed build to remember.
                _ if message.ends_with("context deadline exceeded") => {
                    Attempt::Fatal(VeloxError::Timeout)
                }
                _ => Attempt::Fatal(VeloxError::Failed {
                    message,
                    logs: None,
                }),
            }
        }
        _ => match status {
            502..=504 => Attempt::Retry(
                RetryReason::Unavailable,
                format!("Velox answered HTTP {status}"),
            ),
            _ => Attempt::Fatal(VeloxError::Failed {
                message: format!("Velox answered HTTP {status}"),
                logs: None,
            }),
        },
    }
}

/// The delay before attempt `attempt + 1` (attempts count from 1), before jitter.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let factor = retry
        .backoff_multiplier
        .powi(attempt.saturating_sub(1).min(64) as i32);
    let secs = retry.initial_delay.as_secs_f64() * factor;
    let capped = secs.min(retry.max_delay.as_secs_f64());
    Duration::from_secs_f64(capped.max(0.0))
}

/// "Equal jitter": half the delay fixed, half random, so retries of many callers spread out.
pub(super) fn jitter(d: Duration) -> Duration {
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

/// The request body, handed to awc in pieces; `sent` turns true when awc has asked for the end of
/// it, which it does only once the pieces before are written out.
struct TrackedBody {
    bytes: Bytes,
    total: u64,
    sent: Rc<Cell<bool>>,
}

impl MessageBody for TrackedBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        // Sized, so that awc sends a Content-Length and not chunks.
        BodySize::Sized(self.total)
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if self.bytes.is_empty() {
            self.sent.set(true);
            return Poll::Ready(None);
        }
        let n = self.bytes.len().min(SEND_CHUNK);
        Poll::Ready(Some(Ok(self.bytes.split_to(n))))
    }
}

/// Runs `exchange` (connect, send, wait for the answer's head) and cuts it at `limit` only if the
/// request has not been sent by then. Past that point Velox is building, and going away would
/// cancel the build.
async fn cut_unless_sent<F: Future>(
    exchange: F,
    sent: &Cell<bool>,
    limit: Duration,
) -> Option<F::Output> {
    let mut exchange = pin!(exchange);
    let mut cut = pin!(tokio::time::sleep(limit));
    let mut armed = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if armed && cut.as_mut().poll(cx).is_ready() {
            if !sent.get() {
                return Poll::Ready(None);
            }
            armed = false;
        }
        Poll::Pending
    })
    .await
}

#[derive(Clone)]
pub struct VeloxClient {
    pub(super) client: awc::Client,
    pub(super) pool: Arc<Pool>,
    pub(super) retry: RetryConfig,
    pub(super) request_timeout: Duration,
}

impl VeloxClient {
    /// A client of the builders of `pool`; `tls` is used for `https://` builders (see
    /// [`crate::tls`]). The build loop, with its retries and failover, is in `failover`.
    pub fn new(
        pool: Arc<Pool>,
        retry: RetryConfig,
        request_timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Self {
        // awc's own connect and handshake limits (5 s each by default) would cut before
        // request_timeout; the attempt's own timer is the one that counts.
        let connector = awc::Connector::new()
            .rustls_0_23(Arc::clone(tls))
            .timeout(request_timeout)
            .handshake_timeout(request_timeout);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .finish();
        VeloxClient {
            client,
            pool,
            retry,
            request_timeout,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// One call to the builder at `build_url`, and what it showed of the builder's health
    /// (`None`: nothing, the build's own deadline passed).
    pub(super) async fn attempt(
        &self,
        build_url: &str,
        body: &Bytes,
        deadline: Instant,
    ) -> (Attempt, Option<Seen>) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (Attempt::Fatal(VeloxError::Timeout), None);
        }
        let sent = Rc::new(Cell::new(false));
        let exchange = self
            .client
            .post(build_url)
            // awc's timer covers the whole exchange, the answer's body included: it is the build's
            // deadline, never request_timeout.
            .timeout(left)
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header(("Connect-Protocol-Version", "1"))
            .insert_header(("Connect-Timeout-Ms", left.as_millis().max(1).to_string()))
            .send_body(TrackedBody {
                bytes: body.clone(),
                total: body.len() as u64,
                sent: Rc::clone(&sent),
            });
        let unreachable = |why: String| {
            (
                Attempt::Retry(RetryReason::Unreachable, why.clone()),
                Some(Seen::Unreachable(why)),
            )
        };
        let mut resp =
            match cut_unless_sent(exchange, &sent, self.request_timeout).await {
                None => return unreachable(
                    "connecting to Velox and sending the request took longer than request_timeout"
                        .into(),
                ),
                Some(Err(awc::error::SendRequestError::Timeout)) => {
                    return (Attempt::Fatal(VeloxError::Timeout), None)
                }
                Some(Err(e)) => {
                    // awc's messages quote no URL today; `server_url` may hold a password.
                    return unreachable(crate::redact::text(&format!("cannot reach Velox: {e}")));
                }
                Some(Ok(resp)) => resp,
            };
        let status = resp.status().as_u16();
        let read = tokio::time::timeout_at(deadline, resp.body().limit(MAX_ANSWER_BYTES)).await;
        match read {
            Err(_) => (Attempt::Fatal(VeloxError::Timeout), None),
            Ok(Ok(bytes)) => {
                let attempt = classify(status, &bytes);
                let seen = seen(status, &bytes, &attempt);
                (attempt, Some(seen))
            }
            // Checked against Content-Length before any byte is read, and while reading otherwise.
            Ok(Err(awc::error::PayloadError::Overflow)) => (
                Attempt::Fatal(VeloxError::Failed {
                    message: "Velox's answer is longer than 16 MiB".into(),
                    logs: None,
                }),
                Some(Seen::Unreachable("an answer longer than 16 MiB".into())),
            ),
            Ok(Err(awc::error::PayloadError::Io(e)))
                if e.kind() == std::io::ErrorKind::TimedOut =>
            {
                (Attempt::Fatal(VeloxError::Timeout), None)
            }
            Ok(Err(e)) => unreachable(crate::redact::text(&format!(
                "cannot read Velox's answer: {e}"
            ))),
        }
    }
}

/// What an answer shows of the builder's health: Velox's own answers (a build response, a
/// Connect error) say it is up, except `unavailable`; a 502/503/504 without Connect's JSON is a
/// proxy saying Velox is not there; anything else is not Velox talking.
pub fn seen(status: u16, body: &[u8], attempt: &Attempt) -> Seen {
    let connect = serde_json::from_slice::<ConnectError>(body).is_ok_and(|e| !e.code.is_empty());
    match attempt {
        Attempt::Retry(RetryReason::Unavailable, why) => Seen::Failing(why.clone()),
        Attempt::Success(_) => Seen::Answered,
        _ if status == 200 && serde_json::from_slice::<VeloxSuccess>(body).is_ok() => {
            Seen::Answered
        }
        _ if connect => Seen::Answered,
        _ => Seen::Unreachable(format!("HTTP {status} with an answer that is not Velox's")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str) -> Vec<u8> {
        format!(r#"{{"code":"{code}","message":"m"}}"#).into_bytes()
    }

    #[test]
    fn retry_matrix() {
        for (code, reason) in [
            ("unavailable", RetryReason::Unavailable),
            ("resource_exhausted", RetryReason::ResourceExhausted),
            ("aborted", RetryReason::Aborted),
            ("already_exists", RetryReason::AlreadyExists),
        ] {
            assert!(
                matches!(classify(409, &err(code)), Attempt::Retry(r, _) if r == reason),
                "{code}"
            );
        }
        for code in ["invalid_argument", "failed_precondition", "out_of_range"] {
            assert_eq!(
                classify(400, &err(code)),
                Attempt::Fatal(VeloxError::InvalidArgument("m".into())),
                "{code}"
            );
        }
        for code in ["internal", "unknown", "permission_denied"] {
            assert!(
                matches!(
                    classify(500, &err(code)),
                    Attempt::Fatal(VeloxError::Failed { .. })
                ),
                "{code}"
            );
        }
        for status in [502, 503, 504] {
            assert!(matches!(
                classify(status, b"<html>bad gateway</html>"),
                Attempt::Retry(RetryReason::Unavailable, _)
            ));
        }
        assert_eq!(
            classify(
                500,
                br#"{"code":"internal","message":"building plugins: compile: context deadline exceeded"}"#
            ),
            Attempt::Fatal(VeloxError::Timeout)
        );
        assert!(matches!(
            classify(500, b"<html>"),
            Attempt::Fatal(VeloxError::Failed { .. })
        ));
        assert!(matches!(
            classify(200, br#"{"path":"","logs":"x"}"#),
            Attempt::Fatal(VeloxError::Failed { .. })
        ));
        assert!(matches!(
            classify(200, b"nope"),
            Attempt::Fatal(VeloxError::Failed { .. })
        ));
        assert_eq!(
            classify(200, br#"{"path":"/tmp/a/roadrunner","logs":"ok"}"#),
            Attempt::Success(VeloxSuccess {
                path: "/tmp/a/roadrunner".into(),
                logs: "ok".into()
            })
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = RetryConfig {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3),
            backoff_multiplier: 2.0,
        };
        assert_eq!(backoff(&r, 1), Duration::from_secs(1));
        assert_eq!(backoff(&r, 2), Duration::from_secs(2));
        assert_eq!(backoff(&r, 3), Duration::from_secs(3));
        assert_eq!(backoff(&r, 60), Duration::from_secs(3));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }

    #[test]
    fn long_messages_keep_their_start_and_end() {
        let short = "building plugins: compile: go failed".to_string();
        assert_eq!(cap_message(short.clone()), short);
        let stage = "building plugins: compile: go failed: exit status 1\n--- stderr (last 8192 bytes) ---\n";
        // Multi-byte characters across both cuts.
        let long = format!("{stage}{}THE-LAST-LINE", "é".repeat(6000));
        let capped = cap_message(long.clone());
        assert!(capped.len() <= MAX_MESSAGE_BYTES, "{}", capped.len());
        assert!(capped.starts_with(stage));
        assert!(capped.ends_with("THE-LAST-LINE"));
        assert!(capped.contains("bytes left out"));
        let at_limit = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(cap_message(at_limit.clone()), at_limit);
        let body = format!(
            r#"{{"code":"internal","message":{}}}"#,
            serde_json::json!(long)
        );
        match classify(500, body.as_bytes()) {
            Attempt::Fatal(VeloxError::Failed { message, .. }) => assert_eq!(message, capped),
            other => panic!("{other:?}"),
        }
    }
}
