//! velox-cache: a caching artifact server for Velox-built RoadRunner binaries.
//!
//! The binary (`src/main.rs`) is a thin shell over this library. The modules that are `pub` are
//! what the binary, the benchmarks and the in-process store tests use; everything else is
//! `pub(crate)`, so the compiler reports what nothing calls.

pub mod auth;
pub(crate) mod background;
pub mod builds;
pub mod channels;
pub mod cli;
pub mod compress;
pub mod config;
pub(crate) mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod oci;
pub mod preflight;
pub(crate) mod redact;
pub mod server;
pub mod signals;
pub mod store;
pub(crate) mod tls;
pub mod trust;
pub(crate) mod util;
pub mod webhook;
