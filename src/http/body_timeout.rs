//! Stalled request bodies are cut (docs/http-api.md, "Connections and slow clients"): a request
//! body may pause at most `request_body_timeout` between two reads, like nginx's
//! `client_body_timeout`. Past it, the request is answered 408 `client_timeout` where an answer
//! can still be written, and the connection is closed.
//!
//! [`TimedBody`] wraps any request payload stream: the build API reads its body through it, and a
//! forwarder hands it to its HTTP client as the upstream request's body, then asks the
//! [`StallFlag`] whether a failed send was the client's stall (408) or the upstream's fault.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{ApiError, ErrorCode};

/// Why a timed body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body paused for more than {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error("cannot read the request body: {0}")]
    Payload(#[from] PayloadError),
}

impl BodyError {
    /// The answer for the client: 408 `client_timeout` for a stall (the connection is closed
    /// after it), 400 `invalid_request` for a body that broke off or was malformed.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            BodyError::Stalled(_) => client_timeout(),
            BodyError::Payload(_) => ApiError::invalid_request(self.to_string()),
        }
    }
}

/// 408 `client_timeout`; answering it closes the connection.
pub fn client_timeout() -> ApiError {
    ApiError::new(
        ErrorCode::ClientTimeout,
        "the request body stopped arriving; the connection is closed",
    )
}

/// Tells whether a [`TimedBody`] was cut for a stall, after the body itself has been handed away
/// (to an HTTP client that reports only that sending failed).
#[derive(Debug, Clone, Default)]
pub struct StallFlag(Arc<AtomicBool>);

impl StallFlag {
    pub fn stalled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A request payload that fails with [`BodyError::Stalled`] when no bytes arrive for `timeout`
/// (counted from its creation, then from each chunk). After the error it ends.
pub struct TimedBody<S> {
    inner: S,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
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
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let next = Instant::now() + this.timeout;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    this.flag.0.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(BodyError::Stalled(this.timeout))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

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
            tx.send(Ok(Bytes::from_static(b"x"))).expect("send");
            let got = body.next().await.expect("a chunk").expect("not an error");
            assert_eq!(&got[..], b"x");
            tokio::time::advance(Duration::from_secs(20)).await;
        }
        assert!(!flag.stalled());
        // Then nothing: cut at 30 s after the last chunk.
        let err = body.next().await.expect("an error").expect_err("a stall");
        assert!(matches!(err, BodyError::Stalled(_)), "{err}");
        assert!(flag.stalled());
        assert_eq!(err.to_api_error().code, ErrorCode::ClientTimeout);
        assert!(body.next().await.is_none(), "ends after the stall");
    }

    #[actix_web::test]
    async fn a_body_that_ends_is_not_a_stall() {
        tokio::time::pause();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut body = TimedBody::new(chunks(rx), Duration::from_secs(1));
        tx.send(Ok(Bytes::from_static(b"{}"))).expect("send");
        drop(tx);
        assert!(body.next().await.expect("chunk").is_ok());
        assert!(body.next().await.is_none());
        assert!(!body.stall_flag().stalled());
    }
}
