//! `[oci]` (docs/images.md): how the registry answers a tag whose release does not exist yet.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OciConfig {
    /// How long a manifest request for `latest` of a channel without a release waits for its
    /// first release before a 404 saying the build is under way.
    #[serde(with = "duration")]
    pub build_wait: Duration,
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            build_wait: Duration::from_secs(50),
        }
    }
}
