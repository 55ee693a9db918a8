//! `velox-cache serve`: opens the store, starts both listeners, and stops gracefully on SIGTERM or
//! SIGINT (stop accepting, let downloads finish for a bounded time, flush sled).

use std::io;
use std::sync::Arc;

use actix_web::{middleware, web, App, HttpServer};

use crate::background::Background;
use crate::builds::resolve::Resolver;
use crate::builds::{BuildService, VeloxClient};
use crate::channels::Channels;
use crate::config::{Config, StorageBackend};
use crate::http::{admin, body_timeout, proxy, public, AppState, GoProxyClient};
use crate::metrics::Metrics;
use crate::store::{Bucket, Limits, Store};

/// How long a graceful stop waits for open downloads.
const DRAIN_SECS: u64 = 30;

/// Request headers must arrive within this (docs/http-api.md, "Connections and slow clients").
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("the server failed: {0}")]
    Io(#[from] io::Error),
}

/// Runs the server until a signal stops it.
pub fn run(config: Config) -> Result<(), ServeError> {
    let data_dir = config.data_dir.clone();
    actix_web::rt::System::new().block_on(serve(config))?;
    write_index_snapshot(&data_dir);
    Ok(())
}

/// After a graceful stop, opens the index once more and closes it, and so has sled write its
/// snapshot: sled 0.34 writes one only while opening, by replaying its log since the last one,
/// so without this the next start replays everything written while this one ran (5.9 s after a
/// million writes, BENCHMARKS.md). The replay is paid here, after the drain, instead. It is safe
/// to cut: sled writes the snapshot to a temporary file and renames it.
fn write_index_snapshot(data_dir: &std::path::Path) {
    let started = std::time::Instant::now();
    // The served store is dropped with the runtime; its data-dir lock may outlive it for a
    // moment (a worker thread letting go).
    let deadline = started + std::time::Duration::from_secs(5);
    loop {
        match Store::open(data_dir) {
            Ok(store) => {
                drop(store);
                log::info!(
                    "index snapshot written in {:.1}s: the next start replays nothing",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            Err(crate::store::StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                log::warn!("no index snapshot at stop ({e}); the next start replays the log");
                return;
            }
        }
    }
}

async fn serve(config: Config) -> Result<(), ServeError> {
    // Before anything else: a signal during the start is acted on once the server runs.
    let (stop_signal, hangup) = crate::signals::watch();
    let open_files = raise_open_file_limit();
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let (max_conns, per_worker) = public_connections(config.max_connections, open_files, workers);
    let config = Arc::new(config);
    let store = Arc::new(Store::open(&config.data_dir)?);
    store.set_snapshot_after(config.cache.index_snapshot_writes);
    let metrics = Arc::new(Metrics::default());
    let counted = Arc::clone(&metrics);
    store.on_corrupt(move || {
        counted
            .store_errors_corrupt
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let builds = BuildService::new(
        Arc::clone(&store),
        Arc::clone(&config),
        Arc::clone(&metrics),
    );
    let builds = Arc::new(match config.storage.backend {
        StorageBackend::Local => builds,
        StorageBackend::S3 => {
            let bucket = Bucket::open(&config, Arc::clone(&metrics.bucket))
                .map_err(|why| ServeError::Io(io::Error::other(why)))?;
            bucket.watch_tombstones(&store, config.storage.s3.tombstone_poll());
            builds.with_shared(Arc::new(bucket))
        }
    });
    let resolver = Resolver::new(&config.resolve, Arc::clone(&metrics))
        .map_err(|why| ServeError::Io(io::Error::other(format!("invalid resolve.private: {why}"))))?
        .map(Arc::new);
    let tls = crate::tls::client_config(&config)?;
    let webhook_stats = Arc::new(crate::webhook::WebhookStats::default());
    let webhook = match (
        &config.prebuild.webhook_url,
        &config.prebuild.webhook_secret,
    ) {
        (Some(url), Some(secret)) => Some(
            crate::webhook::Webhook::new(url, secret, Arc::clone(&tls), Arc::clone(&webhook_stats))
                .map_err(|why| {
                    ServeError::Io(io::Error::other(format!(
                        "invalid prebuild.webhook_url or prebuild.webhook_secret: {why}"
                    )))
                })?,
        ),
        _ => None,
    };
    if let Some(w) = &webhook {
        w.spool_in(&config.data_dir.join("webhooks"));
    }
    let channels = Arc::new(Channels::new(
        Arc::clone(&store),
        Arc::clone(&builds),
        Arc::clone(&config),
        Arc::clone(&metrics),
        resolver.clone(),
        webhook,
    ));
    // A bucket that does not answer must not stop the start (its state is reported, not
    // required): the pre-build loop tries again before each round until it succeeds.
    channels.sync_file_channels().await;
    if resolver.is_none() && !config.channels.is_empty() {
        log::warn!(
            "channels are defined but resolve.goproxy is not: their floating tags are never resolved, so they get one release each"
        );
    }
    let trust = Arc::new(
        crate::trust::service::Trust::open(&config, config.storage.backend == StorageBackend::S3)
            .map_err(|why| ServeError::Io(io::Error::other(why)))?,
    );
    {
        // Every binary this replica builds gets its provenance, signed (docs/provenance.md).
        let (trust, builder_id) = (Arc::clone(&trust), config.signing.builder_id.clone());
        let store_for_signing = Arc::clone(&store);
        let shared = Arc::clone(builds.shared());
        builds.on_built(Arc::new(move |f: crate::builds::BuiltFacts| {
            let mut asked = f.request.manifest_payload();
            for r in &f.resolved {
                if let Some(plugins) = asked["plugins"].as_array_mut() {
                    for p in plugins.iter_mut() {
                        if p["module_name"] == r.module.as_str() && p["tag"] == r.version.as_str() {
                            p["tag"] = serde_json::Value::from(r.asked.clone());
                        }
                    }
                }
            }
            let resolved: serde_json::Map<String, serde_json::Value> = f
                .resolved
                .iter()
                .map(|r| (r.module.clone(), serde_json::Value::from(r.version.clone())))
                .collect();
            let facts = crate::trust::service::BuildFacts {
                digest: &f.entry.digest,
                file_name: &f.entry.file_name,
                asked,
                resolved: serde_json::Value::Object(resolved),
                rr_version: &f.request.rr_version,
                plugins: f
                    .request
                    .plugins
                    .iter()
                    .map(|p| (p.module_name.clone(), p.tag.clone()))
                    .collect(),
                // The builder that built it, not the configured one (docs/builders.md).
                velox_server: &f.velox_server,
                request_id: f.request.request_id().unwrap_or_default(),
                started: f.started,
                finished: f.finished,
            };
            // Kept here and, with replicas, in the bucket: the first one there is every
            // replica's answer (this hook runs on the blocking pool; the bucket's calls run on
            // its own runtime).
            let digest = f.entry.digest;
            match trust.record_provenance(&builder_id, &facts) {
                Ok(Some(envelope)) => {
                    if let Err(e) = tokio::runtime::Handle::current().block_on(shared.trust_put(
                        digest,
                        "provenance.json",
                        envelope,
                    )) {
                        log::warn!("cannot keep the provenance of {digest} in the bucket: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("cannot keep the provenance of {digest}: {e}"),
            }
            // Signed now, naming its key and RoadRunner version: the first `.minisig` request
            // then finds it made.
            let key = f.key.to_hex();
            let signed = crate::trust::service::Signed {
                digest: &f.entry.digest,
                file_name: &f.entry.file_name,
                key: Some(&key),
                rr_version: Some(&f.request.rr_version),
            };
            let blob = store_for_signing.blob_path(&f.entry.digest);
            match trust.signature(&blob, &signed) {
                Ok(Some(text)) => {
                    if let Err(e) = tokio::runtime::Handle::current().block_on(shared.trust_put(
                        digest,
                        "minisig",
                        text.into_bytes(),
                    )) {
                        log::warn!("cannot keep the signature of {digest} in the bucket: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!("cannot sign {digest} after its build: {e}"),
            }
        }));
    }
    // The builders' health and load, shared by every worker's Velox client (docs/builders.md).
    let pool = Arc::new(crate::builds::pool::Pool::new(&config));
    let auth = Arc::new(
        crate::auth::Auth::open(&config).map_err(|why| ServeError::Io(io::Error::other(why)))?,
    );
    auth.store.share(Arc::clone(builds.shared()));
    if let Err(e) = auth.refresh().await {
        log::warn!("cannot read the tokens in the bucket yet ({e}); the local copy is in force");
    }
    let state = web::Data::new(AppState {
        builders: Arc::clone(&pool),
        config: Arc::clone(&config),
        store: Arc::clone(&store),
        builds,
        metrics,
        resolver,
        async_cors: Default::default(),
        channels: Arc::clone(&channels),
        webhook_stats,
        trust,
        history: Arc::default(),
        public_addr: Arc::default(),
        images: Arc::default(),
        auth: Arc::clone(&auth),
    });

    let public_state = state.clone();
    let cfg = Arc::clone(&config);
    let public_tls = Arc::clone(&tls);
    let public_pool = Arc::clone(&pool);
    let public = HttpServer::new(move || {
        // awc's client is not Send: one per worker.
        let velox = VeloxClient::new(
            Arc::clone(&public_pool),
            cfg.retry.clone(),
            cfg.request_timeout,
            &public_tls,
        );
        App::new()
            .app_data(public_state.clone())
            .app_data(web::Data::new(velox))
            .app_data(web::Data::new(proxy::Upstream::new(&cfg, &public_tls)))
            .app_data(web::Data::new(GoProxyClient(goproxy_client(&public_tls))))
            .wrap(middleware::from_fn(crate::auth::guard_public))
            .wrap(access_log())
            .configure(crate::error::json_extractor_errors)
            .wrap(body_timeout::CutStalledBodies::new(
                cfg.request_body_timeout,
            ))
            // `/v2/` belongs to the PHP app in proxy mode (docs/images.md).
            .configure(|c| {
                if cfg.upstream.is_none() {
                    crate::http::registry::configure(c);
                }
            })
            .configure(public::configure)
            .default_service(web::to(proxy::forward))
    })
    .on_connect(no_delay)
    .disable_signals()
    .shutdown_timeout(DRAIN_SECS)
    .workers(workers)
    .max_connections(per_worker)
    .client_request_timeout(HEAD_TIMEOUT)
    .bind(config.listen)
    .map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_state = state.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
            .wrap(middleware::from_fn(crate::auth::guard_admin))
            .configure(crate::error::json_extractor_errors)
            .configure(admin::configure)
            .default_service(web::to(public::not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(config.admin_listen)
    .map_err(|source| ServeError::Bind {
        addr: config.admin_listen,
        source,
    })?;

    let registry_state = state.clone();
    let registry = match config.registry_listen {
        Some(addr) => Some(
            HttpServer::new(move || {
                App::new()
                    .app_data(registry_state.clone())
                    .wrap(middleware::from_fn(crate::auth::guard_registry))
                    .wrap(access_log())
                    .configure(crate::http::registry::configure)
                    .default_service(web::to(crate::http::registry::not_found))
            })
            .on_connect(no_delay)
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(DRAIN_SECS)
            .client_request_timeout(HEAD_TIMEOUT)
            .bind(addr)
            .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    for addr in registry.iter().flat_map(|r| r.addrs()) {
        println!("velox-cache: registry listener on http://{addr}");
        log::info!("registry listener on http://{addr}");
    }
    for addr in public.addrs() {
        println!("velox-cache: public listener on http://{addr}");
    }
    if let Some(addr) = public.addrs().first() {
        let _ = state.public_addr.set(*addr);
    }
    for addr in admin.addrs() {
        println!("velox-cache: admin listener on http://{addr}");
    }
    let builders: Vec<String> = pool
        .builders()
        .iter()
        .map(|b| b.shown_url.clone())
        .collect();
    log::info!(
        "serving; data dir {}, Velox at {}",
        config.data_dir.display(),
        builders.join(", ")
    );
    log::info!(
        "open-file limit {open_files}; the public listener holds at most {max_conns} connections \
         ({per_worker} on each of {workers} workers)"
    );

    // Compressed variants of every stored binary (docs/compression.md), made on a thread of
    // its own; its start-up check of the stored variants runs there too.
    let compressor = config.compression.enabled.then(|| {
        crate::compress::Compressor::start(
            Arc::clone(&store),
            config.compression.zstd_level,
            Arc::clone(&state.metrics),
            Some(Arc::clone(state.builds.shared())),
        )
    });
    let mut background = Background::start(
        Arc::clone(&store),
        Limits::from(&config.cache),
        config.cache.access_update_interval,
        config.cache.cleanup_interval,
        Arc::clone(&state.metrics),
    );
    background.start_scrub(
        Arc::clone(&store),
        config.cache.scrub_interval,
        config.cache.scrub_rate_mb,
    );
    let (stop_prebuilds, prebuilds_stop) = tokio::sync::watch::channel(false);
    actix_web::rt::spawn(Arc::clone(&channels).run_prebuilds(
        VeloxClient::new(
            Arc::clone(&pool),
            config.retry.clone(),
            config.request_timeout,
            &tls,
        ),
        goproxy_client(&tls),
        prebuilds_stop.clone(),
    ));
    actix_web::rt::spawn(
        Arc::clone(&state.history).run(Arc::clone(&state.metrics), prebuilds_stop.clone()),
    );
    actix_web::rt::spawn(crate::builds::probe::run(
        Arc::clone(&pool),
        goproxy_client(&tls),
        prebuilds_stop.clone(),
    ));
    actix_web::rt::spawn(
        Arc::clone(&auth).run_refresh(config.auth.refresh, prebuilds_stop.clone()),
    );
    let audit = Arc::clone(&auth);
    actix_web::rt::spawn(hangup.each(move || audit.audit.reopen()));
    actix_web::rt::spawn(
        Arc::clone(&channels).run_refresh(config.storage.s3.tombstone_poll(), prebuilds_stop),
    );
    let public = public.run();
    let admin = admin.run();
    let (public_handle, admin_handle) = (public.handle(), admin.handle());
    let registry = registry.map(|r| r.run());
    let registry_handle = registry.as_ref().map(|r| r.handle());
    actix_web::rt::spawn(async move {
        stop_signal.received().await;
        log::info!("stopping: no new connections; open downloads get {DRAIN_SECS}s");
        let registry_stop = async {
            if let Some(h) = registry_handle {
                h.stop(true).await;
            }
        };
        futures_util::future::join3(
            public_handle.stop(true),
            admin_handle.stop(true),
            registry_stop,
        )
        .await;
    });
    let registry = async {
        match registry {
            Some(r) => r.await,
            None => Ok(()),
        }
    };
    let (a, b, r) = futures_util::future::join3(public, admin, registry).await;
    let _ = stop_prebuilds.send(true);
    background.stop().await;
    if let Some(compressor) = compressor {
        let _ = actix_web::rt::task::spawn_blocking(move || compressor.stop()).await;
    }
    // Evicted entries' files still waiting (docs/storage.md, "Limits and eviction"); a failure
    // is logged there, and the next start's pass finds each victim whole or tombstoned.
    let _ = store.reap_evictions();
    // The last batch of access statistics, then everything to disk.
    if let Err(e) = store.write_pending_hits() {
        log::error!("cannot write the last access statistics: {e}");
    }
    let flushed = store.flush();
    a?;
    b?;
    r?;
    flushed?;
    log::info!("stopped");
    Ok(())
}

/// The client for the Go module proxy: redirects followed (proxies redirect to their storage), no
/// cookies, the same TLS roots as Velox and the upstream.
fn goproxy_client(tls: &Arc<rustls::ClientConfig>) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::clone(tls)))
        .finish()
}

/// Sends small writes at once. Without it, a keep-alive client that asks a small range waits for
/// Nagle's algorithm to meet its own delayed ACK: 40 ms a request where 0.1 ms is due.
/// The access log's line: client, request line, status, bytes, seconds. The request line's
/// query goes through `redact::url`: a signed URL's `sig` is a credential until it expires, and
/// no secret is written to a log.
fn access_log() -> middleware::Logger {
    middleware::Logger::new("%a \"%{request}xi\" %s %b %T").custom_request_replace(
        "request",
        |req| {
            format!(
                "{} {} {:?}",
                req.method(),
                crate::redact::url(&req.uri().to_string()),
                req.version()
            )
        },
    )
}

fn no_delay(conn: &dyn std::any::Any, _ext: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = tcp.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {e}");
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as nginx's `worker_rlimit_nofile` and
/// Go programs do, and returns the limit in force. The default soft limit (often 1,024) is far
/// below what a server holding one descriptor per connection needs.
fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        log::warn!(
            "cannot read the open-file limit: {}",
            io::Error::last_os_error()
        );
        return 1024;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let mut want = lim;
        want.rlim_cur = lim.rlim_max;
        if lim.rlim_max == libc::RLIM_INFINITY {
            // Linux refuses more than fs.nr_open descriptors, whatever the hard limit says.
            want.rlim_cur = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(lim.rlim_cur.max(65_536));
        }
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = want.rlim_cur;
            log::info!("open-file limit raised from {before} to {}", lim.rlim_cur);
        } else {
            log::warn!(
                "cannot raise the open-file limit from {before}: {}",
                io::Error::last_os_error()
            );
        }
    }
    lim.rlim_cur
}

/// The public listener's connection cap, in total and per worker (actix counts per worker): the
/// configured `max_connections`, or 80 % of the open-file limit, so that blob files, sled and the
/// admin listener always find a descriptor. Past it, connections wait in the kernel's backlog.
fn public_connections(
    configured: Option<usize>,
    open_files: u64,
    workers: usize,
) -> (usize, usize) {
    let workers = workers.max(1);
    let total = configured
        .unwrap_or_else(|| usize::try_from(open_files.saturating_mul(8) / 10).unwrap_or(usize::MAX))
        .max(1);
    let per_worker = (total / workers).max(1);
    (per_worker * workers, per_worker)
}

#[cfg(test)]
mod tests {
    use super::public_connections;

    #[test]
    fn connections_are_spread_over_the_workers_without_exceeding_the_cap() {
        assert_eq!(public_connections(None, 1024, 2), (818, 409));
        assert_eq!(public_connections(None, 20_000, 2), (16_000, 8_000));
        assert_eq!(public_connections(Some(9), 1024, 2), (8, 4));
        // Never zero: one connection per worker at the least.
        assert_eq!(public_connections(Some(1), 1024, 4), (4, 1));
    }
}
