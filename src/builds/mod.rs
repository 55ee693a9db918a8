//! Build requests: the model and its cache key (`request`), the Velox Connect client (`velox`),
//! the checks on the artifact Velox names (`artifact`), Go's module path rules (`modpath`), and the service that coalesces identical
//! builds and limits concurrency (`service`).

pub mod activity;
pub mod artifact;
pub mod failover;
pub mod floating;
pub mod modpath;
mod outcome;
pub mod pool;
pub mod probe;
pub mod request;
pub mod resolve;
pub mod service;
pub mod status;
mod unstored;
pub mod velox;

pub use crate::ids::CacheKey;
pub use request::{BuildRequest, MAX_BODY_BYTES};
pub use service::{
    Admission, BuildError, BuildService, BuildState, BuildTicket, BuildWatch, BuiltFacts,
    CacheStatus, KeyState, OnBuilt, Served, Started, VeloxHealth,
};
pub use velox::VeloxClient;
