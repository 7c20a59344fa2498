//! Idle connections: each connection's [`Activity`] counts its calls in progress (the
//! [`CallCountLayer`] in front of the services opens a count when a call arrives and
//! closes it when its response body is done or dropped), and its [`IdleClock`] tells the
//! connection to close once it has had no call for the idle timeout — or, when it never had
//! one, for the first-call timeout.
//!
//! HTTP/2 lets a server send GOAWAY for this, but hyper offers no idle timeout and no way
//! to ask a connection for one from outside, so the clock ends the connection at the I/O
//! layer: with no call in progress, nothing is lost, and a client dials again for its next
//! call.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::tls::PeerInfo;

#[derive(Debug)]
struct ActivityState {
    calls: AtomicUsize,
    clock: Mutex<Clock>,
}

/// Where a connection's idle time counts from.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the connection was accepted, or its calls last dropped to none.
    since: Instant,
    /// Whether it ever had a call (until then the first-call timeout applies).
    had_a_call: bool,
}

/// One connection's calls in progress, shared by the connection and the calls on it.
#[derive(Debug, Clone)]
pub struct Activity(Arc<ActivityState>);

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

impl Activity {
    /// A connection accepted now, with no call yet.
    pub fn new() -> Activity {
        Activity(Arc::new(ActivityState {
            calls: AtomicUsize::new(0),
            clock: Mutex::new(Clock {
                since: Instant::now(),
                had_a_call: false,
            }),
        }))
    }

    /// Calls in progress.
    pub fn calls(&self) -> usize {
        self.0.calls.load(Ordering::Acquire)
    }

    /// Counts a call until the guard is dropped.
    pub fn call_started(&self) -> CallGuard {
        self.0.calls.fetch_add(1, Ordering::AcqRel);
        self.clock().had_a_call = true;
        CallGuard(self.clone())
    }

    fn clock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.0.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection is due to close: `None` while a call is in progress.
    fn deadline(&self, idle: Option<Duration>, first_call: Duration) -> Option<Instant> {
        let clock = *self.clock();
        if self.calls() > 0 {
            return None;
        }
        if clock.had_a_call {
            idle.map(|idle| clock.since + idle)
        } else {
            Some(clock.since + first_call)
        }
    }
}

/// A call in progress; dropping it ends the count (and starts the idle clock when it was
/// the last).
#[derive(Debug)]
pub struct CallGuard(Activity);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut clock = self.0.clock();
        if self.0.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            clock.since = Instant::now();
        }
    }
}

/// A connection's timer: polled by the connection when it has nothing to read.
#[derive(Debug)]
pub struct IdleClock {
    activity: Activity,
    idle: Option<Duration>,
    first_call: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleClock {
    /// The clock of a connection with `activity`.
    pub fn new(activity: Activity, idle: Option<Duration>, first_call: Duration) -> IdleClock {
        let first = Instant::now() + first_call;
        IdleClock {
            activity,
            idle,
            first_call,
            sleep: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// True once the connection is due to close; otherwise arranges for `cx` to be woken
    /// when it may be.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match self.activity.deadline(self.idle, self.first_call) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => self.sleep.as_mut().reset(deadline),
                // A call is in progress (look again after an idle period), or idle
                // connections are kept.
                None => self
                    .sleep
                    .as_mut()
                    .reset(now + self.idle.unwrap_or(self.first_call)),
            }
        }
    }
}

/// Counts every call of a connection in its [`Activity`] (found in the request's
/// [`PeerInfo`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallCountLayer;

impl<S> Layer<S> for CallCountLayer {
    type Service = CallCount<S>;

    fn layer(&self, inner: S) -> CallCount<S> {
        CallCount { inner }
    }
}

/// The service [`CallCountLayer`] makes.
#[derive(Debug, Clone)]
pub struct CallCount<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for CallCount<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<PeerInfo>()
            .map(|peer| peer.activity.call_started());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match guard {
                // The call lasts until its response body is sent (or dropped): a stream's
                // life.
                Some(guard) => response.map(|body| {
                    Body::new(CountedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that holds its call's count.
struct CountedBody {
    inner: Body,
    _guard: CallGuard,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls the clock once.
    async fn expired(clock: &mut IdleClock) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(clock.poll_expired(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_call_expires_after_the_first_call_timeout() {
        let activity = Activity::new();
        let mut clock = IdleClock::new(
            activity.clone(),
            Some(Duration::from_secs(60)),
            Duration::from_secs(5),
        );
        assert!(!expired(&mut clock).await);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(expired(&mut clock).await);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_hold_the_connection_and_the_idle_clock_starts_when_the_last_ends() {
        let activity = Activity::new();
        let mut clock = IdleClock::new(
            activity.clone(),
            Some(Duration::from_secs(60)),
            Duration::from_secs(5),
        );
        let call = activity.call_started();
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!(
            !expired(&mut clock).await,
            "a call in progress keeps the connection"
        );
        drop(call);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(
            !expired(&mut clock).await,
            "idle for less than the idle timeout"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            expired(&mut clock).await,
            "idle for longer than the idle timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_connection_that_had_a_call_stays() {
        let activity = Activity::new();
        let mut clock = IdleClock::new(activity.clone(), None, Duration::from_secs(5));
        drop(activity.call_started());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!expired(&mut clock).await);
    }
}
