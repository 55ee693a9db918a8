//! velox-cache: a caching artifact server for Velox-built RoadRunner binaries.
//!
//! The binary (`src/main.rs`) is a thin shell over this library so that benchmarks and tests can
//! reach the pure parts (key canonicalisation, range handling) directly.

pub mod background;
pub mod build;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod util;
