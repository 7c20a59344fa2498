//! The goal of a capacity search, as a matrix writes it (`load.search.goal`):
//!
//! - `p90 of ttft <= 500ms and tpot <= 50ms`: the 90th percentile of each named figure
//!   within its limit (`ttft`, `tpot`, `e2el`; `≤` or `<=`; `ms` or `s`, a bare number is
//!   ms; `of` and a repeated `p90` are optional, a different percentile is refused: one goal
//!   has one percentile).
//! - `goodput >= 95%` (or `0.95`): at least that share of the requests meet every objective
//!   of the workload's `slo`.
//!
//! Hand-written: a dozen words of a fixed shape, for which a parser crate would be more
//! code than the parse.

use evalctl_results::Slo;
use evalctl_results::probe::Goal;

/// What a goal text says before the workload's `slo` is known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParsedGoal {
    /// A percentile goal, complete.
    Percentile(Goal),
    /// A goodput goal: the fraction; the objectives come from the workload's `slo`.
    Goodput(f64),
}

/// Parses a goal; the error says what was expected where.
pub(crate) fn parse(text: &str) -> Result<ParsedGoal, String> {
    let normal = text
        .to_ascii_lowercase()
        .replace('≤', " <= ")
        .replace('≥', " >= ")
        .replace("<=", " <= ")
        .replace(">=", " >= ");
    let words: Vec<&str> = normal.split_whitespace().collect();
    match words.first() {
        Some(&"goodput") => goodput(&words[1..]),
        Some(w) if w.starts_with('p') => percentile(&words),
        _ => Err(format!(
            "`{text}` is not a goal: expected `p90 of ttft <= 500ms and tpot <= 50ms` or `goodput >= 95%`"
        )),
    }
}

fn goodput(words: &[&str]) -> Result<ParsedGoal, String> {
    let [">=", value] = words else {
        return Err("a goodput goal reads `goodput >= 95%`".into());
    };
    let fraction = match value.strip_suffix('%') {
        Some(percent) => percent.parse::<f64>().map(|p| p / 100.0),
        None => value.parse::<f64>(),
    }
    .map_err(|_| format!("`{value}` is not a share of requests (e.g. `95%` or `0.95`)"))?;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(format!(
            "the goodput share must be between 0% and 100% (exclusive), got `{value}`"
        ));
    }
    Ok(ParsedGoal::Goodput(fraction))
}

fn percentile(words: &[&str]) -> Result<ParsedGoal, String> {
    let mut percentile: Option<f64> = None;
    let mut limits = Slo::default();
    let clauses: Vec<&[&str]> = words.split(|w| *w == "and").collect();
    for clause in clauses {
        let mut rest = clause;
        if let Some(first) = rest.first()
            && let Some(digits) = first.strip_prefix('p')
            && digits.starts_with(|c: char| c.is_ascii_digit())
        {
            let p: f64 = digits
                .parse()
                .map_err(|_| format!("`{first}` is not a percentile (e.g. `p90`, `p99.9`)"))?;
            if !(p > 0.0 && p < 100.0) {
                return Err(format!("`{first}`: a percentile is between p0 and p100"));
            }
            if percentile.is_some_and(|q| q != p) {
                return Err(format!(
                    "one goal has one percentile; `{first}` differs from the first one"
                ));
            }
            percentile = Some(p);
            rest = &rest[1..];
            if rest.first() == Some(&"of") {
                rest = &rest[1..];
            }
        }
        let [metric, "<=", value] = rest else {
            return Err(format!(
                "`{}` is not a limit: expected e.g. `ttft <= 500ms`",
                clause.join(" ")
            ));
        };
        let ms = milliseconds(value)?;
        let slot = match *metric {
            "ttft" => &mut limits.ttft_ms,
            "tpot" => &mut limits.tpot_ms,
            "e2el" => &mut limits.e2el_ms,
            other => {
                return Err(format!(
                    "`{other}` is not a figure a goal limits: expected `ttft`, `tpot` or `e2el`"
                ));
            }
        };
        if slot.replace(ms).is_some() {
            return Err(format!("`{metric}` is limited twice"));
        }
    }
    let percentile =
        percentile.ok_or("a percentile goal starts with its percentile, e.g. `p90`")?;
    Ok(ParsedGoal::Percentile(Goal::Percentile {
        percentile,
        limits,
    }))
}

/// `500ms`, `0.5s` or `500` (ms), finite and > 0.
fn milliseconds(value: &str) -> Result<f64, String> {
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (value, 1.0)
    };
    match number.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x * scale),
        _ => Err(format!(
            "`{value}` is not a latency limit (a number > 0 with `ms` or `s`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ttft: Option<f64>, tpot: Option<f64>, e2el: Option<f64>) -> Slo {
        Slo {
            ttft_ms: ttft,
            tpot_ms: tpot,
            e2el_ms: e2el,
        }
    }

    #[test]
    fn percentile_goals_in_their_spellings() {
        let want = ParsedGoal::Percentile(Goal::Percentile {
            percentile: 90.0,
            limits: limits(Some(500.0), Some(50.0), None),
        });
        for text in [
            "p90 of ttft <= 500ms and tpot <= 50ms",
            "P90 TTFT ≤ 0.5s and p90 tpot ≤ 50",
            "p90 ttft<=500ms and tpot<=50ms",
        ] {
            assert_eq!(parse(text), Ok(want.clone()), "{text}");
        }
        assert_eq!(
            parse("p99.9 of e2el <= 2s"),
            Ok(ParsedGoal::Percentile(Goal::Percentile {
                percentile: 99.9,
                limits: limits(None, None, Some(2000.0)),
            }))
        );
    }

    #[test]
    fn goodput_goals() {
        assert_eq!(parse("goodput >= 95%"), Ok(ParsedGoal::Goodput(0.95)));
        assert_eq!(parse("goodput ≥ 0.9"), Ok(ParsedGoal::Goodput(0.9)));
        assert!(parse("goodput >= 100%").unwrap_err().contains("between"));
        assert!(parse("goodput 95%").unwrap_err().contains("goodput >= 95%"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("fast please", "is not a goal"),
            ("p90 of ttft <= 500ms and p99 tpot <= 5ms", "one percentile"),
            ("p90 of itl <= 5ms", "`itl` is not a figure"),
            ("p90 of ttft <= fast", "not a latency limit"),
            ("p90 of ttft <= 0ms", "not a latency limit"),
            ("p90 of ttft <= 1s and ttft <= 2s", "limited twice"),
            ("p90 of ttft 500ms", "is not a limit"),
            ("p100 of ttft <= 1s", "between p0 and p100"),
            ("ttft <= 1s", "is not a goal"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
