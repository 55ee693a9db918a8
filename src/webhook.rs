//! Webhook delivery for channel pre-builds (`prebuild.webhook_url`), signed as
//! [Standard Webhooks](https://www.standardwebhooks.com/) sign.
//!
//! # What a receiver gets
//!
//! One `POST` per event, `Content-Type: application/json`, with the body
//! `{"type": "<event type>", "timestamp": "<RFC 3339, when the event happened>", "data": {...}}`
//! and three headers:
//!
//! - `webhook-id`: `msg_<uuid>`, unique per event and the same on every retry of it: the key
//!   to de-duplicate on.
//! - `webhook-timestamp`: the attempt's time, in Unix seconds (a retry carries a new one).
//! - `webhook-signature`: `v1,<base64 of HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`
//!   where `key` is the secret's bytes: `prebuild.webhook_secret` is `whsec_<base64>` (or the
//!   bare base64), and the key is what the base64 decodes to. The body is signed as sent, byte
//!   for byte.
//!
//! User information in the URL (`https://user:pass@host/...`) is sent as `Authorization: Basic`.
//!
//! To verify, recompute the HMAC over exactly those three parts joined by `.` with the raw
//! body, base64 it (standard alphabet, padded), and compare it in constant time with the value
//! after `v1,`; refuse a `webhook-timestamp` more than a few minutes from the receiver's clock
//! (replays). Every Standard Webhooks library (`standardwebhooks` for Python, JavaScript, Go,
//! PHP, Rust...) does this given the same `whsec_` secret.
//!
//! # Guarantees
//!
//! - **At least once.** An event is retried until the receiver answers
//!   any `2xx`; anything else (another status, a redirect, which is not followed, a connection
//!   error, no answer within the attempt timeout of 10 s) is retried. A receiver may therefore
//!   see an event twice (its answer lost on the way back): de-duplicate on `webhook-id`.
//! - **Bounded.** 5 attempts: at once, then after about 1 s, 5 s, 30 s and 2 min (each wait
//!   ±20 % at random, so that many senders do not retry in step). A `Retry-After` in seconds on
//!   a failed answer is honoured, kept within 1 s and 5 min; the wait is the longer of it and the
//!   schedule's. After the last attempt the event is given up, counted in `failed` and logged
//!   at warn with its type and id. At most 256 events are pending (queued or being retried) at
//!   once; an event beyond that is dropped at once, counted failed and logged, so a receiver
//!   that is down cannot make memory grow.
//! - **Not ordered.** Each event is delivered by its own task, concurrently with the others: a
//!   retried event arrives after later ones. Order by the body's `timestamp`.
//! - **Never in the caller's way.** [`Webhook::send`] queues and returns; the deliveries run on
//!   a thread of their own (`velox-webhook`) with its own actix system.
//! - **Across restarts**, once [`Webhook::spool_in`] names a folder ([`spool`]): each event is
//!   kept there until it is delivered or given up, and the next start sends the ones left.
//!
//! The secret is kept only as a `ring` HMAC key: it is never logged, and `Debug` shows the URL
//! (its credentials masked) and nothing else.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web::Bytes;
use ring::hmac;
use tokio::sync::mpsc;

use crate::redact;

mod signature;
mod spool;
mod target;

use signature::sign_with;
pub use signature::{parse_secret, sign, MIN_KEY_BYTES};
use target::{check_url, split_userinfo};

/// Delivery counters the caller exports as metrics.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events a receiver answered `2xx`.
    pub delivered: AtomicU64,
    /// Attempts after an event's first one.
    pub retried: AtomicU64,
    /// Events given up: every attempt failed, or dropped because the queue was full.
    pub failed: AtomicU64,
}

/// When to try again, and for how long to try. [`Schedule::default`] is the production one.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The waits before the second, third... attempt: `retries.len() + 1` attempts in all.
    pub retries: Vec<Duration>,
    /// The fraction each wait is moved by at random, either way (0.2: ±20 %).
    pub jitter: f64,
    /// How long one attempt may take, connecting included.
    pub attempt_timeout: Duration,
    /// A receiver's `Retry-After` is kept within these.
    pub retry_after_min: Duration,
    pub retry_after_max: Duration,
    /// Events pending at once (queued or being retried); beyond it, new events are dropped.
    pub max_pending: usize,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            retries: [1, 5, 30, 120].map(Duration::from_secs).to_vec(),
            jitter: 0.2,
            attempt_timeout: Duration::from_secs(10),
            retry_after_min: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(300),
            max_pending: 256,
        }
    }
}

impl Schedule {
    /// The wait after failed attempt number `failed` (0 for the first), given the receiver's
    /// `Retry-After`, if any.
    fn wait(&self, failed: usize, retry_after: Option<Duration>) -> Duration {
        let base = self.retries.get(failed).copied().unwrap_or_default();
        let jitter = self.jitter.clamp(0.0, 1.0);
        let scheduled = base.mul_f64(1.0 - jitter + 2.0 * jitter * fastrand::f64());
        match retry_after {
            Some(asked) => {
                let asked = asked.clamp(self.retry_after_min, self.retry_after_max);
                scheduled.max(asked)
            }
            None => scheduled,
        }
    }
}

/// One event, as it is sent on every attempt.
struct Event {
    id: String,
    event_type: String,
    body: Bytes,
}

struct Inner {
    tx: mpsc::UnboundedSender<Event>,
    /// Where pending events are kept, once [`Webhook::spool_in`] said so.
    spool: Arc<std::sync::OnceLock<spool::Spool>>,
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    stats: Arc<WebhookStats>,
    shown_url: String,
}

/// The sender of webhook events. Cheap to clone; the delivery thread ends once every clone is
/// dropped and the deliveries under way are over.
#[derive(Clone)]
pub struct Webhook {
    inner: Arc<Inner>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.inner.shown_url)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A sender to `url`, signing with `secret` (`whsec_<base64>`, or bare base64). A bad URL or
    /// secret is an error saying what is wrong with it (the secret is never quoted). `tls` is
    /// used for `https://` URLs. Starts the delivery thread.
    pub fn new(
        url: &str,
        secret: &str,
        tls: Arc<rustls::ClientConfig>,
        stats: Arc<WebhookStats>,
    ) -> Result<Webhook, String> {
        Self::with_schedule(url, secret, tls, stats, Schedule::default())
    }

    /// [`Webhook::new`] with another retry schedule (the tests' short one).
    pub fn with_schedule(
        url: &str,
        secret: &str,
        tls: Arc<rustls::ClientConfig>,
        stats: Arc<WebhookStats>,
        schedule: Schedule,
    ) -> Result<Webhook, String> {
        check_url(url)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &parse_secret(secret)?);
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let spool = Arc::new(std::sync::OnceLock::new());
        let shown_url = redact::url(url);
        let (url, authorization) = split_userinfo(url);
        let delivery = Delivery {
            url,
            authorization,
            key,
            schedule: schedule.clone(),
            stats: Arc::clone(&stats),
            pending: Arc::clone(&pending),
            spool: Arc::clone(&spool),
        };
        std::thread::Builder::new()
            .name("velox-webhook".into())
            .spawn(move || run(delivery, rx, tls))
            .map_err(|e| format!("cannot start the webhook delivery thread: {e}"))?;
        Ok(Webhook {
            inner: Arc::new(Inner {
                tx,
                spool,
                pending,
                max_pending: schedule.max_pending,
                stats,
                shown_url,
            }),
        })
    }

    /// Keeps pending events in `dir` from now on ([`spool`]), and queues those a previous run
    /// left there. Logs what it does; returns how many events were queued again. Once only.
    pub fn spool_in(&self, dir: &std::path::Path) -> usize {
        let opened = match spool::Spool::open(dir) {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "webhook events cannot be kept in {}: {e}; those pending at a stop are lost",
                    dir.display()
                );
                return 0;
            }
        };
        let left = opened.pending();
        if self.inner.spool.set(opened).is_err() {
            return 0;
        }
        let mut queued = 0;
        for event in left {
            if self.queue(event) {
                queued += 1;
            }
        }
        if queued > 0 {
            log::info!(
                "webhook: {queued} events left pending by the last run are sent again to {}",
                self.inner.shown_url
            );
        }
        queued
    }

    /// Queues one event and returns at once, whatever the receiver does. `event_type` like
    /// `channel.release.flipped`; `data` the event's JSON object. Callable from any thread.
    pub fn send(&self, event_type: &str, data: serde_json::Value) {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let timestamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let payload = serde_json::json!({"type": event_type, "timestamp": timestamp, "data": data});
        self.queue(Event {
            id,
            event_type: event_type.to_owned(),
            body: Bytes::from(payload.to_string()),
        });
    }

    /// Takes a pending slot and hands `event` to the delivery thread; whether it was taken.
    fn queue(&self, event: Event) -> bool {
        let inner = &self.inner;
        let (id, event_type) = (&event.id, &event.event_type);
        let taken = inner
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_pending).then_some(n + 1)
            });
        if taken.is_err() {
            inner.stats.failed.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "webhook {event_type} ({id}) dropped: {} events are already pending for {}",
                inner.max_pending,
                inner.shown_url
            );
            if let Some(spool) = inner.spool.get() {
                spool.forget(id);
            }
            return false;
        }
        if let Err(mpsc::error::SendError(event)) = inner.tx.send(event) {
            // Only when the delivery thread has died (a panic); never silently.
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            inner.stats.failed.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "webhook {} ({}) dropped: the delivery thread is gone",
                event.event_type,
                event.id
            );
            return false;
        }
        true
    }

    /// Events queued or being retried now.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.inner.stats
    }
}

/// What the delivery thread needs.
struct Delivery {
    /// Without user information, which is in `authorization`.
    url: String,
    authorization: Option<String>,
    key: hmac::Key,
    schedule: Schedule,
    stats: Arc<WebhookStats>,
    pending: Arc<AtomicUsize>,
    spool: Arc<std::sync::OnceLock<spool::Spool>>,
}

/// One failed attempt.
struct Failure {
    reason: String,
    retry_after: Option<Duration>,
}

/// Takes one pending slot back when an event's delivery ends, however it ends.
struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The delivery thread: one task per event, until every sender is gone and the tasks are over.
fn run(delivery: Delivery, mut rx: mpsc::UnboundedReceiver<Event>, tls: Arc<rustls::ClientConfig>) {
    actix_web::rt::System::new().block_on(async move {
        let timeout = delivery.schedule.attempt_timeout;
        // awc's own connect and handshake limits (5 s each) would cut before the attempt's.
        let connector = awc::Connector::new()
            .rustls_0_23(tls)
            .timeout(timeout)
            .handshake_timeout(timeout);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .timeout(timeout)
            .finish();
        let delivery = std::rc::Rc::new(delivery);
        let mut tasks: Vec<actix_web::rt::task::JoinHandle<()>> = Vec::new();
        while let Some(event) = rx.recv().await {
            tasks.retain(|t| !t.is_finished());
            // Kept before its first attempt, so that a stop or a crash does not lose it.
            if let Some(spool) = delivery.spool.get() {
                spool.keep(&event);
            }
            let slot = PendingSlot(Arc::clone(&delivery.pending));
            let delivery = std::rc::Rc::clone(&delivery);
            let client = client.clone();
            tasks.push(actix_web::rt::spawn(async move {
                delivery.deliver(&client, event).await;
                drop(slot);
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

impl Delivery {
    async fn deliver(&self, client: &awc::Client, event: Event) {
        let attempts = self.schedule.retries.len() + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            match self.attempt(client, &event).await {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    self.forget(&event);
                    log::debug!(
                        "webhook {} ({}) delivered on attempt {}",
                        event.event_type,
                        event.id,
                        attempt + 1
                    );
                    return;
                }
                Err(failure) => {
                    last = failure.reason;
                    if attempt + 1 == attempts {
                        break;
                    }
                    let wait = self.schedule.wait(attempt, failure.retry_after);
                    log::info!(
                        "webhook {} ({}) attempt {} of {attempts} failed: {last}; again in {wait:.1?}",
                        event.event_type,
                        event.id,
                        attempt + 1,
                    );
                    actix_web::rt::time::sleep(wait).await;
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        self.forget(&event);
        log::warn!(
            "webhook {} ({}) to {} given up after {attempts} attempts: {last}",
            event.event_type,
            event.id,
            redact::url(&self.url)
        );
    }

    /// The event needs keeping no longer (delivered, or given up).
    fn forget(&self, event: &Event) {
        if let Some(spool) = self.spool.get() {
            spool.forget(&event.id);
        }
    }

    async fn attempt(&self, client: &awc::Client, event: &Event) -> Result<(), Failure> {
        let timestamp = unix_now();
        let signature = sign_with(&self.key, &event.id, timestamp, &event.body);
        let mut request = client
            .post(&self.url)
            .timeout(self.schedule.attempt_timeout)
            .insert_header(("content-type", "application/json"))
            .insert_header(("webhook-id", event.id.as_str()))
            .insert_header(("webhook-timestamp", timestamp.to_string()))
            .insert_header(("webhook-signature", signature));
        if let Some(authorization) = &self.authorization {
            request = request.insert_header(("authorization", authorization.as_str()));
        }
        let request = request.send_body(event.body.clone());
        // awc's timeout covers the answer's head; this one covers everything else (DNS).
        let response =
            match actix_web::rt::time::timeout(self.schedule.attempt_timeout, request).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    return Err(Failure {
                        reason: redact::text(&e.to_string()),
                        retry_after: None,
                    })
                }
                Err(_) => {
                    return Err(Failure {
                        reason: format!(
                            "no answer within {}",
                            humantime::format_duration(self.schedule.attempt_timeout)
                        ),
                        retry_after: None,
                    })
                }
            };
        // The body is not read: what counts is the status. The connection is closed.
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Failure {
            reason: format!("HTTP {}", status.as_u16()),
            retry_after: retry_after(response.headers()),
        })
    }
}

/// A `Retry-After` in seconds (the HTTP-date form is ignored: the schedule applies).
fn retry_after(headers: &awc::http::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(awc::http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod spool_tests;
#[cfg(test)]
mod tests;
