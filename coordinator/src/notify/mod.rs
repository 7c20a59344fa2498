//! Notifications (docs/notifications.md): the coordinator announces what its users wait
//! for — a campaign finished (with its series verdict), failed or stalled, a regression,
//! an agent lost, a preemption storm — to the sinks its config declares: JSON webhooks,
//! Slack-compatible webhooks, email.
//!
//! Delivery is at least once through a durable outbox in the store: each event is queued
//! once per sink in the transaction that records it happened (`store::notify`), and the
//! notifier sends due rows every second, retrying with exponential backoff (1 s doubling
//! to 10 min) until the receiver accepts or a day has passed. Events carry an id the
//! receiver can deduplicate by. A dead endpoint costs its own rows' retries only: sends are
//! bounded by a timeout, each sink's rows go out beside the others', rows are read in small
//! batches, and nothing waits in memory.

pub mod config;
pub mod event;
pub mod send;

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{NotifyConfig, NotifyConfigError, NotifyFile};
use event::Event;

use crate::store::notify::Outgoing;
use crate::store::{Store, StoreError};

/// How often the notifier looks for events and due deliveries.
const TICK: Duration = Duration::from_secs(1);
/// Deliveries read per round.
const BATCH: u32 = 32;
/// The first retry waits this long; each later one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF_MS: i64 = 1_000;
/// The longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 600_000;
/// A notification not delivered within this long is given up.
const GIVE_UP_AFTER_MS: i64 = 24 * 3_600_000;

/// Stalls and preemption storms are looked for this often (their queries read more than
/// the per-second ones).
const SLOW_CHECKS_MS: i64 = 30_000;

/// The notifier task.
#[derive(Debug, Clone)]
pub struct Notifier {
    store: Store,
    config: NotifyConfig,
    client: reqwest::Client,
    /// When stalls and storms were last looked for, Unix ms.
    slow_checked_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Notifier {
    /// A notifier for `config`'s sinks.
    pub fn new(store: Store, config: NotifyConfig) -> Notifier {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(send::SEND_TIMEOUT)
            .build()
            .unwrap_or_default();
        Notifier {
            store,
            config,
            client,
            slow_checked_ms: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
        }
    }

    /// Runs until `stop`: raises events, then delivers what is due, every second.
    pub async fn run(self, stop: CancellationToken) {
        let mut interval = crate::ticker::every(TICK);
        while crate::ticker::next(&mut interval, &stop).await {
            if let Err(err) = self.raise().await {
                warn!(error = %evalctl_common::error_chain(&err), "the notifier could not look for events");
            }
            if let Err(err) = self.deliver().await {
                warn!(error = %evalctl_common::error_chain(&err), "the notifier could not deliver");
            }
        }
    }

    /// Finds what happened and queues its events (each once).
    pub async fn raise(&self) -> Result<(), StoreError> {
        let now_ms = self.store.now_ms();
        let mut events: Vec<Event> = Vec::new();
        for campaign in self.store.ended_campaigns_to_announce().await? {
            events.extend(event::ended(&campaign));
        }
        for (id, host, heartbeat) in self.store.lost_agents_to_announce().await? {
            events.push(event::agent_lost(&id, &host, heartbeat));
        }
        let last = self
            .slow_checked_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= SLOW_CHECKS_MS {
            self.slow_checked_ms
                .store(now_ms, std::sync::atomic::Ordering::Relaxed);
            events.extend(self.slow_checks(now_ms).await?);
        }
        for e in events {
            self.queue(e).await?;
        }
        Ok(())
    }

    /// Stalled campaigns and a preemption storm.
    async fn slow_checks(&self, now_ms: i64) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        let stall_ms = i64::try_from(self.config.stall_after.as_millis()).unwrap_or(i64::MAX);
        for campaign in self.store.stalled_campaigns(now_ms - stall_ms).await? {
            events.push(event::stalled(&campaign, now_ms));
        }
        let window_ms = i64::try_from(self.config.storm_window.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let preemptions = self.store.preemptions_since(now_ms - window_ms).await?;
        if preemptions >= self.config.storm_count {
            events.push(event::storm(
                preemptions,
                self.config.storm_window.as_secs(),
                now_ms / window_ms,
            ));
        }
        Ok(events)
    }

    /// Queues `e` for the sinks that take it.
    async fn queue(&self, e: Event) -> Result<(), StoreError> {
        let named = match &e.series {
            Some(series) => self.store.schedule_sinks(series).await?,
            None => Vec::new(),
        };
        let event_id = uuid::Uuid::new_v4().to_string();
        let mut payload = e.payload.clone();
        payload["event_id"] = Value::String(event_id.clone());
        payload["at_ms"] = Value::from(self.store.now_ms());
        let text = payload.to_string();
        let sinks: Vec<(String, String)> = self
            .config
            .sinks
            .iter()
            .filter(|s| s.events.contains(&e.kind))
            .filter(|s| s.all_campaigns || named.contains(&s.name))
            .map(|s| (s.name.clone(), text.clone()))
            .collect();
        let count = sinks.len();
        if self
            .store
            .enqueue_event(
                e.dedupe_key.clone(),
                event_id.clone(),
                e.kind.as_str(),
                sinks,
            )
            .await?
        {
            info!(kind = e.kind.as_str(), %event_id, sinks = count, title = payload["title"].as_str().unwrap_or(""), "event raised");
        }
        Ok(())
    }

    /// Sends the notifications that are due: each sink's in order, the sinks side by side,
    /// so a slow or dead endpoint delays only its own notifications.
    pub async fn deliver(&self) -> Result<(), StoreError> {
        let mut by_sink: std::collections::BTreeMap<String, Vec<Outgoing>> = Default::default();
        for outgoing in self.store.due_notifications(BATCH).await? {
            by_sink
                .entry(outgoing.sink.clone())
                .or_default()
                .push(outgoing);
        }
        let sends = by_sink.into_values().map(|rows| async move {
            for outgoing in rows {
                self.deliver_one(&outgoing).await?;
            }
            Ok::<(), StoreError>(())
        });
        for outcome in futures::future::join_all(sends).await {
            outcome?;
        }
        Ok(())
    }

    /// Sends one notification and records the attempt.
    async fn deliver_one(&self, outgoing: &Outgoing) -> Result<(), StoreError> {
        let outcome = match self.config.sinks.iter().find(|s| s.name == outgoing.sink) {
            None => Err("the sink is no longer in the coordinator's config".to_owned()),
            Some(sink) => match serde_json::from_str::<Value>(&outgoing.payload_json) {
                Ok(payload) => send::send(&self.client, sink, &payload).await,
                Err(e) => Err(format!("the stored event does not parse: {e}")),
            },
        };
        let now_ms = self.store.now_ms();
        let record = match outcome {
            Ok(()) => {
                info!(sink = %outgoing.sink, kind = %outgoing.kind, event_id = %outgoing.event_id, "notification delivered");
                Ok(())
            }
            Err(error) => {
                let retry_at = (now_ms - outgoing.created_at_ms < GIVE_UP_AFTER_MS)
                    .then(|| now_ms + backoff_ms(outgoing.attempts));
                if retry_at.is_none() {
                    warn!(sink = %outgoing.sink, event_id = %outgoing.event_id, %error, "notification given up after a day of retries");
                } else if outgoing.attempts == 0 {
                    warn!(sink = %outgoing.sink, event_id = %outgoing.event_id, %error, "notification not delivered; retrying");
                }
                Err((error, retry_at))
            }
        };
        self.store
            .notification_attempted(&outgoing.event_id, &outgoing.sink, record)
            .await
    }
}

/// The wait before retry number `attempts + 1`.
fn backoff_ms(attempts: u32) -> i64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1_i64 << attempts.min(20))
        .min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_ten_minutes() {
        assert_eq!(backoff_ms(0), 1_000);
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(3), 8_000);
        assert_eq!(backoff_ms(30), 600_000);
    }
}
