//! Capacity at the SLO from a campaign's capacity searches (docs/capacity.md): per
//! deployment and workload, the highest load that met the search's goal, the throughput
//! measured there, per GPU and per unit of money.

use evalctl_proto::v1 as pb;
use evalctl_results::StepDocument;
use evalctl_results::document::SearchFacts;
use evalctl_results::probe::Goal;
use evalctl_results::search::StopReason;
use serde::Serialize;

use super::cost::Prices;
use super::points::{self, Config, Point};
use super::topsis::{self, Direction, TopsisError};

/// A stored search verdict with its deployment.
#[derive(Debug, Clone)]
pub struct Search {
    /// The deployment.
    pub config: Config,
    /// Unit id.
    pub unit_id: String,
    /// Workload name.
    pub workload: String,
    /// Repeat of the search.
    pub repeat: u32,
    /// Measured by evalctl's simulator.
    pub simulated: bool,
    /// Price of one GPU-hour, when known.
    pub price_per_gpu_hour: Option<f64>,
    /// The verdict with its probes.
    pub facts: SearchFacts,
}

/// The search of one stored result, from its `document` and the verdict `facts` taken from it.
pub fn search(
    result: &pb::StepResult,
    document: &StepDocument,
    facts: SearchFacts,
    prices: &Prices,
) -> Search {
    Search {
        config: Config::of(result.unit.as_ref()),
        unit_id: result.unit_id.clone(),
        workload: points::workload_name(result),
        repeat: result.step.as_ref().map_or(0, |s| s.repeat),
        simulated: document.simulated,
        price_per_gpu_hour: points::unit_price(result, prices),
        facts,
    }
}

/// One deployment's capacity at the SLO.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// The deployment, "model / gpu xN / framework / quant".
    pub config: String,
    /// The deployment without its model, "gpu xN / framework / quant".
    pub server: String,
    /// Model name.
    pub model: String,
    /// Workload name.
    pub workload: String,
    /// GPUs of the deployment (1 for CPU).
    pub gpus: u32,
    /// `concurrency` or `rate`.
    pub over: &'static str,
    /// The goal, in words.
    pub goal: String,
    /// The highest load that met the goal; `None` when none did or the server failed.
    pub capacity: Option<f64>,
    /// The lowest load that missed it, when one did.
    pub first_failing: Option<f64>,
    /// Loads probed.
    pub probes: u32,
    /// Probe steps run (repeats included).
    pub runs: u32,
    /// Why the search stopped.
    pub stopped: StopReason,
    /// Why the search stopped, in words.
    pub stopped_because: &'static str,
    /// Output tokens/s measured at the capacity (mean of its runs).
    pub output_tok_s: Option<f64>,
    /// The same per GPU.
    pub output_tok_s_per_gpu: Option<f64>,
    /// Price of one GPU-hour, when known.
    pub price_per_gpu_hour: Option<f64>,
    /// Cost of a million output tokens at the capacity, when priced.
    pub cost_per_million_tokens: Option<f64>,
    /// Measured by evalctl's simulator.
    pub simulated: bool,
    /// The deployment's accuracy score that `recommend` weighs, when it has one.
    pub accuracy: Option<f64>,
}

/// The goal in words: "p90 ttft ≤ 500 ms, tpot ≤ 50 ms" or "goodput ≥ 95% (ttft ≤ 500 ms)".
pub fn describe_goal(goal: &Goal) -> String {
    let limits = |slo: &evalctl_results::Slo| {
        [
            ("ttft", slo.ttft_ms),
            ("tpot", slo.tpot_ms),
            ("e2el", slo.e2el_ms),
        ]
        .iter()
        .filter_map(|(name, limit)| limit.map(|l| format!("{name} ≤ {l} ms")))
        .collect::<Vec<_>>()
        .join(", ")
    };
    match goal {
        Goal::Percentile {
            percentile,
            limits: l,
        } => format!("p{percentile} {}", limits(l)),
        Goal::Attainment { fraction, slo } => {
            format!("goodput ≥ {}% ({})", fraction * 100.0, limits(slo))
        }
    }
}

/// Capacity rows of `searches`, with the throughput each capacity's probe runs measured
/// (`points` holds the probe runs: same unit and workload, load = the capacity).
pub fn capacities(searches: &[Search], points: &[Point]) -> Vec<Capacity> {
    searches
        .iter()
        .map(|s| {
            let verdict = s.facts.verdict;
            let at_capacity: Vec<f64> = verdict
                .capacity
                .map(|c| {
                    points
                        .iter()
                        .filter(|p| {
                            p.unit_id == s.unit_id && p.workload == s.workload && p.load_value == c
                        })
                        .map(|p| p.metrics.output_token_throughput)
                        .collect()
                })
                .unwrap_or_default();
            let output_tok_s = (!at_capacity.is_empty())
                .then(|| at_capacity.iter().sum::<f64>() / at_capacity.len() as f64);
            let gpus = s.config.gpu_count.max(1);
            Capacity {
                config: s.config.to_string(),
                server: s.config.server(),
                model: s.config.model.clone(),
                workload: s.workload.clone(),
                gpus,
                over: s.facts.spec.axis.name(),
                goal: describe_goal(&s.facts.goal),
                capacity: verdict.capacity,
                first_failing: verdict.first_failing,
                probes: verdict.probes,
                runs: verdict.runs,
                stopped: verdict.stopped,
                stopped_because: verdict.stopped.describe(),
                output_tok_s,
                output_tok_s_per_gpu: output_tok_s.map(|t| crate::export::steps::per_gpu(t, gpus)),
                price_per_gpu_hour: s.price_per_gpu_hour,
                cost_per_million_tokens: match (s.price_per_gpu_hour, output_tok_s) {
                    (Some(price), Some(t)) => {
                        crate::export::steps::cost_per_million_tokens(price, gpus, t)
                    }
                    _ => None,
                },
                simulated: s.simulated,
                accuracy: None,
            }
        })
        .collect()
}

/// "61.7 req/s" or "c=12": a capacity in its axis's unit.
pub fn load_text(over: &str, load: Option<f64>) -> String {
    match (over, load) {
        (_, None) => "-".to_owned(),
        ("concurrency", Some(c)) => format!("c={c}"),
        (_, Some(r)) => format!("{} req/s", crate::report::svg::number(r)),
    }
}

/// How capacity rows are ranked.
#[derive(Debug, Clone, PartialEq)]
pub enum RankBy {
    /// Cost of a million output tokens at the capacity, cheapest first.
    Cost,
    /// Output tokens/s per GPU at the capacity, highest first.
    PerGpu,
    /// TOPSIS over the weighted criteria.
    Topsis(Vec<(Criterion, f64)>),
}

/// A criterion of a TOPSIS ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Cost of a million output tokens at the capacity (less is better).
    Cost,
    /// Output tokens/s per GPU at the capacity.
    Throughput,
    /// The capacity itself (load at the SLO).
    Capacity,
    /// GPUs of the deployment (fewer is better).
    Gpus,
    /// The deployment's accuracy score (`recommend --score`; higher is better).
    Accuracy,
}

impl Criterion {
    const ALL: [(Criterion, &'static str); 5] = [
        (Criterion::Cost, "cost"),
        (Criterion::Throughput, "throughput"),
        (Criterion::Capacity, "capacity"),
        (Criterion::Gpus, "gpus"),
        (Criterion::Accuracy, "accuracy"),
    ];

    fn direction(self) -> Direction {
        match self {
            Criterion::Cost | Criterion::Gpus => Direction::Cost,
            Criterion::Throughput | Criterion::Capacity | Criterion::Accuracy => Direction::Benefit,
        }
    }

    fn value(self, row: &Capacity) -> Option<f64> {
        match self {
            Criterion::Cost => row.cost_per_million_tokens,
            Criterion::Throughput => row.output_tok_s_per_gpu,
            Criterion::Capacity => row.capacity,
            Criterion::Gpus => Some(f64::from(row.gpus)),
            Criterion::Accuracy => row.accuracy,
        }
    }
}

/// Parses `cost=0.5,throughput=0.3,capacity=0.2` (criteria: cost, throughput, capacity,
/// gpus, accuracy).
pub fn parse_weights(text: &str) -> Result<Vec<(Criterion, f64)>, String> {
    let mut weights: Vec<(Criterion, f64)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not criterion=weight (e.g. cost=0.5)"))?;
        let criterion = Criterion::ALL
            .iter()
            .find(|(_, n)| *n == name.trim())
            .map(|(c, _)| *c)
            .ok_or_else(|| {
                format!(
                    "`{name}` is not a criterion: expected cost, throughput, capacity, gpus or accuracy"
                )
            })?;
        let weight: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| format!("`{item}`: the weight must be a number ≥ 0"))?;
        if weights.iter().any(|(c, _)| *c == criterion) {
            return Err(format!("`{name}` is weighted twice"));
        }
        weights.push((criterion, weight));
    }
    if weights.iter().all(|(_, w)| *w == 0.0) {
        return Err("give at least one criterion a weight above 0".into());
    }
    Ok(weights)
}

/// A capacity row with its place.
#[derive(Debug, Clone, Serialize)]
pub struct RankedCapacity {
    /// 1 = best; `None` for a deployment that cannot be ranked (no capacity, or a criterion
    /// without a value), listed after the ranked ones.
    pub rank: Option<usize>,
    /// The TOPSIS score, when ranked by TOPSIS.
    pub score: Option<f64>,
    /// Why it is not ranked.
    pub unranked_because: Option<String>,
    /// The row.
    #[serde(flatten)]
    pub row: Capacity,
}

/// Ranks the rows of one workload: the deployments with a capacity and every value the
/// ranking needs, best first, then the others with the reason.
pub fn rank(rows: Vec<Capacity>, by: &RankBy) -> Result<Vec<RankedCapacity>, TopsisError> {
    let needed = |row: &Capacity| -> Result<Vec<f64>, String> {
        if row.capacity.is_none() {
            return Err(format!("no capacity: {}", row.stopped_because));
        }
        let criteria: Vec<Criterion> = match by {
            RankBy::Cost => vec![Criterion::Cost],
            RankBy::PerGpu => vec![Criterion::Throughput],
            RankBy::Topsis(w) => w.iter().map(|(c, _)| *c).collect(),
        };
        criteria
            .iter()
            .map(|c| {
                c.value(row).ok_or_else(|| match c {
                    Criterion::Cost => "no price for its GPUs".to_owned(),
                    Criterion::Accuracy => "no accuracy score measured".to_owned(),
                    _ => "no throughput measured at its capacity".to_owned(),
                })
            })
            .collect()
    };
    let (mut ranked, mut unranked) = (Vec::new(), Vec::new());
    for row in rows {
        match needed(&row) {
            Ok(values) => ranked.push((values, row)),
            Err(reason) => unranked.push(RankedCapacity {
                rank: None,
                score: None,
                unranked_because: Some(reason),
                row,
            }),
        }
    }
    let scored: Vec<(f64, Option<f64>, Capacity)> = match by {
        RankBy::Cost => ranked.into_iter().map(|(v, r)| (-v[0], None, r)).collect(),
        RankBy::PerGpu => ranked.into_iter().map(|(v, r)| (v[0], None, r)).collect(),
        RankBy::Topsis(weights) => {
            let matrix: Vec<Vec<f64>> = ranked.iter().map(|(v, _)| v.clone()).collect();
            let w: Vec<f64> = weights.iter().map(|(_, w)| *w).collect();
            let d: Vec<Direction> = weights.iter().map(|(c, _)| c.direction()).collect();
            let scores = if matrix.is_empty() {
                Vec::new()
            } else {
                topsis::scores(&matrix, &w, &d)?
            };
            ranked
                .into_iter()
                .zip(scores)
                .map(|((_, r), s)| (s, Some(s), r))
                .collect()
        }
    };
    let mut scored = scored;
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.2.config.cmp(&b.2.config))
    });
    let mut out: Vec<RankedCapacity> = scored
        .into_iter()
        .enumerate()
        .map(|(i, (_, score, row))| RankedCapacity {
            rank: Some(i + 1),
            score,
            unranked_because: None,
            row,
        })
        .collect();
    out.extend(unranked);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use evalctl_results::Slo;

    fn row(config: &str, capacity: Option<f64>, per_gpu: f64, cost: Option<f64>) -> Capacity {
        crate::analysis::fixtures::capacity_row(config, capacity, per_gpu, cost)
    }

    #[test]
    fn rankings_by_cost_per_gpu_and_topsis() {
        let rows = || {
            vec![
                row("a", Some(10.0), 100.0, Some(2.0)),
                row("b", Some(20.0), 300.0, Some(1.0)),
                row("c", None, 0.0, None),
                row("d", Some(15.0), 200.0, None),
            ]
        };
        let by_cost = rank(rows(), &RankBy::Cost).unwrap();
        let order: Vec<(&str, Option<usize>)> = by_cost
            .iter()
            .map(|r| (r.row.config.as_str(), r.rank))
            .collect();
        assert_eq!(
            order,
            [("b", Some(1)), ("a", Some(2)), ("c", None), ("d", None)]
        );
        assert!(
            by_cost[2]
                .unranked_because
                .as_deref()
                .unwrap()
                .contains("no capacity")
        );
        assert!(
            by_cost[3]
                .unranked_because
                .as_deref()
                .unwrap()
                .contains("no price")
        );
        let per_gpu = rank(rows(), &RankBy::PerGpu).unwrap();
        assert_eq!(per_gpu[0].row.config, "b");
        assert_eq!(per_gpu[1].row.config, "d");
        let weights = parse_weights("throughput=1, capacity=1").unwrap();
        let topsis = rank(rows(), &RankBy::Topsis(weights)).unwrap();
        assert_eq!(topsis[0].row.config, "b");
        assert!(topsis[0].score.unwrap() > topsis[1].score.unwrap());
    }

    #[test]
    fn topsis_can_weigh_accuracy_against_throughput() {
        // "fast" serves 3× the tokens of "accurate" but scores 0.5 against 0.8.
        let rows = || {
            let mut fast = row("fast", Some(30.0), 300.0, None);
            fast.accuracy = Some(0.5);
            let mut accurate = row("accurate", Some(30.0), 100.0, None);
            accurate.accuracy = Some(0.8);
            let mut unscored = row("unscored", Some(30.0), 200.0, None);
            unscored.accuracy = None;
            vec![fast, accurate, unscored]
        };
        let first = |w: &str| {
            let ranked = rank(rows(), &RankBy::Topsis(parse_weights(w).unwrap())).unwrap();
            assert_eq!(
                ranked[2].unranked_because.as_deref(),
                Some("no accuracy score measured")
            );
            ranked[0].row.config.clone()
        };
        assert_eq!(first("throughput=1,accuracy=0.1"), "fast");
        assert_eq!(first("throughput=0.1,accuracy=1"), "accurate");
    }

    #[test]
    fn weights_are_checked() {
        assert_eq!(
            parse_weights("cost=0.5,gpus=0.5").unwrap(),
            vec![(Criterion::Cost, 0.5), (Criterion::Gpus, 0.5)]
        );
        for (text, want) in [
            ("speed=1", "not a criterion"),
            ("cost", "criterion=weight"),
            ("cost=-1", "≥ 0"),
            ("cost=1,cost=2", "twice"),
            ("cost=0", "above 0"),
        ] {
            let err = parse_weights(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn goals_read_as_written() {
        let limits = Slo {
            ttft_ms: Some(500.0),
            tpot_ms: Some(50.0),
            e2el_ms: None,
        };
        assert_eq!(
            describe_goal(&Goal::Percentile {
                percentile: 90.0,
                limits
            }),
            "p90 ttft ≤ 500 ms, tpot ≤ 50 ms"
        );
        assert_eq!(
            describe_goal(&Goal::Attainment {
                fraction: 0.95,
                slo: limits
            }),
            "goodput ≥ 95% (ttft ≤ 500 ms, tpot ≤ 50 ms)"
        );
        assert_eq!(load_text("rate", Some(61.7)), "61.7 req/s");
        assert_eq!(load_text("concurrency", Some(12.0)), "c=12");
        assert_eq!(load_text("rate", None), "-");
    }
}
