//! The "work may be available" signal that wakes long-polling `AcquireLease` calls.
//!
//! Whatever can make a unit runnable, or free GPUs on an agent, fires it: a submission, a
//! retry, a unit that fails with attempts left, a release, a completion, an expiry, an
//! agent registering. A waiter subscribes *before* it looks for work, so a signal fired
//! while it looks is not lost: it wakes the waiter right after.
//!
//! With thousands of idle agents long-polling, waking every waiter on every signal is a
//! thundering herd: one released unit made ten thousand calls query the store at once,
//! and all but one found nothing. So a signal wakes only the [`WAKE_BATCH`] longest
//! waiting callers, oldest first, and a caller that was granted a unit passes the wake on
//! to the next waiter ([`WorkSignal::pass_on`]): while grants succeed, wakes keep flowing
//! through the queue; once one finds nothing, that chain stops. A large submission thus
//! reaches every idle agent at the rate units are granted, and a single released unit
//! costs a handful of look-ups. A caller nobody wakes still looks again when its long
//! poll ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Waiters woken by one [`WorkSignal::notify`]: more than one, so a unit that the oldest
/// waiter cannot run (wrong GPU type, labels) still reaches an agent that can at once in a
/// mixed fleet.
pub const WAKE_BATCH: usize = 8;

/// Fires and waits for "work may be available". Cheap to clone; clones share the signal.
#[derive(Debug, Clone, Default)]
pub struct WorkSignal {
    queue: Arc<Mutex<Queue>>,
}

/// Waiters in subscription order.
#[derive(Debug, Default)]
struct Queue {
    next_id: u64,
    waiting: BTreeMap<u64, Arc<Notify>>,
}

impl Queue {
    fn push(&mut self, notify: Arc<Notify>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, notify);
        id
    }

    fn wake(&mut self, n: usize) {
        for _ in 0..n {
            let Some((_, notify)) = self.waiting.pop_first() else {
                return;
            };
            // Stores a permit when the waiter is not parked yet (it is still looking).
            notify.notify_one();
        }
    }
}

impl WorkSignal {
    /// A signal nobody waits on yet.
    pub fn new() -> WorkSignal {
        WorkSignal::default()
    }

    /// Wakes the [`WAKE_BATCH`] longest waiting subscribers.
    pub fn notify(&self) {
        self.lock().wake(WAKE_BATCH);
    }

    /// Wakes the longest waiting subscriber: a caller that was just granted a unit calls
    /// this, as there may be more work.
    pub fn pass_on(&self) {
        self.lock().wake(1);
    }

    /// Subscribers waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// A waiter that [`WorkWaiter::wait`]s for the next notification that reaches it after
    /// this call.
    pub fn subscribe(&self) -> WorkWaiter {
        let notify = Arc::new(Notify::new());
        let id = self.lock().push(Arc::clone(&notify));
        WorkWaiter {
            signal: self.clone(),
            notify,
            id: Some(id),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (each operation is a
        // single map update), so a poisoned lock is still usable.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One subscriber of a [`WorkSignal`]; leaves the queue when dropped.
#[derive(Debug)]
pub struct WorkWaiter {
    signal: WorkSignal,
    notify: Arc<Notify>,
    /// Its place in the queue; `None` right after it was woken, until it queues again.
    id: Option<u64>,
}

impl WorkWaiter {
    /// Returns once a notification reached this waiter since the subscription or the
    /// previous `wait`. On return it is already queued again (at the back), so a signal
    /// fired while the caller looks for work reaches it.
    pub async fn wait(&mut self) {
        if self.id.is_none() {
            self.id = Some(self.signal.lock().push(Arc::clone(&self.notify)));
        }
        self.notify.notified().await;
        // The waker removed it from the queue.
        self.id = Some(self.signal.lock().push(Arc::clone(&self.notify)));
    }
}

impl Drop for WorkWaiter {
    fn drop(&mut self) {
        let mut queue = self.signal.lock();
        let removed = self.id.and_then(|id| queue.waiting.remove(&id)).is_some();
        // A wake that reached this waiter after its last look is not lost: the next
        // waiter gets it.
        if !removed && self.id.is_some() {
            queue.wake(1);
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

    #[tokio::test(start_paused = true)]
    async fn a_notification_wakes_a_batch_of_the_oldest_waiters_not_the_herd() {
        let signal = WorkSignal::new();
        let mut waiters: Vec<WorkWaiter> =
            (0..WAKE_BATCH * 3).map(|_| signal.subscribe()).collect();
        signal.notify();
        let mut woken = Vec::new();
        for (i, waiter) in waiters.iter_mut().enumerate() {
            if tokio::time::timeout(Duration::from_millis(10), waiter.wait())
                .await
                .is_ok()
            {
                woken.push(i);
            }
        }
        assert_eq!(woken, (0..WAKE_BATCH).collect::<Vec<_>>());
        // Every waiter is queued again; the woken ones now at the back.
        assert_eq!(signal.waiting(), WAKE_BATCH * 3);
        signal.pass_on();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), waiters[WAKE_BATCH].wait())
                .await
                .is_ok(),
            "pass_on wakes the next oldest"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_fired_while_looking_is_kept_and_a_dropped_waiters_wake_moves_on() {
        let signal = WorkSignal::new();
        let mut a = signal.subscribe();
        let b = signal.subscribe();
        // Fired while `a` looks (it has not started waiting): the wake is kept.
        signal.pass_on();
        tokio::time::timeout(Duration::from_secs(1), a.wait())
            .await
            .expect("the wake fired before waiting is kept");
        // `b` is woken, then ends without looking again: its wake goes to `a`.
        signal.pass_on();
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), a.wait())
            .await
            .expect("the dropped waiter's wake reached the next one");
        assert_eq!(signal.waiting(), 1, "only `a` is queued");
    }
}
