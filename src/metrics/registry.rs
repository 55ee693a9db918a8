//! Registry metrics (docs/metrics.md): requests to the OCI pull API by route and status class,
//! and image layers made with the time they took.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::Histogram;

/// The routes of the pull API, as the `route` label names them.
pub const ROUTES: [&str; 5] = ["base", "manifest", "blob", "tags", "other"];
/// Status classes, as the `status` label names them.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
const LAYER_BOUNDS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// `velox_registry_requests_total{route,status}`, `velox_registry_layers_built_total`,
/// `velox_registry_layer_build_duration_seconds`.
pub struct RegistryCounters {
    requests: [[AtomicU64; 4]; 5],
    layers_built: AtomicU64,
    layer_build: Histogram,
}

impl Default for RegistryCounters {
    fn default() -> Self {
        RegistryCounters {
            requests: Default::default(),
            layers_built: AtomicU64::new(0),
            layer_build: Histogram::new(LAYER_BOUNDS),
        }
    }
}

impl RegistryCounters {
    /// Counts one answer of `route` (one of [`ROUTES`]; anything else counts as `other`).
    pub fn request(&self, route: &str, status: u16) {
        let r = ROUTES.iter().position(|x| *x == route).unwrap_or(4);
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.requests[r][class].fetch_add(1, Relaxed);
    }

    pub fn layer_built(&self, took: Duration) {
        self.layers_built.fetch_add(1, Relaxed);
        self.layer_build.observe(took);
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP velox_registry_requests_total Requests to the OCI pull API by route and status class.\n\
             # TYPE velox_registry_requests_total counter"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "velox_registry_requests_total{{route=\"{route}\",status=\"{class}\"}} {}",
                    self.requests[r][c].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP velox_registry_layers_built_total Image layers made from a binary (once per binary).\n\
             # TYPE velox_registry_layers_built_total counter\n\
             velox_registry_layers_built_total {}",
            self.layers_built.load(Relaxed)
        );
        self.layer_build.render(
            out,
            "velox_registry_layer_build_duration_seconds",
            "Time to make an image layer from a binary.",
        );
    }
}
