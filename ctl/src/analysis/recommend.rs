//! Ranking configurations under SLOs. Per model and workload, each configuration's best
//! load point is the one with the highest output throughput per GPU among those whose
//! SLO metrics (the median over repeats) all meet their limits. Configurations are ranked by
//! output tokens per unit of GPU cost (tokens per currency unit) when every qualifying
//! configuration has a price, else by output tokens/s per GPU.

use std::collections::BTreeMap;

use serde::Serialize;

use super::points::{Config, Point};
use evalctl_results::compare::{Metric, UnknownMetric};

/// One objective: `metric` must be at most (latencies, J/token) or at least (throughputs)
/// `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Objective {
    /// The metric.
    #[serde(serialize_with = "display")]
    pub metric: Metric,
    /// Its limit in the metric's unit (ms for latencies).
    pub limit: f64,
}

fn display<S: serde::Serializer>(m: &Metric, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

impl Objective {
    fn met_by(&self, value: f64) -> bool {
        if self.metric.higher_is_better() {
            value >= self.limit
        } else {
            value <= self.limit
        }
    }

    /// "≤" for a met latency limit, ">" for a missed one ("≥" and "<" for throughputs).
    fn relation(&self, met: bool) -> &'static str {
        match (self.metric.higher_is_better(), met) {
            (true, true) => "≥",
            (true, false) => "<",
            (false, true) => "≤",
            (false, false) => ">",
        }
    }
}

/// Why an `--slo` value does not parse.
#[derive(Debug, thiserror::Error)]
pub enum SloError {
    /// An item is not `metric=value`.
    #[error("`{0}` is not metric=value (e.g. ttft_p90=500ms)")]
    Shape(String),
    /// The metric is unknown.
    #[error(transparent)]
    Metric(#[from] UnknownMetric),
    /// The value is not a number with an optional unit.
    #[error("`{item}`: `{value}` is not a number ≥ 0 with an optional unit (ms, s)")]
    Value {
        /// The item.
        item: String,
        /// The value part.
        value: String,
    },
    /// No objective given.
    #[error("no objective given")]
    Empty,
}

/// Parses `ttft_p90=500ms,tpot_p90=50ms` (latency units `ms` or `s`, bare numbers in the
/// metric's own unit).
pub fn parse_slos(text: &str) -> Result<Vec<Objective>, SloError> {
    let mut objectives = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| SloError::Shape(item.to_owned()))?;
        let metric: Metric = name.parse()?;
        let value = value.trim();
        let bad = || SloError::Value {
            item: item.to_owned(),
            value: value.to_owned(),
        };
        let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = value.strip_suffix('s').filter(|_| metric.unit() == "ms") {
            (n, 1000.0)
        } else {
            (value, 1.0)
        };
        let limit: f64 = number.trim().parse().map_err(|_| bad())?;
        if !limit.is_finite() || limit < 0.0 {
            return Err(bad());
        }
        objectives.push(Objective {
            metric,
            limit: limit * scale,
        });
    }
    if objectives.is_empty() {
        return Err(SloError::Empty);
    }
    Ok(objectives)
}

/// A configuration that meets the objectives, at its best load point.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// 1 = best.
    pub rank: usize,
    /// The configuration, "model / gpu xN / framework / quant".
    pub config: String,
    /// The best load point that meets every objective.
    pub load: String,
    /// Output tokens/s of the unit there.
    pub output_tok_s: f64,
    /// Output tokens/s per GPU there.
    pub output_tok_s_per_gpu: f64,
    /// Price of one GPU-hour, when known.
    pub price_per_gpu_hour: Option<f64>,
    /// Cost of a million output tokens there, when priced.
    pub cost_per_million_tokens: Option<f64>,
    /// The objectives' values there (median over repeats).
    pub values: BTreeMap<String, f64>,
    /// Why it ranks where it does.
    pub explanation: String,
}

/// A configuration that meets the objectives at no load point.
#[derive(Debug, Clone, Serialize)]
pub struct Missed {
    /// The configuration.
    pub config: String,
    /// The closest miss.
    pub reason: String,
}

/// The ranking of one model on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    /// Model name.
    pub model: String,
    /// Workload name.
    pub workload: String,
    /// "cost" (tokens per currency unit) or "per_gpu" (tokens/s per GPU).
    pub ranked_by: &'static str,
    /// Qualifying configurations, best first.
    pub ranked: Vec<Ranked>,
    /// Configurations that never met the objectives.
    pub missed: Vec<Missed>,
}

/// A load point of a configuration with its repeats averaged.
struct LoadPoint {
    load: String,
    load_value: f64,
    output_tok_s: f64,
    per_gpu: f64,
    price: Option<f64>,
    cost: Option<f64>,
    values: Vec<Option<f64>>,
}

/// Median of the repeats, so one disturbed repeat does not decide (as `compare`).
pub(crate) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut sorted: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

fn load_points(points: &[&Point], objectives: &[Objective]) -> Vec<LoadPoint> {
    let mut by_load: BTreeMap<String, Vec<&Point>> = BTreeMap::new();
    for p in points {
        by_load.entry(p.load.clone()).or_default().push(p);
    }
    let mut out: Vec<LoadPoint> = by_load
        .into_iter()
        .map(|(load, ps)| {
            let output_tok_s =
                median(ps.iter().map(|p| p.metrics.output_token_throughput)).unwrap_or(0.0);
            let first = ps[0];
            LoadPoint {
                load,
                load_value: first.load_value,
                output_tok_s,
                per_gpu: crate::export::steps::per_gpu(output_tok_s, first.config.gpu_count),
                price: first.price_per_gpu_hour,
                cost: first.price_per_gpu_hour.and_then(|price| {
                    crate::export::steps::cost_per_million_tokens(
                        price,
                        first.config.gpu_count,
                        output_tok_s,
                    )
                }),
                values: objectives
                    .iter()
                    .map(|o| median(ps.iter().filter_map(|p| p.value(o.metric))))
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.load_value.total_cmp(&b.load_value));
    out
}

fn meets(point: &LoadPoint, objectives: &[Objective]) -> bool {
    objectives
        .iter()
        .zip(&point.values)
        .all(|(o, v)| v.is_some_and(|v| o.met_by(v)))
}

/// How far a load point is from meeting the objectives: the worst ratio of value to
/// limit (1 = just met), for the closest-miss message.
fn miss_ratio(point: &LoadPoint, objectives: &[Objective]) -> f64 {
    objectives
        .iter()
        .zip(&point.values)
        .map(|(o, v)| match v {
            None => f64::INFINITY,
            Some(v) if o.metric.higher_is_better() && *v > 0.0 => o.limit / v,
            Some(_) if o.metric.higher_is_better() => f64::INFINITY,
            Some(v) if o.limit > 0.0 => v / o.limit,
            Some(_) => f64::INFINITY,
        })
        .fold(0.0, f64::max)
}

fn describe(point: &LoadPoint, objectives: &[Objective]) -> String {
    objectives
        .iter()
        .zip(&point.values)
        .map(|(o, v)| match v {
            Some(v) => format!(
                "{} {:.1} {unit} {} {} {unit}",
                o.metric,
                v,
                o.relation(o.met_by(*v)),
                o.limit,
                unit = o.metric.unit()
            ),
            None => format!("{} not measured", o.metric),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ranks the configurations of every (model, workload) in `points` under `objectives`.
pub fn rank(points: &[Point], objectives: &[Objective]) -> Vec<Ranking> {
    let mut groups: BTreeMap<(String, String), BTreeMap<Config, Vec<&Point>>> = BTreeMap::new();
    for p in points {
        groups
            .entry((p.config.model.clone(), p.workload.clone()))
            .or_default()
            .entry(p.config.clone())
            .or_default()
            .push(p);
    }
    let mut rankings = Vec::new();
    for ((model, workload), configs) in groups {
        let mut qualifying = Vec::new();
        let mut missed = Vec::new();
        for (config, ps) in configs {
            let loads = load_points(&ps, objectives);
            let best = loads
                .iter()
                .filter(|l| meets(l, objectives))
                .max_by(|a, b| a.per_gpu.total_cmp(&b.per_gpu));
            match best {
                Some(best) => qualifying.push((config, load_clone(best))),
                None => {
                    let closest = loads.iter().min_by(|a, b| {
                        miss_ratio(a, objectives).total_cmp(&miss_ratio(b, objectives))
                    });
                    missed.push(Missed {
                        config: config.to_string(),
                        reason: closest.map_or_else(
                            || "no measured load point".to_owned(),
                            |l| format!("closest at {}: {}", l.load, describe(l, objectives)),
                        ),
                    });
                }
            }
        }
        let by_cost = !qualifying.is_empty() && qualifying.iter().all(|(_, l)| l.cost.is_some());
        // Tokens per currency unit = 1e6 / cost per million; higher first either way.
        let score = |l: &LoadPoint| {
            if by_cost {
                l.cost.map_or(0.0, |c| 1e6 / c)
            } else {
                l.per_gpu
            }
        };
        qualifying.sort_by(|a, b| score(&b.1).total_cmp(&score(&a.1)));
        let ranked = qualifying
            .iter()
            .enumerate()
            .map(|(i, (config, l))| {
                let next = qualifying.get(i + 1).map(|(_, n)| score(n));
                Ranked {
                    rank: i + 1,
                    config: config.to_string(),
                    load: l.load.clone(),
                    output_tok_s: l.output_tok_s,
                    output_tok_s_per_gpu: l.per_gpu,
                    price_per_gpu_hour: l.price,
                    cost_per_million_tokens: l.cost,
                    values: objectives
                        .iter()
                        .zip(&l.values)
                        .filter_map(|(o, v)| v.map(|v| (o.metric.to_string(), v)))
                        .collect(),
                    explanation: explain(l, objectives, by_cost, score(l), next),
                }
            })
            .collect();
        rankings.push(Ranking {
            model,
            workload,
            ranked_by: if by_cost { "cost" } else { "per_gpu" },
            ranked,
            missed,
        });
    }
    rankings
}

fn load_clone(l: &LoadPoint) -> LoadPoint {
    LoadPoint {
        load: l.load.clone(),
        load_value: l.load_value,
        output_tok_s: l.output_tok_s,
        per_gpu: l.per_gpu,
        price: l.price,
        cost: l.cost,
        values: l.values.clone(),
    }
}

fn explain(
    l: &LoadPoint,
    objectives: &[Objective],
    by_cost: bool,
    score: f64,
    next: Option<f64>,
) -> String {
    let mut text = format!(
        "best load meeting the SLOs is {} ({}): {:.1} output tok/s per GPU",
        l.load,
        describe(l, objectives),
        l.per_gpu
    );
    if let Some(cost) = l.cost.filter(|_| by_cost) {
        text.push_str(&format!(", {cost:.3} per million output tokens"));
    }
    if let Some(next) = next.filter(|n| *n > 0.0) {
        text.push_str(&format!(
            "; {:.2}x the next by {}",
            score / next,
            if by_cost {
                "tokens per unit of cost"
            } else {
                "tokens/s per GPU"
            }
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{flat, no_metrics};
    use super::*;

    fn point(
        framework: &str,
        gpus: u32,
        c: u32,
        tput: f64,
        ttft: f64,
        price: Option<f64>,
    ) -> Point {
        let mut metrics = no_metrics();
        metrics.output_token_throughput = tput;
        metrics.ttft_ms = Some(flat(ttft));
        metrics.tpot_ms = Some(flat(20.0));
        Point {
            config: Config {
                model: "m".into(),
                gpu_type: "H100".into(),
                gpu_count: gpus,
                layout: String::new(),
                framework: framework.into(),
                quantization: "bf16".into(),
            },
            unit_id: framework.into(),
            workload: "chat".into(),
            load: format!("c={c}"),
            load_value: f64::from(c),
            repeat: 0,
            simulated: false,
            metrics,
            telemetry: None,
            workload_facts: None,
            price_per_gpu_hour: price,
        }
    }

    #[test]
    fn slos_parse_with_units() {
        let slos = parse_slos("ttft_p90=500ms, tpot_p90=0.05s,e2el_p99=2000").unwrap();
        assert_eq!(slos[0].limit, 500.0);
        assert!((slos[1].limit - 50.0).abs() < 1e-9);
        assert_eq!(slos[2].limit, 2000.0);
        assert!(parse_slos("ttft_p90").is_err());
        assert!(parse_slos("ttft_p90=fast").is_err());
        assert!(parse_slos("speed=1").is_err());
        assert!(parse_slos("").is_err());
    }

    #[test]
    fn the_best_qualifying_load_of_each_config_is_ranked() {
        let slos = parse_slos("ttft_p90=500ms").unwrap();
        let points = [
            // a: c=16 breaks the SLO, so c=8 (800 tok/s on 1 GPU) counts.
            point("a", 1, 8, 800.0, 300.0, None),
            point("a", 1, 16, 1500.0, 900.0, None),
            // b: 1200 tok/s on 2 GPUs = 600 per GPU.
            point("b", 2, 16, 1200.0, 200.0, None),
            // c: never meets it.
            point("c", 1, 1, 100.0, 700.0, None),
        ];
        let r = &rank(&points, &slos)[0];
        assert_eq!(r.ranked_by, "per_gpu");
        let order: Vec<&str> = r.ranked.iter().map(|x| x.load.as_str()).collect();
        assert_eq!(order, ["c=8", "c=16"]);
        assert!(r.ranked[0].config.contains("/ a /"));
        assert!(
            r.ranked[0].explanation.contains("1.33x"),
            "{}",
            r.ranked[0].explanation
        );
        assert_eq!(r.missed.len(), 1);
        assert!(
            r.missed[0].reason.contains("ttft_p90 700.0 ms > 500 ms"),
            "{}",
            r.missed[0].reason
        );
    }

    #[test]
    fn prices_rank_by_cost() {
        let slos = parse_slos("ttft_p90=500ms").unwrap();
        let points = [
            point("a", 1, 8, 800.0, 300.0, Some(4.0)),
            point("b", 1, 8, 600.0, 300.0, Some(1.0)),
        ];
        let r = &rank(&points, &slos)[0];
        assert_eq!(r.ranked_by, "cost");
        assert!(r.ranked[0].config.contains("/ b /"));
        assert!(
            r.ranked[0].cost_per_million_tokens.unwrap()
                < r.ranked[1].cost_per_million_tokens.unwrap()
        );
    }
}
