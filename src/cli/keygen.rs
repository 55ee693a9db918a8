//! `velox-cache keygen` (docs/cli.md): writes a minisign key pair for `signing.key_file`.

use std::path::Path;
use std::process::ExitCode;

use crate::trust::keys::SigningKey;

/// Writes `<dir>/<name>.key` (0600, never overwriting) and `<dir>/<name>.pub`.
pub fn run(dir: &Path, name: &str) -> ExitCode {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for path in [&secret, &public] {
        if path.exists() {
            eprintln!(
                "velox-cache: {} exists; keygen never overwrites a key",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    let written = SigningKey::generate().and_then(|key| {
        key.write(&secret, &public)?;
        Ok(key.key_id())
    });
    match written {
        Ok(id) => {
            println!(
                "key id {id}\nsecret key: {} (set signing.key_file to it; keep it secret)\npublic key: {} (publish it: minisign -Vm <file> -p {})",
                secret.display(),
                public.display(),
                public.display()
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("velox-cache: {why}");
            ExitCode::FAILURE
        }
    }
}
