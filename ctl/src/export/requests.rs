//! One row per request record (docs/metrics.md, "Per request"): the step it belongs to,
//! its instants (ns after the step's epoch), the latencies derived from them, token counts
//! and the error, when it failed. Warmup requests are included and marked.

use evalctl_proto::v1 as pb;
use evalctl_results::RequestRecord;

use super::steps::load_label;
use super::{Kind, RowBuilder};

/// The step a record belongs to, and the parts of it a request row repeats.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// Campaign name.
    pub campaign: String,
    /// Campaign id.
    pub campaign_id: String,
    /// Unit id.
    pub unit_id: String,
    /// Step id.
    pub step_id: String,
    /// Position in the unit.
    pub step_index: u32,
    /// Workload name.
    pub workload: String,
    /// Load point label ("c=8").
    pub load: String,
    /// Repeat number.
    pub repeat: u32,
}

impl StepContext {
    /// The context of a streamed result of campaign `campaign_name`.
    pub fn of(campaign_name: &str, result: &pb::StepResult) -> StepContext {
        let step = result.step.as_ref();
        StepContext {
            campaign: campaign_name.to_owned(),
            campaign_id: result.campaign.clone(),
            unit_id: result.unit_id.clone(),
            step_id: result.step_id.clone(),
            step_index: result.step_index,
            workload: step
                .and_then(|s| s.workload.as_ref())
                .map(|w| w.name.clone())
                .unwrap_or_default(),
            load: load_label(step.and_then(|s| s.load.as_ref())),
            repeat: step.map_or(0, |s| s.repeat),
        }
    }
}

fn wire_name<T: serde::Serialize>(value: &T) -> Option<String> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
}

/// Fills `row` with one request.
pub fn build(step: &StepContext, r: &RequestRecord, row: &mut RowBuilder) {
    row.put("campaign", Kind::Str, step.campaign.as_str());
    row.put("campaign_id", Kind::Str, step.campaign_id.as_str());
    row.put("unit_id", Kind::Str, step.unit_id.as_str());
    row.put("step_id", Kind::Str, step.step_id.as_str());
    row.put("step_index", Kind::U64, step.step_index);
    row.put("workload", Kind::Str, step.workload.as_str());
    row.put("load", Kind::Str, step.load.as_str());
    row.put("repeat", Kind::U64, step.repeat);
    row.put("index", Kind::U64, r.index);
    row.put("warmup", Kind::Bool, r.warmup);
    row.put("prompt_index", Kind::U64, r.prompt_index as u64);
    row.put("conversation", Kind::U64, r.conversation);
    row.put("turn", Kind::U64, r.turn.map(u64::from));
    row.put("scheduled_ns", Kind::U64, r.scheduled_ns);
    row.put("sent_ns", Kind::U64, r.sent_ns);
    row.put("first_token_ns", Kind::U64, r.token_ns.first().copied());
    row.put("first_answer_ns", Kind::U64, r.first_answer_ns);
    row.put("last_token_ns", Kind::U64, r.token_ns.last().copied());
    row.put("end_ns", Kind::U64, r.end_ns);
    row.put("ttft_ms", Kind::F64, r.ttft_ms());
    row.put("tpot_ms", Kind::F64, r.tpot_ms());
    row.put("e2el_ms", Kind::F64, r.e2el_ms());
    row.put("token_chunks", Kind::U64, r.token_ns.len() as u64);
    row.put("input_tokens", Kind::U64, r.input_tokens);
    row.put("server_prompt_tokens", Kind::U64, r.server_prompt_tokens);
    row.put("output_tokens", Kind::U64, r.output_tokens);
    row.put("reasoning_tokens", Kind::U64, r.reasoning_tokens);
    row.put(
        "output_tokens_source",
        Kind::Str,
        r.output_tokens_source.as_ref().and_then(wire_name),
    );
    row.put("reused_connection", Kind::Bool, r.reused_connection);
    row.put("http_status", Kind::U64, r.http_status.map(u64::from));
    row.put(
        "server_request_id",
        Kind::Str,
        r.server_request_id.as_deref(),
    );
    row.put(
        "error_kind",
        Kind::Str,
        r.error.as_ref().map(|e| e.kind.as_str()),
    );
    row.put(
        "error_message",
        Kind::Str,
        r.error.as_ref().map(|e| e.message.as_str()),
    );
    // Every token-bearing chunk's arrival, as a JSON array of ns, so any latency can be
    // recomputed from the export alone.
    row.put(
        "token_ns_json",
        Kind::Str,
        serde_json::to_string(&r.token_ns).ok(),
    );
}

/// The request columns.
pub fn columns() -> Vec<super::Column> {
    let step = StepContext::of("", &pb::StepResult::default());
    let mut row = RowBuilder::default();
    build(&step, &RequestRecord::default(), &mut row);
    row.columns().to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::Value;
    use super::*;

    #[test]
    fn a_record_fills_every_column() {
        let record = RequestRecord {
            index: 3,
            sent_ns: Some(1_000_000),
            token_ns: vec![3_000_000, 4_000_000, 6_000_000],
            end_ns: Some(6_500_000),
            output_tokens: 3,
            conversation: Some(7),
            turn: Some(2),
            ..Default::default()
        };
        let step = StepContext::of("", &pb::StepResult::default());
        let mut row = RowBuilder::default();
        build(&step, &record, &mut row);
        assert_eq!(row.columns(), columns().as_slice());
        let cell = |name: &str| {
            let i = row.columns().iter().position(|c| c.name == name).unwrap();
            row.values()[i].clone()
        };
        assert_eq!(cell("ttft_ms"), Value::F64(2.0));
        assert_eq!(cell("e2el_ms"), Value::F64(5.0));
        assert_eq!(cell("tpot_ms"), Value::F64(1.5));
        assert_eq!(
            cell("token_ns_json"),
            Value::Str("[3000000,4000000,6000000]".into())
        );
        assert_eq!(cell("error_kind"), Value::Null);
        assert_eq!(
            (cell("conversation"), cell("turn")),
            (Value::U64(7), Value::U64(2))
        );
    }
}
