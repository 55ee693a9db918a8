//! `velox-cache serve`: opens the store, starts both listeners, and stops gracefully on SIGTERM or
//! SIGINT (stop accepting, let downloads finish for a bounded time, flush sled).

use std::io;
use std::sync::Arc;

use actix_web::{middleware, web, App, HttpServer};

use crate::background::Background;
use crate::builds::resolve::Resolver;
use crate::builds::{BuildService, VeloxClient};
use crate::config::{Config, StorageBackend};
use crate::http::{admin, proxy, public, AppState, GoProxyClient};
use crate::metrics::Metrics;
use crate::store::{Bucket, Limits, Store};

/// How long a graceful stop waits for open downloads.
const DRAIN_SECS: u64 = 30;

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
    actix_web::rt::System::new().block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let store = Arc::new(Store::open(&config.data_dir)?);
    let metrics = Arc::new(Metrics::default());
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
            builds.with_shared(Arc::new(bucket))
        }
    });
    let resolver = Resolver::new(&config.resolve, Arc::clone(&metrics)).map_err(|why| {
        ServeError::Io(io::Error::other(format!("invalid resolve.private: {why}")))
    })?;
    let state = web::Data::new(AppState {
        config: Arc::clone(&config),
        store: Arc::clone(&store),
        builds,
        metrics,
        resolver,
    });

    let tls = crate::tls::client_config(&config)?;
    let public_state = state.clone();
    let cfg = Arc::clone(&config);
    let public = HttpServer::new(move || {
        // awc's client is not Send: one per worker.
        let velox = VeloxClient::new(
            &cfg.server_url,
            cfg.retry.clone(),
            cfg.request_timeout,
            &tls,
        );
        App::new()
            .app_data(public_state.clone())
            .app_data(web::Data::new(velox))
            .app_data(web::Data::new(proxy::Upstream::new(&cfg, &tls)))
            .app_data(web::Data::new(GoProxyClient(goproxy_client(&tls))))
            .wrap(middleware::Logger::new("%a \"%r\" %s %b %T"))
            .configure(public::configure)
            .default_service(web::to(proxy::forward))
    })
    .on_connect(no_delay)
    .disable_signals()
    .shutdown_timeout(DRAIN_SECS)
    .bind(config.listen)
    .map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_state = state.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_state.clone())
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

    for addr in public.addrs() {
        println!("velox-cache: public listener on http://{addr}");
    }
    for addr in admin.addrs() {
        println!("velox-cache: admin listener on http://{addr}");
    }
    log::info!(
        "serving; data dir {}, Velox at {}",
        config.data_dir.display(),
        config.server_url
    );

    let background = Background::start(
        Arc::clone(&store),
        Limits::from(&config.cache),
        config.cache.access_update_interval,
        config.cache.cleanup_interval,
        Arc::clone(&state.metrics),
    );
    let public = public.run();
    let admin = admin.run();
    let (public_handle, admin_handle) = (public.handle(), admin.handle());
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        log::info!("stopping: no new connections; open downloads get {DRAIN_SECS}s");
        futures_util::future::join(public_handle.stop(true), admin_handle.stop(true)).await;
    });
    let (a, b) = futures_util::future::join(public, admin).await;
    background.stop().await;
    // The last batch of access statistics, then everything to disk.
    if let Err(e) = store.write_pending_hits() {
        log::error!("cannot write the last access statistics: {e}");
    }
    let flushed = store.flush();
    a?;
    b?;
    flushed?;
    log::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            log::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
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
fn no_delay(conn: &dyn std::any::Any, _ext: &mut actix_web::dev::Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = tcp.set_nodelay(true) {
            log::debug!("cannot set TCP_NODELAY: {e}");
        }
    }
}
