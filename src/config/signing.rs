//! `[signing]` (docs/signing.md): the Ed25519 key, in minisign's formats, that signs every binary
//! served, its provenance and nothing else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lenient::lenient_opt_path;

/// Default of `signing.builder_id`: the SLSA builder id of provenance statements.
pub const BUILDER_ID: &str = "urn:velox-cache:builder";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// An unencrypted minisign secret key (`minisign -G -W`, or `velox-cache keygen`); without
    /// it, one is made at the first start in `<data_dir>/signing/` (not with a bucket).
    #[serde(
        deserialize_with = "lenient_opt_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub key_file: Option<PathBuf>,
    /// Retired public keys (a `.pub` file's text or its base64 line), listed so that signatures
    /// made with them can still be checked.
    pub previous_public_keys: Vec<String>,
    /// `builder.id` of provenance statements: a URI naming this deployment.
    pub builder_id: String,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            key_file: None,
            previous_public_keys: Vec::new(),
            builder_id: BUILDER_ID.into(),
        }
    }
}

impl SigningConfig {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let b = &self.builder_id;
        if b.is_empty()
            || !b.contains(':')
            || b.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err((
                "signing.builder_id".into(),
                "must be a URI (such as https://ci.example.com/velox-cache or urn:velox-cache:prod)"
                    .into(),
            ));
        }
        if self.previous_public_keys.len() > 64 {
            return Err((
                "signing.previous_public_keys".into(),
                "at most 64 keys".into(),
            ));
        }
        Ok(())
    }
}
