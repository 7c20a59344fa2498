//! Sending one notification to one sink: a JSON webhook (signed with HMAC-SHA256 when the
//! sink has a secret), a Slack-compatible incoming webhook (blocks), or an email over SMTP
//! (lettre, STARTTLS). Each send is bounded by [`SEND_TIMEOUT`].

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};
use sha2::Sha256;

use super::config::{Sink, SinkKind, StartTls};

/// The longest a send may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The header carrying a webhook body's signature: `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Evalctl-Signature";
/// The header carrying the event id (also in the body).
pub const EVENT_HEADER: &str = "X-Evalctl-Event";

/// Sends `payload` (the event document) to `sink`; the error says why not.
pub async fn send(client: &reqwest::Client, sink: &Sink, payload: &Value) -> Result<(), String> {
    match &sink.kind {
        SinkKind::Webhook { url, secret } => {
            let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
            let mut request = client
                .post(url)
                .header("content-type", "application/json")
                .header(EVENT_HEADER, event_id(payload));
            if let Some(secret) = secret {
                request = request.header(SIGNATURE_HEADER, signature(secret, &body)?);
            }
            post(request.body(body)).await
        }
        SinkKind::Slack { url } => post(client.post(url).json(&slack(payload))).await,
        SinkKind::Email {
            host,
            port,
            starttls,
            credentials,
            from,
            to,
        } => {
            let message = email(payload, from, to)?;
            let builder = match starttls {
                StartTls::Required => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                    .map_err(|e| format!("SMTP {host}: {e}"))?,
                StartTls::Opportunistic => {
                    let tls = TlsParameters::new(host.clone())
                        .map_err(|e| format!("SMTP {host}: {e}"))?;
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                        .tls(Tls::Opportunistic(tls))
                }
                StartTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            };
            let mut builder = builder.port(*port).timeout(Some(SEND_TIMEOUT));
            if let Some((user, password)) = credentials {
                builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
            }
            builder
                .build()
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| format!("SMTP {host}:{port}: {e}"))
        }
    }
}

fn event_id(payload: &Value) -> String {
    payload["event_id"].as_str().unwrap_or_default().to_owned()
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> Result<String, String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

async fn post(request: reqwest::RequestBuilder) -> Result<(), String> {
    let response = request
        .timeout(SEND_TIMEOUT)
        .send()
        .await
        .map_err(|e| evalctl_common::error_chain(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// The worst regressions of a payload, one line each.
fn worst_lines(payload: &Value) -> Vec<String> {
    payload["verdict"]["worst"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|c| {
                    format!(
                        "{} of {} / {} @ {}: {:+.1}%",
                        c["metric"].as_str().unwrap_or_default(),
                        c["config"].as_str().unwrap_or_default(),
                        c["workload"].as_str().unwrap_or_default(),
                        c["load"].as_str().unwrap_or_default(),
                        c["change_pct"].as_f64().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A Slack message: the title, the text, the worst regressions, the report command.
pub fn slack(payload: &Value) -> Value {
    let title = payload["title"].as_str().unwrap_or("evalctl");
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": payload["text"].as_str().unwrap_or_default()}}),
    ];
    let worst = worst_lines(payload);
    if !worst.is_empty() {
        let list = worst
            .iter()
            .map(|l| format!("• {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Worst regressions*\n{list}")}}));
    }
    if let Some(command) = payload["report_command"].as_str() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("Report: `{command}`")}]}));
    }
    json!({ "text": title, "blocks": blocks })
}

/// The email of an event.
fn email(payload: &Value, from: &str, to: &[String]) -> Result<Message, String> {
    let title = payload["title"].as_str().unwrap_or("evalctl");
    let mut body = format!("{}\n", payload["text"].as_str().unwrap_or_default());
    let worst = worst_lines(payload);
    if !worst.is_empty() {
        body.push_str("\nWorst regressions:\n");
        for line in worst {
            body.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(command) = payload["report_command"].as_str() {
        body.push_str(&format!("\nThe report: {command}\n"));
    }
    body.push_str(&format!("\nEvent {}\n", event_id(payload)));
    let mut builder = Message::builder()
        .from(from.parse().map_err(|e| format!("`from` {from}: {e}"))?)
        .subject(format!("[evalctl] {title}"))
        .header(ContentType::TEXT_PLAIN);
    for address in to {
        builder = builder.to(address
            .parse()
            .map_err(|e| format!("`to` {address}: {e}"))?);
    }
    builder.body(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_slack_message_has_the_verdict_and_the_report_command() {
        let payload = json!({
            "title": "nightly-3 finished; REGRESSED", "text": "t",
            "verdict": {"worst": [{"metric": "ttft_p90", "config": "c", "workload": "chat", "load": "c=2", "change_pct": 25.0}]},
            "report_command": "evalctl report nightly-3 -o nightly-3.html",
        });
        let message = slack(&payload);
        let text = message.to_string();
        assert!(
            text.contains("ttft_p90 of c / chat @ c=2: +25.0%"),
            "{text}"
        );
        assert!(text.contains("evalctl report nightly-3"), "{text}");
        assert_eq!(message["blocks"][0]["type"], "header");
    }
}
