//! The simulator's latency model: when each output token of a request is ready.
//!
//! A request that holds a running slot first prefills its prompt, which yields its first output
//! token, as a real engine's prefill forward pass does:
//!
//! ```text
//! token 1   at start + prompt_tokens × prefill_us_per_token
//! token k+1 at (time of token k) + decode_ms_per_token + decode_ms_per_extra_request × (running − 1)
//! ```
//!
//! `running` is the number of requests holding a running slot when the step begins, so a decode
//! step slows down as the batch grows. Deadlines are absolute and chained from the request's own
//! start, so timer granularity never accumulates into drift.

use std::time::Duration;

/// Prefill and decode costs of the simulated model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// Prefill cost per prompt token, in microseconds.
    pub prefill_us_per_token: f64,
    /// Cost of one decode step for a batch of one, in milliseconds.
    pub decode_ms_per_token: f64,
    /// Extra cost of one decode step per additional running request, in milliseconds.
    pub decode_ms_per_extra_request: f64,
}

impl Default for LatencyModel {
    /// Roughly an 8B model on one modern datacenter GPU: 10k prompt tokens/s of prefill,
    /// 100 tokens/s per user alone, 64 concurrent users slowing each step by about 6 ms.
    fn default() -> Self {
        LatencyModel {
            prefill_us_per_token: 100.0,
            decode_ms_per_token: 10.0,
            decode_ms_per_extra_request: 0.1,
        }
    }
}

impl LatencyModel {
    /// A model in which every token is ready at once; for tests that measure nothing.
    pub fn instant() -> Self {
        LatencyModel {
            prefill_us_per_token: 0.0,
            decode_ms_per_token: 0.0,
            decode_ms_per_extra_request: 0.0,
        }
    }

    /// Time to prefill `prompt_tokens`, which yields the first output token.
    pub fn prefill(&self, prompt_tokens: u64) -> Duration {
        secs(prompt_tokens as f64 * self.prefill_us_per_token * 1e-6)
    }

    /// Time of one decode step while `running` requests (this one included) hold slots.
    pub fn decode_step(&self, running: usize) -> Duration {
        let extra = running.saturating_sub(1) as f64;
        secs((self.decode_ms_per_token + self.decode_ms_per_extra_request * extra) * 1e-3)
    }

    /// Checks that every cost is a finite, non-negative number.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("prefill_us_per_token", self.prefill_us_per_token),
            ("decode_ms_per_token", self.decode_ms_per_token),
            (
                "decode_ms_per_extra_request",
                self.decode_ms_per_extra_request,
            ),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{name} must be a finite number >= 0, got {value}"));
            }
        }
        Ok(())
    }
}

fn secs(s: f64) -> Duration {
    // `validate` keeps costs finite and non-negative; clamp anyway so a misuse cannot panic.
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_scales_with_prompt_length() {
        let m = LatencyModel {
            prefill_us_per_token: 50.0,
            ..LatencyModel::default()
        };
        assert_eq!(m.prefill(0), Duration::ZERO);
        assert_eq!(m.prefill(1000), Duration::from_millis(50));
    }

    #[test]
    fn decode_step_grows_with_batch() {
        let m = LatencyModel {
            prefill_us_per_token: 0.0,
            decode_ms_per_token: 10.0,
            decode_ms_per_extra_request: 0.5,
        };
        assert_eq!(m.decode_step(0), Duration::from_millis(10));
        assert_eq!(m.decode_step(1), Duration::from_millis(10));
        assert_eq!(m.decode_step(3), Duration::from_millis(11));
        assert_eq!(m.decode_step(65), Duration::from_millis(42));
    }

    #[test]
    fn rejects_negative_and_nan() {
        assert!(LatencyModel::default().validate().is_ok());
        let bad = LatencyModel {
            decode_ms_per_token: -1.0,
            ..LatencyModel::default()
        };
        assert!(bad.validate().unwrap_err().contains("decode_ms_per_token"));
        let nan = LatencyModel {
            prefill_us_per_token: f64::NAN,
            ..LatencyModel::default()
        };
        assert!(nan.validate().is_err());
    }
}
