//! Report sections about measured performance: per model and workload, throughput
//! against latency for every server configuration, throughput per GPU against
//! interactivity with the Pareto front, cost per million output tokens, and energy
//! efficiency by GPU type and framework.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ReportData;
use super::html::{Cell, escape, num, table};
use super::svg::{self, Bar, LineChart, Series, Xy};
use crate::analysis::pareto::front_max_max;
use crate::analysis::points::{Config, Point};

/// A configuration's load point with its repeats averaged.
#[derive(Debug, Clone)]
struct Agg {
    config: Config,
    load: String,
    load_value: f64,
    repeats: usize,
    output_tok_s: f64,
    per_gpu: f64,
    ttft_p90: Option<f64>,
    tpot_p90: Option<f64>,
    interactivity: Option<f64>,
    cost: Option<f64>,
    tokens_per_joule: Option<f64>,
    synthetic_energy: bool,
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, n) = values
        .flatten()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Averages repeats: one entry per (configuration, load point), in configuration and
/// load order.
fn aggregate(points: &[&Point]) -> Vec<Agg> {
    let mut groups: BTreeMap<(Config, String), Vec<&Point>> = BTreeMap::new();
    for p in points {
        groups
            .entry((p.config.clone(), p.load.clone()))
            .or_default()
            .push(p);
    }
    let mut out: Vec<Agg> = groups
        .into_iter()
        .map(|((config, load), ps)| Agg {
            load_value: ps[0].load_value,
            repeats: ps.len(),
            output_tok_s: mean(ps.iter().map(|p| Some(p.metrics.output_token_throughput)))
                .unwrap_or(0.0),
            per_gpu: mean(ps.iter().map(|p| Some(p.output_per_gpu()))).unwrap_or(0.0),
            ttft_p90: mean(ps.iter().map(|p| p.metrics.ttft_ms.map(|s| s.p90))),
            tpot_p90: mean(ps.iter().map(|p| p.metrics.tpot_ms.map(|s| s.p90))),
            interactivity: mean(ps.iter().map(|p| p.metrics.interactivity_tok_s)),
            cost: mean(ps.iter().map(|p| p.cost_per_million())),
            tokens_per_joule: mean(ps.iter().map(|p| p.tokens_per_joule())),
            synthetic_energy: ps.iter().any(|p| {
                p.telemetry
                    .as_ref()
                    .is_some_and(|t| t.source == "simulated")
            }),
            config,
            load,
        })
        .collect();
    out.sort_by(|a, b| {
        a.config
            .cmp(&b.config)
            .then(a.load_value.total_cmp(&b.load_value))
    });
    out
}

/// Series of one chart: per configuration, its load points as (x, y).
fn series(aggs: &[Agg], x: impl Fn(&Agg) -> Option<f64>, y: impl Fn(&Agg) -> f64) -> Vec<Series> {
    let mut by_config: BTreeMap<&Config, Vec<Xy>> = BTreeMap::new();
    for a in aggs {
        let Some(xv) = x(a) else { continue };
        by_config.entry(&a.config).or_default().push(Xy {
            x: xv,
            y: y(a),
            label: a.load.clone(),
        });
    }
    by_config
        .into_iter()
        .map(|(config, points)| Series {
            name: config.server(),
            points,
        })
        .collect()
}

/// Groups points by model, then workload.
fn by_model_workload(points: &[Point]) -> BTreeMap<(String, String), Vec<&Point>> {
    let mut groups: BTreeMap<(String, String), Vec<&Point>> = BTreeMap::new();
    for p in points {
        groups
            .entry((p.config.model.clone(), p.workload.clone()))
            .or_default()
            .push(p);
    }
    groups
}

/// Per model and workload: the latency curves and the Pareto front.
pub fn models(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="performance">Throughput and latency per model</h2>"#);
    if data.points.is_empty() {
        html.push_str("<p>No step results with load metrics are stored yet.</p>");
        return html;
    }
    html.push_str(
        "<p>One line per server configuration across its load points (hover a point for its \
         load and values). Repeats of a step are averaged.</p>",
    );
    for ((model, workload), points) in by_model_workload(&data.points) {
        let aggs = aggregate(&points);
        let _ = write!(
            html,
            "<h3>{} — workload {}</h3><div class=\"charts\">",
            escape(&model),
            escape(&workload)
        );
        let ttft = series(&aggs, |a| a.ttft_p90, |a| a.output_tok_s);
        html.push_str(&svg::line_chart(&LineChart {
            title: &format!("{model} / {workload}: output throughput vs TTFT p90"),
            x_label: "TTFT p90 (ms)",
            y_label: "output throughput (tokens/s)",
            series: &ttft,
            scatter: false,
            front: None,
        }));
        let tpot = series(&aggs, |a| a.tpot_p90, |a| a.output_tok_s);
        html.push_str(&svg::line_chart(&LineChart {
            title: &format!("{model} / {workload}: output throughput vs TPOT p90"),
            x_label: "TPOT p90 (ms)",
            y_label: "output throughput (tokens/s)",
            series: &tpot,
            scatter: false,
            front: None,
        }));
        html.push_str(&pareto(&model, &workload, &aggs));
        html.push_str("</div>");
    }
    html
}

fn pareto(model: &str, workload: &str, aggs: &[Agg]) -> String {
    let with_x: Vec<&Agg> = aggs.iter().filter(|a| a.interactivity.is_some()).collect();
    let coords: Vec<(f64, f64)> = with_x
        .iter()
        .map(|a| (a.interactivity.unwrap_or(f64::NAN), a.per_gpu))
        .collect();
    let front: Vec<&Agg> = front_max_max(&coords)
        .into_iter()
        .map(|i| with_x[i])
        .collect();
    let front_xy: Vec<Xy> = front
        .iter()
        .map(|a| Xy {
            x: a.interactivity.unwrap_or(f64::NAN),
            y: a.per_gpu,
            label: format!("{} at {}", a.config.server(), a.load),
        })
        .collect();
    let scatter = series(aggs, |a| a.interactivity, |a| a.per_gpu);
    let mut html = String::from("<div>");
    html.push_str(&svg::line_chart(&LineChart {
        title: &format!("{model} / {workload}: throughput per GPU vs interactivity"),
        x_label: "interactivity (tokens/s per user, 1000 / median TPOT)",
        y_label: "output throughput per GPU (tokens/s)",
        series: &scatter,
        scatter: true,
        front: Some(&front_xy),
    }));
    let rows: Vec<Vec<Cell>> = front
        .iter()
        .map(|a| {
            vec![
                a.config.server().into(),
                a.load.as_str().into(),
                num(a.interactivity),
                num(Some(a.per_gpu)),
                num(a.ttft_p90),
                num(a.tpot_p90),
            ]
        })
        .collect();
    html.push_str("<p>Pareto front: no other configuration and load gives more tokens/s per GPU at the same or higher interactivity.</p>");
    html.push_str(&table(
        "front",
        &[
            "configuration",
            "load",
            "tok/s per user",
            "tok/s per GPU",
            "TTFT p90 ms",
            "TPOT p90 ms",
        ],
        &rows,
    ));
    html.push_str("</div>");
    html
}

/// Cost per million output tokens per configuration (its cheapest load point).
pub fn cost(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="cost">Cost per million output tokens</h2>"#);
    if !data.points.iter().any(|p| p.price_per_gpu_hour.is_some()) {
        html.push_str(
            "<p>No GPU prices: give <code>--cost-file gpu_prices.yaml</code> (docs/results.md) \
             or <code>price_per_hour</code> in the matrix's <code>gpus</code>.</p>",
        );
        return html;
    }
    let currency = data.prices.currency_prefix();
    let _ = write!(
        html,
        "<p>Price per GPU-hour × GPUs of the unit ÷ output tokens per hour, at each \
         configuration's cheapest load point{}.</p>",
        if currency.is_empty() {
            String::new()
        } else {
            format!(" (in {})", escape(currency.trim()))
        }
    );
    for ((model, workload), points) in by_model_workload(&data.points) {
        let aggs = aggregate(&points);
        let mut best: BTreeMap<&Config, &Agg> = BTreeMap::new();
        for a in aggs.iter().filter(|a| a.cost.is_some()) {
            let entry = best.entry(&a.config).or_insert(a);
            if a.cost < entry.cost {
                *entry = a;
            }
        }
        if best.is_empty() {
            continue;
        }
        let mut ranked: Vec<&Agg> = best.into_values().collect();
        ranked.sort_by(|a, b| {
            a.cost
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.cost.unwrap_or(f64::INFINITY))
        });
        let _ = write!(
            html,
            "<h3>{} — workload {}</h3>",
            escape(&model),
            escape(&workload)
        );
        let bars: Vec<Bar> = ranked
            .iter()
            .map(|a| Bar {
                label: a.config.server(),
                value: a.cost.unwrap_or(f64::NAN),
                detail: format!(
                    "{}{} per M tokens at {}",
                    currency,
                    svg::number(a.cost.unwrap_or(f64::NAN)),
                    a.load
                ),
            })
            .collect();
        html.push_str(&svg::bar_chart(
            &format!("{model} / {workload}: cost per million output tokens (lower is better)"),
            &format!("{currency}per million output tokens"),
            &bars,
        ));
        let rows: Vec<Vec<Cell>> = ranked
            .iter()
            .map(|a| {
                vec![
                    a.config.server().into(),
                    a.load.as_str().into(),
                    num(Some(a.output_tok_s)),
                    num(a.cost),
                ]
            })
            .collect();
        html.push_str(&table(
            "cost",
            &["configuration", "load", "output tok/s", "cost per M tokens"],
            &rows,
        ));
    }
    html
}

/// Energy efficiency (output tokens per joule) by GPU type and framework.
pub fn energy(data: &ReportData) -> String {
    let mut html = String::from(r#"<h2 id="energy">Energy efficiency</h2>"#);
    let refs: Vec<&Point> = data.points.iter().collect();
    let aggs: Vec<Agg> = aggregate(&refs)
        .into_iter()
        .filter(|a| a.tokens_per_joule.is_some())
        .collect();
    if aggs.is_empty() {
        html.push_str("<p>No step measured GPU energy (NVML telemetry; docs/telemetry.md).</p>");
        return html;
    }
    if aggs.iter().any(|a| a.synthetic_energy) {
        html.push_str(
            r#"<p class="note">Some energy figures come from simulated GPUs: they exercise the pipeline and measure nothing.</p>"#,
        );
    }
    html.push_str(
        "<p>Output tokens per joule of GPU energy, the best load point of each GPU type and \
         framework (higher is better).</p>",
    );
    let mut best: BTreeMap<(String, String), &Agg> = BTreeMap::new();
    for a in &aggs {
        let key = (a.config.gpu_type.clone(), a.config.framework.clone());
        let entry = best.entry(key).or_insert(a);
        if a.tokens_per_joule > entry.tokens_per_joule {
            *entry = a;
        }
    }
    let mut ranked: Vec<(&(String, String), &&Agg)> = best.iter().collect();
    ranked.sort_by(|a, b| {
        b.1.tokens_per_joule
            .unwrap_or(0.0)
            .total_cmp(&a.1.tokens_per_joule.unwrap_or(0.0))
    });
    let bars: Vec<Bar> = ranked
        .iter()
        .map(|((gpu, framework), a)| Bar {
            label: format!("{gpu} / {framework}"),
            value: a.tokens_per_joule.unwrap_or(f64::NAN),
            detail: format!("{} at {}", a.config, a.load),
        })
        .collect();
    html.push_str(&svg::bar_chart(
        "Output tokens per joule by GPU type and framework",
        "output tokens per joule (tokens/J)",
        &bars,
    ));
    let rows: Vec<Vec<Cell>> = ranked
        .iter()
        .map(|((gpu, framework), a)| {
            vec![
                gpu.as_str().into(),
                framework.as_str().into(),
                a.config.to_string().into(),
                a.load.as_str().into(),
                num(a.tokens_per_joule),
                num(a.tokens_per_joule.map(|t| 1.0 / t)),
                Cell::Num(a.repeats.to_string()),
            ]
        })
        .collect();
    html.push_str(&table(
        "energy",
        &[
            "GPU type",
            "framework",
            "configuration",
            "load",
            "tokens/J",
            "J/token",
            "repeats",
        ],
        &rows,
    ));
    html
}
