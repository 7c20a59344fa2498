//! The once-a-period loop of the coordinator's background tasks (scheduler, notifier):
//! ticks that fall late are delayed, not bunched, and the loop ends when the coordinator
//! stops.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks every `period`, the first at once.
pub fn every(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Waits for the next tick; false once `stop` is cancelled.
pub async fn next(interval: &mut Interval, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        _ = interval.tick() => true,
    }
}
