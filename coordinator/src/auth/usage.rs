//! When tokens were last used, written cheaply: the authenticator asks [`UseThrottle::due`]
//! on every call a token authenticates, and writes the token's `last_used_ms` only when it
//! says so, at most once per [`RECORD_EVERY`] per token (an agent heartbeating every few
//! seconds costs one write a minute, not one per heartbeat).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a token's recorded last use lags behind its real one.
pub const RECORD_EVERY: Duration = Duration::from_secs(60);

/// Most tokens remembered; past it, those not written within [`RECORD_EVERY`] are forgotten.
const MAX_TOKENS: usize = 10_000;

/// When each token's use was last written.
#[derive(Debug, Default)]
pub struct UseThrottle {
    written: Mutex<HashMap<String, Instant>>,
}

impl UseThrottle {
    /// Whether the use of `token_id` at `now` should be written; if so, counts it as
    /// written.
    pub fn due(&self, token_id: &str, now: Instant) -> bool {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = written.get(token_id)
            && now.saturating_duration_since(*at) < RECORD_EVERY
        {
            return false;
        }
        if written.len() >= MAX_TOKENS && !written.contains_key(token_id) {
            written.retain(|_, at| now.saturating_duration_since(*at) < RECORD_EVERY);
        }
        written.insert(token_id.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_per_token_per_interval() {
        let throttle = UseThrottle::default();
        let t0 = Instant::now();
        assert!(throttle.due("tok_a", t0), "the first use is written");
        for s in 1..60 {
            assert!(!throttle.due("tok_a", t0 + Duration::from_secs(s)), "{s}s");
        }
        assert!(
            throttle.due("tok_b", t0 + Duration::from_secs(1)),
            "tokens are independent"
        );
        assert!(throttle.due("tok_a", t0 + RECORD_EVERY));
        assert!(!throttle.due("tok_a", t0 + RECORD_EVERY + Duration::from_secs(59)));
    }
}
