//! Inline SVG charts for the HTML report: line charts (one line per series over its
//! points, with an optional Pareto front) and horizontal bar charts.
//!
//! Hand-written rather than built on a chart crate: the report needs two chart shapes
//! whose every element must carry what a reader hovers over (`<title>` per point) and what
//! the tests check (`class="pt"`), stay free of scripts and external fonts, and escape
//! user strings the same way as the rest of the page. That is about as much code as
//! adapting a general plotting library's output would be, without its build time on every
//! CLI build.

use std::fmt::Write;

use super::html::escape;

/// Chart size in CSS pixels; the SVG scales down to narrower screens.
const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 380.0;
const MARGIN_LEFT: f64 = 78.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_TOP: f64 = 20.0;
const MARGIN_BOTTOM: f64 = 58.0;

/// Colour-blind-friendly categorical palette (Okabe–Ito, then Tableau).
pub const PALETTE: [&str; 12] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442",
    "#4E79A7", "#B07AA1", "#9C755F", "#76B7B2",
];

/// Colour of series number `i`.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A point of a series.
#[derive(Debug, Clone, PartialEq)]
pub struct Xy {
    /// Horizontal value.
    pub x: f64,
    /// Vertical value.
    pub y: f64,
    /// Shown on hover with the values, e.g. "c=8".
    pub label: String,
}

/// A named line of points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<Xy>,
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart<'a> {
    /// Accessible name of the chart.
    pub title: &'a str,
    /// Horizontal axis label with unit.
    pub x_label: &'a str,
    /// Vertical axis label with unit.
    pub y_label: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// Draw points only, no connecting lines.
    pub scatter: bool,
    /// A Pareto front to draw over the series, as points in x order.
    pub front: Option<&'a [Xy]>,
}

/// A linear scale from a data range onto pixels.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    step: f64,
    from: f64,
    to: f64,
}

impl Scale {
    /// A scale from 0 (or the data's minimum when negative) to a "nice" bound above `max`.
    fn new(min: f64, max: f64, from: f64, to: f64) -> Scale {
        let lo = min.min(0.0);
        let hi = if max > lo { max } else { lo + 1.0 };
        let step = nice_step((hi - lo) / 5.0);
        Scale {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
            from,
            to,
        }
    }

    fn map(&self, v: f64) -> f64 {
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }

    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n).map(|i| self.lo + i as f64 * self.step).collect()
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// A tick or value with as many decimals as its magnitude needs.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn tick_text(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10()).ceil() as usize;
        format!("{v:.decimals$}")
    }
}

/// Renders a line chart with its legend as a `<figure>`.
pub fn line_chart(chart: &LineChart<'_>) -> String {
    let finite = |p: &&Xy| p.x.is_finite() && p.y.is_finite();
    let all: Vec<&Xy> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(finite)
        .collect();
    let (xmin, xmax, ymin, ymax) = all
        .iter()
        .fold((0.0f64, 0.0f64, 0.0f64, 0.0f64), |(a, b, c, d), p| {
            (a.min(p.x), b.max(p.x), c.min(p.y), d.max(p.y))
        });
    let xs = Scale::new(xmin, xmax * 1.04, MARGIN_LEFT, WIDTH - MARGIN_RIGHT);
    let ys = Scale::new(ymin, ymax * 1.06, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP);
    let mut svg = open_svg(chart.title);
    axes(&mut svg, &xs, &ys, chart.x_label, chart.y_label);
    for (i, series) in chart.series.iter().enumerate() {
        let colour = colour(i);
        let points: Vec<&Xy> = series.points.iter().filter(finite).collect();
        let _ = write!(
            svg,
            r#"<g class="series" data-series="{}">"#,
            escape(&series.name)
        );
        if !chart.scatter && points.len() > 1 {
            let path: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", xs.map(p.x), ys.map(p.y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        for p in &points {
            let _ = write!(
                svg,
                r#"<circle class="pt" cx="{:.1}" cy="{:.1}" r="4.5" fill="{colour}"><title>{} — {}: x {}, y {}</title></circle>"#,
                xs.map(p.x),
                ys.map(p.y),
                escape(&series.name),
                escape(&p.label),
                number(p.x),
                number(p.y)
            );
        }
        svg.push_str("</g>");
    }
    if let Some(front) = chart.front.filter(|f| !f.is_empty()) {
        let path: Vec<String> = front
            .iter()
            .filter(finite)
            .map(|p| format!("{:.1},{:.1}", xs.map(p.x), ys.map(p.y)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline class="front" fill="none" stroke="#444" stroke-width="1.5" stroke-dasharray="6 4" points="{}"/>"##,
            path.join(" ")
        );
        for p in front.iter().filter(finite) {
            let _ = write!(
                svg,
                r##"<circle class="front-pt" cx="{:.1}" cy="{:.1}" r="8" fill="none" stroke="#444" stroke-width="1.5"><title>Pareto front — {}</title></circle>"##,
                xs.map(p.x),
                ys.map(p.y),
                escape(&p.label)
            );
        }
    }
    svg.push_str("</svg>");
    let mut legend = String::from(r#"<ul class="legend">"#);
    for (i, series) in chart.series.iter().enumerate() {
        let _ = write!(
            legend,
            r#"<li><span class="swatch" style="background:{}"></span>{}</li>"#,
            colour(i),
            escape(&series.name)
        );
    }
    if chart.front.is_some_and(|f| !f.is_empty()) {
        legend.push_str(r#"<li><span class="swatch front-swatch"></span>Pareto front</li>"#);
    }
    legend.push_str("</ul>");
    format!(
        r#"<figure class="chart">{svg}<figcaption>{}</figcaption>{legend}</figure>"#,
        escape(chart.title)
    )
}

fn open_svg(title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"#,
        escape(title)
    )
}

fn axes(svg: &mut String, xs: &Scale, ys: &Scale, x_label: &str, y_label: &str) {
    let (left, right) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT);
    let (top, bottom) = (MARGIN_TOP, HEIGHT - MARGIN_BOTTOM);
    svg.push_str(r##"<g class="axes" font-size="12" fill="#333">"##);
    for t in ys.ticks() {
        let y = ys.map(t);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{right}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + 4.0,
            tick_text(t, ys.step)
        );
    }
    for t in xs.ticks() {
        let x = xs.map(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{bottom}" stroke="#eeeeee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 17.0,
            tick_text(t, xs.step)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/><line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#333"/><text class="x-label" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text><text class="y-label" transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" font-size="13">{}</text></g>"##,
        (left + right) / 2.0,
        HEIGHT - 14.0,
        escape(x_label),
        (top + bottom) / 2.0,
        escape(y_label)
    );
}

/// One bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Category label, left of the bar.
    pub label: String,
    /// Length.
    pub value: f64,
    /// Shown on hover.
    pub detail: String,
}

/// Renders horizontal bars, longest value first as given, as a `<figure>`.
pub fn bar_chart(title: &str, x_label: &str, bars: &[Bar]) -> String {
    const ROW: f64 = 26.0;
    let label_width = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0)
        .min(36) as f64
        * 7.0
        + 16.0;
    let left = label_width.max(MARGIN_LEFT);
    let height = MARGIN_TOP + ROW * bars.len().max(1) as f64 + MARGIN_BOTTOM;
    let max = bars
        .iter()
        .map(|b| b.value)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let xs = Scale::new(0.0, max * 1.04, left, WIDTH - MARGIN_RIGHT);
    let bottom = height - MARGIN_BOTTOM;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{}"><g font-size="12" fill="#333">"##,
        escape(title)
    );
    for t in xs.ticks() {
        let x = xs.map(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{MARGIN_TOP}" y2="{bottom}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 17.0,
            tick_text(t, xs.step)
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let y = MARGIN_TOP + ROW * i as f64;
        let w = if bar.value.is_finite() {
            (xs.map(bar.value) - left).max(0.0)
        } else {
            0.0
        };
        let mut label: String = bar.label.chars().take(36).collect();
        if bar.label.chars().count() > 36 {
            label.push('…');
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect class="bar" x="{left:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}">{}</text>"#,
            left - 8.0,
            y + ROW / 2.0 + 4.0,
            escape(&label),
            y + 4.0,
            ROW - 8.0,
            colour(i),
            escape(&bar.label),
            escape(&bar.detail),
            left + w + 4.0,
            y + ROW / 2.0 + 4.0,
            number(bar.value)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{left}" x2="{left}" y1="{MARGIN_TOP}" y2="{bottom}" stroke="#333"/><text class="x-label" x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13">{}</text></g></svg>"##,
        (left + WIDTH - MARGIN_RIGHT) / 2.0,
        height - 14.0,
        escape(x_label)
    );
    format!(
        r#"<figure class="chart">{svg}<figcaption>{}</figcaption></figure>"#,
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(260.0), 500.0);
        assert_eq!(nice_step(0.031), 0.05);
        let s = Scale::new(0.0, 93.0, 0.0, 100.0);
        assert_eq!(s.ticks(), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(s.map(50.0), 50.0);
    }

    #[test]
    fn a_chart_has_one_circle_per_point_and_escapes_names() {
        let series = [
            Series {
                name: "<b>&".into(),
                points: vec![
                    Xy {
                        x: 1.0,
                        y: 2.0,
                        label: "c=1".into(),
                    },
                    Xy {
                        x: 3.0,
                        y: f64::NAN,
                        label: "c=2".into(),
                    },
                ],
            },
            Series {
                name: "b".into(),
                points: vec![Xy {
                    x: 2.0,
                    y: 5.0,
                    label: "c=1".into(),
                }],
            },
        ];
        let svg = line_chart(&LineChart {
            title: "t",
            x_label: "TTFT p90 (ms)",
            y_label: "tok/s",
            series: &series,
            scatter: false,
            front: None,
        });
        assert_eq!(svg.matches(r#"class="pt""#).count(), 2, "{svg}");
        assert!(svg.contains("&lt;b&gt;&amp;"));
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("TTFT p90 (ms)"));
        let bars = bar_chart(
            "e",
            "tok/J",
            &[Bar {
                label: "x".into(),
                value: 2.0,
                detail: "d".into(),
            }],
        );
        assert_eq!(bars.matches(r#"class="bar""#).count(), 1);
    }
}
