//! Admin routes (docs/http-api.md), on the loopback listener: `/healthz`, `/readyz`, `/metrics`;
//! a wrong method on any admin route is a 405 JSON naming the right ones.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::resource::readable;
use super::AppState;
use crate::builds::VeloxHealth;
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{CacheTotals, DiskGauge, Gauges, Metrics};
use crate::store::shared::SharedHealth;
use crate::store::{DiskSpace, IndexState, Limits, FULL_BELOW, REOPEN_ATTEMPTS};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/healthz", healthz))
        .service(readable("/readyz", readyz))
        .service(readable("/metrics", metrics))
        .configure(super::channels_admin::configure)
        .configure(super::console_admin::configure)
        .configure(super::builders_admin::configure)
        .configure(super::cache_admin::configure)
        .configure(super::tokens::configure);
}

/// `GET /healthz`: 200 while the process serves; 503 (`storage_unavailable`) once the index
/// refused writes and could not be reopened (docs/storage.md, "Disk full"): only a restart helps.
async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.store.index_state() == IndexState::Unrecoverable {
        return Err(ApiError::new(
            ErrorCode::StorageUnavailable,
            format!(
                "the metadata database refused writes and {REOPEN_ATTEMPTS} attempts in a row to reopen it failed; restart the process"
            ),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ok"})))
}

/// The storage state `/readyz` reports (docs/storage.md, "Disk full").
fn storage_state(
    probe: &Result<(), String>,
    disk: Option<DiskSpace>,
    min_free: u64,
    short_of: u64,
) -> &'static str {
    let free = disk.map(|d| d.free);
    match probe {
        Err(_) if free.is_some_and(|f| f < FULL_BELOW) => "full",
        Err(_) => "unwritable",
        // The last binary built found no room, and would still find none.
        Ok(()) if short_of > 0 && free.is_some_and(|f| f < short_of.saturating_add(min_free)) => {
            "full"
        }
        Ok(()) if min_free > 0 && free.is_some_and(|f| f < min_free) => "low",
        Ok(()) => "ok",
    }
}

/// `GET /readyz`: 200 when sled takes a write and the data dir a file, else 503; `storage` is
/// `ok`, `low` (less free than `cache.min_free_gb` however much was evicted), `full` (a binary
/// found no room, or the disk refuses writes for lack of space) or `unwritable`.
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let (probe, disk) = web::block(move || (store.check_ready(), store.disk_space()))
        .await
        .map_err(|_| ApiError::storage_unavailable())?;
    let velox = match state.builds.velox_health() {
        VeloxHealth::Unknown => "not_called_yet",
        VeloxHealth::Answered => "answered",
        VeloxHealth::Unreachable => "unreachable",
    };
    let min_free = Limits::from(&state.config.cache).min_free_bytes;
    let storage = storage_state(&probe, disk, min_free, state.builds.storage_short_of());
    // Read after the probe: a reopen that just succeeded is reported once it is complete (its
    // counters written), so a ready answer never says the index failed.
    let index = state.store.index_state();
    let ready = probe.is_ok() && index == IndexState::Ok;
    // The bucket's state is reported, not required: with the bucket down, local hits are still
    // served, and every replica shares the bucket, so failing readiness would take all of them
    // out of the load balancer at once.
    let bucket = state.builds.shared().health().await;
    let mut body = json!({
        "ready": ready,
        "storage": storage,
        "index": index.as_str(),
        "velox_last_call": velox,
        "disk_free_bytes": disk.map(|d| d.free),
        "min_free_bytes": min_free,
    });
    if let Err(why) = probe {
        body["storage_error"] = why.into();
    }
    if bucket != SharedHealth::NotConfigured {
        body["bucket"] = json!(bucket.as_str());
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(HttpResponse::build(status).json(body))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let totals = state
        .store
        .totals()
        .map_err(|e| log::error!("cannot read the cache totals: {e}"))
        .ok();
    let totals = totals.map(|t| CacheTotals {
        entries: t.entries,
        bytes: t.bytes,
    });
    let mut text = state.metrics.render(totals);
    Metrics::render_gauges(
        &mut text,
        &Gauges {
            disk: state.store.disk_space().map(|d| DiskGauge {
                free: d.free,
                total: d.total,
            }),
            min_free_bytes: Limits::from(&state.config.cache).min_free_bytes,
            velox_up: state.builds.velox_health() != VeloxHealth::Unreachable,
            index_reopens: state.store.index_reopens(),
            index_snapshots: state.store.index_snapshots(),
        },
    );
    let (builders, failovers) = state.builders.gauges();
    crate::metrics::render_builders(&mut text, &builders, failovers);
    let stats = &state.webhook_stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let st = state.clone();
    let (release_ages, pinned_bytes) = web::block(move || {
        let pinned = st.store.pinned_bytes().unwrap_or_else(|e| {
            log::error!("cannot count the pinned bytes: {e}");
            0
        });
        (st.channels.release_ages(), pinned)
    })
    .await
    .unwrap_or_default();
    state.metrics.channels.render(
        &mut text,
        &crate::metrics::ChannelGauges {
            release_ages,
            pinned_bytes,
            webhooks: (
                load(&stats.delivered),
                load(&stats.retried),
                load(&stats.failed),
            ),
        },
    );
    let variant_bytes = state.store.variant_bytes().ok();
    state.metrics.compression.render(&mut text, variant_bytes);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_states() {
        let disk = |free| {
            Some(DiskSpace {
                free,
                total: 100 << 20,
            })
        };
        let ok = Ok(());
        let refused = Err("no".to_string());
        assert_eq!(storage_state(&ok, disk(50 << 20), 10 << 20, 0), "ok");
        assert_eq!(storage_state(&ok, disk(5 << 20), 10 << 20, 0), "low");
        assert_eq!(storage_state(&ok, disk(5 << 20), 0, 0), "ok");
        assert_eq!(storage_state(&ok, disk(50 << 20), 0, 60 << 20), "full");
        assert_eq!(storage_state(&ok, disk(70 << 20), 0, 60 << 20), "ok");
        assert_eq!(storage_state(&refused, disk(0), 0, 0), "full");
        assert_eq!(storage_state(&refused, disk(50 << 20), 0, 0), "unwritable");
        assert_eq!(storage_state(&refused, None, 0, 0), "unwritable");
    }
}
