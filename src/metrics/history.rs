//! The last hour of traffic, one sample a minute (hits, misses, bytes served), kept in memory
//! for the console's chart (`GET /v1/history`, docs/console.md). Prometheus keeps the long
//! history; this ring is what a person sees without one.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::Metrics;

/// Minutes kept.
pub const MINUTES: usize = 60;
const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    hits: u64,
    misses: u64,
    bytes: u64,
}

impl Counts {
    fn read(m: &Metrics) -> Counts {
        Counts {
            hits: m.hits.get(),
            misses: m.misses.load(Relaxed),
            bytes: m.download_bytes.load(Relaxed),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            hits: self.hits.saturating_sub(before.hits),
            misses: self.misses.saturating_sub(before.misses),
            bytes: self.bytes.saturating_sub(before.bytes),
        }
    }

    fn add(&mut self, d: Counts) {
        self.hits += d.hits;
        self.misses += d.misses;
        self.bytes += d.bytes;
    }
}

#[derive(Default)]
struct Ring {
    /// (start of the minute in ms since the epoch, what happened in it), oldest first.
    minutes: VecDeque<(u64, Counts)>,
    /// The counters when last read.
    seen: Counts,
    started: bool,
}

/// Per-minute samples of the last hour.
#[derive(Default)]
pub struct History {
    ring: Mutex<Ring>,
}

impl History {
    /// Adds what the counters gained since the last call to the minute of `now_ms`.
    pub fn sample(&self, metrics: &Metrics, now_ms: u64) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        // Read under the lock: two samples at once must not set `seen` back to older counts
        // (the next sample would count their difference twice).
        let now = Counts::read(metrics);
        let delta = if ring.started {
            now.since(ring.seen)
        } else {
            // Counted before the ring existed: in the current minute.
            now
        };
        ring.seen = now;
        ring.started = true;
        let minute = now_ms - now_ms % MINUTE_MS;
        // Minutes without a sample are minutes without traffic.
        let next = ring.minutes.back().map(|(m, _)| *m + MINUTE_MS);
        if let Some(mut next) = next {
            if minute >= next && minute - next > MINUTES as u64 * MINUTE_MS {
                ring.minutes.clear();
                next = minute;
            }
            while next < minute {
                ring.minutes.push_back((next, Counts::default()));
                next += MINUTE_MS;
            }
        }
        match ring.minutes.back_mut() {
            Some((m, c)) if *m == minute => c.add(delta),
            // A clock that went back: counted in the newest minute.
            Some((m, c)) if *m > minute => c.add(delta),
            _ => ring.minutes.push_back((minute, delta)),
        }
        while ring.minutes.len() > MINUTES {
            ring.minutes.pop_front();
        }
    }

    /// The JSON of `GET /v1/history`, sampled first so that the current minute is up to date.
    pub fn json(&self, metrics: &Metrics, now_ms: u64) -> Value {
        self.sample(metrics, now_ms);
        let Ok(ring) = self.ring.lock() else {
            return json!({"minutes": []});
        };
        let mut total = Counts::default();
        let minutes: Vec<Value> = ring
            .minutes
            .iter()
            .map(|(m, c)| {
                total.add(*c);
                json!({
                    "minute": humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(*m)
                    ).to_string(),
                    "hits": c.hits,
                    "misses": c.misses,
                    "bytes": c.bytes,
                })
            })
            .collect();
        let asked = total.hits + total.misses;
        json!({
            "minutes": minutes,
            "hits": total.hits,
            "misses": total.misses,
            "bytes": total.bytes,
            "hit_ratio": (asked > 0).then(|| total.hits as f64 / asked as f64),
        })
    }

    /// Samples every 10 s until `stop` turns true, so that the minutes are kept apart even
    /// when nobody looks.
    pub async fn run(
        self: std::sync::Arc<Self>,
        metrics: std::sync::Arc<Metrics>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&metrics, crate::util::now_ms()),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_minute_and_the_ring_keeps_an_hour() {
        let m = Metrics::default();
        let h = History::default();
        let t0 = 1_000 * MINUTE_MS;
        h.sample(&m, t0);
        m.hits.add(3);
        m.download_bytes.fetch_add(100, Relaxed);
        h.sample(&m, t0 + 1_000);
        m.misses.fetch_add(1, Relaxed);
        let v = h.json(&m, t0 + 2 * MINUTE_MS + 5);
        let minutes = v["minutes"].as_array().expect("minutes");
        assert_eq!(minutes.len(), 3, "{v}");
        assert_eq!(minutes[0]["hits"], 3);
        assert_eq!(minutes[0]["bytes"], 100);
        assert_eq!(minutes[1]["hits"], 0);
        assert_eq!(minutes[2]["misses"], 1);
        assert_eq!(v["hit_ratio"], 0.75);
        // Two hours later: the hour before is gone, the gap is not filled past an hour.
        m.hits.add(1);
        let v = h.json(&m, t0 + 120 * MINUTE_MS);
        let minutes = v["minutes"].as_array().expect("minutes");
        assert!(minutes.len() <= MINUTES);
        assert_eq!(v["hits"], 1, "{v}");
    }

    #[test]
    fn no_traffic_has_no_ratio() {
        let h = History::default();
        let v = h.json(&Metrics::default(), 5 * MINUTE_MS);
        assert_eq!(v["hit_ratio"], Value::Null);
    }
}
