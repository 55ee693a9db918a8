//! Metrics of the pool of Velox builders (docs/metrics.md): whether each builder is up, its
//! builds in flight, its calls by how they ended, and the builds moved to another builder.

use std::fmt::Write;

/// One builder as the build layer sees it at scrape time.
#[derive(Debug, Clone, Default)]
pub struct BuilderGauge {
    pub id: String,
    pub up: bool,
    pub active: u64,
    /// `status` label value → calls.
    pub calls: Vec<(&'static str, u64)>,
}

/// Appends the builders' metrics; `failovers` is `velox_builder_failovers_total`.
pub fn render_builders(out: &mut String, builders: &[BuilderGauge], failovers: u64) {
    let _ = writeln!(
        out,
        "# HELP velox_builder_up 1 while the Velox builder is up (probes and calls), 0 while down.\n\
         # TYPE velox_builder_up gauge"
    );
    for b in builders {
        let _ = writeln!(
            out,
            "velox_builder_up{{builder=\"{}\"}} {}",
            b.id,
            u64::from(b.up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP velox_builder_builds_active Builds calling the Velox builder now.\n\
         # TYPE velox_builder_builds_active gauge"
    );
    for b in builders {
        let _ = writeln!(
            out,
            "velox_builder_builds_active{{builder=\"{}\"}} {}",
            b.id, b.active
        );
    }
    let _ = writeln!(
        out,
        "# HELP velox_builder_builds_total Calls to the Velox builder, by how they ended.\n\
         # TYPE velox_builder_builds_total counter"
    );
    for b in builders {
        for (status, n) in &b.calls {
            let _ = writeln!(
                out,
                "velox_builder_builds_total{{builder=\"{}\",status=\"{status}\"}} {n}",
                b.id
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP velox_builder_failovers_total Builds moved to another builder after one failed to answer.\n\
         # TYPE velox_builder_failovers_total counter\n\
         velox_builder_failovers_total {failovers}"
    );
}
