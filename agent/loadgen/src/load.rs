//! Load patterns: fixed concurrency, a request rate with Poisson, gamma or constant arrivals,
//! or a trace's own arrivals.
//!
//! - **Concurrency `c`**: `c` workers each send their next request the moment their previous
//!   one ends. Nothing waits in a client-side queue, so the scheduled instant is the instant
//!   the worker picks the request up.
//! - **Rate `r`**: arrival instants are drawn up front from a seeded generator (the first at
//!   0). `inf` schedules every request at 0. The optional in-flight cap delays sends, and that
//!   delay shows as client lag.
//! - **Trace**: request `i` arrives at the trace's `i`-th offset divided by the time scale
//!   (ties, i.e. bursts, arrive together).
//!
//! Scheduled sends come from a dispatcher on a thread of its own, which waits for each
//! instant with the kernel's high-resolution timer (tokio's timers have millisecond
//! resolution, which alone would put up to a millisecond between scheduled and sent) and
//! hands the request to the runtime a few milliseconds early. The request arms itself then
//! (a ready connection, the request built; [`crate::client::SendOptions::fire_at_ns`]) and
//! at its instant only the write is left, so a burst leaves as fast as the socket writes go.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp, Gamma};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::client::{Client, SendOptions, now_ns};
use super::dataset::Prompt;
use super::multi_turn::{self, ConversationRun};
use evalctl_results::RequestRecord;

/// How requests arrive in rate mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Arrival {
    /// Exponential gaps: a Poisson process.
    Poisson,
    /// Gamma-distributed gaps with shape `burstiness` (1.0 = Poisson, < 1 burstier, > 1
    /// smoother), mean 1 / rate — as vLLM's `--burstiness`.
    Gamma {
        /// Gamma shape.
        burstiness: f64,
    },
    /// Equal gaps of 1 / rate.
    Constant,
}

/// The load a step applies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// This many requests in flight at all times.
    Concurrency(u32),
    /// Requests per second.
    Rate {
        /// Requests per second; `f64::INFINITY` sends everything at once.
        rps: f64,
        /// Arrival process.
        arrival: Arrival,
        /// At most this many requests in flight; later arrivals wait (and lag).
        max_in_flight: Option<u32>,
    },
    /// The dataset's arrivals (a trace), divided by `time_scale` (10 = ten times faster).
    Trace {
        /// Speed-up of the trace's clock, > 0.
        time_scale: f64,
    },
}

impl Load {
    /// Checks the numbers a step cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Load::Concurrency(0) => Err("concurrency must be at least 1".into()),
            Load::Concurrency(_) => Ok(()),
            Load::Rate {
                rps,
                arrival,
                max_in_flight,
            } => {
                if rps.is_nan() || rps <= 0.0 {
                    return Err(format!("rate must be > 0 requests/s, got {rps}"));
                }
                if let Arrival::Gamma { burstiness } = arrival
                    && !(burstiness.is_finite() && burstiness > 0.0)
                {
                    return Err(format!("burstiness must be > 0, got {burstiness}"));
                }
                if max_in_flight == Some(0) {
                    return Err("max_in_flight must be at least 1".into());
                }
                Ok(())
            }
            Load::Trace { time_scale } if !(time_scale.is_finite() && time_scale > 0.0) => {
                Err(format!("the time scale must be > 0, got {time_scale}"))
            }
            Load::Trace { .. } => Ok(()),
        }
    }
}

/// When a phase stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PhaseStop {
    /// After this many requests.
    Requests(u64),
    /// At this instant (process clock, ns); requests in flight then still finish.
    Until(u64),
}

/// Seeded arrival offsets in seconds from the phase start; the first is 0.
pub(crate) struct Arrivals {
    gaps: Gaps,
    rng: StdRng,
    next: f64,
}

enum Gaps {
    Zero,
    Fixed(f64),
    Exp(Exp<f64>),
    Gamma(Gamma<f64>),
}

impl Arrivals {
    /// Arrivals at `rps` per second; `validate` must have accepted the load. A rate too extreme
    /// for a distribution (its gaps underflow to zero) degrades to constant gaps.
    pub fn new(rps: f64, arrival: Arrival, seed: u64) -> Arrivals {
        let gaps = if rps.is_infinite() {
            Gaps::Zero
        } else {
            let fixed = Gaps::Fixed(1.0 / rps);
            match arrival {
                Arrival::Constant => fixed,
                Arrival::Poisson => Exp::new(rps).map_or(fixed, Gaps::Exp),
                Arrival::Gamma { burstiness } => {
                    Gamma::new(burstiness, 1.0 / (rps * burstiness)).map_or(fixed, Gaps::Gamma)
                }
            }
        };
        Arrivals {
            gaps,
            rng: StdRng::seed_from_u64(seed),
            next: 0.0,
        }
    }
}

impl Iterator for Arrivals {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        let at = self.next;
        self.next += match &self.gaps {
            Gaps::Zero => 0.0,
            Gaps::Fixed(gap) => *gap,
            Gaps::Exp(d) => d.sample(&mut self.rng),
            Gaps::Gamma(d) => d.sample(&mut self.rng),
        };
        Some(at)
    }
}

/// Live counts for progress reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// What every request of a step shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub client: Client,
    pub path: &'static str,
    pub prompts: Arc<[Prompt]>,
    /// One serialised body per prompt.
    pub bodies: Vec<Bytes>,
    /// A trace's arrivals, in ms from the first, one per prompt.
    pub arrivals_ms: Option<Arc<[f64]>>,
    /// The step's epoch on the process clock.
    pub epoch_ns: u64,
    pub counters: Counters,
    /// For a multi-turn step: its conversations, sent turn by turn.
    pub conversations: Option<ConversationRun>,
}

impl Shared {
    /// Sends request `index` (scheduled at `scheduled_ns`, process clock) and records it.
    async fn run_one(&self, index: u64, warmup: bool, scheduled_ns: u64) -> RequestRecord {
        let prompt_index = (index % self.prompts.len() as u64) as usize;
        let prompt = &self.prompts[prompt_index];
        let mut record = RequestRecord {
            index,
            warmup,
            prompt_index,
            scheduled_ns: scheduled_ns.saturating_sub(self.epoch_ns),
            input_tokens: prompt.input_tokens,
            ..RequestRecord::default()
        };
        self.send(
            self.bodies[prompt_index].clone(),
            prompt.max_tokens,
            &mut record,
            None,
            scheduled_ns,
        )
        .await;
        record
    }

    /// Sends `body` at `fire_at_ns` (process clock; at once when past) and fills `record`
    /// (and `answer`, when given), counting it for progress.
    pub(crate) async fn send(
        &self,
        body: Bytes,
        max_tokens: u32,
        record: &mut RequestRecord,
        answer: Option<&mut String>,
        fire_at_ns: u64,
    ) {
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        let options = SendOptions { answer, fire_at_ns };
        self.client
            .stream_with(
                self.path,
                body,
                self.epoch_ns,
                max_tokens as usize,
                record,
                options,
            )
            .await;
        let counter = if record.succeeded() {
            &self.counters.completed
        } else {
            &self.counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs one phase (warmup or measured) of `load` from request index `first`, and returns its
/// records in index order.
pub(crate) async fn run_phase(
    shared: &Arc<Shared>,
    load: Load,
    stop: PhaseStop,
    first: u64,
    warmup: bool,
    seed: u64,
) -> Vec<RequestRecord> {
    let mut records = match load {
        _ if shared.conversations.is_some() => {
            multi_turn::run_phase(shared, load, stop, first, warmup, seed).await
        }
        Load::Concurrency(c) => concurrency(shared, c, stop, first, warmup).await,
        Load::Rate {
            rps,
            arrival,
            max_in_flight,
        } => {
            let arrivals = Arrivals::new(rps, arrival, seed);
            scheduled(
                shared,
                Box::new(arrivals),
                max_in_flight,
                stop,
                first,
                warmup,
            )
            .await
        }
        Load::Trace { time_scale } => {
            let arrivals = shared.arrivals_ms.clone().unwrap_or_else(|| Arc::from([]));
            // Request `first + i` sends prompt `first + i`: the trace's own order.
            let offsets = (first as usize..arrivals.len())
                .map(move |i| (arrivals[i] - arrivals[first as usize]) / 1000.0 / time_scale);
            scheduled(shared, Box::new(offsets), None, stop, first, warmup).await
        }
    };
    records.sort_unstable_by_key(|r| r.index);
    records
}

async fn concurrency(
    shared: &Arc<Shared>,
    c: u32,
    stop: PhaseStop,
    first: u64,
    warmup: bool,
) -> Vec<RequestRecord> {
    let workers = match stop {
        PhaseStop::Requests(n) => u64::from(c).min(n),
        PhaseStop::Until(_) => u64::from(c),
    };
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let shared = Arc::clone(shared);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut records = Vec::new();
                loop {
                    let now = now_ns();
                    let i = match stop {
                        PhaseStop::Requests(n) => {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            i
                        }
                        PhaseStop::Until(end) => {
                            if now >= end {
                                break;
                            }
                            next.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    records.push(shared.run_one(first + i, warmup, now).await);
                }
                records
            })
        })
        .collect();
    let mut records = Vec::new();
    for handle in handles {
        records.extend(join(handle).await);
    }
    records
}

/// Sends request `first + i` at `offsets_s[i]` seconds from now, from a dispatcher thread
/// (see the module docs), and returns the records. Dropping the future stops the dispatcher
/// at its next wait; requests already sent finish on their own.
async fn scheduled(
    shared: &Arc<Shared>,
    offsets_s: Box<dyn Iterator<Item = f64> + Send>,
    max_in_flight: Option<u32>,
    stop: PhaseStop,
    first: u64,
    warmup: bool,
) -> Vec<RequestRecord> {
    let limit = max_in_flight.map(|n| Arc::new(Semaphore::new(n as usize)));
    let shared = Arc::clone(shared);
    let past_end = move |i: u64, scheduled: u64| match stop {
        PhaseStop::Requests(n) => i >= n,
        PhaseStop::Until(end) => scheduled >= end,
    };
    let launch = move |i: u64, scheduled: u64| {
        let (shared, limit) = (Arc::clone(&shared), limit.clone());
        async move {
            let _permit = match limit {
                Some(sem) => Some(sem.acquire_owned().await.expect("never closed")),
                None => None,
            };
            shared.run_one(first + i, warmup, scheduled).await
        }
    };
    dispatch(offsets_s, past_end, launch).await
}

/// Starts `launch(i, instant)` a little before each instant `offsets_s[i]` seconds from now
/// (the task waits for its instant itself, with [`until`]), from a dispatcher thread, until
/// `past_end(i, instant)`; returns what the launched tasks return.
/// Dropping the future stops the dispatcher at its next wait; tasks already started finish
/// on their own.
pub(crate) async fn dispatch<T, F>(
    offsets_s: Box<dyn Iterator<Item = f64> + Send>,
    past_end: impl Fn(u64, u64) -> bool + Send + 'static,
    launch: impl Fn(u64, u64) -> F + Send + 'static,
) -> Vec<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let dispatcher = move || {
        let start = now_ns();
        let mut handles = Vec::new();
        for (i, offset_s) in (0u64..).zip(offsets_s) {
            let scheduled = start + (offset_s * 1e9) as u64;
            if past_end(i, scheduled) {
                break;
            }
            // Handed to the runtime a little early; the task itself waits out the rest.
            if !wait_until(&cancelled, scheduled.saturating_sub(HAND_OVER_LEAD_NS)) {
                break;
            }
            // The task arms its request and fires it at `scheduled` itself.
            handles.push(runtime.spawn(launch(i, scheduled)));
        }
        handles
    };
    let handles = join(tokio::task::spawn_blocking(dispatcher)).await;
    drop(cancel);
    let mut done = Vec::with_capacity(handles.len());
    for handle in handles {
        done.push(join(handle).await);
    }
    done
}

/// How long before its instant a request is handed to the runtime: the dispatcher thread's
/// wake-up, the hand-over to a worker and arming the request (a pooled connection checked
/// out and ready, the request built) take hundreds of microseconds on a busy machine.
const HAND_OVER_LEAD_NS: u64 = 5_000_000;
/// Sleeps until `at_ns` on the process clock; false when the phase was dropped first
/// (`cancelled` disconnected).
fn wait_until(cancelled: &std::sync::mpsc::Receiver<()>, at_ns: u64) -> bool {
    loop {
        let now = now_ns();
        if now >= at_ns {
            return true;
        }
        match cancelled.recv_timeout(Duration::from_nanos(at_ns - now)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Awaits a request task; a panic in it is a bug and is re-raised.
pub(crate) async fn join<T>(handle: tokio::task::JoinHandle<T>) -> T {
    match handle.await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_gap(rps: f64, arrival: Arrival) -> (f64, f64) {
        let offsets: Vec<f64> = Arrivals::new(rps, arrival, 42).take(20_001).collect();
        let gaps: Vec<f64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn arrivals_have_the_asked_rate_and_shape() {
        let (mean, cv) = mean_gap(10.0, Arrival::Constant);
        assert!((mean - 0.1).abs() < 1e-9 && cv < 1e-6);
        let (mean, cv) = mean_gap(10.0, Arrival::Poisson);
        assert!((mean - 0.1).abs() < 0.005, "poisson mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "poisson cv {cv}");
        // Gamma with shape k has coefficient of variation 1 / sqrt(k).
        let (mean, cv) = mean_gap(10.0, Arrival::Gamma { burstiness: 0.25 });
        assert!((mean - 0.1).abs() < 0.01, "gamma mean gap {mean}");
        assert!((cv - 2.0).abs() < 0.15, "gamma cv {cv}");
        let (_, cv) = mean_gap(10.0, Arrival::Gamma { burstiness: 4.0 });
        assert!((cv - 0.5).abs() < 0.05, "gamma cv {cv}");
    }

    #[test]
    fn arrivals_are_seeded_and_start_at_zero() {
        let a: Vec<f64> = Arrivals::new(5.0, Arrival::Poisson, 7).take(10).collect();
        let b: Vec<f64> = Arrivals::new(5.0, Arrival::Poisson, 7).take(10).collect();
        let c: Vec<f64> = Arrivals::new(5.0, Arrival::Poisson, 8).take(10).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a[0], 0.0);
        let inf: Vec<f64> = Arrivals::new(f64::INFINITY, Arrival::Poisson, 1)
            .take(5)
            .collect();
        assert_eq!(inf, vec![0.0; 5]);
    }

    #[test]
    fn validation() {
        assert!(Load::Concurrency(0).validate().is_err());
        assert!(Load::Concurrency(1).validate().is_ok());
        let rate = |rps, arrival| Load::Rate {
            rps,
            arrival,
            max_in_flight: None,
        };
        assert!(rate(0.0, Arrival::Poisson).validate().is_err());
        assert!(rate(f64::NAN, Arrival::Poisson).validate().is_err());
        assert!(rate(f64::INFINITY, Arrival::Poisson).validate().is_ok());
        assert!(
            rate(1.0, Arrival::Gamma { burstiness: 0.0 })
                .validate()
                .is_err()
        );
    }
}
