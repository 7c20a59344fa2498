//! Azure Spot VMs: Scheduled Events. `GET /metadata/scheduledevents?api-version=2020-07-01`
//! with header `Metadata: true` lists pending events; a `Preempt` event comes at least 30 s
//! before eviction. The first call can take up to two minutes (it enables the service), and
//! the service switches itself off after 24 h without calls, so the watcher keeps polling.

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::http::call;

/// The first call may take up to two minutes while the service starts.
const TIMEOUT: Duration = Duration::from_secs(130);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Document {
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    #[serde(default)]
    event_id: String,
    event_type: String,
    #[serde(default)]
    not_before: String,
    #[serde(default)]
    event_status: String,
}

/// One check: `Ok(Some(detail))` when a `Preempt` event is scheduled.
pub async fn check(base_url: &str) -> Result<Option<String>, String> {
    let url = format!("{base_url}/metadata/scheduledevents?api-version=2020-07-01");
    let answer = call(Method::GET, &url, &[("Metadata", "true")], TIMEOUT).await?;
    if answer.status != StatusCode::OK {
        return Err(format!("{url}: unexpected HTTP {}", answer.status));
    }
    preempt_event(&answer.body).map_err(|e| format!("{url}: {e}"))
}

fn preempt_event(body: &[u8]) -> Result<Option<String>, String> {
    let document: Document = serde_json::from_slice(body)
        .map_err(|e| format!("not a Scheduled Events document: {e}"))?;
    Ok(document
        .events
        .iter()
        .find(|e| e.event_type.eq_ignore_ascii_case("Preempt"))
        .map(|e| {
            format!(
                "azure scheduled event {} Preempt ({}), not before {}",
                e.event_id, e.event_status, e.not_before
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_preempt_event_among_others() {
        let body = br#"{"DocumentIncarnation": 2, "Events": [
            {"EventId": "a", "EventType": "Freeze", "ResourceType": "VirtualMachine", "Resources": ["vm"], "EventStatus": "Scheduled", "NotBefore": ""},
            {"EventId": "b", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["vm"], "EventStatus": "Scheduled", "NotBefore": "Mon, 23 Nov 2026 10:00:00 GMT"}]}"#;
        let detail = preempt_event(body).unwrap().unwrap();
        assert!(detail.contains("b Preempt (Scheduled)"), "{detail}");
    }

    #[test]
    fn no_events_is_no_notice_and_garbage_is_an_error() {
        assert_eq!(
            preempt_event(br#"{"DocumentIncarnation": 1, "Events": []}"#),
            Ok(None)
        );
        assert!(preempt_event(b"<html>").is_err());
    }
}
