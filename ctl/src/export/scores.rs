//! One row per accuracy score of a harness step (docs/accuracy.md): the unit's
//! configuration, the step, and the score split into lm-eval's task, metric and filter, with
//! its standard error and sample count as typed columns.

use evalctl_proto::v1 as pb;
use evalctl_results::{Score, StepDocument};

use super::requests::StepContext;
use super::{Kind, RowBuilder};

/// The step a score belongs to.
#[derive(Debug, Clone, Copy)]
pub struct ScoredStep<'a> {
    /// The step's identity.
    pub step: &'a StepContext,
    /// Its unit's configuration.
    pub unit: Option<&'a pb::UnitConfig>,
    /// Measured against evalctl's simulator.
    pub simulated: bool,
    /// When the step ended, Unix ms.
    pub finished_at_ms: i64,
}

impl<'a> ScoredStep<'a> {
    /// The step of `result`, whose document is `document`.
    pub fn of(step: &'a StepContext, result: &'a pb::StepResult, document: &StepDocument) -> Self {
        ScoredStep {
            step,
            unit: result.unit.as_ref(),
            simulated: document.simulated,
            finished_at_ms: document.finished_at_ms,
        }
    }
}

/// Fills `row` with one score of `scored`'s step.
pub fn build(scored: ScoredStep<'_>, score: &Score, row: &mut RowBuilder) {
    let (step, unit) = (scored.step, scored.unit);
    let config = crate::analysis::points::Config::of(unit);
    row.put("campaign", Kind::Str, step.campaign.as_str());
    row.put("campaign_id", Kind::Str, step.campaign_id.as_str());
    row.put("unit_id", Kind::Str, step.unit_id.as_str());
    row.put("model", Kind::Str, config.model.as_str());
    row.put("gpu_type", Kind::Str, config.gpu_type.as_str());
    row.put("gpu_count", Kind::U64, u64::from(config.gpu_count));
    row.put("framework", Kind::Str, config.framework.as_str());
    row.put("quantization", Kind::Str, config.quantization.as_str());
    row.put("step_id", Kind::Str, step.step_id.as_str());
    row.put("workload", Kind::Str, step.workload.as_str());
    row.put("repeat", Kind::U64, step.repeat);
    row.put("simulated", Kind::Bool, scored.simulated);
    row.put("score", Kind::Str, score.name.as_str());
    // lm-eval's `task/metric,filter`; a plain harness value has neither task nor filter.
    let (task, rest) = score
        .name
        .split_once('/')
        .map_or((None, score.name.as_str()), |(t, r)| (Some(t), r));
    let (metric, filter) = rest
        .split_once(',')
        .map_or((rest, None), |(m, f)| (m, Some(f)));
    row.put("task", Kind::Str, task);
    row.put("metric", Kind::Str, metric);
    row.put("filter", Kind::Str, filter);
    row.put("value", Kind::F64, score.value);
    row.put("stderr", Kind::F64, score.stderr);
    row.put("samples", Kind::U64, score.samples);
    row.put("higher_is_better", Kind::Bool, score.higher_is_better);
    row.put("finished_at_ms", Kind::I64, scored.finished_at_ms);
}

/// The score columns.
pub fn columns() -> Vec<super::Column> {
    let step = StepContext::of("", &pb::StepResult::default());
    let scored = ScoredStep {
        step: &step,
        unit: None,
        simulated: false,
        finished_at_ms: 0,
    };
    let score = Score {
        name: String::new(),
        value: 0.0,
        stderr: None,
        samples: None,
        higher_is_better: true,
    };
    let mut row = RowBuilder::default();
    build(scored, &score, &mut row);
    row.columns().to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::Value;
    use super::*;

    #[test]
    fn an_lm_eval_score_is_split_into_task_metric_and_filter() {
        let step = StepContext::of("night", &pb::StepResult::default());
        let scored = ScoredStep {
            step: &step,
            unit: None,
            simulated: true,
            finished_at_ms: 5,
        };
        let score = Score {
            name: "gsm8k/exact_match,strict-match".into(),
            value: 0.62,
            stderr: Some(0.013),
            samples: Some(1319),
            higher_is_better: true,
        };
        let mut row = RowBuilder::default();
        build(scored, &score, &mut row);
        assert_eq!(row.columns(), columns().as_slice());
        let cell = |name: &str| {
            let i = row.columns().iter().position(|c| c.name == name).unwrap();
            row.values()[i].clone()
        };
        assert_eq!(cell("task"), Value::Str("gsm8k".into()));
        assert_eq!(cell("metric"), Value::Str("exact_match".into()));
        assert_eq!(cell("filter"), Value::Str("strict-match".into()));
        assert_eq!(cell("stderr"), Value::F64(0.013));
        assert_eq!(cell("samples"), Value::U64(1319));
        let plain = Score {
            name: "accuracy".into(),
            stderr: None,
            ..score
        };
        let mut row = RowBuilder::default();
        build(scored, &plain, &mut row);
        let i = row.columns().iter().position(|c| c.name == "task").unwrap();
        assert_eq!(row.values()[i], Value::Null);
    }
}
