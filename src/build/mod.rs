//! Build requests: the model and its cache key (`request`), the Velox Connect client (`velox`),
//! and the service that coalesces identical builds and limits concurrency (`service`).

pub mod request;
pub mod service;
pub mod velox;

pub use request::{BuildRequest, CacheKey};
pub use service::{BuildError, BuildService};
