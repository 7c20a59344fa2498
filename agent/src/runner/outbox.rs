//! Streams the outbox to the coordinator: every batch in the state's outbox is sent on one
//! `ReportResults` stream, and deleted when its acknowledgement arrives (accepted, or
//! refused for good: a stale epoch means the unit belongs to another lease now). A broken
//! stream is reopened with backoff and every unacknowledged batch is sent again; the
//! coordinator's idempotency key makes repeats harmless.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use evalctl_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{Backoff, Ctx};

/// Batches in flight on the stream before the sender waits for acknowledgements.
const WINDOW: usize = 64;

/// Sends the outbox until `stop` fires.
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut backoff = Backoff::new();
    while !stop.is_cancelled() {
        match stream_once(&ctx, &stop).await {
            Ok(()) => backoff.reset(),
            Err(status) => {
                warn!(code = ?status.code(), message = status.message(), "result stream broke; reopening");
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        }
    }
}

/// One stream's life: returns Ok when `stop` fired, Err when the stream broke.
async fn stream_once(ctx: &Ctx, stop: &CancellationToken) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel::<pb::ResultBatch>(WINDOW);
    let mut client = ctx.client.clone();
    let call = client.report_results(ReceiverStream::new(rx));
    // The first batch goes out before the call returns: tonic answers once headers arrive.
    let mut in_flight: HashSet<u64> = HashSet::new();
    send_pending(ctx, &tx, &mut in_flight).await;
    let mut acks = tokio::select! {
        response = call => response?.into_inner(),
        _ = stop.cancelled() => return Ok(()),
    };
    loop {
        send_pending(ctx, &tx, &mut in_flight).await;
        tokio::select! {
            _ = ctx.outbox_changed.notified() => {}
            ack = acks.message() => match ack? {
                Some(ack) => {
                    in_flight.remove(&ack.sequence);
                    if !ack.accepted {
                        warn!(
                            unit = %ack.unit_id,
                            attempt = ack.attempt,
                            sequence = ack.sequence,
                            error = %ack.error,
                            "the coordinator refused a result batch; dropping it"
                        );
                    } else {
                        debug!(sequence = ack.sequence, "result batch acknowledged");
                    }
                    if let Err(err) = ctx.state.ack(ack.sequence) {
                        error!(sequence = ack.sequence, error = %err, "failed to delete an acknowledged batch");
                    }
                    ctx.acked.send_modify(|n| *n += 1);
                }
                None => return Err(tonic::Status::unavailable("the coordinator closed the result stream")),
            },
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// Sends outbox batches not yet on this stream, up to the window.
async fn send_pending(ctx: &Ctx, tx: &mpsc::Sender<pb::ResultBatch>, in_flight: &mut HashSet<u64>) {
    let batches = match ctx.state.outbox() {
        Ok(batches) => batches,
        Err(err) => {
            error!(error = %err, "failed to read the outbox");
            return;
        }
    };
    for batch in batches {
        if in_flight.len() >= WINDOW {
            return;
        }
        if in_flight.insert(batch.sequence) && tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Waits until the outbox holds no batch of `lease_id`, or `stop` fires; true when empty.
pub async fn wait_delivered(ctx: &Ctx, lease_id: &str, stop: &CancellationToken) -> bool {
    let mut acked = ctx.acked.subscribe();
    loop {
        match ctx.state.outbox() {
            Ok(batches) if !batches.iter().any(|b| b.lease_id == lease_id) => return true,
            Ok(_) => {}
            Err(err) => error!(error = %err, "failed to read the outbox"),
        }
        tokio::select! {
            _ = acked.changed() => {}
            // Safety net in case an acknowledgement raced the subscription.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return false,
        }
    }
}

/// Waits up to `timeout` for the whole outbox to be acknowledged (shutdown).
pub async fn flush(ctx: &Ctx, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut acked = ctx.acked.subscribe();
    loop {
        let left = ctx.state.outbox_len().unwrap_or(0);
        if left == 0 {
            return;
        }
        ctx.outbox_changed.notify_one();
        tokio::select! {
            _ = acked.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                warn!(unacknowledged = left, "results not acknowledged before the flush deadline; they stay in the outbox and are sent on the next start");
                return;
            }
        }
    }
}
