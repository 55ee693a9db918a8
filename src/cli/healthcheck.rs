//! `velox-cache healthcheck`: asks the admin listener's `/readyz` and exits 0 when ready, 1 when
//! not or unreachable. What the container image's HEALTHCHECK runs, so that the image needs no
//! curl.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;

/// Where to reach a listener bound to `addr`: an unspecified address means this host.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

pub fn run(config: &Config) -> ExitCode {
    let url = format!("http://{}/readyz", reachable(config.admin_listen));
    let outcome = actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(5))
            .finish();
        match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("{url} answered {}", resp.status())),
            Err(e) => Err(format!("{url}: {e}")),
        }
    });
    match outcome {
        Ok(()) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("not ready: {why}");
            ExitCode::FAILURE
        }
    }
}
