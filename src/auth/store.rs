//! Where tokens are kept (docs/access.md): `<data_dir>/auth/tokens.json`, written whole and
//! atomically (so that a damaged index never loses them: losing every token would open every
//! route); with a bucket, `<prefix>auth/tokens.json` there is the truth and the file its copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::token::TokenRecord;
use super::Auth;
use crate::error::ApiError;
use crate::store::shared::{Expect, SharedStore};

const FILE_VERSION: u32 = 1;
/// Conditional writes tried before a change gives up (another replica kept writing).
const ATTEMPTS: usize = 8;

#[derive(Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

fn encode(records: &[TokenRecord]) -> Result<Vec<u8>, String> {
    serde_json::to_vec_pretty(&TokenFile {
        version: FILE_VERSION,
        tokens: records.to_vec(),
    })
    .map_err(|e| e.to_string())
}

fn decode(bytes: &[u8]) -> Result<Vec<TokenRecord>, String> {
    let file: TokenFile =
        serde_json::from_slice(bytes).map_err(|e| format!("the token store is damaged: {e}"))?;
    if file.version != FILE_VERSION {
        return Err(format!(
            "the token store has version {}, this velox-cache reads {FILE_VERSION}",
            file.version
        ));
    }
    Ok(file.tokens)
}

pub struct TokenStore {
    dir: PathBuf,
    shared: OnceLock<Arc<dyn SharedStore>>,
    /// One change at a time in this process.
    changing: tokio::sync::Mutex<()>,
}

fn auth_dir(data_dir: &Path) -> Result<PathBuf, String> {
    let dir = data_dir.join("auth");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    set_mode(&dir, 0o700);
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        log::warn!("cannot restrict {}: {e}", path.display());
    }
}

/// The signed-URL key kept in the data dir, made (32 random bytes) at the first start.
pub fn url_secret(data_dir: &Path) -> Result<Vec<u8>, String> {
    let path = auth_dir(data_dir)?.join("url_secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => return Err(format!("{} is too short to be a key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for the signed-URL key".to_string())?;
    let text = hex::encode(bytes);
    crate::util::write_atomic(&path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(text.into_bytes())
}

impl TokenStore {
    pub fn local(data_dir: &Path) -> Result<TokenStore, String> {
        Ok(TokenStore {
            dir: auth_dir(data_dir)?,
            shared: OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    fn file(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }

    /// The tokens of the data dir's file (none when there is no file yet).
    pub fn read_local(&self) -> Result<Vec<TokenRecord>, String> {
        match std::fs::read(self.file()) {
            Ok(bytes) => decode(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read {}: {e}", self.file().display())),
        }
    }

    pub fn write_local(&self, records: &[TokenRecord]) -> Result<(), String> {
        let bytes = encode(records)?;
        crate::util::write_atomic(&self.file(), &bytes)
            .map_err(|e| format!("cannot write {}: {e}", self.file().display()))
    }

    /// Keeps tokens in the bucket from now on (S3 mode).
    pub fn share(&self, shared: Arc<dyn SharedStore>) {
        if shared.shares_auth() {
            let _ = self.shared.set(shared);
        }
    }

    fn shared(&self) -> Option<&Arc<dyn SharedStore>> {
        self.shared.get()
    }
}

impl Auth {
    /// Applies `change` to the token list and keeps the result (in the bucket first, with a
    /// conditional write tried again on a conflict), then puts it in force here.
    pub async fn change<T>(
        &self,
        change: impl Fn(&mut Vec<TokenRecord>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _one = self.store.changing.lock().await;
        let storage = |e: String| {
            log::error!("token store: {e}");
            ApiError::storage_unavailable()
        };
        let Some(shared) = self.store.shared().cloned() else {
            let mut records: Vec<TokenRecord> =
                self.tokens().records().cloned().collect::<Vec<_>>();
            let out = change(&mut records)?;
            self.store.write_local(&records).map_err(storage)?;
            self.set_tokens(records);
            return Ok(out);
        };
        for _ in 0..ATTEMPTS {
            let current = shared
                .auth_get()
                .await
                .map_err(|e| storage(e.to_string()))?;
            let (mut records, expect) = match current {
                Some(v) => (
                    decode(&v.bytes).map_err(storage)?,
                    v.etag.map_or(Expect::Any, Expect::Etag),
                ),
                None => (Vec::new(), Expect::Absent),
            };
            let out = change(&mut records)?;
            let bytes = encode(&records).map_err(storage)?;
            if shared
                .auth_put(bytes, expect)
                .await
                .map_err(|e| storage(e.to_string()))?
            {
                if let Err(e) = self.store.write_local(&records) {
                    log::warn!("token store: the local copy is behind the bucket: {e}");
                }
                self.set_tokens(records);
                return Ok(out);
            }
        }
        Err(storage(
            "other replicas kept changing the tokens; try again".into(),
        ))
    }

    /// Rereads the bucket's tokens (S3 mode); the local copy follows.
    pub async fn refresh(&self) -> Result<(), String> {
        let Some(shared) = self.store.shared().cloned() else {
            return Ok(());
        };
        let records = match shared.auth_get().await.map_err(|e| e.to_string())? {
            Some(v) => decode(&v.bytes)?,
            None => Vec::new(),
        };
        if records != self.tokens().records().cloned().collect::<Vec<_>>() {
            log::info!("tokens reread from the bucket: {} kept", records.len());
            if let Err(e) = self.store.write_local(&records) {
                log::warn!("token store: the local copy is behind the bucket: {e}");
            }
            self.set_tokens(records);
        }
        Ok(())
    }

    /// Rereads the bucket every `every` until `stop` turns true.
    pub async fn run_refresh(
        self: Arc<Self>,
        every: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.store.shared().is_none() {
            return;
        }
        loop {
            if let Err(e) = self.refresh().await {
                log::warn!("cannot reread the tokens in the bucket: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}
