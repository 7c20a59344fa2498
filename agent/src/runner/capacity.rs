//! A capacity search step (docs/capacity.md): probe runs, each an ordinary load step at the
//! load the search plans next, until the verdict, which becomes the search step's own
//! result. The plan is a pure function of the stored runs — those the lease brought from
//! earlier attempts and those this agent finished under the lease — so a search resumed on
//! any agent repeats no stored run.

use evalctl_proto::v1 as pb;
use evalctl_results::document::{ProbeFacts, RunSummary, SearchFacts};
use evalctl_results::probe::Goal;
use evalctl_results::search::{SearchAxis, SearchSpec};
use evalctl_results::settle::{self, NextRun, ProbeRun};
use evalctl_results::{STEP_DOCUMENT_SCHEMA, STEP_DOCUMENT_SCHEMA_MINOR, StepDocument};

/// A step's search: bounds, budget and goal.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Bounds and budget.
    pub spec: SearchSpec,
    /// What a probe must show.
    pub goal: Goal,
}

/// The search `step` runs, when its load is one; an error says what the search lacks.
pub fn of(step: &pb::StepSpec) -> Option<Result<Search, String>> {
    let Some(pb::load_point::Kind::Search(search)) =
        step.load.as_ref().and_then(|l| l.kind.clone())
    else {
        return None;
    };
    Some(decode(&search))
}

fn decode(search: &pb::SearchLoad) -> Result<Search, String> {
    let axis = match search.over.as_str() {
        "concurrency" => SearchAxis::Concurrency,
        "rate" => SearchAxis::Rate,
        other => return Err(format!("unknown search axis `{other}`")),
    };
    let spec = SearchSpec {
        axis,
        min: search.min,
        max: search.max,
        max_probes: search.max_probes,
        precision: search.precision,
        max_repeats: search.max_repeats,
    };
    spec.validate()?;
    let g = search.goal.as_ref().ok_or("the search has no goal")?;
    let limits = g.limits.as_ref().ok_or("the search's goal has no limits")?;
    let limit = |ms: f64| (ms > 0.0).then_some(ms);
    let limits = evalctl_results::Slo {
        ttft_ms: limit(limits.ttft_ms),
        tpot_ms: limit(limits.tpot_ms),
        e2el_ms: limit(limits.e2el_ms),
    };
    let goal = match (g.percentile > 0.0, g.fraction > 0.0) {
        (true, false) => Goal::Percentile {
            percentile: g.percentile,
            limits,
        },
        (false, true) => Goal::Attainment {
            fraction: g.fraction,
            slo: limits,
        },
        _ => return Err("the search's goal sets neither a percentile nor a fraction".into()),
    };
    goal.validate()?;
    Ok(Search { spec, goal })
}

/// A stored run with its step id.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    /// The run's step id.
    pub step_id: String,
    /// The run.
    pub run: ProbeRun,
}

/// The stored runs of `search_step`, in the order they ran: the lease's (earlier attempts)
/// then this agent's (`local`: step id and facts JSON), each once.
pub fn stored_runs(
    lease: &pb::Lease,
    local: &[(String, String)],
    search_step: &str,
) -> Result<Vec<StoredRun>, String> {
    let brought = lease
        .probe_runs
        .iter()
        .filter(|p| p.search_step_id == search_step)
        .map(|p| (p.step_id.as_str(), p.facts_json.as_str()));
    let mine = local
        .iter()
        .map(|(id, facts)| (id.as_str(), facts.as_str()));
    let mut runs: Vec<StoredRun> = Vec::new();
    for (step_id, facts) in brought.chain(mine) {
        if runs.iter().any(|r| r.step_id == step_id) {
            continue;
        }
        let facts: ProbeFacts = serde_json::from_str(facts)
            .map_err(|err| format!("stored probe run {step_id} does not read: {err}"))?;
        runs.push(StoredRun {
            step_id: step_id.to_owned(),
            run: facts.run,
        });
    }
    Ok(runs)
}

/// What the search does next after `runs`.
pub fn next(search: &Search, runs: &[StoredRun]) -> NextRun {
    let runs: Vec<ProbeRun> = runs.iter().map(|r| r.run.clone()).collect();
    settle::plan(&search.spec, &search.goal, &runs)
}

/// The step of run `run` at `load` of `search_step`: the search's workload and index, a
/// concurrency or rate point (with the search's arrival), `repeat` = the run.
pub fn probe_step(
    search_step: &pb::StepSpec,
    axis: SearchAxis,
    load: f64,
    run: u32,
) -> pb::StepSpec {
    let parent = search_step.load.clone().unwrap_or_default();
    let kind = match axis {
        SearchAxis::Concurrency => pb::load_point::Kind::Concurrency(load as u32),
        SearchAxis::Rate => pb::load_point::Kind::Rate(load),
    };
    pb::StepSpec {
        step_id: settle::probe_step_id(&search_step.step_id, axis, load, run),
        index: search_step.index,
        workload: search_step.workload.clone(),
        load: Some(pb::LoadPoint {
            kind: Some(kind),
            arrival: parent.arrival,
            burstiness: parent.burstiness,
        }),
        repeat: run,
    }
}

/// The search step's own document: no metrics, the verdict with its probes and runs.
pub fn verdict_document(
    label: String,
    simulated: bool,
    search: &Search,
    runs: &[StoredRun],
    verdict: evalctl_results::search::SearchVerdict,
    started_at_ms: i64,
    finished_at_ms: i64,
) -> StepDocument {
    let plain: Vec<ProbeRun> = runs.iter().map(|r| r.run.clone()).collect();
    let (probes, _) = settle::loads(&search.spec, &search.goal, &plain);
    StepDocument {
        schema: STEP_DOCUMENT_SCHEMA,
        schema_minor: STEP_DOCUMENT_SCHEMA_MINOR,
        simulated,
        step_label: label,
        metrics: None,
        harness_metrics: Default::default(),
        scores: Vec::new(),
        tokenization: None,
        connections_opened: 0,
        served_model: String::new(),
        started_at_ms,
        finished_at_ms,
        telemetry: None,
        workload: None,
        probe: None,
        search: Some(SearchFacts {
            spec: search.spec,
            goal: search.goal,
            verdict,
            probes,
            runs: runs
                .iter()
                .map(|r| RunSummary {
                    step_id: r.step_id.clone(),
                    load: r.run.load,
                    run: r.run.run,
                    outcome: r.run.judgment.outcome,
                })
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalctl_results::probe::ProbeJudgment;
    use evalctl_results::search::ProbeOutcome;

    fn search_step() -> pb::StepSpec {
        pb::StepSpec {
            step_id: "s-1".into(),
            index: 3,
            workload: Some(pb::WorkloadSpec {
                name: "chat".into(),
                ..Default::default()
            }),
            load: Some(pb::LoadPoint {
                kind: Some(pb::load_point::Kind::Search(pb::SearchLoad {
                    over: "rate".into(),
                    min: 1.0,
                    max: 64.0,
                    max_probes: 8,
                    precision: 0.05,
                    max_repeats: 2,
                    goal: Some(pb::SearchGoal {
                        percentile: 90.0,
                        fraction: 0.0,
                        limits: Some(pb::Slo {
                            ttft_ms: 500.0,
                            tpot_ms: 0.0,
                            e2el_ms: 0.0,
                        }),
                    }),
                })),
                arrival: "constant".into(),
                burstiness: 0.0,
            }),
            repeat: 0,
        }
    }

    fn facts(load: f64, run: u32) -> String {
        serde_json::to_string(&ProbeFacts {
            search_step: "s-1".into(),
            axis: SearchAxis::Rate,
            run: ProbeRun {
                load,
                run,
                judgment: ProbeJudgment {
                    outcome: ProbeOutcome::Pass { score: 0.5 },
                    window_ns: (0, 1),
                    requests: 40,
                    sent_rps: load,
                    completed_rps: load,
                    reason: None,
                    tallies: Vec::new(),
                },
            },
        })
        .unwrap()
    }

    #[test]
    fn a_search_step_decodes_and_plans_its_probes() {
        let step = search_step();
        let search = of(&step).expect("a search").expect("valid");
        assert_eq!(search.spec.max_probes, 8);
        assert!(matches!(search.goal, Goal::Percentile { percentile, .. } if percentile == 90.0));
        let probe = probe_step(&step, SearchAxis::Rate, 8.0, 1);
        assert_eq!(probe.step_id, "s-1~rate=8#1");
        assert_eq!((probe.index, probe.repeat), (3, 1));
        let load = probe.load.unwrap();
        assert_eq!(load.kind, Some(pb::load_point::Kind::Rate(8.0)));
        assert_eq!(load.arrival, "constant");
        // Runs the lease brought and runs finished here are merged, each once.
        let lease = pb::Lease {
            probe_runs: vec![pb::StoredProbeRun {
                search_step_id: "s-1".into(),
                step_id: "s-1~rate=1#0".into(),
                facts_json: facts(1.0, 0),
            }],
            ..Default::default()
        };
        let local = vec![
            ("s-1~rate=1#0".to_owned(), facts(1.0, 0)),
            ("s-1~rate=8#0".to_owned(), facts(8.0, 0)),
        ];
        let runs = stored_runs(&lease, &local, "s-1").unwrap();
        assert_eq!(runs.len(), 2);
        assert!(matches!(next(&search, &runs), NextRun::Run { run: 0, load } if load > 8.0));
        assert!(stored_runs(&lease, &[("x".into(), "{".into())], "s-1").is_err());
    }

    #[test]
    fn a_step_without_a_search_or_with_a_bad_one() {
        let mut step = search_step();
        step.load = Some(pb::LoadPoint {
            kind: Some(pb::load_point::Kind::Concurrency(4)),
            ..Default::default()
        });
        assert!(of(&step).is_none());
        let mut step = search_step();
        if let Some(pb::load_point::Kind::Search(s)) =
            step.load.as_mut().and_then(|l| l.kind.as_mut())
        {
            s.goal = None;
        }
        assert!(of(&step).unwrap().unwrap_err().contains("no goal"));
    }
}
