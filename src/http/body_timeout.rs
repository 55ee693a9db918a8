//! Stalled request bodies are cut (docs/http-api.md, "Connections and slow clients"): a request
//! body may pause at most `request_body_timeout` between two reads, like nginx's
//! `client_body_timeout`. Past it, the request is answered 408 `client_timeout` where an answer
//! can still be written, and the connection is closed.
//!
//! [`TimedBody`] wraps a request payload stream. [`CutStalledBodies`], a middleware on the public
//! listener, puts every request's payload in one, so that whatever reads a body there — the build
//! API, the forwarding to the upstream — gets an error when it stalls; [`stalled`] tells the
//! handler that the error was the client's stall, to answer [`client_timeout`].
//!
//! The middleware also keeps the payload alive until the response has been sent. actix-http
//! reads the rest of an unread *chunked* body before it takes the next request on the connection,
//! with no time limit: a client that stalls a chunked body would hold its connection for ever
//! after the 408. While the payload is held, actix closes the connection instead.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest};
use futures_util::future::{ready, LocalBoxFuture, Ready};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::error::{ApiError, ErrorCode};

/// 408 `client_timeout`; answering it closes the connection.
pub fn client_timeout() -> ApiError {
    ApiError::new(
        ErrorCode::ClientTimeout,
        "the request body stopped arriving; the connection is closed",
    )
}

/// Whether this request's body was cut for a stall (by [`CutStalledBodies`]). A handler whose
/// body read failed, or whose HTTP client reports only that sending the body failed, asks this to
/// answer 408 rather than blame the body or the upstream.
pub fn stalled(req: &HttpRequest) -> bool {
    req.extensions()
        .get::<StallFlag>()
        .is_some_and(StallFlag::stalled)
}

/// The answer to a failed body read: 408 when it stalled, else 400 `invalid_request` (a body
/// that broke off or was malformed).
pub fn body_error(req: &HttpRequest, e: &PayloadError) -> ApiError {
    if stalled(req) {
        client_timeout()
    } else {
        ApiError::invalid_request(format!("cannot read the request body: {e}"))
    }
}

/// Tells whether a [`TimedBody`] was cut for a stall, after the body itself has been handed away.
#[derive(Debug, Clone, Default)]
pub struct StallFlag(Arc<AtomicBool>);

impl StallFlag {
    pub fn stalled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A request payload that fails with a `TimedOut` I/O error when, once it is asked for more, no
/// bytes come for `timeout`. Time in which nobody reads it does not count: a handler that reads
/// its body late, or an upstream that takes it slowly, is not the client's stall. After the error
/// it ends.
pub struct TimedBody<S> {
    inner: S,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The timer runs: the last poll found no bytes.
    waiting: bool,
    flag: StallFlag,
    done: bool,
}

impl<S> TimedBody<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    pub fn new(inner: S, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            waiting: false,
            flag: StallFlag::default(),
            done: false,
        }
    }

    /// A handle that says afterwards whether this body was cut for a stall.
    pub fn stall_flag(&self) -> StallFlag {
        self.flag.clone()
    }
}

impl<S> Stream for TimedBody<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                this.waiting = false;
                this.done = item.is_err();
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.timeout;
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        this.flag.0.store(true, Ordering::Release);
                        let why = format!(
                            "the request body paused for more than {}",
                            humantime::format_duration(this.timeout)
                        );
                        Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            why,
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// The request's own payload, shared between the handler's [`TimedBody`] and the response that
/// holds it until sent.
struct Shared(Rc<RefCell<Payload>>);

impl Stream for Shared {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.0.try_borrow_mut() {
            Ok(mut payload) => payload.poll_next_unpin(cx),
            // Never borrowed elsewhere while polled: the holder only keeps it alive.
            Err(_) => Poll::Ready(Some(Err(PayloadError::Io(io::Error::other(
                "the request body is already being read",
            ))))),
        }
    }
}

/// Middleware for the public listener: every request body in a [`TimedBody`] of `timeout`.
pub struct CutStalledBodies {
    timeout: Duration,
}

impl CutStalledBodies {
    pub fn new(timeout: Duration) -> Self {
        CutStalledBodies { timeout }
    }
}

impl<S, B> Transform<S, ServiceRequest> for CutStalledBodies
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + Unpin + 'static,
{
    type Response = ServiceResponse<HoldPayload<B>>;
    type Error = actix_web::Error;
    type Transform = CutStalledBodiesService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CutStalledBodiesService {
            service: Rc::new(service),
            timeout: self.timeout,
        }))
    }
}

pub struct CutStalledBodiesService<S> {
    service: Rc<S>,
    timeout: Duration,
}

impl<S, B> Service<ServiceRequest> for CutStalledBodiesService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + Unpin + 'static,
{
    type Response = ServiceResponse<HoldPayload<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let payload = req.take_payload();
        let held = if matches!(payload, Payload::None) {
            None
        } else {
            let shared = Rc::new(RefCell::new(payload));
            let timed = TimedBody::new(Shared(Rc::clone(&shared)), self.timeout);
            req.extensions_mut().insert(timed.stall_flag());
            req.set_payload(Payload::Stream {
                payload: Box::pin(timed),
            });
            Some(shared)
        };
        let service = Rc::clone(&self.service);
        Box::pin(async move {
            let res = service.call(req).await?;
            Ok(res.map_body(|_, inner| HoldPayload { inner, held }))
        })
    }
}

/// A response body that keeps the request's payload alive until it has been sent (see the module
/// docs); otherwise it is its inner body.
pub struct HoldPayload<B> {
    inner: B,
    held: Option<Rc<RefCell<Payload>>>,
}

impl<B: MessageBody + Unpin> MessageBody for HoldPayload<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_next(cx)
    }

    fn try_into_bytes(self) -> Result<Bytes, Self> {
        if self.held.is_some() {
            return Err(self);
        }
        self.inner
            .try_into_bytes()
            .map_err(|inner| HoldPayload { inner, held: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        rx: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, PayloadError>>,
    ) -> impl Stream<Item = Result<Bytes, PayloadError>> + Unpin {
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed_local()
    }

    #[actix_web::test]
    async fn a_pause_longer_than_the_timeout_is_a_stall() {
        tokio::time::pause();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = TimedBody::new(chunks(rx), Duration::from_secs(30));
        let flag = body.stall_flag();
        // Chunks 20 s apart: each pause is under the timeout, the total is not. Keeps going.
        for _ in 0..3 {
            let sender = tx.clone();
            actix_web::rt::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let _ = sender.send(Ok(Bytes::from_static(b"x")));
            });
            let got = body.next().await.expect("a chunk").expect("not an error");
            assert_eq!(&got[..], b"x");
        }
        assert!(!flag.stalled());
        // Then nothing: cut 30 s after the last chunk.
        let started = Instant::now();
        let err = body.next().await.expect("an error").expect_err("a stall");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{waited:?}"
        );
        assert!(matches!(&err, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut));
        assert!(flag.stalled());
        assert!(body.next().await.is_none(), "ends after the stall");
    }

    #[actix_web::test]
    async fn time_nobody_reads_is_not_a_stall() {
        tokio::time::pause();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = TimedBody::new(chunks(rx), Duration::from_secs(1));
        tx.send(Ok(Bytes::from_static(b"{}"))).expect("send");
        drop(tx);
        // The handler reads only a minute later: the bytes were there all along.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(body.next().await.expect("chunk").is_ok());
        assert!(body.next().await.is_none());
        assert!(!body.stall_flag().stalled());
    }
}
