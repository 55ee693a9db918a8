//! Background work of a running server: the start-up pass (reconciliation, then the limits), the
//! access-statistics writer, and the periodic limit enforcement. One stop signal ends them all;
//! `stop` joins them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{Limits, Store};

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

    /// Stops every loop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
