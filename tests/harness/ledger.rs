//! The fault tests' ledger: what the test saw happen, kept apart from the coordinator's
//! store so the store can be checked against it.
//!
//! Two sources feed it:
//! - **Agent logs.** Each agent says which steps it finished, under which unit, lease and
//!   epoch (`step finished` inside the `unit{…}` span), and which result batches the
//!   coordinator acknowledged (`result batch acknowledged sequence=N`, or a refusal).
//!   [`AgentLog::parse`] reads one log file.
//! - **Results seen over time.** The test polls the coordinator's `Results` during the run
//!   and hands each snapshot to [`Ledger::observe`]: a result once seen must stay, unchanged
//!   (same agent, attempt and finish time), in every later snapshot and in the final store,
//!   whatever was killed in between.
//!
//! It also counts the faults injected, by kind, and collects violations as text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A step an agent says it finished: its result went into the agent's outbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FinishedStep {
    /// The unit id (`u-…`).
    pub unit: String,
    /// The lease's epoch.
    pub epoch: u64,
    /// The step's index in its unit.
    pub index: u32,
}

/// What one agent log file says.
#[derive(Debug, Default, Clone)]
pub struct AgentLog {
    /// The agent id it registered with (`None` if it never registered).
    pub agent_id: Option<String>,
    /// Steps finished, in log order.
    pub finished: Vec<FinishedStep>,
    /// The step that was running when the log ends (started, neither finished nor
    /// stopped): the step a SIGKILL interrupted. A kill can also land between a step's
    /// commit to the outbox and its `step finished` line, so its result may still arrive.
    pub running_at_end: Option<FinishedStep>,
    /// Sequences of result batches the coordinator accepted.
    pub acked: BTreeSet<u64>,
    /// Sequences of result batches the coordinator refused for good.
    pub refused: BTreeSet<u64>,
}

impl AgentLog {
    /// Parses an agent's text log (`evalctl-agent run`, `evalctl_agent=debug`).
    pub fn parse(text: &str) -> AgentLog {
        let mut log = AgentLog::default();
        for line in text.lines() {
            if log.agent_id.is_none() && line.contains(": registered ") {
                log.agent_id = field(line, "agent").map(str::to_owned);
            } else if line.contains("step started") {
                log.running_at_end = step_of(line);
            } else if line.contains("step stopped") {
                log.running_at_end = None;
            } else if line.contains("step finished") {
                log.running_at_end = None;
                if let Some(step) = step_of(line) {
                    log.finished.push(step);
                }
            } else if line.contains("result batch acknowledged") {
                if let Some(sequence) = field(line, "sequence").and_then(|s| s.parse().ok()) {
                    log.acked.insert(sequence);
                }
            } else if line.contains("refused a result batch")
                && let Some(sequence) = field(line, "sequence").and_then(|s| s.parse().ok())
            {
                log.refused.insert(sequence);
            }
        }
        log
    }
}

/// The step a `step …` line of a `unit{…}` span is about.
fn step_of(line: &str) -> Option<FinishedStep> {
    let at = line.find("unit{")?;
    let span = &line[at..at + line[at..].find('}')?];
    Some(FinishedStep {
        unit: field(span, "unit")?.to_owned(),
        epoch: field(span, "epoch")?.parse().ok()?,
        index: field(line, "index")?.parse().ok()?,
    })
}

/// The value of ` key=value` in a tracing text line (up to the next space or `}`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(at) = line[from..].find(&needle) {
        let start = from + at;
        // A whole key: preceded by a space or `{`, not the tail of a longer key.
        if start == 0 || matches!(line.as_bytes()[start - 1], b' ' | b'{') {
            let value = &line[start + needle.len()..];
            let end = value.find([' ', '}']).unwrap_or(value.len());
            return Some(&value[..end]);
        }
        from = start + needle.len();
    }
    None
}

/// A stored result as the test saw it through `Results`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenResult {
    /// The agent that produced it.
    pub agent_id: String,
    /// The unit attempt it was produced in.
    pub attempt: u32,
    /// When the agent finished the step, Unix ms.
    pub finished_at_ms: i64,
}

/// The kinds of fault the chaos test injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of an agent, restarted on the same state directory.
    AgentKill,
    /// SIGKILL of an agent and its servers (the host died), restarted on a fresh state
    /// directory (a new host).
    HostLoss,
    /// SIGKILL of the coordinator, restarted on the same port and database.
    CoordinatorKill,
    /// A spot preemption notice from the (fake) metadata service.
    Preemption,
    /// Every agent connection closed, new ones refused, for a while.
    LinkCut,
    /// Every agent connection held open with nothing moving, for a while.
    LinkStall,
    /// One agent's connections held open with nothing moving, past the lease TTL.
    Partition,
}

impl Fault {
    /// Every kind, in report order.
    pub const ALL: [Fault; 7] = [
        Fault::AgentKill,
        Fault::HostLoss,
        Fault::CoordinatorKill,
        Fault::Preemption,
        Fault::LinkCut,
        Fault::LinkStall,
        Fault::Partition,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::AgentKill => "agent_kill9",
            Fault::HostLoss => "host_loss",
            Fault::CoordinatorKill => "coordinator_kill9",
            Fault::Preemption => "preemption",
            Fault::LinkCut => "link_cut",
            Fault::LinkStall => "link_stall",
            Fault::Partition => "partition",
        }
    }
}

/// Faults injected and violations found.
#[derive(Debug, Default)]
pub struct Ledger {
    seen: BTreeMap<(String, String), SeenResult>,
    faults: BTreeMap<Fault, u64>,
    violations: Vec<String>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Counts one injected fault.
    pub fn fault(&mut self, kind: Fault) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// Faults injected of `kind`.
    pub fn faults_of(&self, kind: Fault) -> u64 {
        self.faults.get(&kind).copied().unwrap_or(0)
    }

    /// Faults injected, all kinds.
    pub fn faults(&self) -> u64 {
        self.faults.values().sum()
    }

    /// Records a violation.
    pub fn violation(&mut self, what: impl Into<String>) {
        self.violations.push(what.into());
    }

    /// Violations so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Results seen so far, by (unit id, step id).
    pub fn seen(&self) -> &BTreeMap<(String, String), SeenResult> {
        &self.seen
    }

    /// Takes a complete snapshot of the stored results: every result seen before must be
    /// in it unchanged; new ones are remembered. Returns how many results it holds.
    pub fn observe(&mut self, snapshot: &BTreeMap<(String, String), SeenResult>) -> usize {
        for (key, before) in &self.seen {
            match snapshot.get(key) {
                None => self.violations.push(format!(
                    "the result of unit {} step {} was seen, then vanished",
                    key.0, key.1
                )),
                Some(now) if now != before => self.violations.push(format!(
                    "the result of unit {} step {} changed from {before:?} to {now:?}",
                    key.0, key.1
                )),
                Some(_) => {}
            }
        }
        for (key, result) in snapshot {
            self.seen
                .entry(key.clone())
                .or_insert_with(|| result.clone());
        }
        snapshot.len()
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = Fault::ALL
            .iter()
            .map(|k| format!("{}={}", k.name(), self.faults_of(*k)))
            .collect();
        write!(
            f,
            "faults: {} ({}); violations: {}",
            self.faults(),
            kinds.join(" "),
            self.violations.len()
        )
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same fault schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> std::time::Duration {
        std::time::Duration::from_millis(lo + self.below(hi.saturating_sub(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_logs_yield_finished_steps_and_acknowledgements() {
        let text = "\
2026-11-23T16:56:16.9Z  INFO evalctl_agent::runner: registered agent=a-1 lease_ttl=3s
2026-11-23T16:56:17.1Z  INFO unit{lease=0b4e unit=u-ddf9 epoch=3}: evalctl_agent::runner::unit: step started step=chat @ c=1 #0 index=7
2026-11-23T16:56:17.3Z  INFO unit{lease=0b4e unit=u-ddf9 epoch=3}: evalctl_agent::runner::unit: step finished step=chat @ c=1 #0 index=7
2026-11-23T16:56:17.3Z  INFO unit{lease=0b4e unit=u-ddf9 epoch=3}: evalctl_agent::runner::unit: step started step=chat @ c=1 #1 index=8
2026-11-23T16:56:17.4Z DEBUG evalctl_agent::runner::outbox: result batch acknowledged sequence=12
2026-11-23T16:56:17.5Z  WARN evalctl_agent::runner::outbox: the coordinator refused a result batch; dropping it unit=u-ddf9 attempt=2 sequence=13 error=stale
";
        let log = AgentLog::parse(text);
        assert_eq!(log.agent_id.as_deref(), Some("a-1"));
        assert_eq!(
            log.finished,
            vec![FinishedStep {
                unit: "u-ddf9".into(),
                epoch: 3,
                index: 7
            }]
        );
        assert_eq!(
            log.running_at_end,
            Some(FinishedStep {
                unit: "u-ddf9".into(),
                epoch: 3,
                index: 8
            })
        );
        assert_eq!(log.acked, BTreeSet::from([12]));
        assert_eq!(log.refused, BTreeSet::from([13]));
    }

    #[test]
    fn a_result_that_changes_or_vanishes_is_a_violation() {
        let mut ledger = Ledger::new();
        let key = ("u".to_owned(), "s".to_owned());
        let first = SeenResult {
            agent_id: "a".into(),
            attempt: 1,
            finished_at_ms: 5,
        };
        ledger.observe(&BTreeMap::from([(key.clone(), first.clone())]));
        ledger.observe(&BTreeMap::from([(key.clone(), first.clone())]));
        assert!(ledger.violations().is_empty());
        let other = SeenResult {
            agent_id: "b".into(),
            ..first
        };
        ledger.observe(&BTreeMap::from([(key, other)]));
        ledger.observe(&BTreeMap::new());
        assert_eq!(ledger.violations().len(), 2, "{:?}", ledger.violations());
    }

    #[test]
    fn the_generator_is_deterministic_per_seed() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.below(100)
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.below(100)
            })
            .collect();
        assert_eq!(a, b);
    }
}
