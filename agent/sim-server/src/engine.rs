//! The simulated engine: running slots, and the token clock of each generation.
//!
//! At most `max_num_seqs` requests run at once (as vLLM's `--max-num-seqs`); the rest wait for a
//! slot and show in `sim:num_requests_waiting`. A running request produces its tokens on the
//! schedule of [`LatencyModel`], by sleeping on tokio timers until each token's absolute
//! deadline. Everything a request holds is released by `Drop`, so a client that disconnects
//! mid-stream frees its slot at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::latency::LatencyModel;
use super::metrics::Stats;
use super::prefix_cache::PrefixCache;
use evalctl_tokenizer as tokenizer;

/// Shared state of the simulated engine.
#[derive(Debug)]
pub(crate) struct Engine {
    latency: LatencyModel,
    slots: Arc<Semaphore>,
    seed: u64,
    next_seq: AtomicU64,
    /// The prefix cache, when enabled.
    prefix_cache: Option<std::sync::Mutex<PrefixCache>>,
    /// Counters shown at `/metrics`.
    pub stats: Stats,
    /// Cancelled at shutdown: every generation stops at its next token.
    pub cancel: CancellationToken,
}

impl Engine {
    pub fn new(
        latency: LatencyModel,
        max_num_seqs: usize,
        seed: u64,
        prefix_cache_tokens: Option<usize>,
        cancel: CancellationToken,
    ) -> Self {
        Engine {
            latency,
            slots: Arc::new(Semaphore::new(max_num_seqs.min(Semaphore::MAX_PERMITS))),
            seed,
            next_seq: AtomicU64::new(0),
            prefix_cache: prefix_cache_tokens
                .map(|tokens| std::sync::Mutex::new(PrefixCache::new(tokens))),
            stats: Stats::default(),
            cancel,
        }
    }

    /// Empties the prefix cache (when there is one).
    pub fn reset_prefix_cache(&self) {
        if let Some(cache) = &self.prefix_cache {
            cache.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
    }

    /// Waits for a running slot and starts a generation of `max_tokens` tokens after the
    /// prompt `prompt`: its tokens the prefix cache has skip the prefill cost. `None` when the
    /// server shuts down first.
    pub async fn start(self: &Arc<Self>, prompt: &[u32], max_tokens: u32) -> Option<Generation> {
        let prompt_tokens = prompt.len() as u64;
        let permit = {
            let _waiting = Gauge::enter(self, |s| &s.waiting);
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                permit = Arc::clone(&self.slots).acquire_owned() => permit.ok()?,
            }
        };
        self.stats
            .prompt_tokens
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        let cached = match &self.prefix_cache {
            Some(cache) => {
                let hits = cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lookup_and_insert(prompt);
                self.stats
                    .prefix_cache_queries
                    .fetch_add(prompt_tokens, Ordering::Relaxed);
                self.stats
                    .prefix_cache_hits
                    .fetch_add(hits, Ordering::Relaxed);
                hits
            }
            None => 0,
        };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let rng = StdRng::seed_from_u64(self.seed ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Some(Generation {
            _running: Gauge::enter(self, |s| &s.running),
            _permit: permit,
            engine: Arc::clone(self),
            next_at: Instant::now() + self.latency.prefill(prompt_tokens - cached),
            produced: 0,
            max_tokens,
            rng,
            sequence: self.prefix_cache.as_ref().map(|_| {
                let mut ids = Vec::with_capacity(prompt.len() + max_tokens as usize);
                ids.extend_from_slice(prompt);
                ids
            }),
        })
    }
}

/// One request's generation while it holds a running slot.
#[derive(Debug)]
pub(crate) struct Generation {
    _running: Gauge,
    _permit: OwnedSemaphorePermit,
    engine: Arc<Engine>,
    /// When the next token is ready.
    next_at: Instant,
    produced: u32,
    max_tokens: u32,
    rng: StdRng,
    /// With a prefix cache: the prompt and the tokens generated so far, cached whole when
    /// the generation ends (as vLLM caches a finished request's full blocks, so the next
    /// turn of a conversation, which carries this answer, hits it).
    sequence: Option<Vec<u32>>,
}

/// Why a generation stopped before its last token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cancelled;

impl Generation {
    /// Tokens still to generate.
    pub fn remaining(&self) -> u32 {
        self.max_tokens - self.produced
    }

    /// Waits until the next token is ready and appends its text to `out`.
    pub async fn next_token(&mut self, out: &mut String) -> Result<(), Cancelled> {
        debug_assert!(self.remaining() > 0, "next_token after the last token");
        if self.produced > 0 {
            let running = self.engine.stats.running.load(Ordering::Relaxed);
            self.next_at += self.engine.latency.decode_step(running);
        }
        if self.next_at > Instant::now() {
            tokio::select! {
                biased;
                () = self.engine.cancel.cancelled() => return Err(Cancelled),
                () = tokio::time::sleep_until(self.next_at) => {}
            }
        } else if self.engine.cancel.is_cancelled() {
            return Err(Cancelled);
        }
        let word = tokenizer::push_token_text(&mut self.rng, self.produced == 0, out);
        self.produced += 1;
        let stats = &self.engine.stats;
        stats.generation_tokens.fetch_add(1, Ordering::Relaxed);
        if let Some(sequence) = &mut self.sequence {
            sequence.push(tokenizer::token_id(word));
        }
        if self.remaining() == 0 {
            stats.requests_finished.fetch_add(1, Ordering::Relaxed);
            if let (Some(sequence), Some(cache)) = (&self.sequence, &self.engine.prefix_cache) {
                cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sequence);
            }
        }
        Ok(())
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.remaining() > 0 {
            self.engine
                .stats
                .requests_aborted
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Holds one unit of a gauge of [`Stats`] for as long as it lives.
struct Gauge {
    engine: Arc<Engine>,
    field: fn(&Stats) -> &std::sync::atomic::AtomicUsize,
}

impl Gauge {
    fn enter(engine: &Arc<Engine>, field: fn(&Stats) -> &std::sync::atomic::AtomicUsize) -> Self {
        field(&engine.stats).fetch_add(1, Ordering::Relaxed);
        Gauge {
            engine: Arc::clone(engine),
            field,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.field)(&self.engine.stats).fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauge")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn engine(max_num_seqs: usize) -> Arc<Engine> {
        let latency = LatencyModel {
            prefill_us_per_token: 1000.0,
            decode_ms_per_token: 10.0,
            decode_ms_per_extra_request: 1.0,
        };
        Arc::new(Engine::new(
            latency,
            max_num_seqs,
            1,
            Some(1 << 16),
            CancellationToken::new(),
        ))
    }

    fn prompt(tokens: u32) -> Vec<u32> {
        (0..tokens).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_answer_is_cached_for_the_next_turn() {
        let e = engine(8);
        let first = prompt(30);
        let mut answer = String::new();
        let mut turn = e.start(&first, 20).await.unwrap();
        for _ in 0..20 {
            turn.next_token(&mut answer).await.unwrap();
        }
        drop(turn);
        // The next turn: the first prompt, the answer, and 14 new tokens.
        let mut next = first.clone();
        next.extend(tokenizer::tokenize(&answer));
        next.extend(1000..1014);
        assert_eq!(next.len(), 64);
        let start = Instant::now();
        let mut second = e.start(&next, 1).await.unwrap();
        second.next_token(&mut String::new()).await.unwrap();
        // 48 tokens (3 blocks of prompt and answer) hit; 16 are prefilled.
        assert_eq!(e.stats.prefix_cache_hits.load(Ordering::Relaxed), 48);
        assert_eq!(start.elapsed(), Duration::from_millis(16));
    }

    #[tokio::test(start_paused = true)]
    async fn cached_prefix_tokens_skip_the_prefill() {
        let e = engine(8);
        let long = prompt(100);
        let start = Instant::now();
        let mut cold = e.start(&long, 1).await.unwrap();
        cold.next_token(&mut String::new()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        drop(cold);
        // 96 of the 100 tokens hit: 4 ms of prefill left.
        let start = Instant::now();
        let mut warm = e.start(&long, 1).await.unwrap();
        warm.next_token(&mut String::new()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(4));
        assert_eq!(e.stats.prefix_cache_queries.load(Ordering::Relaxed), 200);
        assert_eq!(e.stats.prefix_cache_hits.load(Ordering::Relaxed), 96);
        e.reset_prefix_cache();
        let start = Instant::now();
        let mut reset = e.start(&long, 1).await.unwrap();
        reset.next_token(&mut String::new()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_follow_the_latency_model() {
        let e = engine(8);
        let start = Instant::now();
        let mut g = e.start(&prompt(20), 3).await.unwrap();
        let mut text = String::new();
        let mut at = Vec::new();
        while g.remaining() > 0 {
            g.next_token(&mut text).await.unwrap();
            at.push(start.elapsed());
        }
        let ms = Duration::from_millis;
        assert_eq!(at, vec![ms(20), ms(30), ms(40)]);
        assert_eq!(tokenizer::count_tokens(&text), 3);
        assert_eq!(e.stats.requests_finished.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(e.stats.running.load(Ordering::Relaxed), 0);
        assert_eq!(e.stats.requests_aborted.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn decode_slows_with_running_requests() {
        let e = engine(8);
        let mut a = e.start(&prompt(0), 2).await.unwrap();
        let _b = e.start(&prompt(0), 2).await.unwrap();
        let _c = e.start(&prompt(0), 2).await.unwrap();
        let start = Instant::now();
        let mut text = String::new();
        a.next_token(&mut text).await.unwrap();
        a.next_token(&mut text).await.unwrap();
        // Three running: 10 ms + 2 × 1 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(12));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_slot_and_frees_it_on_drop() {
        let e = engine(1);
        let first = e.start(&prompt(0), 5).await.unwrap();
        let e2 = Arc::clone(&e);
        let second = tokio::spawn(async move { e2.start(&prompt(0), 1).await });
        tokio::task::yield_now().await;
        assert_eq!(e.stats.waiting.load(Ordering::Relaxed), 1);
        drop(first);
        let second = second.await.unwrap().expect("admitted once the first left");
        assert_eq!(e.stats.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(e.stats.running.load(Ordering::Relaxed), 1);
        assert_eq!(e.stats.requests_aborted.load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(e.stats.running.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_generation() {
        let e = engine(4);
        let mut g = e.start(&prompt(0), 5).await.unwrap();
        let mut text = String::new();
        g.next_token(&mut text).await.unwrap();
        e.cancel.cancel();
        assert_eq!(g.next_token(&mut text).await, Err(Cancelled));
        assert!(e.start(&prompt(0), 1).await.is_none());
    }
}
