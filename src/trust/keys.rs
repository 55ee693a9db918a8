//! The signing key (SPEC §18): an Ed25519 key pair kept in minisign's file formats.
//!
//! One key makes two kinds of signature: minisign's `.minisig` files (prehashed `ED`, made by the
//! `minisign` crate, randomized: make one per artifact and store it) and raw Ed25519 signatures
//! for DSSE envelopes (made by `ring`, deterministic). Both verify with the same public key, the
//! 32 bytes inside the minisign `.pub` file.
//!
//! Loading never prompts: an encrypted secret key is refused before the `minisign` crate sees it
//! (its password path reads the terminal), and signature text is never fed to `From<String>`,
//! which panics on bad input.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

/// minisign's algorithm tag for an Ed25519 key (and for a signature over the raw file).
const SIG_ALG: [u8; 2] = *b"Ed";
/// The key derivation tag of a key that is not encrypted.
const KDF_NONE: [u8; 2] = [0, 0];
/// The key derivation tag of a password-protected key (scrypt).
const KDF_SCRYPT: [u8; 2] = *b"Sc";
/// A decoded secret key: alg, kdf alg, checksum alg (2 each), salt (32), opslimit and memlimit
/// (8 each), key id (8), Ed25519 secret key (seed 32 + public 32), checksum (32).
const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const SECRET_KEYNUM_AT: usize = 2 + 2 + 2 + 32 + 8 + 8;
const SECRET_SEED_AT: usize = SECRET_KEYNUM_AT + 8;
/// A decoded public key: alg (2), key id (8), Ed25519 public key (32).
const PUBLIC_KEY_LEN: usize = 2 + 8 + 32;
const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
/// Debian's minisign reads a trusted comment line into an 8 KiB buffer (prefix and newline
/// included); a longer one would make a signature file it refuses.
pub const TRUSTED_COMMENT_MAX: usize = 8192 - 1 - "trusted comment: ".len() - 1;

/// The server's signing key: a minisign secret key and the same key for `ring`.
pub struct SigningKey {
    minisign: minisign::SecretKey,
    ring: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `minisign::SecretKey`'s own Debug prints the secret bytes: never delegate to it.
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An unencrypted minisign secret key file (`minisign -G -W`). Errors say what is wrong
    /// (missing, unreadable, encrypted, not a minisign key) and never prompt for a password.
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let shown = path.display();
        let bytes = fs::read(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!("signing key {shown}: no such file"),
            io::ErrorKind::PermissionDenied => {
                format!("signing key {shown}: not readable by this process (permission denied)")
            }
            _ => format!("signing key {shown}: cannot be read: {e}"),
        })?;
        Self::from_file_text(&bytes).map_err(|why| format!("signing key {shown}: {why}"))
    }

    /// The text of a minisign secret key file, checked by hand before the `minisign` crate sees
    /// it, so that nothing in it can make the crate prompt or panic.
    fn from_file_text(bytes: &[u8]) -> Result<SigningKey, String> {
        const NOT_A_KEY: &str = "not a minisign secret key";
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{NOT_A_KEY} (not text)"))?;
        let mut lines = text.lines();
        let comment = lines.next().unwrap_or_default();
        if !comment.starts_with(UNTRUSTED_PREFIX) {
            return Err(format!(
                "{NOT_A_KEY} (its first line must start with \"{UNTRUSTED_PREFIX}\")"
            ));
        }
        let line = lines.next().unwrap_or_default().trim();
        let raw = B64
            .decode(line)
            .map_err(|_| format!("{NOT_A_KEY} (its second line is not base64)"))?;
        if raw.len() != SECRET_KEY_LEN {
            // A public key file has the same two-line shape: say so, it is an easy mix-up.
            let hint = if raw.len() == PUBLIC_KEY_LEN {
                "; this looks like a public key"
            } else {
                ""
            };
            return Err(format!(
                "{NOT_A_KEY} ({} bytes where a secret key has {SECRET_KEY_LEN}{hint})",
                raw.len()
            ));
        }
        if raw[0..2] != SIG_ALG {
            return Err(format!("{NOT_A_KEY} (unknown signature algorithm)"));
        }
        match [raw[2], raw[3]] {
            KDF_NONE => {}
            KDF_SCRYPT => {
                return Err(
                    "the key is encrypted with a password; velox-cache needs an \
                            unencrypted key (make one with `minisign -G -W` or `velox-cache \
                            keygen`, or remove the password with `minisign -C -W`)"
                        .to_string(),
                )
            }
            _ => return Err(format!("{NOT_A_KEY} (unknown key encryption)")),
        }
        let minisign = if raw[SECRET_KEY_LEN - 32..].iter().all(|&b| b == 0) {
            // Debian's minisign 0.11 writes `-G -W` keys with an all-zero checksum, which the
            // crate reads as "Corrupted key". `from_minisign` still checks that the secret and
            // public halves belong together, which catches damage to either.
            minisign::SecretKey::from_bytes(&raw)
        } else {
            minisign::SecretKeyBox::from_string(text).and_then(|b| b.into_unencrypted_secret_key())
        }
        .map_err(|e| format!("{NOT_A_KEY} ({e})"))?;
        Self::from_minisign(minisign).map_err(|why| format!("{NOT_A_KEY} ({why})"))
    }

    fn from_minisign(minisign: minisign::SecretKey) -> Result<SigningKey, String> {
        let raw = minisign.to_bytes();
        let (Some(keynum), Some(seed), Some(pk)) = (
            raw.get(SECRET_KEYNUM_AT..SECRET_SEED_AT),
            raw.get(SECRET_SEED_AT..SECRET_SEED_AT + 32),
            raw.get(SECRET_SEED_AT + 32..SECRET_SEED_AT + 64),
        ) else {
            return Err("the secret key is too short".to_string());
        };
        // Checks that the public half stored in the key belongs to the seed.
        let ring = Ed25519KeyPair::from_seed_and_public_key(seed, pk)
            .map_err(|_| "the secret key's public half does not match its secret".to_string())?;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(keynum);
        let mut key = [0u8; 32];
        key.copy_from_slice(ring.public_key().as_ref());
        Ok(SigningKey {
            minisign,
            ring,
            public: PublicKey { key_id, key },
        })
    }

    /// A new random key pair (minisign's generator: random seed and random key id).
    pub fn generate() -> Result<SigningKey, String> {
        let pair = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|e| format!("cannot generate a signing key: {e}"))?;
        Self::from_minisign(pair.sk)
    }

    /// Writes the secret key (mode 0600, created new, never overwriting) and the public key file.
    ///
    /// The public key file is created new too; if it cannot be, the secret key just written is
    /// removed again, so a failed call leaves no half pair behind.
    pub fn write(&self, secret: &Path, public: &Path) -> Result<(), String> {
        let text = self
            .minisign
            .to_box(Some(&format!(
                "velox-cache secret key {} (unencrypted)",
                self.key_id()
            )))
            .map_err(|e| format!("cannot encode the secret key: {e}"))?
            .into_string();
        create_new(secret, text.as_bytes(), 0o600)
            .map_err(|e| format!("secret key {}: {e}", secret.display()))?;
        if let Err(e) = create_new(public, self.public.file().as_bytes(), 0o644) {
            let _ = fs::remove_file(secret);
            return Err(format!("public key {}: {e}", public.display()));
        }
        Ok(())
    }

    /// Up to 16 hex digits, as minisign shows the key id.
    pub fn key_id(&self) -> String {
        self.public.key_id()
    }

    pub fn public(&self) -> PublicKey {
        self.public.clone()
    }

    /// The `.minisig` file text: prehashed `ED` signature of everything `data` yields, with
    /// `trusted_comment` (refused if it holds a newline or CR) and an untrusted comment.
    pub fn sign_minisig(&self, data: impl Read, trusted_comment: &str) -> Result<String, String> {
        if trusted_comment.contains(['\n', '\r']) {
            return Err("a trusted comment must be one line (no newline or CR)".to_string());
        }
        if trusted_comment.len() > TRUSTED_COMMENT_MAX {
            return Err(format!(
                "a trusted comment must be at most {TRUSTED_COMMENT_MAX} bytes, not {}",
                trusted_comment.len()
            ));
        }
        let untrusted = format!("signature from velox-cache key {}", self.key_id());
        let pk = minisign::PublicKey::from_bytes(&self.public.bytes())
            .map_err(|e| format!("cannot sign: {e}"))?;
        // With the public key given, the crate checks the signature it made before returning it.
        let sig = minisign::sign(
            Some(&pk),
            &self.minisign,
            data,
            Some(trusted_comment),
            Some(&untrusted),
        )
        .map_err(|e| format!("cannot sign: {e}"))?;
        Ok(sig.into_string())
    }

    /// Raw Ed25519 signature of `message` (for DSSE), deterministic (ring), with the same key.
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        self.ring.sign(message).as_ref().to_vec()
    }
}

/// Creates `path` (failing if it exists) with `mode`, writes `bytes` and syncs them to disk.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(e.kind(), "already exists; it is never overwritten")
        } else {
            e
        }
    })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// A minisign public key: its key id and the 32 bytes of the Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// As stored in the files: little-endian.
    key_id: [u8; 8],
    key: [u8; 32],
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("key_id", &self.key_id())
            .field("base64", &self.base64())
            .finish()
    }
}

impl PublicKey {
    /// The `.pub` file's text, or just its base64 line.
    pub fn parse(s: &str) -> Result<PublicKey, String> {
        const NOT_A_KEY: &str = "not a minisign public key";
        let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or(format!("{NOT_A_KEY} (empty)"))?;
        let line = if first.starts_with(UNTRUSTED_PREFIX) {
            lines
                .next()
                .ok_or(format!("{NOT_A_KEY} (no key after the comment line)"))?
        } else {
            first
        };
        if lines.next().is_some() {
            return Err(format!("{NOT_A_KEY} (more lines than a .pub file has)"));
        }
        let raw = B64
            .decode(line)
            .map_err(|_| format!("{NOT_A_KEY} (the key line is not base64)"))?;
        if raw.len() != PUBLIC_KEY_LEN {
            return Err(format!(
                "{NOT_A_KEY} ({} bytes where a public key has {PUBLIC_KEY_LEN})",
                raw.len()
            ));
        }
        if raw[0..2] != SIG_ALG {
            return Err(format!("{NOT_A_KEY} (unknown signature algorithm)"));
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[2..10]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[10..42]);
        Ok(PublicKey { key_id, key })
    }

    /// Upper-case hex digits of the little-endian key id as a number, exactly as minisign
    /// prints it (`%PRIX64`: no leading zeros, so an id may be shorter than 16 digits).
    pub fn key_id(&self) -> String {
        format!("{:X}", u64::from_le_bytes(self.key_id))
    }

    /// "Ed", the key id and the key: the bytes behind the base64 line.
    fn bytes(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(PUBLIC_KEY_LEN);
        raw.extend_from_slice(&SIG_ALG);
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(&self.key);
        raw
    }

    /// The base64 line of minisign's .pub file.
    pub fn base64(&self) -> String {
        B64.encode(self.bytes())
    }

    /// The whole .pub file text, as `minisign -G` writes it.
    pub fn file(&self) -> String {
        format!(
            "{UNTRUSTED_PREFIX}minisign public key {}\n{}\n",
            self.key_id(),
            self.base64()
        )
    }

    /// The 32 bytes of the Ed25519 public key.
    pub fn ed25519(&self) -> [u8; 32] {
        self.key
    }

    /// The trusted comment of a `.minisig` text made with this key, when its key id is this
    /// key's and its global signature (over the signature and the trusted comment) verifies.
    /// This checks what a signature says without the signed bytes: a signature read back from
    /// shared storage must be this key's before it is served.
    pub fn minisig_comment(&self, text: &str) -> Option<String> {
        let mut lines = text.lines();
        let _untrusted = lines.next()?.strip_prefix(UNTRUSTED_PREFIX)?;
        let sig = B64.decode(lines.next()?.trim()).ok()?;
        let comment = lines.next()?.strip_prefix("trusted comment: ")?;
        let global = B64.decode(lines.next()?.trim()).ok()?;
        // "ED" (prehashed), the key id, the 64 bytes of the signature.
        if sig.len() != 2 + 8 + 64 || sig[0..2] != *b"ED" || sig[2..10] != self.key_id {
            return None;
        }
        let mut signed = sig[10..].to_vec();
        signed.extend_from_slice(comment.as_bytes());
        self.verify_raw(&signed, &global)
            .then(|| comment.to_string())
    }

    /// Whether `signature` is this key's raw Ed25519 signature of `message` (for tests and rotation).
    pub fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.key)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signatures_comment_is_read_only_for_its_own_key_and_unchanged() {
        let key = SigningKey::generate().expect("generate");
        let other = SigningKey::generate().expect("generate");
        let text = key
            .sign_minisig(&b"bytes"[..], "timestamp:1\tsha256:ab")
            .expect("sign");
        assert_eq!(
            key.public().minisig_comment(&text).as_deref(),
            Some("timestamp:1\tsha256:ab")
        );
        assert_eq!(other.public().minisig_comment(&text), None);
        // The trusted comment edited: its global signature no longer verifies.
        let edited = text.replace("sha256:ab", "sha256:cd");
        assert_eq!(key.public().minisig_comment(&edited), None);
        assert_eq!(key.public().minisig_comment("not a signature"), None);
        assert_eq!(key.public().minisig_comment(""), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::generate().expect("generate");
        let shown = format!("{key:?}");
        assert!(shown.contains(&key.key_id()), "{shown}");
        let raw = key.minisign.to_bytes();
        let seed = &raw[SECRET_SEED_AT..SECRET_SEED_AT + 32];
        for form in [hex::encode(seed), B64.encode(seed), format!("{seed:?}")] {
            assert!(!shown.contains(&form), "{shown}");
        }
        assert!(shown.len() < 80, "{shown}");
    }

    #[test]
    fn public_key_round_trips_through_both_forms() {
        let key = SigningKey::generate().expect("generate");
        let public = key.public();
        assert_eq!(PublicKey::parse(&public.file()), Ok(public.clone()));
        assert_eq!(PublicKey::parse(&public.base64()), Ok(public.clone()));
        assert!((1..=16).contains(&public.key_id().len()));
        assert!(public.key_id().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(public.file().contains(&public.key_id()));
    }

    #[test]
    fn key_id_has_no_leading_zeros_like_minisign_prints_it() {
        // CI once made a key whose id began with a zero nibble: minisign wrote
        // "015D22B59064D5CB" as "15D22B59064D5CB" (printf's %PRIX64, no padding).
        let public = PublicKey {
            key_id: 0x015D_22B5_9064_D5CB_u64.to_le_bytes(),
            key: [7; 32],
        };
        assert_eq!(public.key_id(), "15D22B59064D5CB");
        assert!(public
            .file()
            .starts_with("untrusted comment: minisign public key 15D22B59064D5CB\n"));
    }

    #[test]
    fn public_key_parse_refuses_what_is_not_one() {
        let key = SigningKey::generate().expect("generate");
        let good = key.public().base64();
        let mut wrong_alg = B64.decode(&good).expect("b64");
        wrong_alg[1] = b'X';
        for (input, why) in [
            ("", "empty"),
            ("untrusted comment: x\n", "no key after"),
            ("not base64 !!", "not base64"),
            ("RWQ=", "bytes where"),
            (&B64.encode(wrong_alg), "algorithm"),
            (&format!("{good}\n{good}"), "more lines"),
        ] {
            let err = PublicKey::parse(input).expect_err(input);
            assert!(err.contains("not a minisign public key"), "{err}");
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }

    #[test]
    fn trusted_comment_with_a_line_break_or_too_long_is_refused() {
        let key = SigningKey::generate().expect("generate");
        for bad in ["a\nb", "a\rb", "end\n"] {
            let err = key.sign_minisig(&b"x"[..], bad).expect_err(bad);
            assert!(err.contains("one line"), "{err}");
        }
        let long = "x".repeat(TRUSTED_COMMENT_MAX + 1);
        let err = key.sign_minisig(&b"x"[..], &long).expect_err("long");
        assert!(err.contains("at most"), "{err}");
        assert!(key
            .sign_minisig(&b"x"[..], &"x".repeat(TRUSTED_COMMENT_MAX))
            .is_ok());
    }

    #[test]
    fn raw_signatures_are_deterministic_and_verify() {
        let key = SigningKey::generate().expect("generate");
        let a = key.sign_raw(b"message");
        assert_eq!(a, key.sign_raw(b"message"));
        assert_eq!(a.len(), 64);
        assert!(key.public().verify_raw(b"message", &a));
        assert!(!key.public().verify_raw(b"messagE", &a));
        assert!(!key.public().verify_raw(b"message", &a[..63]));
    }

    #[test]
    fn a_read_error_from_the_data_is_an_error_not_a_signature() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        let key = SigningKey::generate().expect("generate");
        let err = key.sign_minisig(Failing, "c").expect_err("must fail");
        assert!(err.contains("disk gone"), "{err}");
    }
}
