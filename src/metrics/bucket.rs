//! Counters of bucket traffic (docs/metrics.md, "Object storage"): the bucket holds an `Arc` to
//! them and counts; [`super::Metrics::render`] renders them, every label at 0 from the start.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A kind of bucket request (the `op` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketOp {
    ManifestGet,
    ManifestPut,
    ManifestDelete,
    BlobHead,
    BlobGet,
    BlobPut,
    BlobDelete,
    LockPut,
    LockGet,
    LockDelete,
    Presign,
    TombstonePut,
    TombstoneList,
    ChannelGet,
    ChannelPut,
    ChannelDelete,
    ChannelList,
    TrustGet,
    TrustPut,
    TrustDelete,
    AuthGet,
    AuthPut,
}

impl BucketOp {
    pub const ALL: [BucketOp; 22] = [
        BucketOp::ManifestGet,
        BucketOp::ManifestPut,
        BucketOp::ManifestDelete,
        BucketOp::BlobHead,
        BucketOp::BlobGet,
        BucketOp::BlobPut,
        BucketOp::BlobDelete,
        BucketOp::LockPut,
        BucketOp::LockGet,
        BucketOp::LockDelete,
        BucketOp::Presign,
        BucketOp::TombstonePut,
        BucketOp::TombstoneList,
        BucketOp::ChannelGet,
        BucketOp::ChannelPut,
        BucketOp::ChannelDelete,
        BucketOp::ChannelList,
        BucketOp::TrustGet,
        BucketOp::TrustPut,
        BucketOp::TrustDelete,
        BucketOp::AuthGet,
        BucketOp::AuthPut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BucketOp::ManifestGet => "manifest_get",
            BucketOp::ManifestPut => "manifest_put",
            BucketOp::ManifestDelete => "manifest_delete",
            BucketOp::BlobHead => "blob_head",
            BucketOp::BlobGet => "blob_get",
            BucketOp::BlobPut => "blob_put",
            BucketOp::BlobDelete => "blob_delete",
            BucketOp::LockPut => "lock_put",
            BucketOp::LockGet => "lock_get",
            BucketOp::LockDelete => "lock_delete",
            BucketOp::Presign => "presign",
            BucketOp::TombstonePut => "tombstone_put",
            BucketOp::TombstoneList => "tombstone_list",
            BucketOp::ChannelGet => "channel_get",
            BucketOp::ChannelPut => "channel_put",
            BucketOp::ChannelDelete => "channel_delete",
            BucketOp::ChannelList => "channel_list",
            BucketOp::TrustGet => "trust_get",
            BucketOp::TrustPut => "trust_put",
            BucketOp::TrustDelete => "trust_delete",
            BucketOp::AuthGet => "auth_get",
            BucketOp::AuthPut => "auth_put",
        }
    }

    fn index(self) -> usize {
        BucketOp::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

#[derive(Default)]
pub struct BucketCounters {
    requests: [AtomicU64; BucketOp::ALL.len()],
    errors: [AtomicU64; BucketOp::ALL.len()],
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    /// Blobs uploaded in parts.
    pub multipart: AtomicU64,
    /// Builds that found another replica's live lock and waited for its manifest.
    pub lock_waits: AtomicU64,
    /// Expired locks taken over.
    pub lock_takeovers: AtomicU64,
    /// Blobs brought from the bucket into the local tier.
    pub fills: AtomicU64,
    /// Blobs in the bucket that did not hash to their name.
    pub corrupt: AtomicU64,
    /// Local entries removed because another replica deleted their key (a tombstone).
    pub tombstones_applied: AtomicU64,
}

impl BucketCounters {
    pub fn request(&self, op: BucketOp) {
        self.requests[op.index()].fetch_add(1, Relaxed);
    }

    pub fn error(&self, op: BucketOp) {
        self.errors[op.index()].fetch_add(1, Relaxed);
    }

    pub fn read(&self, n: usize) {
        self.read_bytes.fetch_add(n as u64, Relaxed);
    }

    pub fn written(&self, n: usize) {
        self.written_bytes.fetch_add(n as u64, Relaxed);
    }

    /// The Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        values: &[AtomicU64; BucketOp::ALL.len()]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (op, v) in BucketOp::ALL.iter().zip(values) {
                let _ = writeln!(out, "{name}{{op=\"{}\"}} {}", op.as_str(), v.load(Relaxed));
            }
        };
        labelled(
            out,
            "velox_bucket_requests_total",
            "Requests to the bucket, by operation.",
            &self.requests,
        );
        labelled(
            out,
            "velox_bucket_errors_total",
            "Bucket requests that failed or went unanswered, by operation.",
            &self.errors,
        );
        for (name, help, v) in [
            (
                "velox_bucket_read_bytes_total",
                "Bytes downloaded from the bucket.",
                &self.read_bytes,
            ),
            (
                "velox_bucket_written_bytes_total",
                "Bytes uploaded to the bucket.",
                &self.written_bytes,
            ),
            (
                "velox_bucket_multipart_uploads_total",
                "Blobs uploaded in parts.",
                &self.multipart,
            ),
            (
                "velox_bucket_lock_waits_total",
                "Builds that waited for another replica's build of the same key.",
                &self.lock_waits,
            ),
            (
                "velox_bucket_lock_takeovers_total",
                "Expired build locks taken over from another replica.",
                &self.lock_takeovers,
            ),
            (
                "velox_bucket_fills_total",
                "Blobs copied from the bucket into the local tier.",
                &self.fills,
            ),
            (
                "velox_bucket_corrupt_total",
                "Blobs in the bucket that did not hash to their name.",
                &self.corrupt,
            ),
            (
                "velox_bucket_tombstones_applied_total",
                "Local entries removed because a replica deleted their key.",
                &self.tombstones_applied,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}
