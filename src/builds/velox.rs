//! The Velox client (docs/velox.md): Connect unary over HTTP/1.1 with JSON, the retry matrix, and the
//! checks on the path Velox answers with.
//!
//! awc's `Client` is not `Send`: one is made per worker and this client runs on that worker's
//! runtime.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use serde::Deserialize;
use tokio::time::Instant;

use super::BuildRequest;
use crate::config::{PathMap, RetryConfig};

/// The Connect procedure Velox serves.
pub const BUILD_PROCEDURE: &str = "/api.service.v1.BuildService/Build";
/// Most bytes read of one Velox answer (build logs can be long).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// How a call to Velox ended, when it did not give a usable artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VeloxError {
    /// Velox refused the request itself; retrying cannot help.
    #[error("Velox refused the request: {0}")]
    InvalidArgument(String),
    /// The build failed, or its result is unusable.
    #[error("the build failed: {message}")]
    Failed {
        message: String,
        logs: Option<String>,
    },
    /// Velox could not be reached or stayed busy through every attempt.
    #[error("Velox is unavailable: {0}")]
    Unavailable(String),
    /// `build_timeout` passed.
    #[error("the build did not finish within build_timeout")]
    Timeout,
}

/// What Velox answered on success.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VeloxSuccess {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub logs: String,
}

#[derive(Deserialize)]
struct ConnectError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// One attempt's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Success(VeloxSuccess),
    Retry(String),
    Fatal(VeloxError),
}

/// Classifies Velox's answer per docs/velox.md's table.
pub fn classify(status: u16, body: &[u8]) -> Attempt {
    if status == 200 {
        return match serde_json::from_slice::<VeloxSuccess>(body) {
            Ok(ok) if ok.path.is_empty() => Attempt::Fatal(VeloxError::Failed {
                message: "Velox answered without an artifact path".into(),
                logs: Some(ok.logs).filter(|l| !l.is_empty()),
            }),
            Ok(ok) => Attempt::Success(ok),
            Err(_) => Attempt::Fatal(VeloxError::Failed {
                message: "Velox's answer is not a build response".into(),
                logs: None,
            }),
        };
    }
    match serde_json::from_slice::<ConnectError>(body) {
        Ok(e) if !e.code.is_empty() => {
            let message = if e.message.is_empty() {
                format!("Velox answered `{}`", e.code)
            } else {
                e.message
            };
            match e.code.as_str() {
                "unavailable" | "resource_exhausted" | "aborted" | "already_exists" => {
                    Attempt::Retry(format!("{}: {message}", e.code))
                }
                "invalid_argument" | "failed_precondition" | "out_of_range" => {
                    Attempt::Fatal(VeloxError::InvalidArgument(message))
                }
                "deadline_exceeded" => Attempt::Fatal(VeloxError::Timeout),
                _ => Attempt::Fatal(VeloxError::Failed {
                    message,
                    logs: None,
                }),
            }
        }
        _ => match status {
            502..=504 => Attempt::Retry(format!("Velox answered HTTP {status}")),
            _ => Attempt::Fatal(VeloxError::Failed {
                message: format!("Velox answered HTTP {status}"),
                logs: None,
            }),
        },
    }
}

/// The delay before attempt `attempt + 1` (attempts count from 1), before jitter.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let factor = retry
        .backoff_multiplier
        .powi(attempt.saturating_sub(1).min(64) as i32);
    let secs = retry.initial_delay.as_secs_f64() * factor;
    let capped = secs.min(retry.max_delay.as_secs_f64());
    Duration::from_secs_f64(capped.max(0.0))
}

/// "Equal jitter": half the delay fixed, half random, so retries of many callers spread out.
fn jitter(d: Duration) -> Duration {
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

#[derive(Clone)]
pub struct VeloxClient {
    client: awc::Client,
    build_url: String,
    retry: RetryConfig,
    request_timeout: Duration,
}

impl VeloxClient {
    /// `tls` is used when `server_url` is `https://` (see [`crate::tls`]).
    pub fn new(
        server_url: &str,
        retry: RetryConfig,
        request_timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Self {
        let connector = awc::Connector::new().rustls_0_23(Arc::clone(tls));
        let client = awc::Client::builder()
            .connector(connector)
            .disable_redirects()
            .timeout(request_timeout)
            .finish();
        VeloxClient {
            client,
            build_url: format!("{}{BUILD_PROCEDURE}", server_url.trim_end_matches('/')),
            retry,
            request_timeout,
        }
    }

    /// Asks Velox for the build, retrying what can succeed on retry, until `deadline`.
    /// `on_retry` is told of each retry (for metrics).
    pub async fn build(
        &self,
        request: &BuildRequest,
        deadline: Instant,
        on_retry: &dyn Fn(),
    ) -> Result<VeloxSuccess, VeloxError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| VeloxError::InvalidArgument(format!("cannot encode the request: {e}")))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = Instant::now();
            if now >= deadline {
                return Err(VeloxError::Timeout);
            }
            let left = deadline - now;
            let per_attempt = left.min(self.request_timeout);
            let why = match self.attempt(&body, left, per_attempt).await {
                Attempt::Success(ok) => return Ok(ok),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(VeloxError::Timeout);
            }
            if attempt >= self.retry.max_attempts {
                return Err(VeloxError::Unavailable(why));
            }
            let delay = jitter(backoff(&self.retry, attempt));
            if Instant::now() + delay >= deadline {
                return Err(VeloxError::Unavailable(why));
            }
            log::warn!("Velox attempt {attempt} failed ({why}); retrying in {delay:?}");
            on_retry();
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, body: &[u8], left: Duration, per_attempt: Duration) -> Attempt {
        let call = async {
            let mut resp = self
                .client
                .post(&self.build_url)
                .timeout(per_attempt)
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .insert_header(("Connect-Protocol-Version", "1"))
                .insert_header(("Connect-Timeout-Ms", left.as_millis().max(1).to_string()))
                .send_body(body.to_vec())
                .await
                .map_err(|e| match e {
                    awc::error::SendRequestError::Timeout => "the attempt timed out".to_string(),
                    e => format!("cannot reach Velox: {e}"),
                })?;
            let status = resp.status().as_u16();
            let bytes = resp
                .body()
                .limit(MAX_ANSWER_BYTES)
                .await
                .map_err(|e| format!("cannot read Velox's answer: {e}"))?;
            Ok::<_, String>((status, bytes))
        };
        match tokio::time::timeout(per_attempt, call).await {
            Err(_) => Attempt::Retry("the attempt timed out".into()),
            Ok(Err(why)) => Attempt::Retry(why),
            Ok(Ok((status, bytes))) => classify(status, &bytes),
        }
    }
}

/// Why an artifact path was refused. Logged in full; the client sees only a generic message.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("the path {0} is not absolute")]
    NotAbsolute(PathBuf),
    #[error("the path {0} cannot be resolved: {1}")]
    Unresolvable(PathBuf, std::io::Error),
    #[error("the path {0} resolves to {1}, outside artifact_root")]
    OutsideRoot(PathBuf, PathBuf),
    #[error("the path {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("the file {0} is empty")]
    Empty(PathBuf),
    #[error("the file {0} cannot be opened: {1}")]
    Open(PathBuf, std::io::Error),
}

/// Maps Velox's path through `path_map`, resolves symlinks, and opens it only when it is a
/// non-empty regular file inside `artifact_root` (itself resolved). Blocks.
pub fn open_artifact(
    velox_path: &str,
    path_map: Option<&PathMap>,
    artifact_root: &Path,
) -> Result<File, PathError> {
    let raw = Path::new(velox_path);
    if !raw.is_absolute() {
        return Err(PathError::NotAbsolute(raw.to_path_buf()));
    }
    let mapped = match path_map {
        Some(pm) => pm.apply(raw),
        None => raw.to_path_buf(),
    };
    let root = artifact_root
        .canonicalize()
        .map_err(|e| PathError::Unresolvable(artifact_root.to_path_buf(), e))?;
    let real = mapped
        .canonicalize()
        .map_err(|e| PathError::Unresolvable(mapped.clone(), e))?;
    if !real.starts_with(&root) || real == root {
        return Err(PathError::OutsideRoot(mapped, real));
    }
    let file = File::open(&real).map_err(|e| PathError::Open(real.clone(), e))?;
    // Checked on the open handle, so a swap after the checks above cannot slip through.
    let meta = file
        .metadata()
        .map_err(|e| PathError::Open(real.clone(), e))?;
    if !meta.is_file() {
        return Err(PathError::NotAFile(real));
    }
    if meta.len() == 0 {
        return Err(PathError::Empty(real));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str) -> Vec<u8> {
        format!(r#"{{"code":"{code}","message":"m"}}"#).into_bytes()
    }

    #[test]
    fn retry_matrix() {
        for code in [
            "unavailable",
            "resource_exhausted",
            "aborted",
            "already_exists",
        ] {
            assert!(
                matches!(classify(409, &err(code)), Attempt::Retry(_)),
                "{code}"
            );
        }
        for code in ["invalid_argument", "failed_precondition", "out_of_range"] {
            assert_eq!(
                classify(400, &err(code)),
                Attempt::Fatal(VeloxError::InvalidArgument("m".into())),
                "{code}"
            );
        }
        for code in ["internal", "unknown", "permission_denied"] {
            assert!(
                matches!(
                    classify(500, &err(code)),
                    Attempt::Fatal(VeloxError::Failed { .. })
                ),
                "{code}"
            );
        }
        for status in [502, 503, 504] {
            assert!(matches!(
                classify(status, b"<html>bad gateway</html>"),
                Attempt::Retry(_)
            ));
        }
        assert!(matches!(
            classify(500, b"<html>"),
            Attempt::Fatal(VeloxError::Failed { .. })
        ));
        assert!(matches!(
            classify(200, br#"{"path":"","logs":"x"}"#),
            Attempt::Fatal(VeloxError::Failed { .. })
        ));
        assert!(matches!(
            classify(200, b"nope"),
            Attempt::Fatal(VeloxError::Failed { .. })
        ));
        assert_eq!(
            classify(200, br#"{"path":"/tmp/a/roadrunner","logs":"ok"}"#),
            Attempt::Success(VeloxSuccess {
                path: "/tmp/a/roadrunner".into(),
                logs: "ok".into()
            })
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let r = RetryConfig {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3),
            backoff_multiplier: 2.0,
        };
        assert_eq!(backoff(&r, 1), Duration::from_secs(1));
        assert_eq!(backoff(&r, 2), Duration::from_secs(2));
        assert_eq!(backoff(&r, 3), Duration::from_secs(3));
        assert_eq!(backoff(&r, 60), Duration::from_secs(3));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }
}
