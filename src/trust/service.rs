//! What the HTTP layer asks of trust (docs/signing.md): the key in force and the retired ones,
//! each binary's minisign signature (made once, kept in `<data_dir>/signatures/`), and the SBOM
//! read from the binary's Go build information.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::keys::{PublicKey, SigningKey};
use crate::config::Config;
use crate::ids::Digest;

/// The signing key and what it signed.
pub struct Trust {
    /// `None`: signing is off (replicas without `signing.key_file`).
    key: Option<SigningKey>,
    previous: Vec<PublicKey>,
    /// `<data_dir>/signatures`
    dir: PathBuf,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("key", &self.key.as_ref().map(SigningKey::key_id))
            .field("previous", &self.previous.len())
            .finish_non_exhaustive()
    }
}

/// What a signature is of: the trusted comment's fields.
pub struct Signed<'a> {
    pub digest: &'a Digest,
    pub file_name: &'a str,
    pub key: Option<&'a str>,
    pub rr_version: Option<&'a str>,
}

impl Trust {
    /// The key of `config`: `signing.key_file`; else the data dir's own, made at the first start
    /// (`<data_dir>/signing/minisign.key`, 0600); with a bucket and no key file, none (replicas
    /// must share one key, and a secret key never goes to the bucket). Errors name the key.
    pub fn open(config: &Config, shared: bool) -> Result<Trust, String> {
        let key = match &config.signing.key_file {
            Some(path) => Some(
                SigningKey::load(path)
                    .map_err(|why| format!("invalid value for `signing.key_file`: {why}"))?,
            ),
            None if shared => {
                log::warn!(
                    "signing is off: with a bucket, replicas must share one key; set signing.key_file (docs/signing.md)"
                );
                None
            }
            None => Some(own_key(&config.data_dir)?),
        };
        let previous = config
            .signing
            .previous_public_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                PublicKey::parse(k).map_err(|why| {
                    format!("invalid value for `signing.previous_public_keys[{i}]`: {why}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(k) = &key {
            log::info!("signing binaries with minisign key {}", k.key_id());
        }
        Ok(Trust {
            key,
            previous,
            dir: config.data_dir.join("signatures"),
        })
    }

    pub fn signing(&self) -> bool {
        self.key.is_some()
    }

    /// The public key file of the key in force.
    pub fn public_file(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.public().file())
    }

    /// `GET /_velox/v1/keys`
    pub fn keys_json(&self) -> Value {
        let show = |p: &PublicKey| json!({"id": p.key_id(), "minisign": p.base64()});
        json!({
            "current": self.key.as_ref().map(|k| show(&k.public())),
            "previous": self.previous.iter().map(show).collect::<Vec<_>>(),
        })
    }

    fn signature_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.minisig"))
    }

    /// The signature of the blob at `blob` (whose digest is `what.digest`): the one kept, or made
    /// now from the file and kept. `None` when signing is off. Blocks (reads the whole blob the
    /// first time): run it on the blocking pool.
    pub fn signature(&self, blob: &Path, what: &Signed<'_>) -> io::Result<Option<String>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let path = self.signature_path(what.digest);
        match fs::read_to_string(&path) {
            Ok(text) => return Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = fs::File::open(blob)?;
        let comment = trusted_comment(what);
        let text = key
            .sign_minisig(io::BufReader::with_capacity(1 << 20, file), &comment)
            .map_err(io::Error::other)?;
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("a signature path has no folder"))?;
        fs::create_dir_all(dir)?;
        // Written aside and linked into place, which fails when it is there: a reader never
        // sees half a signature, and of two that signed at once the first one kept is the one
        // every answer gives (the other returns it too).
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        fs::write(&tmp, &text)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::read_to_string(&path).map(Some)
            }
            Err(e) => Err(e),
        }
    }
}

/// The trusted comment: what minisign shows as verified beside the signature.
fn trusted_comment(what: &Signed<'_>) -> String {
    let clean = |s: &str| s.replace(['\r', '\n', '\t'], " ");
    let mut c = format!(
        "timestamp:{}\tfile:{}\tsha256:{}",
        crate::util::now_ms() / 1000,
        clean(what.file_name),
        what.digest.to_hex()
    );
    if let Some(k) = what.key {
        c.push_str(&format!("\tkey:{}", clean(k)));
    }
    if let Some(v) = what.rr_version {
        c.push_str(&format!("\trr_version:{}", clean(v)));
    }
    c
}

/// The data dir's own key: read, or made at the first start.
fn own_key(data_dir: &Path) -> Result<SigningKey, String> {
    let dir = data_dir.join("signing");
    let secret = dir.join("minisign.key");
    if secret.exists() {
        return SigningKey::load(&secret)
            .map_err(|why| format!("the data dir's signing key {}: {why}", secret.display()));
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
    }
    let key = SigningKey::generate()?;
    key.write(&secret, &dir.join("minisign.pub"))?;
    log::warn!(
        "made a signing key in {} (key id {}): keep it, and publish {}",
        secret.display(),
        key.key_id(),
        dir.join("minisign.pub").display()
    );
    Ok(key)
}

/// What a provenance statement is made of, as the build layer tells it.
pub struct BuildFacts<'a> {
    pub digest: &'a Digest,
    pub file_name: &'a str,
    /// The recipe as it was asked for (floating tags as asked).
    pub asked: Value,
    /// Module → version, for the floating tags that were resolved.
    pub resolved: Value,
    /// RoadRunner's version and each plugin's, resolved.
    pub rr_version: &'a str,
    pub plugins: Vec<(String, String)>,
    pub velox_server: &'a str,
    pub request_id: &'a str,
    pub started: std::time::SystemTime,
    pub finished: std::time::SystemTime,
}

/// RoadRunner's module path for `version`: Go's major-version suffix from v2 on.
fn roadrunner_module(version: &str) -> String {
    let major = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u64>().ok());
    match major {
        Some(m) if m >= 2 => format!("github.com/roadrunner-server/roadrunner/v{m}"),
        _ => "github.com/roadrunner-server/roadrunner".into(),
    }
}

impl Trust {
    fn provenance_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.dir
            .join(&hex[..2])
            .join(format!("{hex}.provenance.json"))
    }

    /// Makes, signs and keeps the provenance of a binary this replica built (a DSSE envelope of
    /// an in-toto Statement v1 with SLSA provenance v1, docs/provenance.md). The first one kept
    /// for a digest stays. Nothing when signing is off. Blocks.
    pub fn record_provenance(&self, builder_id: &str, facts: &BuildFacts<'_>) -> io::Result<()> {
        use super::{dsse, provenance};
        let Some(key) = &self.key else {
            return Ok(());
        };
        let path = self.provenance_path(facts.digest);
        if path.exists() {
            return Ok(());
        }
        let digest_hex = facts.digest.to_hex();
        let mut dependencies = vec![(
            provenance::purl_go(&roadrunner_module(facts.rr_version), facts.rr_version),
            None,
        )];
        dependencies.extend(
            facts
                .plugins
                .iter()
                .map(|(m, v)| (provenance::purl_go(m, v), None)),
        );
        let statement = provenance::statement(&provenance::Provenance {
            subject_name: facts.file_name,
            digest_hex: &digest_hex,
            build_type: provenance::BUILD_TYPE,
            external_parameters: facts.asked.clone(),
            internal_parameters: json!({"resolved": facts.resolved}),
            resolved_dependencies: dependencies,
            builder_id,
            builder_version: env!("CARGO_PKG_VERSION"),
            velox_server: facts.velox_server,
            invocation_id: facts.request_id,
            started_on: facts.started,
            finished_on: facts.finished,
        });
        let payload = serde_json::to_vec(&statement).map_err(io::Error::other)?;
        let envelope = dsse::envelope(dsse::IN_TOTO_PAYLOAD_TYPE, &payload, key);
        let text = serde_json::to_vec(&envelope).map_err(io::Error::other)?;
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("a provenance path has no folder"))?;
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        fs::write(&tmp, &text)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The kept provenance envelope of `digest`, if this replica built it.
    pub fn provenance(&self, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.provenance_path(digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
