//! Latency by turn position in multi-turn steps: the first turn of a conversation is
//! prefilled from scratch, a later turn carries the conversation so far, which a server
//! with a prefix cache has already computed. Figures by position show whether it did.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::Summary;
use crate::record::RequestRecord;

/// Positions reported one by one; turns beyond the last are pooled into it.
pub const MAX_TURN_POSITIONS: u32 = 16;

/// The figures of a multi-turn step by turn position (metrics `turns`, schema 1.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnMetrics {
    /// Conversations with at least one measured request.
    pub conversations: u64,
    /// Measured requests per conversation, on average.
    pub mean_turns: f64,
    /// First turns.
    pub first: TurnFigures,
    /// Every later turn pooled (position 2 and on); absent when no conversation went past
    /// its first turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub later: Option<TurnFigures>,
    /// One entry per position from 1, up to [`MAX_TURN_POSITIONS`] (whose entry pools every
    /// turn from there on).
    pub by_position: Vec<TurnFigures>,
}

/// The successful requests of one turn position, or of a pool of positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnFigures {
    /// The position, from 1; for a pool, its first position.
    pub turn: u32,
    /// Successful requests.
    pub requests: u64,
    /// Prompt tokens per request, history included (the server's count where it sent one).
    pub mean_input_tokens: f64,
    /// Time to first token.
    pub ttft_ms: Option<Summary>,
    /// Inter-token latency, pooled over the requests.
    pub itl_ms: Option<Summary>,
}

impl TurnFigures {
    fn of(turn: u32, records: &[&RequestRecord]) -> TurnFigures {
        let input: u64 = records
            .iter()
            .map(|r| r.server_prompt_tokens.unwrap_or(r.input_tokens))
            .sum();
        TurnFigures {
            turn,
            requests: records.len() as u64,
            mean_input_tokens: if records.is_empty() {
                0.0
            } else {
                input as f64 / records.len() as f64
            },
            ttft_ms: Summary::of(records.iter().filter_map(|r| r.ttft_ms()).collect()),
            itl_ms: Summary::of(records.iter().flat_map(|r| r.itls_ms()).collect()),
        }
    }
}

/// The turn figures of a step's measured records; `None` when no record belongs to a
/// conversation.
pub fn compute(measured: &[&RequestRecord]) -> Option<TurnMetrics> {
    let in_turns: Vec<&RequestRecord> = measured
        .iter()
        .copied()
        .filter(|r| r.turn.is_some())
        .collect();
    if in_turns.is_empty() {
        return None;
    }
    let mut conversations: Vec<u64> = in_turns.iter().filter_map(|r| r.conversation).collect();
    conversations.sort_unstable();
    conversations.dedup();
    let ok: Vec<&RequestRecord> = in_turns.iter().copied().filter(|r| r.succeeded()).collect();
    let position = |r: &RequestRecord| r.turn.unwrap_or(1).clamp(1, MAX_TURN_POSITIONS);
    let mut by_position: BTreeMap<u32, Vec<&RequestRecord>> = BTreeMap::new();
    for r in &ok {
        by_position.entry(position(r)).or_default().push(r);
    }
    let first = by_position.get(&1).map_or(&[][..], Vec::as_slice);
    let later: Vec<&RequestRecord> = ok
        .iter()
        .copied()
        .filter(|r| r.turn.is_some_and(|t| t > 1))
        .collect();
    Some(TurnMetrics {
        conversations: conversations.len() as u64,
        mean_turns: in_turns.len() as f64 / conversations.len().max(1) as f64,
        first: TurnFigures::of(1, first),
        later: (!later.is_empty()).then(|| TurnFigures::of(2, &later)),
        by_position: by_position
            .iter()
            .map(|(turn, records)| TurnFigures::of(*turn, records))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ErrorKind, RequestError};

    const MS: u64 = 1_000_000;

    fn turn(conversation: u64, turn: u32, ttft: u64, input: u64) -> RequestRecord {
        RequestRecord {
            sent_ns: Some(0),
            token_ns: vec![ttft * MS, (ttft + 5) * MS],
            end_ns: Some((ttft + 5) * MS),
            input_tokens: input,
            output_tokens: 2,
            conversation: Some(conversation),
            turn: Some(turn),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn figures_by_position_first_and_later() {
        let mut failed = turn(1, 3, 1, 1);
        failed.error = Some(RequestError {
            kind: ErrorKind::Stall,
            message: "no bytes".into(),
        });
        let records = [
            turn(0, 1, 100, 50),
            turn(0, 2, 20, 150),
            turn(0, 3, 30, 250),
            turn(1, 1, 80, 50),
            turn(1, 2, 40, 150),
            failed,
        ];
        let refs: Vec<&RequestRecord> = records.iter().collect();
        let m = compute(&refs).expect("records in turns");
        assert_eq!(m.conversations, 2);
        assert!((m.mean_turns - 3.0).abs() < 1e-9);
        assert_eq!(m.first.requests, 2);
        assert_eq!(m.first.ttft_ms.expect("ttft").mean, 90.0);
        assert_eq!(m.first.mean_input_tokens, 50.0);
        let later = m.later.expect("later turns");
        assert_eq!((later.turn, later.requests), (2, 3));
        assert_eq!(later.ttft_ms.expect("ttft").mean, 30.0);
        let positions: Vec<(u32, u64)> =
            m.by_position.iter().map(|f| (f.turn, f.requests)).collect();
        assert_eq!(positions, [(1, 2), (2, 2), (3, 1)]);
        assert_eq!(m.by_position[1].mean_input_tokens, 150.0);
        assert_eq!(m.by_position[2].itl_ms.expect("itl").mean, 5.0);
    }

    #[test]
    fn positions_past_the_last_are_pooled_and_plain_steps_have_none() {
        let records: Vec<RequestRecord> = (1..=MAX_TURN_POSITIONS + 3)
            .map(|t| turn(0, t, 10, 1))
            .collect();
        let refs: Vec<&RequestRecord> = records.iter().collect();
        let m = compute(&refs).expect("records in turns");
        assert_eq!(m.by_position.len(), MAX_TURN_POSITIONS as usize);
        assert_eq!(m.by_position.last().expect("positions").requests, 4);
        let plain = RequestRecord::default();
        assert!(compute(&[&plain]).is_none());
    }
}
