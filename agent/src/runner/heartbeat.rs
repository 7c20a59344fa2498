//! Heartbeats: every interval (at most a third of the lease TTL) the agent reports each held
//! lease with its epoch and progress. The reply renews the leases that are still this
//! agent's and names the ones that are not (expired during a partition, re-leased,
//! cancelled): those units stop at once. A drain order arrives the same way.
//!
//! Heartbeats never pause: not while a step runs, not while the agent drains or shuts down.
//! They stop only when every unit task has ended.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use evalctl_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Ctx, StopReason};

/// Sends heartbeats until `stop` fires.
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        let interval = ctx.timing().heartbeat_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        match beat(&ctx, &stop).await {
            Ok(_) => {}
            Err(status) => warn!(
                code = ?status.code(),
                message = status.message(),
                "heartbeat failed; leases may expire if this lasts"
            ),
        }
    }
}

/// One heartbeat: reports the held leases, stops the revoked ones, and returns the ids the
/// coordinator confirmed.
pub async fn beat(ctx: &Ctx, stop: &CancellationToken) -> Result<HashSet<String>, tonic::Status> {
    let slots = ctx.slots();
    let mut request = tonic::Request::new(pb::HeartbeatRequest {
        agent_id: ctx.agent_id.clone(),
        leases: slots
            .iter()
            .map(|slot| pb::LeaseProgress {
                lease_id: slot.lease_id.clone(),
                epoch: slot.epoch,
                steps_finished: slot.steps_finished.load(Ordering::Relaxed),
                current_step: slot.current_step.load(Ordering::Relaxed),
            })
            .collect(),
        draining: ctx.draining.load(Ordering::Relaxed),
    });
    // A heartbeat that cannot finish within the interval is late anyway.
    request.set_timeout(
        ctx.timing()
            .heartbeat_interval
            .max(std::time::Duration::from_secs(1)),
    );
    let reply = match ctx.client.clone().heartbeat(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            super::reregister(ctx, stop).await;
            return Err(status);
        }
        Err(status) => return Err(status),
    };
    for lease_id in &reply.revoked_lease_ids {
        if let Some(slot) = slots.iter().find(|s| &s.lease_id == lease_id) {
            if slot.has_ended() {
                // A heartbeat that crossed the lease's Complete, Fail or Release.
                debug!(lease = %lease_id, "a lease that just ended is no longer the agent's");
                continue;
            }
            warn!(lease = %lease_id, "the coordinator revoked this lease; stopping its unit");
            slot.stop_with(StopReason::Revoked);
        }
    }
    if reply.drain && !ctx.draining.swap(true, Ordering::Relaxed) {
        info!("the coordinator asked this agent to drain: finishing running units, taking no more");
        ctx.capacity.notify_one();
    }
    Ok(reply.valid_lease_ids.into_iter().collect())
}
