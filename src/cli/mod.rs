//! Command-line arguments (docs/cli.md). Flags that set configuration keys are global, so they may
//! stand before or after the subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::FlagOverrides;

pub mod cache;
pub mod healthcheck;
pub mod warm;

#[derive(Debug, Parser)]
#[command(
    name = "velox-cache",
    version,
    about = "Caching artifact server for Velox-built RoadRunner binaries"
)]
pub struct Cli {
    /// TOML config file (also VELOX_CACHE_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Public listen address.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listen address (health, readiness, metrics).
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Data directory (sled index, blobs, manifests).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Upstream PHP application (turns proxy mode on).
    #[arg(long, global = true, value_name = "URL")]
    pub upstream: Option<String>,
    /// Velox server URL.
    #[arg(long, global = true, value_name = "URL")]
    pub server_url: Option<String>,
    /// Directory Velox's artifact paths must resolve into.
    #[arg(long, global = true, value_name = "DIR")]
    pub artifact_root: Option<String>,
    /// FROM=TO rewrite of the path prefix Velox answers with.
    #[arg(long, global = true, value_name = "FROM=TO")]
    pub path_map: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the effective configuration as TOML, the token masked.
    Config,
    /// Exit 0 when the server's admin listener says it is ready, 1 otherwise.
    Healthcheck,
    /// Submit each build request of a JSON-lines file to a running server.
    Warm {
        /// One build request (JSON) per line; blank lines and `#` comments are skipped.
        file: PathBuf,
        /// The server's public base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Offline work on a data dir the server is not holding.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Entries, bytes and blobs.
    Stats,
    /// Entries in key order.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
    },
    /// Re-hash every blob and cross-check entries, trees, counters and manifests; exits 1 if
    /// anything is wrong.
    Verify,
    /// Remove one entry (and its blob when no other entry uses it).
    Purge { key: String },
    /// Empty the index and rebuild it from the manifests.
    RebuildIndex,
}

impl Cli {
    pub fn overrides(&self) -> FlagOverrides {
        FlagOverrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            data_dir: self.data_dir.clone(),
            upstream: self.upstream.clone(),
            server_url: self.server_url.clone(),
            artifact_root: self.artifact_root.clone(),
            path_map: self.path_map.clone(),
        }
    }
}
