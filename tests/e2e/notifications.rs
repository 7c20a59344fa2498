//! Notifications through the real coordinator (docs/notifications.md): a webhook receiver
//! that fails its first three deliveries gets each event once by id, signed; an SMTP
//! server on loopback receives the email; and a coordinator killed between queueing an
//! event and delivering it delivers it after its restart, once.

use std::path::Path;
use std::time::Duration;

use evalctl_tests::{
    AgentProcess, CoordinatorProcess, HttpReceiver, Received, SmtpReceiver, evalctl, eventually,
    json_stdout,
};
use serde_json::Value;

const SECRET: &str = "s3cret-for-tests";

/// A small sim campaign named `name`: one unit, two quick steps.
fn matrix(name: &str) -> String {
    format!(
        "campaign: {name}
models: [{{ name: m, path: m }}]
frameworks: [{{ name: sim }}]
quantizations: [{{ name: bf16, bits: 16 }}]
workloads:
  - name: chat
    api: completions
    dataset: {{ kind: random, input_tokens: 8, output_tokens: 4 }}
    load: {{ concurrency: [1, 2] }}
    requests: 4
"
    )
}

/// Writes a coordinator config with a signed webhook to `hook` and, when given, an email
/// sink to the SMTP port; returns its path.
fn config(dir: &Path, hook: &str, smtp_port: Option<u16>) -> String {
    std::fs::write(dir.join("hook.secret"), format!("{SECRET}\n")).unwrap();
    let mut text = format!(
        "[notify]\n\n[[notify.sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{hook}\"\nsecret_file = \"{}\"\n",
        dir.join("hook.secret").display()
    );
    if let Some(port) = smtp_port {
        text.push_str(&format!(
            "\n[[notify.sinks]]\nname = \"mail\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nstarttls = \"none\"\nfrom = \"evalctl@lab.test\"\nto = [\"oncall@lab.test\"]\nevents = [\"campaign_finished\"]\n"
        ));
    }
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn submit(url: &str, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, matrix(name)).unwrap();
    json_stdout(&evalctl(
        Some(url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));
}

/// The accepted deliveries' bodies, parsed.
fn accepted(received: &[Received]) -> Vec<Value> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

/// HMAC-SHA256 of `body` under the test secret, as the signature header writes it.
fn signature(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn a_failing_webhook_gets_each_event_once_signed_and_the_email_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let hook = HttpReceiver::start("127.0.0.1:0", 3);
    let slack = HttpReceiver::start("127.0.0.1:0", 0);
    let smtp = SmtpReceiver::start();
    let config = config(dir.path(), &hook.url("/evalctl"), Some(smtp.port()));
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[notify.sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{}\"\n",
        slack.url("/services/T0/B0/x")
    ));
    std::fs::write(&config, text).unwrap();
    let coordinator = CoordinatorProcess::start_with(dir.path(), &["--config", &config]);
    let url = coordinator.url();
    let _agent = AgentProcess::start(&url, &dir.path().join("agent"), &[]);
    submit(&url, dir.path(), "notify-once");

    eventually(
        Duration::from_secs(60),
        "the webhook to accept the event",
        || !accepted(&hook.received()).is_empty(),
    );
    let received = hook.received();
    // Three refusals, retried (1 s, 2 s, 4 s), then accepted: one event, one id.
    assert!(received.len() >= 4, "{received:?}");
    assert!(received[..3].iter().all(|r| r.status == 500));
    let events = accepted(&received);
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["kind"], "campaign_finished", "{event}");
    assert_eq!(event["campaign"]["name"], "notify-once");
    let id = event["event_id"].as_str().unwrap();
    assert!(
        received
            .iter()
            .all(|r| r.header("x-evalctl-event") == Some(id))
    );
    for r in &received {
        assert_eq!(
            r.header("x-evalctl-signature"),
            Some(signature(&r.body).as_str())
        );
    }

    eventually(Duration::from_secs(30), "the email", || {
        !smtp.mails().is_empty()
    });
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["<oncall@lab.test>"]);
    assert!(
        mails[0]
            .data
            .contains("Subject: [evalctl] notify-once finished")
            && mails[0].data.contains(id),
        "{}",
        mails[0].data
    );
    // The Slack-compatible receiver got blocks: the title as header, the report command.
    eventually(Duration::from_secs(30), "the Slack message", || {
        !accepted(&slack.received()).is_empty()
    });
    let message = &accepted(&slack.received())[0];
    assert_eq!(message["blocks"][0]["type"], "header", "{message}");
    assert!(
        message["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("notify-once finished")
            && message.to_string().contains("evalctl report notify-once"),
        "{message}"
    );

    // Nothing more arrives: each event once.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(accepted(&hook.received()).len(), 1);
    assert_eq!(smtp.mails().len(), 1);
}

#[test]
fn an_event_queued_before_a_kill_9_is_delivered_after_the_restart_once() {
    let dir = tempfile::tempdir().unwrap();
    // A port where nothing listens yet: deliveries fail until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hook_url = format!("http://127.0.0.1:{port}/evalctl");
    let config = config(dir.path(), &hook_url, None);
    let mut coordinator = CoordinatorProcess::start_with(dir.path(), &["--config", &config]);
    let addr = coordinator.addr().to_string();
    let url = coordinator.url();
    let mut agent = AgentProcess::start(&url, &dir.path().join("agent"), &[]);
    submit(&url, dir.path(), "notify-kill");
    eventually(Duration::from_secs(60), "the event to be queued", || {
        coordinator.log().contains("event raised")
    });
    coordinator.kill9();
    agent.kill9();

    let hook = HttpReceiver::start(&format!("127.0.0.1:{port}"), 0);
    let _restarted = CoordinatorProcess::start_on(&addr, dir.path(), &["--config", &config]);
    eventually(
        Duration::from_secs(60),
        "the delivery after the restart",
        || !accepted(&hook.received()).is_empty(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let events = accepted(&hook.received());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["campaign"]["name"], "notify-kill");
}
