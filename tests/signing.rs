//! The signing key, `.minisig` files and DSSE provenance envelopes (SPEC §18), checked by
//! verifiers that are not this project's code: Debian's `minisign` and Python's `cryptography`
//! (Ed25519), both installed by `scripts/test`. A missing verifier fails the test, never skips it.
//!
//! Minisign signatures are randomized, so no test compares a signature with a stored one: each
//! is verified.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;
use velox_cache::trust::dsse::{self, IN_TOTO_PAYLOAD_TYPE};
use velox_cache::trust::keys::{PublicKey, SigningKey, TRUSTED_COMMENT_MAX};
use velox_cache::trust::provenance::{self, purl_go, Provenance, BUILD_TYPE};

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e} (scripts/test installs minisign and python3)"))
}

fn minisign(args: &[&str]) -> Output {
    run(Command::new("minisign").args(args))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Bytes that look like a binary, not a run of zeros.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Signed {
    dir: TempDir,
    file: PathBuf,
    sig: PathBuf,
    public: PathBuf,
}

/// A file, its `.minisig` made by `sign_minisig` and the key's `.pub`, on disk.
fn signed(key: &SigningKey, comment: &str) -> Signed {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rr");
    fs::write(&file, payload(1 << 20)).expect("write file");
    let sig_text = key
        .sign_minisig(fs::File::open(&file).expect("open"), comment)
        .expect("sign");
    let sig = dir.path().join("rr.minisig");
    fs::write(&sig, sig_text).expect("write sig");
    let public = dir.path().join("minisign.pub");
    fs::write(&public, key.public().file()).expect("write pub");
    Signed {
        dir,
        file,
        sig,
        public,
    }
}

#[test]
fn a_minisig_verifies_with_debian_minisign_and_carries_the_trusted_comment() {
    let key = SigningKey::generate().expect("generate");
    let comment = "timestamp:1767225600\tfile:rr\tsha256:abc\tkey:def\trr_version:v2025.1.2";
    let f = signed(&key, comment);

    // -H: minisign refuses anything but a prehashed (`ED`) signature.
    let by_file = minisign(&[
        "-V",
        "-H",
        "-m",
        s(&f.file),
        "-x",
        s(&f.sig),
        "-p",
        s(&f.public),
    ]);
    assert!(by_file.status.success(), "{}", text(&by_file));
    assert!(
        String::from_utf8_lossy(&by_file.stdout).contains(&format!("Trusted comment: {comment}")),
        "{}",
        text(&by_file)
    );
    let b64 = key.public().base64();
    let by_key = minisign(&[
        "-V",
        "-H",
        "-Q",
        "-m",
        s(&f.file),
        "-x",
        s(&f.sig),
        "-P",
        &b64,
    ]);
    assert!(by_key.status.success(), "{}", text(&by_key));
    // -Q prints the trusted comment and nothing else.
    assert_eq!(
        String::from_utf8_lossy(&by_key.stdout),
        format!("{comment}\n")
    );

    let sig = fs::read_to_string(&f.sig).expect("read sig");
    let lines: Vec<&str> = sig.lines().collect();
    assert_eq!(lines.len(), 4, "{sig}");
    assert!(lines[0].starts_with("untrusted comment: "), "{sig}");
    assert_eq!(lines[2], format!("trusted comment: {comment}"));
    let sig_bytes = B64.decode(lines[1]).expect("signature line is base64");
    assert_eq!(&sig_bytes[..2], b"ED");
}

#[test]
fn a_flipped_byte_or_an_edited_trusted_comment_fails_verification() {
    let key = SigningKey::generate().expect("generate");
    let f = signed(&key, "file:rr");

    let mut bytes = fs::read(&f.file).expect("read");
    bytes[12_345] ^= 0x01;
    let flipped = f.dir.path().join("rr.flipped");
    fs::write(&flipped, &bytes).expect("write");
    let out = minisign(&["-V", "-m", s(&flipped), "-x", s(&f.sig), "-p", s(&f.public)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("verification failed"), "{}", text(&out));

    let sig = fs::read_to_string(&f.sig).expect("read sig");
    let forged = f.dir.path().join("forged.minisig");
    fs::write(&forged, sig.replace("file:rr", "file:rx")).expect("write");
    let out = minisign(&["-V", "-m", s(&f.file), "-x", s(&forged), "-p", s(&f.public)]);
    assert!(!out.status.success(), "{}", text(&out));

    // Still fine with the untouched file: the failures above are the edits'.
    let out = minisign(&["-V", "-m", s(&f.file), "-x", s(&f.sig), "-p", s(&f.public)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_longest_trusted_comment_allowed_still_verifies_with_minisign() {
    let key = SigningKey::generate().expect("generate");
    let comment = "c".repeat(TRUSTED_COMMENT_MAX);
    let f = signed(&key, &comment);
    let out = minisign(&[
        "-V",
        "-Q",
        "-m",
        s(&f.file),
        "-x",
        s(&f.sig),
        "-p",
        s(&f.public),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{comment}\n"));
}

/// A key pair made by the real `minisign -G -W`.
fn minisign_keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let (public, secret) = (dir.join("real.pub"), dir.join("real.key"));
    let out = minisign(&["-G", "-W", "-p", s(&public), "-s", s(&secret)]);
    assert!(out.status.success(), "{}", text(&out));
    (public, secret)
}

#[test]
fn a_key_made_by_minisign_loads_and_its_signatures_verify_with_its_own_pub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, secret) = minisign_keypair(dir.path());
    let key = SigningKey::load(&secret).expect("load a minisign -G -W key");

    let pub_text = fs::read_to_string(&public).expect("read pub");
    let theirs = PublicKey::parse(&pub_text).expect("parse minisign's .pub");
    assert_eq!(key.public(), theirs);
    assert_eq!(
        key.public().file(),
        pub_text,
        "the same .pub text as minisign writes"
    );
    assert!(pub_text.contains(&key.key_id()), "{pub_text}");

    let file = dir.path().join("rr");
    fs::write(&file, payload(100_000)).expect("write");
    let sig = dir.path().join("rr.minisig");
    let text_sig = key
        .sign_minisig(fs::File::open(&file).expect("open"), "made with a real key")
        .expect("sign");
    fs::write(&sig, text_sig).expect("write sig");
    let out = minisign(&["-V", "-H", "-m", s(&file), "-x", s(&sig), "-p", s(&public)]);
    assert!(out.status.success(), "{}", text(&out));

    // The raw (DSSE) signature is by the same key minisign's .pub names.
    assert!(theirs.verify_raw(b"m", &key.sign_raw(b"m")));
}

#[test]
fn a_written_key_pair_is_usable_by_minisign_and_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("generate");
    let (secret, public) = (dir.path().join("k.key"), dir.path().join("k.pub"));
    key.write(&secret, &public).expect("write");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&secret).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "secret key mode {mode:o}");
    }
    assert_eq!(
        fs::read_to_string(&public).expect("pub"),
        key.public().file()
    );
    let again = SigningKey::load(&secret).expect("load what was written");
    assert_eq!(again.public(), key.public());
    assert_eq!(again.sign_raw(b"x"), key.sign_raw(b"x"), "the same secret");

    // Debian's minisign signs with the written secret key; our public key verifies it.
    let file = dir.path().join("f");
    fs::write(&file, b"signed by minisign with our key").expect("write");
    let sig = dir.path().join("f.minisig");
    let out = minisign(&["-S", "-s", s(&secret), "-m", s(&file), "-x", s(&sig)]);
    assert!(out.status.success(), "{}", text(&out));
    let out = minisign(&["-V", "-m", s(&file), "-x", s(&sig), "-p", s(&public)]);
    assert!(out.status.success(), "{}", text(&out));

    // Never overwritten: both files stay as they were.
    let (secret_before, public_before) =
        (fs::read(&secret).expect("r"), fs::read(&public).expect("r"));
    let other = SigningKey::generate().expect("generate");
    let err = other.write(&secret, &public).expect_err("secret exists");
    assert!(err.contains("already exists"), "{err}");
    assert!(err.contains("k.key"), "{err}");
    assert_eq!(fs::read(&secret).expect("r"), secret_before);
    assert_eq!(fs::read(&public).expect("r"), public_before);

    // A public key file in the way: refused, and no lone secret key is left behind.
    let lone = dir.path().join("new.key");
    let err = other.write(&lone, &public).expect_err("public exists");
    assert!(
        err.contains("public key") && err.contains("already exists"),
        "{err}"
    );
    assert!(
        !lone.exists(),
        "the secret key written first is removed again"
    );
    assert_eq!(fs::read(&public).expect("r"), public_before);

    // A folder that does not exist: a clear error naming the path.
    let err = other
        .write(
            &dir.path().join("no/such.key"),
            &dir.path().join("no/such.pub"),
        )
        .expect_err("no folder");
    assert!(err.contains("such.key"), "{err}");
}

#[test]
fn an_encrypted_key_is_refused_without_a_prompt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, secret) = (dir.path().join("enc.pub"), dir.path().join("enc.key"));
    // minisign reads the password twice from stdin when it is not a terminal.
    let mut child = Command::new("minisign")
        .args(["-G", "-p", s(&public), "-s", s(&secret)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("minisign (scripts/test installs it)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"correct horse\ncorrect horse\n")
            .expect("password");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    let raw = fs::read_to_string(&secret).expect("read");
    let line = raw.lines().nth(1).expect("key line");
    assert_eq!(
        &B64.decode(line).expect("b64")[2..4],
        b"Sc",
        "minisign made an encrypted key"
    );

    // `load` returns at once; the crate's password path would read the terminal.
    let err = SigningKey::load(&secret).expect_err("encrypted");
    assert!(err.contains("encrypted with a password"), "{err}");
    assert!(err.contains("minisign -G -W"), "{err}");
    assert!(err.contains("enc.key"), "{err}");
}

#[test]
fn a_key_file_that_is_missing_unreadable_or_not_a_key_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (public, secret) = minisign_keypair(dir.path());

    let err = SigningKey::load(&dir.path().join("absent.key")).expect_err("missing");
    assert!(
        err.contains("absent.key") && err.contains("no such file"),
        "{err}"
    );

    // A folder cannot be read as a file (a permission test would pass as root).
    let err = SigningKey::load(dir.path()).expect_err("a folder");
    assert!(err.contains("cannot be read"), "{err}");

    let err = SigningKey::load(&public).expect_err("a public key");
    assert!(err.contains("looks like a public key"), "{err}");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.key", Vec::new(), "first line"),
        ("text.key", b"hello\nworld\n".to_vec(), "first line"),
        ("binary.key", vec![0xff, 0xfe, 0x00], "not text"),
        (
            "b64.key",
            b"untrusted comment: x\n!!!\n".to_vec(),
            "not base64",
        ),
    ];
    for (name, bytes, why) in cases {
        let path = dir.path().join(name);
        fs::write(&path, bytes).expect("write");
        let err = SigningKey::load(&path).expect_err(name);
        assert!(err.contains("not a minisign secret key"), "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }

    // A damaged key: the checksum catches it.
    let raw = fs::read_to_string(&secret).expect("read");
    let mut lines: Vec<String> = raw.lines().map(String::from).collect();
    let mut bytes = B64.decode(&lines[1]).expect("b64");
    bytes[70] ^= 0x01; // inside the Ed25519 secret
    lines[1] = B64.encode(&bytes);
    let damaged = dir.path().join("damaged.key");
    fs::write(&damaged, lines.join("\n")).expect("write");
    let err = SigningKey::load(&damaged).expect_err("damaged");
    assert!(err.contains("not a minisign secret key"), "{err}");

    // The same key marked as encrypted by hand: refused as encrypted, not as damaged.
    bytes[70] ^= 0x01;
    bytes[2..4].copy_from_slice(b"Sc");
    lines[1] = B64.encode(&bytes);
    let marked = dir.path().join("marked.key");
    fs::write(&marked, lines.join("\n")).expect("write");
    let err = SigningKey::load(&marked).expect_err("marked encrypted");
    assert!(err.contains("encrypted with a password"), "{err}");

    // A key written by velox-cache carries a real checksum: a damaged key id is caught too.
    let ours = SigningKey::generate().expect("generate");
    let (ours_key, ours_pub) = (dir.path().join("ours.key"), dir.path().join("ours.pub"));
    ours.write(&ours_key, &ours_pub).expect("write");
    let raw = fs::read_to_string(&ours_key).expect("read");
    let mut lines: Vec<String> = raw.lines().map(String::from).collect();
    let mut bytes = B64.decode(&lines[1]).expect("b64");
    bytes[55] ^= 0x01; // inside the key id
    lines[1] = B64.encode(&bytes);
    fs::write(&ours_key, lines.join("\n")).expect("write");
    let err = SigningKey::load(&ours_key).expect_err("damaged key id");
    assert!(err.contains("Corrupted key"), "{err}");

    // None of this touched the good key.
    SigningKey::load(&secret).expect("the good key still loads");
}

#[test]
fn rotation_an_old_keys_signatures_verify_with_its_public_key_after_a_new_one() {
    // Only the old key's .pub text outlives this block, as it does in `previous_public_keys`.
    let (f, raw, old_public) = {
        let old = SigningKey::generate().expect("old");
        let f = signed(&old, "before rotation");
        let raw = old.sign_raw(b"statement");
        let public = PublicKey::parse(&old.public().file()).expect("kept .pub");
        (f, raw, public)
    };

    let new = SigningKey::generate().expect("new");
    assert_ne!(new.key_id(), old_public.key_id());
    assert!(old_public.verify_raw(b"statement", &raw));
    assert!(!new.public().verify_raw(b"statement", &raw));

    let out = minisign(&["-V", "-m", s(&f.file), "-x", s(&f.sig), "-p", s(&f.public)]);
    assert!(out.status.success(), "{}", text(&out));
    let out = minisign(&[
        "-V",
        "-m",
        s(&f.file),
        "-x",
        s(&f.sig),
        "-P",
        &new.public().base64(),
    ]);
    assert!(
        !out.status.success(),
        "the new key does not verify the old signature"
    );
}

fn sample() -> Provenance<'static> {
    Provenance {
        subject_name: "roadrunner-linux-amd64",
        digest_hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        build_type: BUILD_TYPE,
        external_parameters: json!({"rr_version": "v2025.1", "plugins": [{"name": "http"}]}),
        internal_parameters: json!({"rr_version": "v2025.1.2", "plugins": {"http": "v5.0.3"}}),
        resolved_dependencies: vec![
            (
                purl_go("github.com/roadrunner-server/roadrunner/v2025", "v2025.1.2"),
                Some("h1:Khu2En+0gcYPZ2kuIihfswbzxv/mIHXgzPZ018Oty48=".to_string()),
            ),
            (
                purl_go("github.com/roadrunner-server/http/v5", "v5.0.3"),
                None,
            ),
        ],
        builder_id: "https://cache.example.com/velox-cache",
        builder_version: "0.1.0",
        velox_server: "https://ci:s3cret@velox.internal:9000",
        invocation_id: "req-7f3a",
        started_on: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        finished_on: UNIX_EPOCH + Duration::from_secs(1_767_225_661),
    }
}

#[test]
fn the_statement_has_every_field_of_in_toto_v1_and_slsa_provenance_v1() {
    let st = provenance::statement(&sample());
    assert_eq!(
        st,
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{
                "name": "roadrunner-linux-amd64",
                "digest": {"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}
            }],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": {"rr_version": "v2025.1", "plugins": [{"name": "http"}]},
                    "internalParameters": {"rr_version": "v2025.1.2", "plugins": {"http": "v5.0.3"}},
                    "resolvedDependencies": [
                        {
                            "uri": "pkg:golang/github.com/roadrunner-server/roadrunner/v2025@v2025.1.2",
                            "digest": {"dirHash": "2a1bb6127fb481c60f67692e22285fb306f3c6ffe62075e0ccf674d7c3adcb8f"}
                        },
                        {"uri": "pkg:golang/github.com/roadrunner-server/http/v5@v5.0.3"}
                    ]
                },
                "runDetails": {
                    "builder": {
                        "id": "https://cache.example.com/velox-cache",
                        "version": {"velox-cache": "0.1.0"},
                        "builderDependencies": [
                            {"name": "velox", "uri": "https://***:***@velox.internal:9000"}
                        ]
                    },
                    "metadata": {
                        "invocationId": "req-7f3a",
                        "startedOn": "2026-01-01T00:00:00Z",
                        "finishedOn": "2026-01-01T00:01:01Z"
                    }
                }
            }
        })
    );
    assert!(!st.to_string().contains("s3cret"));
}

const PYTHON_VERIFIER: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.exceptions import InvalidSignature

env = json.load(open(sys.argv[1]))
pub_lines = [l for l in open(sys.argv[2]).read().splitlines() if l.strip()]
raw = base64.b64decode(pub_lines[-1])
assert len(raw) == 42 and raw[:2] == b"Ed", "not an Ed25519 minisign key"
key_id = "%X" % int.from_bytes(raw[2:10], "little")
key = Ed25519PublicKey.from_public_bytes(raw[10:42])

payload_type = env["payloadType"].encode()
body = base64.b64decode(env["payload"])
pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(body), body)
ok = 0
for sig in env["signatures"]:
    if sig.get("keyid") != key_id:
        continue
    try:
        key.verify(base64.b64decode(sig["sig"]), pae)
        ok += 1
    except InvalidSignature:
        pass
if ok == 0:
    print("no valid signature by", key_id)
    sys.exit(1)
statement = json.loads(body)
print(json.dumps({"keyid": key_id, "type": env["payloadType"],
                  "subject": statement["subject"][0]["digest"]["sha256"]}))
"#;

fn python_verify(envelope: &Value, public: &PublicKey, dir: &Path) -> Output {
    let env_path = dir.join("envelope.json");
    fs::write(&env_path, envelope.to_string()).expect("write envelope");
    let pub_path = dir.join("dsse.pub");
    fs::write(&pub_path, public.file()).expect("write pub");
    run(Command::new("python3")
        .arg("-c")
        .arg(PYTHON_VERIFIER)
        .arg(&env_path)
        .arg(&pub_path))
}

#[test]
fn a_dsse_envelope_verifies_in_python_with_the_key_from_the_minisign_pub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("generate");
    let statement = provenance::statement(&sample());
    let body = serde_json::to_vec(&statement).expect("json");
    let env = dsse::envelope(IN_TOTO_PAYLOAD_TYPE, &body, &key);

    let out = python_verify(&env, &key.public(), dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let seen: Value = serde_json::from_slice(&out.stdout).expect("verifier output");
    assert_eq!(
        seen,
        json!({
            "keyid": key.key_id(),
            "type": "application/vnd.in-toto+json",
            "subject": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        })
    );

    // The payload type is signed (PAE): changing it breaks the signature.
    let mut retyped = env.clone();
    retyped["payloadType"] = json!("application/json");
    let out = python_verify(&retyped, &key.public(), dir.path());
    assert!(!out.status.success(), "{}", text(&out));

    // So is every payload byte.
    let mut edited = env.clone();
    let tampered = String::from_utf8(body.clone())
        .expect("utf-8")
        .replace("v2025.1.2", "v2025.1.3");
    edited["payload"] = json!(B64.encode(tampered));
    let out = python_verify(&edited, &key.public(), dir.path());
    assert!(!out.status.success(), "{}", text(&out));

    // Another key's .pub does not verify it.
    let other = SigningKey::generate().expect("generate");
    let out = python_verify(&env, &other.public(), dir.path());
    assert!(!out.status.success(), "{}", text(&out));
}

/// Minisign prints a key id without leading zeros ("%" PRIX64), and the envelope's `keyid` is
/// that same text: a verifier that pads it to 16 digits finds no signature for one key in 16.
/// CI once drew such a key; this draws one on purpose.
#[test]
fn a_dsse_keyid_with_a_leading_zero_nibble_matches_what_minisign_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = (0..2000)
        .map(|_| SigningKey::generate().expect("generate"))
        .find(|k| k.key_id().len() < 16)
        .expect("one key in 16 has an id below 0x1000000000000000");
    let body = serde_json::to_vec(&provenance::statement(&sample())).expect("json");
    let env = dsse::envelope(IN_TOTO_PAYLOAD_TYPE, &body, &key);
    assert_eq!(env["signatures"][0]["keyid"], json!(key.key_id()));
    assert!(key.public().file().starts_with(&format!(
        "untrusted comment: minisign public key {}\n",
        key.key_id()
    )));
    let out = python_verify(&env, &key.public(), dir.path());
    assert!(out.status.success(), "{}", text(&out));
}
