//! Command-line arguments (docs/cli.md). Each subcommand takes the flags it uses and no others,
//! so that its `--help` is its own; every flag that sets a configuration key names its
//! environment variable there. The server's flags are also accepted before the subcommand
//! (`velox-cache --data-dir DIR serve`), since a bare `velox-cache` is `serve`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::FlagOverrides;

pub mod access;
pub mod cache;
pub mod channel;
pub mod healthcheck;
pub mod keygen;
mod remote;
pub mod warm;

#[derive(Debug, Parser)]
#[command(
    name = "velox-cache",
    version,
    about = "Caching artifact server for Velox-built RoadRunner binaries",
    after_help = "Without a command, runs the server (serve). Every key can also be set in the \
                  environment (VELOX_CACHE_<KEY>, nested keys with __) or in the TOML file; \
                  see docs/configuration.md."
)]
pub struct Cli {
    /// TOML config file [env: VELOX_CACHE_CONFIG]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The flags that set the server's configuration keys.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerFlags {
    /// Public listen address [env: VELOX_CACHE_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listen address: health, readiness, metrics [env: VELOX_CACHE_ADMIN_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Data directory: index, blobs, manifests [env: VELOX_CACHE_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Upstream PHP application; turns proxy mode on [env: VELOX_CACHE_UPSTREAM]
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Velox server URL [env: VELOX_CACHE_SERVER_URL]
    #[arg(long, value_name = "URL")]
    pub server_url: Option<String>,
    /// Folder Velox's artifact paths must resolve into [env: VELOX_CACHE_ARTIFACT_ROOT]
    #[arg(long, value_name = "DIR")]
    pub artifact_root: Option<String>,
    /// FROM=TO rewrite of the path prefix Velox answers with [env: VELOX_CACHE_PATH_MAP]
    #[arg(long, value_name = "FROM=TO")]
    pub path_map: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServerFlags),
    /// Print the effective configuration as TOML, the token masked.
    Config(ServerFlags),
    /// Exit 0 when the server's admin listener says it is ready, 1 otherwise.
    Healthcheck {
        /// The admin listener to ask [env: VELOX_CACHE_ADMIN_LISTEN]
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<String>,
    },
    /// Submit each build request of a JSON-lines file to a running server.
    #[command(
        after_help = "The token sent is api_token [env: VELOX_CACHE_API_TOKEN]; each request may \
                      take build_timeout [env: VELOX_CACHE_BUILD_TIMEOUT] plus 30s."
    )]
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
    /// Offline work on a data dir; `stats` and `list` ask the running server when one holds it.
    Cache {
        /// The data dir to work on [env: VELOX_CACHE_DATA_DIR]
        #[arg(long, global = true, value_name = "DIR")]
        data_dir: Option<String>,
        /// Where to ask a running server that holds the data dir [env: VELOX_CACHE_ADMIN_LISTEN]
        #[arg(long, global = true, value_name = "ADDR")]
        admin_listen: Option<String>,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Write a minisign key pair for `signing.key_file` (docs/signing.md).
    Keygen {
        /// The folder to write `<name>.key` and `<name>.pub` into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The files' name.
        #[arg(long, default_value = "velox-cache")]
        name: String,
    },
    /// A data dir's channels (docs/channels.md), from its index or the server holding it.
    Channel {
        /// The data dir to read [env: VELOX_CACHE_DATA_DIR]
        #[arg(long, global = true, value_name = "DIR")]
        data_dir: Option<String>,
        /// Where to ask a running server that holds the data dir [env: VELOX_CACHE_ADMIN_LISTEN]
        #[arg(long, global = true, value_name = "ADDR")]
        admin_listen: Option<String>,
        #[command(subcommand)]
        action: ChannelAction,
    },
    /// Tokens with scopes (docs/access.md); asks the server holding the data dir, sending
    /// api_token [env: VELOX_CACHE_API_TOKEN].
    Token {
        /// The data dir [env: VELOX_CACHE_DATA_DIR]
        #[arg(long, global = true, value_name = "DIR")]
        data_dir: Option<String>,
        /// Where to ask a running server that holds the data dir [env: VELOX_CACHE_ADMIN_LISTEN]
        #[arg(long, global = true, value_name = "ADDR")]
        admin_listen: Option<String>,
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Signed URLs for clients that cannot send headers (docs/access.md).
    Url {
        /// The data dir [env: VELOX_CACHE_DATA_DIR]
        #[arg(long, global = true, value_name = "DIR")]
        data_dir: Option<String>,
        /// Where to ask a running server that holds the data dir [env: VELOX_CACHE_ADMIN_LISTEN]
        #[arg(long, global = true, value_name = "ADDR")]
        admin_listen: Option<String>,
        #[command(subcommand)]
        action: UrlAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a token and print its secret (shown only this once).
    Create {
        #[arg(long)]
        name: String,
        /// read, build or admin.
        #[arg(long)]
        scope: String,
        /// Limit the token to channels matching this glob (repeatable).
        #[arg(long = "channels", value_name = "GLOB")]
        channels: Vec<String>,
        /// Lifetime, such as 90d; none: never expires.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[arg(long, value_name = "N")]
        max_concurrent_builds: Option<u32>,
        #[arg(long, value_name = "N")]
        builds_per_hour: Option<u32>,
    },
    /// Every token: name, scope, state, channels, expiry (never a secret).
    List,
    /// Refuse the token from now on.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum UrlAction {
    /// Print PATH?expires=…&sig=… (an artifact, signature, provenance, SBOM or channel binary).
    Sign {
        path: String,
        /// Lifetime.
        #[arg(long, default_value = "1h", value_name = "DURATION")]
        expires: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelAction {
    /// One line per channel: name, origin, current release, when it was made, platforms.
    List,
    /// One channel as JSON.
    Show { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Entries and bytes.
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

impl ServerFlags {
    /// These flags over `under` (flags given before the subcommand).
    fn over(&self, under: &ServerFlags) -> ServerFlags {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        ServerFlags {
            listen: pick(&self.listen, &under.listen),
            admin_listen: pick(&self.admin_listen, &under.admin_listen),
            data_dir: pick(&self.data_dir, &under.data_dir),
            upstream: pick(&self.upstream, &under.upstream),
            server_url: pick(&self.server_url, &under.server_url),
            artifact_root: pick(&self.artifact_root, &under.artifact_root),
            path_map: pick(&self.path_map, &under.path_map),
        }
    }
}

impl Cli {
    /// Whether the command runs the server.
    pub fn serving(&self) -> bool {
        matches!(self.command, None | Some(Command::Serve(_)))
    }

    /// The configuration keys set on the command line, the subcommand's flags over the ones
    /// given before it.
    pub fn overrides(&self) -> FlagOverrides {
        let top = &self.server;
        let f = match &self.command {
            None => top.clone(),
            Some(Command::Serve(f) | Command::Config(f)) => f.over(top),
            Some(Command::Healthcheck { admin_listen }) => ServerFlags {
                admin_listen: admin_listen.clone(),
                ..ServerFlags::default()
            }
            .over(top),
            Some(
                Command::Cache {
                    data_dir,
                    admin_listen,
                    ..
                }
                | Command::Channel {
                    data_dir,
                    admin_listen,
                    ..
                }
                | Command::Token {
                    data_dir,
                    admin_listen,
                    ..
                }
                | Command::Url {
                    data_dir,
                    admin_listen,
                    ..
                },
            ) => ServerFlags {
                data_dir: data_dir.clone(),
                admin_listen: admin_listen.clone(),
                ..ServerFlags::default()
            }
            .over(top),
            Some(Command::Warm { .. } | Command::Keygen { .. }) => top.clone(),
        };
        FlagOverrides {
            listen: f.listen,
            admin_listen: f.admin_listen,
            data_dir: f.data_dir,
            upstream: f.upstream,
            server_url: f.server_url,
            artifact_root: f.artifact_root,
            path_map: f.path_map,
        }
    }
}
