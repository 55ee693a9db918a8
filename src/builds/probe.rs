//! Health probes of the pool's builders (docs/builders.md): every `velox.health_interval`, each
//! builder gets a build request that Velox refuses at once (an empty one: its validation
//! rejects it before anything is built). Any well-formed Connect answer means it is up; no
//! answer is a failure (down after two in a row); an answer that is not Velox's takes it down
//! at once. Only a pool (`velox.servers`) is probed.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use tokio::sync::watch;

use super::pool::{Pool, Seen};
use super::velox::BUILD_PROCEDURE;

/// The longest one probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a probe's answer says of the builder.
pub fn judge(status: u16, body: &[u8]) -> Seen {
    #[derive(serde::Deserialize)]
    struct ConnectError {
        #[serde(default)]
        code: String,
    }
    match serde_json::from_slice::<ConnectError>(body) {
        Ok(e) if e.code == "unavailable" => {
            Seen::Failing("the probe was answered `unavailable`".into())
        }
        Ok(e) if !e.code.is_empty() => Seen::Answered,
        _ if (502..=504).contains(&status) => {
            Seen::Failing(format!("the probe was answered HTTP {status}"))
        }
        _ => Seen::Unreachable(format!(
            "the probe was answered HTTP {status} with something that is not Velox's answer"
        )),
    }
}

async fn probe(client: &awc::Client, url: &str, timeout: Duration) -> Seen {
    let sent = client
        .post(format!("{}{BUILD_PROCEDURE}", url.trim_end_matches('/')))
        .timeout(timeout)
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header(("Connect-Protocol-Version", "1"))
        .insert_header(("Connect-Timeout-Ms", timeout.as_millis().to_string()))
        .send_body("{}")
        .await;
    let mut resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            return Seen::Failing(crate::redact::text(&format!(
                "the probe found no Velox: {e}"
            )))
        }
    };
    let status = resp.status().as_u16();
    match resp.body().limit(64 * 1024).await {
        Ok(body) => judge(status, &body),
        Err(e) => Seen::Failing(format!("the probe's answer could not be read: {e}")),
    }
}

/// Probes every builder of `pool` each `velox.health_interval` until `stop` turns true.
/// `client` is the worker's own (awc's client is not `Send`).
pub async fn run(pool: Arc<Pool>, client: awc::Client, mut stop: watch::Receiver<bool>) {
    if !pool.pooled() {
        return;
    }
    let interval = pool.health_interval();
    let timeout = interval.min(PROBE_TIMEOUT);
    loop {
        let probes = pool.builders().iter().enumerate().map(|(i, b)| {
            let (client, pool, url) = (&client, &pool, b.spec.url.clone());
            async move {
                let seen = probe(client, &url, timeout).await;
                pool.saw(i, seen);
            }
        });
        futures_util::future::join_all(probes).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers() {
        let refusal = br#"{"code":"invalid_argument","message":"validation error: request_id: value is empty"}"#;
        assert_eq!(judge(400, refusal), Seen::Answered);
        assert!(matches!(
            judge(503, br#"{"code":"unavailable"}"#),
            Seen::Failing(_)
        ));
        assert!(matches!(
            judge(502, b"<html>bad gateway</html>"),
            Seen::Failing(_)
        ));
        assert!(matches!(
            judge(200, b"<html>hello</html>"),
            Seen::Unreachable(_)
        ));
        assert!(matches!(judge(200, b"{}"), Seen::Unreachable(_)));
    }
}
