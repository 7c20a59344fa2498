//! The reaper: the background task that expires leases nobody renews and marks silent
//! agents lost.
//!
//! It sweeps every sixth of the lease TTL, so a lease ends at most TTL/6 after it
//! expired, and on demand ([`Reaper::sweep`]); each sweep is idempotent. When the
//! coordinator starts, it first gives every live lease a full TTL
//! ([`Store::resume_leases`]): agents could not heartbeat while the coordinator was down,
//! so leases left by a crash are recovered only once their agents stay silent for a TTL
//! of this run, and agents that keep heartbeating keep their leases. For the same reason
//! agents are marked lost only once the coordinator has been up for a TTL.

use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::events::{CampaignEvent, EventBus};
use crate::grpc::status::chain;
use crate::store::{ExpiredLease, MAX_INFRA_ATTEMPTS, Store, StoreError};
use crate::work::WorkSignal;

/// Sweeps never run more often than this, whatever the TTL.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Expires leases and marks agents lost; see the module docs.
#[derive(Debug, Clone)]
pub struct Reaper {
    store: Store,
    events: EventBus,
    work: WorkSignal,
    lease_ttl: Duration,
}

impl Reaper {
    /// A reaper for leases of `lease_ttl`, publishing `lease_expired` events to `events`
    /// and firing `work` when units go back to the queue.
    pub fn new(store: Store, events: EventBus, work: WorkSignal, lease_ttl: Duration) -> Reaper {
        Reaper {
            store,
            events,
            work,
            lease_ttl,
        }
    }

    /// Time between sweeps: a sixth of the TTL.
    pub fn interval(&self) -> Duration {
        (self.lease_ttl / 6).max(MIN_INTERVAL)
    }

    /// Resumes the leases of a previous run, then sweeps every [`Reaper::interval`] until
    /// `shutdown` is cancelled. Store errors are logged and the next sweep tries again.
    pub async fn run(self, shutdown: CancellationToken) {
        match self.store.resume_leases(self.lease_ttl).await {
            Ok(0) => {}
            Ok(n) => {
                info!(leases = n, ttl = ?self.lease_ttl, "live leases of a previous run get a full TTL")
            }
            Err(err) => warn!(error = %chain(&err), "failed to resume live leases"),
        }
        let started = Instant::now();
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mark_lost = started.elapsed() >= self.lease_ttl;
            if let Err(err) = self.sweep(mark_lost).await {
                warn!(error = %chain(&err), "lease expiry sweep failed");
            }
        }
    }

    /// One sweep: ends every lease past its expiry (publishing `lease_expired`, and
    /// `unit_failed` for a unit that reached the infrastructure cap) and, with
    /// `mark_lost`, marks agents silent for a TTL as lost. Returns the expired leases.
    pub async fn sweep(&self, mark_lost: bool) -> Result<Vec<ExpiredLease>, StoreError> {
        let expired = self.store.expire_leases(self.lease_ttl).await?;
        for lease in &expired {
            warn!(
                campaign = %lease.unit.campaign,
                unit = %lease.unit.unit,
                lease = %lease.lease,
                agent = %lease.agent,
                epoch = lease.epoch,
                gave_up = lease.gave_up,
                error = %lease.error,
                "lease expired"
            );
            self.publish(lease, "lease_expired", lease.error.clone());
            if lease.gave_up {
                self.publish(
                    lease,
                    "unit_failed",
                    format!("gave up after {MAX_INFRA_ATTEMPTS} infrastructure failures"),
                );
            }
        }
        if !expired.is_empty() {
            self.work.notify();
        }
        if mark_lost {
            for agent in self.store.mark_lost_agents(self.lease_ttl).await? {
                warn!(agent = %agent, ttl = ?self.lease_ttl, "agent lost: no heartbeat within the lease TTL");
            }
        }
        Ok(expired)
    }

    fn publish(&self, lease: &ExpiredLease, kind: &str, detail: String) {
        self.events.publish(CampaignEvent {
            campaign_id: lease.unit.campaign.to_string(),
            kind: kind.to_owned(),
            unit_id: Some(lease.unit.unit.to_string()),
            unit_label: Some(lease.unit.label.clone()),
            detail,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::domain::{AgentGpu, AgentId, AgentRegistration, LeaseRequest};

    const YAML: &str = "campaign: reaped
models: [{ name: m, path: org/m, params_b: 1 }]
gpus: [{ type: H100-80GB, memory_gb: 80, counts: [1] }]
frameworks:
  - { name: vllm, command: \"vllm serve {model.path} --port {port}\", health: /health }
quantizations: [{ name: bf16, bits: 16 }]
workloads:
  - name: chat
    api: chat
    dataset: { kind: random, input_tokens: 8, output_tokens: 8 }
    load: { concurrency: [1] }
    requests: 1
";

    #[tokio::test]
    async fn a_sweep_expires_leases_publishes_and_wakes_long_polls() {
        let dir = tempfile::tempdir().unwrap();
        let (store, now) =
            crate::store::store_with_test_clock(&dir.path().join("db.sqlite"), 1_000_000).await;
        let expansion = crate::matrix::expand_str("t.yaml", YAML).unwrap();
        store.submit(&expansion, YAML, "test").await.unwrap();
        let agent = AgentId("a1".into());
        store
            .register_agent(&AgentRegistration {
                id: agent.clone(),
                hostname: "a1".into(),
                gpus: vec![AgentGpu {
                    index: 0,
                    uuid: "GPU-0".into(),
                    gpu_type: "H100-80GB".into(),
                    name: "H100".into(),
                    memory_gb: 80.0,
                }],
                labels: Default::default(),
                frameworks: vec![],
                version: "0".into(),
                driver_version: String::new(),
                cuda_version: String::new(),
            })
            .await
            .unwrap();
        let ttl = Duration::from_secs(30);
        let lease = store
            .acquire_lease(
                &LeaseRequest {
                    agent: agent.clone(),
                    free_gpu_indices: vec![0],
                    warm_configs: vec![],
                    cpu_slots_free: 0,
                },
                ttl,
            )
            .await
            .unwrap()
            .unwrap();

        let events = EventBus::default();
        let work = WorkSignal::new();
        let reaper = Reaper::new(store.clone(), events.clone(), work.clone(), ttl);
        assert_eq!(reaper.interval(), Duration::from_secs(5));
        let mut received = events.subscribe();
        let mut waiter = work.subscribe();

        assert!(reaper.sweep(true).await.unwrap().is_empty());
        now.fetch_add(31_000, Ordering::SeqCst);
        let expired = reaper.sweep(true).await.unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].lease, lease.lease);
        let event = received.try_recv().unwrap();
        assert_eq!(event.kind, "lease_expired");
        assert_eq!(event.unit_id.as_deref(), Some(lease.unit.unit.as_str()));
        assert!(
            event.detail.contains("sent no heartbeat for 31.0s"),
            "{}",
            event.detail
        );
        tokio::time::timeout(Duration::from_secs(5), waiter.wait())
            .await
            .expect("the sweep wakes long polls");
        let agents = store.list_agents().await.unwrap();
        assert_eq!(agents[0].state, crate::store::AgentState::Lost);
        assert!(reaper.sweep(true).await.unwrap().is_empty(), "idempotent");
    }
}
