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
            dir: config.data_dir.join(crate::store::SIDECAR_DIR),
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

    /// The signature kept for `digest`, if any.
    pub fn kept_signature(&self, digest: &Digest) -> io::Result<Option<String>> {
        match fs::read_to_string(self.signature_path(digest)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Signs everything `data` yields as the blob `what.digest`, checking as it reads that the
    /// bytes hash to that digest (a damaged file is never signed: `InvalidData`). `None` when
    /// signing is off. Blocks.
    pub fn make_signature(
        &self,
        data: impl io::Read,
        what: &Signed<'_>,
    ) -> io::Result<Option<String>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let mut reader = HashingReader {
            inner: data,
            hasher: sha2::Sha256::default(),
        };
        let text = key
            .sign_minisig(&mut reader, &trusted_comment(what))
            .map_err(io::Error::other)?;
        let read = Digest(sha2::Digest::finalize(reader.hasher).into());
        if read != *what.digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the bytes read hash to {read}, not to {}: not signed",
                    what.digest
                ),
            ));
        }
        Ok(Some(text))
    }

    /// Keeps `text` as the signature of `digest` unless one is kept already; the one kept.
    pub fn keep_signature(&self, digest: &Digest, text: &str) -> io::Result<String> {
        let kept = keep_first(&self.signature_path(digest), text.as_bytes())?;
        String::from_utf8(kept).map_err(io::Error::other)
    }

    /// The signature of the blob at `blob` (whose digest is `what.digest`): the one kept, or made
    /// now from the file and kept. `None` when signing is off. Blocks (reads the whole blob the
    /// first time): run it on the blocking pool.
    pub fn signature(&self, blob: &Path, what: &Signed<'_>) -> io::Result<Option<String>> {
        if self.key.is_none() {
            return Ok(None);
        }
        if let Some(text) = self.kept_signature(what.digest)? {
            return Ok(Some(text));
        }
        let file = fs::File::open(blob)?;
        match self.make_signature(io::BufReader::with_capacity(1 << 20, file), what)? {
            Some(text) => self.keep_signature(what.digest, &text).map(Some),
            None => Ok(None),
        }
    }

    /// Whether `text`, read from storage other replicas write, is a signature of `digest` made
    /// with the key in force or a previous one (its key id, its global signature and the digest
    /// its trusted comment names). Nothing else is served.
    pub fn accepts_signature(&self, digest: &Digest, text: &str) -> bool {
        let named = format!("\tsha256:{}", digest.to_hex());
        self.known_keys()
            .filter_map(|k| k.minisig_comment(text))
            .any(|comment| comment.contains(&named))
    }

    /// Whether `bytes`, read from storage other replicas write, is a DSSE envelope of a statement
    /// about `digest`, signed with the key in force or a previous one.
    pub fn accepts_provenance(&self, digest: &Digest, bytes: &[u8]) -> bool {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let Ok(envelope) = serde_json::from_slice::<Value>(bytes) else {
            return false;
        };
        let (Some(kind), Some(payload)) = (
            envelope["payloadType"].as_str(),
            envelope["payload"]
                .as_str()
                .and_then(|p| b64.decode(p).ok()),
        ) else {
            return false;
        };
        let about = serde_json::from_slice::<Value>(&payload)
            .ok()
            .is_some_and(|st| {
                st["subject"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|s| s["digest"]["sha256"] == digest.to_hex().as_str())
                })
            });
        let pae = super::dsse::pae(kind, &payload);
        let signed = envelope["signatures"].as_array().is_some_and(|sigs| {
            sigs.iter().any(|sig| {
                let Some(sig) = sig["sig"].as_str().and_then(|s| b64.decode(s).ok()) else {
                    return false;
                };
                self.known_keys().any(|k| k.verify_raw(&pae, &sig))
            })
        });
        about && signed
    }

    /// The key in force, then the previous ones.
    fn known_keys(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.key
            .iter()
            .map(SigningKey::public)
            .chain(self.previous.iter().cloned())
    }
}

/// Hashes what it reads.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}

/// Writes `bytes` at `path` unless a file is there, atomically (written aside and linked into
/// place, which fails when one is there: a reader never sees half a file, and of two written at
/// once the first stays); the bytes kept at `path`.
fn keep_first(path: &Path, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a kept file's path has no folder"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    fs::write(&tmp, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(bytes.to_vec()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => fs::read(path),
        Err(e) => Err(e),
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
    pub fn record_provenance(
        &self,
        builder_id: &str,
        facts: &BuildFacts<'_>,
    ) -> io::Result<Option<Vec<u8>>> {
        use super::{dsse, provenance};
        let Some(key) = &self.key else {
            return Ok(None);
        };
        if let Some(kept) = self.provenance(facts.digest)? {
            return Ok(Some(kept));
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
        self.keep_provenance(facts.digest, &text).map(Some)
    }

    /// Keeps `bytes` as the provenance of `digest` unless one is kept already; the one kept.
    pub fn keep_provenance(&self, digest: &Digest, bytes: &[u8]) -> io::Result<Vec<u8>> {
        keep_first(&self.provenance_path(digest), bytes)
    }

    /// The kept provenance envelope of `digest`, if any.
    pub fn provenance(&self, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.provenance_path(digest)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
