//! The notification outbox (docs/notifications.md): what happened that has not been
//! announced yet (campaigns that ended, agents lost, campaigns stalled, preemptions), the
//! events written once per sink in the transaction that records them, and the delivery
//! bookkeeping (due rows, delivered, retried, given up).

use rusqlite::{Connection, OptionalExtension as _};

use super::StoreError;
use super::error::SqlContext as _;
use super::series::{VerdictRow, verdict};

/// A campaign that has ended and was not announced.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedCampaign {
    /// Its key.
    pub key: i64,
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its series, when a schedule's.
    pub series: Option<String>,
    /// Units that succeeded.
    pub succeeded: u64,
    /// Units that failed.
    pub failed: u64,
    /// Units cancelled.
    pub cancelled: u64,
    /// Its verdict, for a campaign of a series.
    pub verdict: Option<VerdictRow>,
}

/// A campaign without progress for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalledCampaign {
    /// Its key.
    pub key: i64,
    /// Its name.
    pub name: String,
    /// Its series, when a schedule's.
    pub series: Option<String>,
    /// The last progress: a result stored, an attempt started or ended, or its submission.
    pub last_progress_ms: i64,
}

/// A notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The event's id (the receiver's deduplication key).
    pub event_id: String,
    /// The sink's name.
    pub sink: String,
    /// The event's kind.
    pub kind: String,
    /// The event, as JSON.
    pub payload_json: String,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// When it was raised, Unix ms.
    pub created_at_ms: i64,
}

/// Campaigns that ended (units, none pending or leased) and were not announced; a campaign
/// of a series waits for its verdict.
pub(crate) fn ended_campaigns(conn: &Connection) -> Result<Vec<EndedCampaign>, StoreError> {
    // One row per campaign not announced yet (a primary-key probe each); the unit counts
    // only for the few that ended.
    let ended: Vec<(i64, String, String, Option<String>)> = conn
        .prepare_cached(
            "SELECT c.campaign_key, c.id, c.name, c.series FROM campaigns c
             WHERE NOT EXISTS (SELECT 1 FROM notified_events n
                               WHERE n.dedupe_key = 'ended:' || c.campaign_key)
               AND EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key)
               AND NOT EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key
                               AND u.state IN ('pending', 'leased'))
               AND (c.series IS NULL OR EXISTS (SELECT 1 FROM campaign_verdicts v
                                                WHERE v.campaign_key = c.campaign_key))
             ORDER BY c.campaign_key",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .sql("find ended campaigns to announce")?;
    ended
        .into_iter()
        .map(|(key, id, name, series)| {
            let (succeeded, failed, cancelled): (u64, u64, u64) = conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(state = 'succeeded'), 0), COALESCE(SUM(state = 'failed'), 0),
                            COALESCE(SUM(state = 'cancelled'), 0)
                     FROM units WHERE campaign_key = ?1",
                )
                .and_then(|mut s| s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
                .sql("count an ended campaign's units")?;
            Ok(EndedCampaign {
                verdict: if series.is_some() {
                    verdict(conn, key)?
                } else {
                    None
                },
                key,
                id,
                name,
                series,
                succeeded,
                failed,
                cancelled,
            })
        })
        .collect()
}

/// Agents marked lost that were not announced at that heartbeat: (id, host, last
/// heartbeat).
pub(crate) fn lost_agents(conn: &Connection) -> Result<Vec<(String, String, i64)>, StoreError> {
    conn.prepare_cached(
        "SELECT a.id, a.hostname, a.last_heartbeat_ms FROM agents a
         WHERE a.state = 'lost'
           AND NOT EXISTS (SELECT 1 FROM notified_events n
                           WHERE n.dedupe_key = 'agent_lost:' || a.id || ':' || a.last_heartbeat_ms)",
    )
    .and_then(|mut s| {
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()
    })
    .sql("find lost agents to announce")
    .map_err(StoreError::from)
}

/// Campaigns with work left whose last progress is older than `before_ms`, not announced
/// for that progress.
pub(crate) fn stalled_campaigns(
    conn: &Connection,
    before_ms: i64,
) -> Result<Vec<StalledCampaign>, StoreError> {
    conn.prepare_cached(
        "SELECT key, name, series, progress FROM (
             SELECT c.campaign_key AS key, c.name AS name, c.series AS series,
                    MAX(c.updated_at_ms,
                        COALESCE((SELECT MAX(r.finished_at_ms) FROM step_results r
                                  JOIN units u ON u.unit_key = r.unit_key
                                  WHERE u.campaign_key = c.campaign_key), 0),
                        COALESCE((SELECT MAX(MAX(h.started_at_ms, COALESCE(h.ended_at_ms, 0)))
                                  FROM unit_history h WHERE h.campaign_key = c.campaign_key), 0))
                        AS progress
             FROM campaigns c
             WHERE EXISTS (SELECT 1 FROM units u WHERE u.campaign_key = c.campaign_key
                           AND u.state IN ('pending', 'leased')))
         WHERE progress < ?1
           AND NOT EXISTS (SELECT 1 FROM notified_events n
                           WHERE n.dedupe_key = 'stalled:' || key || ':' || progress)",
    )
    .and_then(|mut s| {
        s.query_map([before_ms], |r| {
            Ok(StalledCampaign {
                key: r.get(0)?,
                name: r.get(1)?,
                series: r.get(2)?,
                last_progress_ms: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .sql("find stalled campaigns")
    .map_err(StoreError::from)
}

/// Attempts ended by a preemption since `since_ms`.
pub(crate) fn preemptions_since(conn: &Connection, since_ms: i64) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "SELECT COUNT(*) FROM unit_history WHERE outcome = 'preempted' AND ended_at_ms >= ?1",
    )
    .and_then(|mut s| s.query_row([since_ms], |r| r.get(0)))
    .sql("count recent preemptions")
    .map_err(StoreError::from)
}

/// The sinks schedule `series` names for its campaigns.
pub(crate) fn schedule_sinks(conn: &Connection, series: &str) -> Result<Vec<String>, StoreError> {
    let notify: Option<String> = conn
        .prepare_cached("SELECT notify FROM schedules WHERE name = ?1")
        .and_then(|mut s| s.query_row([series], |r| r.get(0)).optional())
        .sql("read a schedule's sinks")?;
    Ok(notify
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Records that `dedupe_key` happened as event `event_id` and queues it for `sinks`
/// (sink name, payload), all at once; false when it was recorded before (nothing queued).
pub(crate) fn enqueue(
    conn: &Connection,
    now_ms: i64,
    dedupe_key: &str,
    event_id: &str,
    kind: &str,
    sinks: &[(String, String)],
) -> Result<bool, StoreError> {
    let new = conn
        .prepare_cached(
            "INSERT INTO notified_events (dedupe_key, event_id, kind, at_ms)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute((dedupe_key, event_id, kind, now_ms)))
        .sql("record an event")?;
    if new == 0 {
        return Ok(false);
    }
    for (sink, payload) in sinks {
        conn.prepare_cached(
            "INSERT INTO notifications (event_id, sink, kind, payload_json, created_at_ms,
                 next_attempt_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )
        .and_then(|mut s| s.execute((event_id, sink, kind, payload, now_ms)))
        .sql("queue a notification")?;
    }
    Ok(true)
}

/// Notifications due at `now_ms`, oldest first, at most `limit`.
pub(crate) fn due(conn: &Connection, now_ms: i64, limit: u32) -> Result<Vec<Outgoing>, StoreError> {
    conn.prepare_cached(
        "SELECT event_id, sink, kind, payload_json, attempts, created_at_ms FROM notifications
         WHERE delivered_at_ms IS NULL AND gave_up_at_ms IS NULL AND next_attempt_at_ms <= ?1
         ORDER BY next_attempt_at_ms LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map((now_ms, limit), |r| {
            Ok(Outgoing {
                event_id: r.get(0)?,
                sink: r.get(1)?,
                kind: r.get(2)?,
                payload_json: r.get(3)?,
                attempts: r.get(4)?,
                created_at_ms: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
    })
    .sql("read due notifications")
    .map_err(StoreError::from)
}

/// Records one delivery attempt: delivered, or failed with `error` and retried at
/// `retry_at_ms` (`None`: given up).
pub(crate) fn attempted(
    conn: &Connection,
    now_ms: i64,
    event_id: &str,
    sink: &str,
    outcome: Result<(), (&str, Option<i64>)>,
) -> Result<(), StoreError> {
    match outcome {
        Ok(()) => conn
            .prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, delivered_at_ms = ?3,
                     last_error = NULL
                 WHERE event_id = ?1 AND sink = ?2",
            )
            .and_then(|mut s| s.execute((event_id, sink, now_ms))),
        Err((error, Some(retry_at_ms))) => conn
            .prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt_at_ms = ?3,
                     last_error = ?4
                 WHERE event_id = ?1 AND sink = ?2",
            )
            .and_then(|mut s| s.execute((event_id, sink, retry_at_ms, error))),
        Err((error, None)) => conn
            .prepare_cached(
                "UPDATE notifications SET attempts = attempts + 1, gave_up_at_ms = ?3,
                     last_error = ?4
                 WHERE event_id = ?1 AND sink = ?2",
            )
            .and_then(|mut s| s.execute((event_id, sink, now_ms, error))),
    }
    .sql("record a delivery attempt")?;
    Ok(())
}

/// The outbox operations of the store.
impl super::Store {
    /// Now, by the store's clock, Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Campaigns that ended and were not announced.
    pub async fn ended_campaigns_to_announce(&self) -> Result<Vec<EndedCampaign>, StoreError> {
        self.read(ended_campaigns).await
    }

    /// Lost agents not announced: (id, host, last heartbeat).
    pub async fn lost_agents_to_announce(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(lost_agents).await
    }

    /// Campaigns without progress since before `before_ms`, not announced.
    pub async fn stalled_campaigns(
        &self,
        before_ms: i64,
    ) -> Result<Vec<StalledCampaign>, StoreError> {
        self.read(move |conn| stalled_campaigns(conn, before_ms))
            .await
    }

    /// Attempts preempted since `since_ms`.
    pub async fn preemptions_since(&self, since_ms: i64) -> Result<u64, StoreError> {
        self.read(move |conn| preemptions_since(conn, since_ms))
            .await
    }

    /// The sinks a schedule names.
    pub async fn schedule_sinks(&self, series: &str) -> Result<Vec<String>, StoreError> {
        let series = series.to_owned();
        self.read(move |conn| schedule_sinks(conn, &series)).await
    }

    /// Records an event and queues it for its sinks; false when recorded before.
    pub async fn enqueue_event(
        &self,
        dedupe_key: String,
        event_id: String,
        kind: &'static str,
        sinks: Vec<(String, String)>,
    ) -> Result<bool, StoreError> {
        self.write(move |conn, now_ms| enqueue(conn, now_ms, &dedupe_key, &event_id, kind, &sinks))
            .await
    }

    /// Notifications due now.
    pub async fn due_notifications(&self, limit: u32) -> Result<Vec<Outgoing>, StoreError> {
        let now_ms = self.now_ms();
        self.read(move |conn| due(conn, now_ms, limit)).await
    }

    /// Records a delivery attempt; `Err((error, retry_at))`, `retry_at` `None` to give up.
    pub async fn notification_attempted(
        &self,
        event_id: &str,
        sink: &str,
        outcome: Result<(), (String, Option<i64>)>,
    ) -> Result<(), StoreError> {
        let (event_id, sink) = (event_id.to_owned(), sink.to_owned());
        self.write(move |conn, now_ms| {
            let outcome = match &outcome {
                Ok(()) => Ok(()),
                Err((e, at)) => Err((e.as_str(), *at)),
            };
            attempted(conn, now_ms, &event_id, &sink, outcome)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::domain::AgentRegistration;
    use crate::store::store_with_test_clock;

    #[tokio::test]
    async fn an_event_is_queued_once_and_retried_when_its_time_comes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_test_clock(&dir.path().join("db.sqlite"), 1_000).await;
        let sinks = vec![
            ("a".to_owned(), "{}".to_owned()),
            ("b".to_owned(), "{}".to_owned()),
        ];
        assert!(
            store
                .enqueue_event(
                    "ended:1".into(),
                    "e1".into(),
                    "campaign_finished",
                    sinks.clone()
                )
                .await
                .unwrap()
        );
        // The same happening again queues nothing.
        assert!(
            !store
                .enqueue_event("ended:1".into(), "e2".into(), "campaign_finished", sinks)
                .await
                .unwrap()
        );
        let due = store.due_notifications(10).await.unwrap();
        assert_eq!(due.len(), 2);
        store
            .notification_attempted("e1", "a", Err(("refused".into(), Some(5_000))))
            .await
            .unwrap();
        store
            .notification_attempted("e1", "b", Ok(()))
            .await
            .unwrap();
        assert!(store.due_notifications(10).await.unwrap().is_empty());
        now.store(5_000, Ordering::SeqCst);
        let due = store.due_notifications(10).await.unwrap();
        assert_eq!(
            (due.len(), due[0].sink.as_str(), due[0].attempts),
            (1, "a", 1)
        );
        // Given up: never due again.
        store
            .notification_attempted("e1", "a", Err(("refused".into(), None)))
            .await
            .unwrap();
        now.store(1_000_000, Ordering::SeqCst);
        assert!(store.due_notifications(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_lost_agent_is_found_until_announced_and_again_after_a_new_loss() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) = store_with_test_clock(&dir.path().join("db.sqlite"), 1_000_000).await;
        store
            .register_agent(&AgentRegistration::cpu_only("gpu-7", "node7"))
            .await
            .unwrap();
        assert!(store.lost_agents_to_announce().await.unwrap().is_empty());
        now.fetch_add(60_000, Ordering::SeqCst);
        store
            .mark_lost_agents(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let lost = store.lost_agents_to_announce().await.unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].0.as_str(), lost[0].1.as_str()), ("gpu-7", "node7"));
        let key = format!("agent_lost:gpu-7:{}", lost[0].2);
        store
            .enqueue_event(key, "e".into(), "agent_lost", Vec::new())
            .await
            .unwrap();
        assert!(store.lost_agents_to_announce().await.unwrap().is_empty());
        // No step stored yet and no campaign: nothing stalls, nothing was preempted.
        assert!(store.stalled_campaigns(i64::MAX).await.unwrap().is_empty());
        assert_eq!(store.preemptions_since(0).await.unwrap(), 0);
    }
}
