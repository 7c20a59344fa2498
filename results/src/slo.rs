//! Service level objectives and whether a request meets them: the one rule goodput, the
//! recommendation and every SLO check share.

use serde::{Deserialize, Serialize};

use crate::record::RequestRecord;

/// Service level objectives; a request meets them when it meets every one that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Time per output token, ms; a request with at most one output token meets it.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency, ms.
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// No objective is set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// `record` (a successful request) meets every objective set.
    pub fn met_by(&self, record: &RequestRecord) -> bool {
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (None, _) => true,
            (Some(limit), Some(v)) => v <= limit,
            (Some(_), None) => false,
        };
        within(self.ttft_ms, record.ttft_ms())
            && within(self.e2el_ms, record.e2el_ms())
            && (self.tpot_ms.is_none()
                || record.output_tokens <= 1
                || within(self.tpot_ms, record.tpot_ms()))
    }
}
