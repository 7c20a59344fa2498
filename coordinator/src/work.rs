//! The "work may be available" signal that wakes long-polling `AcquireLease` calls.
//!
//! Whatever can make a unit runnable, or free GPUs on an agent, fires it: a submission, a
//! retry, a unit that fails with attempts left, a release, a completion, an expiry, an
//! agent registering. A waiter subscribes *before* it looks for work, so a signal fired
//! while it looks is not lost: it wakes the waiter right after.

use std::sync::Arc;

use tokio::sync::watch;

/// Fires and waits for "work may be available". Cheap to clone; clones share the signal.
#[derive(Debug, Clone)]
pub struct WorkSignal {
    /// A counter bumped on every notification; receivers wait for it to change.
    sender: Arc<watch::Sender<u64>>,
}

impl Default for WorkSignal {
    fn default() -> Self {
        WorkSignal::new()
    }
}

impl WorkSignal {
    /// A signal nobody waits on yet.
    pub fn new() -> WorkSignal {
        let (sender, _) = watch::channel(0);
        WorkSignal {
            sender: Arc::new(sender),
        }
    }

    /// Wakes every current waiter.
    pub fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A waiter that [`WorkWaiter::wait`]s for the next notification after this call.
    pub fn subscribe(&self) -> WorkWaiter {
        WorkWaiter(self.sender.subscribe())
    }
}

/// One subscriber of a [`WorkSignal`].
#[derive(Debug)]
pub struct WorkWaiter(watch::Receiver<u64>);

impl WorkWaiter {
    /// Returns once the signal fired since the subscription or the previous `wait`.
    pub async fn wait(&mut self) {
        // The sender lives in the `WorkSignal` this waiter came from, which outlives it in
        // every caller; if it is gone nothing can fire any more, so wait forever.
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_notification_after_subscribing_wakes_the_waiter_once() {
        let signal = WorkSignal::new();
        signal.notify(); // before: not seen
        let mut waiter = signal.subscribe();
        let early = tokio::time::timeout(Duration::from_secs(1), waiter.wait()).await;
        assert!(
            early.is_err(),
            "a notification before subscribing is not seen"
        );
        signal.notify();
        tokio::time::timeout(Duration::from_secs(1), waiter.wait())
            .await
            .expect("woken");
        let again = tokio::time::timeout(Duration::from_secs(1), waiter.wait()).await;
        assert!(again.is_err(), "each notification wakes once");
    }
}
