//! `load: { search: {...} }`: a capacity search's bounds, budget and goal (docs/capacity.md).

use evalctl_results::probe::{self, Goal};
use evalctl_results::search::{DEFAULT_MAX_REPEATS, SearchAxis, SearchSpec};

use super::super::goal::{self, ParsedGoal};
use super::{Decoder, Node, Pos, Value};
use crate::domain::{Arrival, SearchLoad, Slo, StopCondition};
use crate::matrix::error::MatrixError;

const SEARCH_KEYS: &[&str] = &[
    "over",
    "min",
    "max",
    "goal",
    "max_probes",
    "precision",
    "max_repeats",
];
const AXES: &[(SearchAxis, &str)] = &[
    (SearchAxis::Concurrency, "concurrency"),
    (SearchAxis::Rate, "rate"),
];
/// Probes at most when `max_probes` is not given: enough for 5% over a 128× range.
const DEFAULT_MAX_PROBES: u32 = 8;
/// The final bracket's relative width when `precision` is not given.
const DEFAULT_PRECISION: f64 = 0.05;

impl Decoder<'_> {
    /// The `search` mapping of `load`; `arrival` and `burstiness` are the load's own keys.
    /// A goodput goal's objectives are left empty: they are the workload's `slo`, which the
    /// workload fills in.
    pub(super) fn search(
        &self,
        path: &str,
        node: &Node,
        arrival: Arrival,
        burstiness: Option<f64>,
    ) -> Result<SearchLoad, MatrixError> {
        let f = self.fields(node, path, SEARCH_KEYS)?;
        let axis = self.choice(&f.field("over"), f.req("over")?, AXES)?;
        let bound = |key: &str| -> Result<f64, MatrixError> {
            let n = f.req(key)?;
            match axis {
                SearchAxis::Concurrency => Ok(f64::from(self.uint32(&f.field(key), n, 1)?)),
                SearchAxis::Rate => self.positive(&f.field(key), n, false),
            }
        };
        let (min, max) = (bound("min")?, bound("max")?);
        if max < min {
            return Err(self.errors.at(
                f.key_pos("max").unwrap_or(node.pos),
                format!(
                    "`{}` ({max}) must not be below `{}` ({min})",
                    f.field("max"),
                    f.field("min")
                ),
            ));
        }
        let max_probes = f
            .get("max_probes")
            .map(|n| self.uint32(&f.field("max_probes"), n, 2))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_PROBES);
        let max_repeats = f
            .get("max_repeats")
            .map(|n| self.uint32(&f.field("max_repeats"), n, 0))
            .transpose()?
            .unwrap_or(DEFAULT_MAX_REPEATS);
        let precision = match f.get("precision") {
            None => DEFAULT_PRECISION,
            Some(n) => self.fraction(&f.field("precision"), n)?,
        };
        let goal_node = f.req("goal")?;
        let text = self.string(&f.field("goal"), goal_node)?;
        let parsed = goal::parse(&text.value).map_err(|message| {
            self.errors.hinted(
                goal_node.pos,
                format!("`{}`: {message}", f.field("goal")),
                Some("e.g. `goal: \"p90 of ttft <= 500ms and tpot <= 50ms\"` or `goal: \"goodput >= 95%\"` with the workload's `slo`"),
            )
        })?;
        let goal = match parsed {
            ParsedGoal::Percentile(goal) => goal,
            ParsedGoal::Goodput(fraction) => Goal::Attainment {
                fraction,
                slo: evalctl_results::Slo::default(),
            },
        };
        let spec = SearchSpec {
            axis,
            min,
            max,
            max_probes,
            precision,
            max_repeats,
        };
        // The decoder checked each value; this checks what they mean together.
        spec.validate()
            .map_err(|message| self.errors.at(node.pos, format!("`{path}`: {message}")))?;
        Ok(SearchLoad {
            spec,
            goal,
            arrival,
            burstiness,
        })
    }

    /// A share in (0, 1): `0.05` or `"5%"`.
    fn fraction(&self, path: &str, node: &Node) -> Result<f64, MatrixError> {
        let value = match &node.value {
            Value::Str(s) => s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .map(|p| p / 100.0),
            #[expect(clippy::cast_precision_loss, reason = "matrix numbers are small")]
            Value::Int(i) => Some(*i as f64),
            Value::Float(x) => Some(*x),
            _ => None,
        };
        match value {
            Some(x) if x > 0.0 && x < 1.0 => Ok(x),
            _ => Err(self.errors.hinted(
                node.pos,
                format!(
                    "`{path}` must be a share between 0 and 1, found {}",
                    self.raw_text(node)
                ),
                Some("e.g. `0.05` or `\"5%\"`"),
            )),
        }
    }
}

impl Decoder<'_> {
    /// Checks a search against the rest of its workload, and gives a goodput goal the
    /// workload's `slo` as its objectives.
    pub(super) fn search_in_workload(
        &self,
        path: &str,
        pos: Pos,
        mut search: SearchLoad,
        is_command: bool,
        stop: &StopCondition,
        slo: &Slo,
    ) -> Result<SearchLoad, MatrixError> {
        if is_command {
            return Err(self.errors.hinted(
                pos,
                format!("`{path}` drives the load generator; `api: command` runs a harness"),
                Some("search a chat or completions workload"),
            ));
        }
        if let Goal::Attainment {
            slo: objectives, ..
        } = &mut search.goal
        {
            if slo.ttft_ms.is_none() && slo.tpot_ms.is_none() && slo.e2el_ms.is_none() {
                return Err(self.errors.hinted(
                    pos,
                    format!("`{path}`: a goodput goal counts the requests within the workload's `slo`, and the workload has none"),
                    Some("add e.g. `slo: { ttft_ms: 500, tpot_ms: 50 }` to the workload"),
                ));
            }
            *objectives = evalctl_results::Slo {
                ttft_ms: slo.ttft_ms,
                tpot_ms: slo.tpot_ms,
                e2el_ms: slo.e2el_ms,
            };
        }
        // A probe is judged on the middle 80% of its sends and needs 20 requests there.
        let least = (probe::MIN_WINDOW_REQUESTS as f64 / (1.0 - 2.0 * probe::WINDOW_TRIM)).ceil();
        match *stop {
            StopCondition::Requests(n) if (n as f64) < least => Err(self.errors.hinted(
                pos,
                format!(
                    "`{path}`: each probe sends the workload's `requests` ({n}); a probe is judged on the middle 80% of its requests and needs at least {least} to have {} there",
                    probe::MIN_WINDOW_REQUESTS
                ),
                Some("raise `requests`; 100 or more also lets a p90 verdict settle in one run"),
            )),
            StopCondition::DurationMs(ms)
                if search.spec.axis == SearchAxis::Rate
                    && search.spec.min * ms as f64 / 1000.0 < least =>
            {
                Err(self.errors.hinted(
                    pos,
                    format!(
                        "`{path}`: at `min` ({} requests/s) a probe of the workload's `duration` sends {:.0} requests; it needs at least {least} to be judged",
                        search.spec.min,
                        search.spec.min * ms as f64 / 1000.0
                    ),
                    Some("lengthen `duration` or raise `min`"),
                ))
            }
            _ => Ok(search),
        }
    }
}
