//! Google Compute Engine: `GET /computeMetadata/v1/instance/preempted` with header
//! `Metadata-Flavor: Google` answers `TRUE` once the VM is being preempted (30 s ahead).
//! The watcher reads the value once, then long-polls with `wait_for_change=true` and the
//! `last_etag` of what it saw, so the server holds the call until the value changes (here at
//! most `timeout_sec`) and the notice arrives the moment it is given.

use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use super::http::call;

/// How long one long poll may stay open at the metadata server.
const LONG_POLL_S: u64 = 60;

/// One read (the first) or long poll (later): `Ok(Some(detail))` on a notice. `etag` carries
/// the change token between calls.
pub async fn wait(
    base_url: &str,
    etag: &mut Option<String>,
    stop: &CancellationToken,
) -> Result<Option<String>, String> {
    let path = format!("{base_url}/computeMetadata/v1/instance/preempted");
    let (url, timeout) = match etag.as_deref() {
        None => (path, Duration::from_secs(5)),
        Some(tag) => (
            format!("{path}?wait_for_change=true&last_etag={tag}&timeout_sec={LONG_POLL_S}"),
            Duration::from_secs(LONG_POLL_S + 5),
        ),
    };
    let poll = call(Method::GET, &url, &[("Metadata-Flavor", "Google")], timeout);
    let answer = tokio::select! {
        answer = poll => answer?,
        _ = stop.cancelled() => return Ok(None),
    };
    if answer.status != StatusCode::OK {
        *etag = None;
        return Err(format!("{url}: unexpected HTTP {}", answer.status));
    }
    // Without an ETag the next call reads again instead of long-polling.
    *etag = answer.etag;
    let value = String::from_utf8_lossy(&answer.body).trim().to_owned();
    Ok((value == "TRUE").then(|| "gcp instance/preempted is TRUE".to_owned()))
}
