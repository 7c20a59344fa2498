//! Multi-turn load: conversations held turn by turn under the step's load.
//!
//! - **Concurrency `c`** holds `c` conversations at once: a worker starts a conversation,
//!   sends its turns one after another, and starts the next conversation when it ends.
//! - **Rate `r`** starts `r` new conversations per second (the rate's arrival process); each
//!   runs on its own, so conversations overlap as their lengths and think times make them.
//!
//! Each turn is sent with the whole conversation so far, the server's own answers included
//! (the answer text streamed back, without reasoning, as a chat client keeps it). After an
//! answer the conversation pauses for a think time drawn from the dataset's distribution;
//! the next turn is scheduled at the answer's end plus that time, and its client lag is
//! measured from there. A failed turn ends its conversation, as it would for a user.
//!
//! The stop counts requests (turns), not conversations: when the count is reached or the
//! duration is over, no further turn is sent and conversations in progress end early.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::Semaphore;

use evalctl_results::RequestRecord;

use crate::client::now_ns;
use crate::clock;
use crate::conversation::{self, Conversation, Conversations};
use crate::dataset::ChatMessage;
use crate::load::{self, Arrivals, Load, PhaseStop, Shared};
use crate::request::{self, Api, RequestOptions};

/// What a multi-turn step needs beyond the shared request state: the conversations and how
/// to write each turn's body.
#[derive(Debug)]
pub(crate) struct ConversationRun {
    pub conversations: Conversations,
    pub api: Api,
    pub model: String,
    pub options: RequestOptions,
    /// Conversations started so far in the step (their numbers in the records).
    pub started: AtomicU64,
}

/// The requests a phase may still send.
struct Budget {
    stop: PhaseStop,
    claimed: AtomicU64,
}

impl Budget {
    /// Whether no further request may start at `now_ns`.
    fn exhausted(&self, now_ns: u64) -> bool {
        match self.stop {
            PhaseStop::Requests(n) => self.claimed.load(Ordering::Relaxed) >= n,
            PhaseStop::Until(end) => now_ns >= end,
        }
    }

    /// The phase index of a request about to start, or `None` past the stop.
    fn claim(&self) -> Option<u64> {
        match self.stop {
            PhaseStop::Requests(n) => {
                let i = self.claimed.fetch_add(1, Ordering::Relaxed);
                (i < n).then_some(i)
            }
            PhaseStop::Until(end) => {
                (now_ns() < end).then(|| self.claimed.fetch_add(1, Ordering::Relaxed))
            }
        }
    }
}

/// Where a phase's requests are numbered from, and whether they are warmup.
#[derive(Debug, Clone, Copy)]
struct PhaseIndex {
    first: u64,
    warmup: bool,
    seed: u64,
}

/// Runs one phase of a multi-turn step; the records come back in no particular order.
pub(crate) async fn run_phase(
    shared: &Arc<Shared>,
    load: Load,
    stop: PhaseStop,
    first: u64,
    warmup: bool,
    seed: u64,
) -> Vec<RequestRecord> {
    let budget = Arc::new(Budget {
        stop,
        claimed: AtomicU64::new(0),
    });
    let phase = PhaseIndex {
        first,
        warmup,
        seed,
    };
    match load {
        Load::Concurrency(c) => {
            let workers: Vec<_> = (0..c)
                .map(|_| {
                    let (shared, budget) = (Arc::clone(shared), Arc::clone(&budget));
                    tokio::spawn(async move {
                        let mut records = Vec::new();
                        while !budget.exhausted(now_ns()) {
                            let start = now_ns();
                            records.extend(hold(&shared, &budget, phase, None, start).await);
                        }
                        records
                    })
                })
                .collect();
            let mut records = Vec::new();
            for worker in workers {
                records.extend(load::join(worker).await);
            }
            records
        }
        Load::Rate {
            rps,
            arrival,
            max_in_flight,
        } => {
            let limit = max_in_flight.map(|n| Arc::new(Semaphore::new(n as usize)));
            let starts = Arrivals::new(rps, arrival, seed);
            let ends = Arc::clone(&budget);
            // A conversation sends at least one request: never more starts than requests.
            let past_end = move |i: u64, at: u64| {
                matches!(ends.stop, PhaseStop::Requests(n) if i >= n) || ends.exhausted(at)
            };
            let shared = Arc::clone(shared);
            let launch = move |_: u64, at: u64| {
                let (shared, budget, limit) =
                    (Arc::clone(&shared), Arc::clone(&budget), limit.clone());
                async move { hold(&shared, &budget, phase, limit, at).await }
            };
            load::dispatch(Box::new(starts), past_end, launch)
                .await
                .into_iter()
                .flatten()
                .collect()
        }
        // Refused when the plan is checked: a trace holds no conversations.
        Load::Trace { .. } => Vec::new(),
    }
}

/// Seed multiplier spreading conversation numbers over think-time seeds.
const THINK_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Holds the step's next conversation from `start_ns` (its first turn's instant) until its
/// last turn, a failure or the stop; returns a record per turn sent.
async fn hold(
    shared: &Shared,
    budget: &Budget,
    phase: PhaseIndex,
    limit: Option<Arc<Semaphore>>,
    start_ns: u64,
) -> Vec<RequestRecord> {
    let Some(run) = shared.conversations.as_ref() else {
        return Vec::new();
    };
    if budget.exhausted(start_ns) {
        return Vec::new();
    }
    let number = run.started.fetch_add(1, Ordering::Relaxed);
    let list = &run.conversations.list;
    let which = (number % list.len() as u64) as usize;
    let conversation: &Conversation = &list[which];
    let mut think = StdRng::seed_from_u64(phase.seed ^ number.wrapping_mul(THINK_SEED));
    let mut history: Vec<ChatMessage> = Vec::with_capacity(2 * conversation.turns.len() + 1);
    if let Some(system) = &conversation.system {
        history.push(ChatMessage {
            role: "system".into(),
            content: system.clone(),
        });
    }
    let mut history_tokens = conversation.system_tokens;
    let mut scheduled = start_ns;
    let mut records = Vec::with_capacity(conversation.turns.len());
    for (position, turn) in (1u32..).zip(&conversation.turns) {
        if position > 1 {
            let pause_s = conversation::draw(&run.conversations.think_time_s, 0.0, &mut think);
            scheduled = now_ns().saturating_add((pause_s * 1e9) as u64);
            if budget.exhausted(scheduled) {
                break;
            }
            clock::until(scheduled).await;
        }
        let Some(i) = budget.claim() else {
            break;
        };
        history.push(ChatMessage {
            role: "user".into(),
            content: turn.user.clone(),
        });
        let body = request::conversation_body(
            run.api,
            &run.model,
            &history,
            turn.max_tokens,
            &run.options,
        );
        let mut record = RequestRecord {
            index: phase.first + i,
            warmup: phase.warmup,
            prompt_index: which,
            scheduled_ns: scheduled.saturating_sub(shared.epoch_ns),
            input_tokens: history_tokens + turn.user_tokens,
            conversation: Some(number),
            turn: Some(position),
            ..RequestRecord::default()
        };
        let _permit = match &limit {
            Some(sem) => Some(Arc::clone(sem).acquire_owned().await.expect("never closed")),
            None => None,
        };
        let mut answer = String::new();
        shared
            .send(
                body,
                turn.max_tokens,
                &mut record,
                Some(&mut answer),
                scheduled,
            )
            .await;
        let answered = record.succeeded();
        history_tokens += turn.user_tokens + record.output_tokens;
        records.push(record);
        if !answered {
            break;
        }
        history.push(ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
    }
    records
}
