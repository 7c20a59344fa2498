//! AWS EC2 Spot: the instance metadata service v2. A session token comes from
//! `PUT /latest/api/token` (header `X-aws-ec2-metadata-token-ttl-seconds`); each check is
//! `GET /latest/meta-data/spot/instance-action` with `X-aws-ec2-metadata-token`. 404 means no
//! interruption is scheduled; 200 carries `{"action": "terminate"|"stop"|"hibernate",
//! "time": "…Z"}`, two minutes ahead. A 401 means the token expired: get a new one.

use std::time::Duration;

use hyper::{Method, StatusCode};

use super::http::call;

/// Lifetime asked for the session token (the maximum, 6 hours).
const TOKEN_TTL_S: &str = "21600";
const TIMEOUT: Duration = Duration::from_secs(2);

/// One check: `Ok(Some(detail))` on a notice.
pub async fn check(base_url: &str, token: &mut Option<String>) -> Result<Option<String>, String> {
    if token.is_none() {
        *token = Some(fetch_token(base_url).await?);
    }
    let url = format!("{base_url}/latest/meta-data/spot/instance-action");
    let headers = [(
        "X-aws-ec2-metadata-token",
        token.as_deref().unwrap_or_default(),
    )];
    let answer = call(Method::GET, &url, &headers, TIMEOUT).await?;
    let body = answer.body;
    match answer.status {
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::OK => Ok(Some(describe(&body))),
        StatusCode::UNAUTHORIZED => {
            *token = None;
            Err("the metadata token expired; renewing it".into())
        }
        other => Err(format!("{url}: unexpected HTTP {other}")),
    }
}

async fn fetch_token(base_url: &str) -> Result<String, String> {
    let url = format!("{base_url}/latest/api/token");
    let answer = call(
        Method::PUT,
        &url,
        &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_S)],
        TIMEOUT,
    )
    .await?;
    if answer.status != StatusCode::OK {
        return Err(format!(
            "{url}: HTTP {} for the session token",
            answer.status
        ));
    }
    String::from_utf8(answer.body.to_vec())
        .map(|t| t.trim().to_owned())
        .map_err(|_| format!("{url}: the token is not text"))
}

/// "terminate at 2026-11-23T10:00:00Z" from the instance-action document.
fn describe(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(doc) => format!(
            "aws spot instance-action: {} at {}",
            doc["action"].as_str().unwrap_or("?"),
            doc["time"].as_str().unwrap_or("?")
        ),
        Err(_) => format!(
            "aws spot instance-action: {}",
            String::from_utf8_lossy(body).trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_instance_action_document() {
        assert_eq!(
            describe(br#"{"action": "terminate", "time": "2026-11-23T10:00:00Z"}"#),
            "aws spot instance-action: terminate at 2026-11-23T10:00:00Z"
        );
        assert_eq!(describe(b"odd"), "aws spot instance-action: odd");
    }
}
