//! Background work of a running server: the start-up pass (reconciliation, then the limits), the
//! access-statistics writer, the periodic limit enforcement, and the scrub. One stop signal ends
//! them all; `stop` joins them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{Limits, Store, Throttle};

pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<actix_web::rt::task::JoinHandle<()>>,
}

/// Runs `work` on the blocking pool every `every` until stopped.
fn every(
    mut stop: watch::Receiver<bool>,
    every: Duration,
    work: impl Fn() + Send + Sync + 'static,
) -> actix_web::rt::task::JoinHandle<()> {
    let work = Arc::new(work);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let work = Arc::clone(&work);
            if let Err(e) = actix_web::rt::task::spawn_blocking(move || work()).await {
                log::error!("background work failed: {e}");
            }
        }
    })
}

/// Enforces the limits now and counts what was evicted. Returns how many entries went.
pub fn cleanup(store: &Store, limits: &Limits, metrics: &Metrics) -> usize {
    match store.enforce(limits, None) {
        Ok(evicted) => {
            for (key, reason) in &evicted {
                log::info!("evicted {key} ({})", reason.as_str());
                metrics.evicted(*reason);
            }
            evicted.len()
        }
        Err(e) => {
            log::error!("cache cleanup failed: {e}");
            0
        }
    }
}

impl Background {
    pub fn start(
        store: Arc<Store>,
        limits: Limits,
        access_every: Duration,
        cleanup_every: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let (s, m) = (Arc::clone(&store), Arc::clone(&metrics));
        tasks.push(actix_web::rt::spawn(async move {
            let pass = move || {
                match s.reconcile() {
                    Ok(report) => log::info!("start-up reconciliation: {report:?}"),
                    Err(e) => log::error!("start-up reconciliation failed: {e}"),
                }
                // A crash between an insert and its eviction (or lower limits than the last run
                // had) must not leave the cache over its limits until the first cleanup_interval.
                let evicted = cleanup(&s, &limits, &m);
                log::info!("start-up pass: the limits evicted {evicted} entries");
            };
            if let Err(e) = actix_web::rt::task::spawn_blocking(pass).await {
                log::error!("the start-up pass did not run: {e}");
            }
        }));
        if !access_every.is_zero() {
            let s = Arc::clone(&store);
            tasks.push(every(rx.clone(), access_every, move || {
                if let Err(e) = s.write_pending_hits() {
                    log::error!("cannot write access statistics: {e}");
                }
            }));
        }
        if !cleanup_every.is_zero() {
            tasks.push(every(rx, cleanup_every, move || {
                cleanup(&store, &limits, &metrics);
            }));
        }
        Background { stop, tasks }
    }

    /// Starts the scrub (docs/storage.md, "Integrity at rest"): a pass over every blob each
    /// `interval` (none when 0), reading at most `rate_mb` MB/s on one blocking-pool thread. A stop
    /// ends a pass within 50 ms; the next start goes on where it was.
    pub fn start_scrub(&mut self, store: Arc<Store>, interval: Duration, rate_mb: f64) {
        if interval.is_zero() {
            return;
        }
        let mut stop = self.stop.subscribe();
        self.tasks.push(actix_web::rt::spawn(async move {
            // After a failed pass, a pause before the next try instead of a loop of failures.
            let mut failed = false;
            loop {
                let s = Arc::clone(&store);
                let mut wait =
                    match actix_web::rt::task::spawn_blocking(move || s.scrub_wait(interval)).await
                    {
                        Ok(Ok(wait)) => wait,
                        Ok(Err(e)) => {
                            log::error!("scrub: cannot read when the last pass ran: {e}");
                            interval
                        }
                        Err(e) => {
                            log::error!("scrub: {e}");
                            interval
                        }
                    };
                if std::mem::take(&mut failed) {
                    wait = wait.max(interval.min(Duration::from_secs(60)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
                let s = Arc::clone(&store);
                let flag = stop.clone();
                let started = std::time::Instant::now();
                log::info!("scrub: pass started, reading at most {rate_mb} MB/s");
                let pass = actix_web::rt::task::spawn_blocking(move || {
                    let stopped = || *flag.borrow();
                    let mut throttle = Throttle::new(rate_mb * 1e6, &stopped);
                    s.scrub(&mut throttle)
                })
                .await;
                match pass {
                    Ok(Ok(r)) => log::info!(
                        "scrub: pass {} after {:.1}s: {} blobs ({} bytes) checked, {} damaged",
                        if r.stopped { "stopped" } else { "finished" },
                        started.elapsed().as_secs_f64(),
                        r.checked,
                        r.bytes,
                        r.corrupt
                    ),
                    Ok(Err(e)) => {
                        log::error!("scrub: the pass failed: {e}");
                        failed = true;
                    }
                    Err(e) => {
                        log::error!("scrub: the pass did not run: {e}");
                        failed = true;
                    }
                }
                if *stop.borrow() {
                    return;
                }
            }
        }));
    }

    /// Stops every loop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
