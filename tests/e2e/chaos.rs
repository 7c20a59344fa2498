//! Chaos: a campaign of at least 1,000 steps run by 8 agents on simulated servers while
//! the test keeps breaking things — SIGKILLed agents (restarted on their state, or on a
//! fresh one after their whole host died), a SIGKILLed coordinator restarted on the same
//! port and database, spot preemption notices, cut or stalled links between the agents
//! and the coordinator, and one agent partitioned away past the lease TTL (its units are
//! leased again while it still holds finished results, which must then be refused as
//! stale when its link comes back). At the end it checks the store (read-only) and the test's own
//! ledger (agent logs, results seen during the run):
//!
//! - the campaign succeeded, with exactly one stored result per step;
//! - no stored result comes from a stale epoch: it was stored before the unit's next lease
//!   was granted, by the agent that held the lease of its epoch;
//! - no unit is left leased, no lease live, no attempt open;
//! - every result seen during the run is still stored, unchanged; every batch an agent saw
//!   acknowledged is stored; every stored result was finished by its agent at its epoch;
//! - no server process outlives the agents.
//!
//! It prints the seed, the faults injected by kind and the violations. The short form runs
//! in the normal suite. Knobs: `EVALCTL_CHAOS_SEED` (default: from the clock),
//! `EVALCTL_CHAOS_STEPS` (default 1,040; rounded up to whole units of 20 steps),
//! `EVALCTL_CHAOS_AGENTS` (default 8), `EVALCTL_CHAOS_SECS` (the longest the campaign may
//! take under faults, default 240). The long form is the same test with more steps:
//! `EVALCTL_CHAOS_STEPS=10000 EVALCTL_CHAOS_SECS=1800 cargo test -p evalctl-tests --test e2e
//! chaos -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use evalctl_proto::v1 as pb;
use evalctl_proto::v1::campaign_service_client::CampaignServiceClient;
use evalctl_tests::{
    AgentLog, AgentProcess, Cloud, CoordinatorProcess, FakeMetadata, Fault, Ledger, Proxy, Rng,
    SeenResult, evalctl, json_stdout, processes_with, unique_suffix,
};
use rusqlite::{Connection, OpenFlags};

/// Steps per unit: two load points × ten repeats.
const STEPS_PER_UNIT: usize = 20;
/// Lease TTL of the coordinator: short, so expiries happen during the run.
const LEASE_TTL: &str = "3s";
/// The fewest faults the short form must inject.
const MIN_FAULTS: u64 = 20;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// The campaign: `units` simulated units of [`STEPS_PER_UNIT`] tiny steps (4 requests of 6
/// output tokens at 10 ms per token), every server's command line carrying `marker`.
fn matrix(name: &str, marker: &str, units: usize) -> String {
    let models: String = (0..units)
        .map(|i| format!("  - {{ name: {marker}-{i}, path: sim }}\n"))
        .collect();
    format!(
        "campaign: {name}\nmax_attempts: 3\nrepeats: {repeats}\nmodels:\n{models}\
         frameworks:\n  - name: sim\n\
         quantizations:\n  - {{ name: bf16, bits: 16 }}\n\
         workloads:\n  - name: chat\n    api: chat\n    \
         dataset: {{ kind: random, input_tokens: 8, output_tokens: 6 }}\n    \
         load: {{ concurrency: [1, 2] }}\n    requests: 4\n\
         include:\n  - {{ framework: sim, extra_args: --decode-ms-per-token 10 --prefill-us-per-token 10 }}\n",
        repeats = STEPS_PER_UNIT / 2,
    )
}

/// One agent's place in the fleet: its current process, its spot metadata service, and
/// every log it wrote over its lives.
struct Slot {
    /// This agent's own link to the coordinator, so it can be partitioned alone.
    link: Proxy,
    /// A partition of this agent in progress, and when it ends.
    partitioned_until: Option<Instant>,
    cloud: Cloud,
    state_dir: PathBuf,
    process: AgentProcess,
    metadata: FakeMetadata,
    /// A preemption notice was given to the current process: its exit is expected.
    preempted: bool,
    /// Lives on a fresh state directory so far (host losses).
    hosts: u32,
}

impl Slot {
    fn start(root: &Path, index: usize, coordinator: SocketAddr) -> Slot {
        let cloud = [Cloud::Aws, Cloud::Gcp, Cloud::Azure][index % 3];
        let state_dir = root.join(format!("agent-{index}-host-0"));
        let metadata = FakeMetadata::start(cloud);
        let link = Proxy::start(coordinator);
        let process = spawn_agent(&link.url(), &state_dir, cloud, &metadata);
        Slot {
            link,
            partitioned_until: None,
            cloud,
            state_dir,
            process,
            metadata,
            preempted: false,
            hosts: 0,
        }
    }

    /// Starts the agent again on `state_dir`, with a metadata service that gives no notice.
    fn restart(&mut self) {
        self.metadata = FakeMetadata::start(self.cloud);
        self.process = spawn_agent(
            &self.link.url(),
            &self.state_dir,
            self.cloud,
            &self.metadata,
        );
        self.preempted = false;
    }
}

fn spawn_agent(url: &str, state_dir: &Path, cloud: Cloud, metadata: &FakeMetadata) -> AgentProcess {
    AgentProcess::spawn(
        url,
        state_dir,
        &[
            "--spot-provider",
            cloud.provider(),
            "--metadata-url",
            metadata.url(),
            "--metadata-poll",
            "100ms",
        ],
    )
}

/// Every stored result of `campaign`, by (unit id, step id); `None` when the coordinator
/// could not be asked (it is down, or the link broke mid-stream).
fn results_snapshot(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    campaign: &str,
) -> Option<BTreeMap<(String, String), SeenResult>> {
    runtime.block_on(async {
        let fetch = async {
            let mut client = CampaignServiceClient::connect(url.to_owned()).await.ok()?;
            let mut stream = client
                .results(pb::ResultsRequest {
                    campaign: campaign.to_owned(),
                    include_records: false,
                })
                .await
                .ok()?
                .into_inner();
            let mut snapshot = BTreeMap::new();
            while let Some(result) = stream.message().await.ok()? {
                snapshot.insert(
                    (result.unit_id, result.step_id),
                    SeenResult {
                        agent_id: result.agent_id,
                        attempt: result.attempt,
                        finished_at_ms: result.finished_at_ms,
                    },
                );
            }
            Some(snapshot)
        };
        tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .ok()
            .flatten()
    })
}

fn open_read_only(db: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// Units of the campaign not yet succeeded (`None` when the store cannot be read now).
fn units_left(db: &Path, campaign: &str) -> Option<u64> {
    let conn = open_read_only(db).ok()?;
    conn.query_row(
        "SELECT COUNT(*) FROM units u JOIN campaigns c ON c.campaign_key = u.campaign_key
         WHERE c.name = ?1 AND u.state != 'succeeded'",
        [campaign],
        |r| r.get(0),
    )
    .ok()
}

#[test]
fn a_campaign_under_chaos_stores_every_step_exactly_once() {
    let seed = std::env::var("EVALCTL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let steps_wanted = env_number("EVALCTL_CHAOS_STEPS", 1_040) as usize;
    let agents = env_number("EVALCTL_CHAOS_AGENTS", 8).max(1) as usize;
    let limit = Duration::from_secs(env_number("EVALCTL_CHAOS_SECS", 240));
    let units = steps_wanted.div_ceil(STEPS_PER_UNIT).max(1);
    let steps = units * STEPS_PER_UNIT;
    eprintln!(
        "chaos: seed {seed} (EVALCTL_CHAOS_SEED={seed} reproduces the schedule), {units} units, \
         {steps} steps, {agents} agents"
    );
    let mut rng = Rng::new(seed);
    let mut ledger = Ledger::new();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let db = data.join("coordinator.sqlite");
    let coordinator_flags = ["--lease-ttl", LEASE_TTL];
    let mut coordinator = Some(CoordinatorProcess::start_with(&data, &coordinator_flags));
    let addr = coordinator.as_ref().unwrap().addr().to_string();
    let url = coordinator.as_ref().unwrap().url();
    let upstream = coordinator.as_ref().unwrap().addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let suffix = unique_suffix();
    let name = format!("chaos-{suffix}");
    let marker = format!("chaos{}", suffix.replace('-', "x"));
    let path = dir.path().join("chaos.yaml");
    std::fs::write(&path, matrix(&name, &marker, units)).unwrap();
    let submitted = json_stdout(&evalctl(
        Some(&url),
        &["submit", path.to_str().unwrap(), "--json"],
    ));
    assert_eq!(
        submitted["steps"].as_u64(),
        Some(steps as u64),
        "{submitted}"
    );

    let mut slots: Vec<Slot> = (0..agents)
        .map(|i| Slot::start(dir.path(), i, upstream))
        .collect();
    // Every agent life's log, and whether the test SIGKILLed that life.
    let mut logs: Vec<(PathBuf, bool)> = Vec::new();

    let started = Instant::now();
    let mut next_fault = started + rng.millis(500, 1_500);
    let mut next_poll = started;
    // A link fault in progress and when it ends.
    let mut link: Option<(Fault, Instant)> = None;
    let mut finished = false;
    while started.elapsed() < limit {
        let now = Instant::now();
        // Agents that ended on their own: a preempted one comes back (the spot VM is
        // stopped and started again), anything else is a violation.
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(status) = slot.process.exit_status() {
                if !(slot.preempted && status.success()) {
                    ledger.violation(format!(
                        "agent {i} exited on its own with {status}; log {}",
                        slot.process.log_path().display()
                    ));
                }
                logs.push((slot.process.log_path().to_owned(), false));
                slot.restart();
            }
        }
        if let Some((kind, until)) = link
            && now >= until
        {
            for slot in &slots {
                match kind {
                    Fault::LinkCut => slot.link.heal(),
                    _ => slot.link.resume(),
                }
            }
            link = None;
        }
        for slot in &mut slots {
            if slot.partitioned_until.is_some_and(|until| now >= until) {
                slot.link.resume();
                slot.partitioned_until = None;
            }
        }
        if now >= next_poll {
            next_poll = now + Duration::from_secs(1);
            if let Some(snapshot) = results_snapshot(&runtime, &url, &name) {
                ledger.observe(&snapshot);
            }
            if units_left(&db, &name) == Some(0) {
                finished = true;
                break;
            }
        }
        if now >= next_fault {
            next_fault = now + rng.millis(300, 1_500);
            let kind = match rng.below(14) {
                0..=2 => Fault::AgentKill,
                3 => Fault::HostLoss,
                4 | 5 => Fault::CoordinatorKill,
                6 | 7 => Fault::Preemption,
                8 | 9 => Fault::LinkCut,
                10 | 11 => Fault::LinkStall,
                _ => Fault::Partition,
            };
            let slot_index = rng.below(agents as u64) as usize;
            let slot = &mut slots[slot_index];
            match kind {
                Fault::AgentKill => {
                    slot.process.kill9();
                    logs.push((slot.process.log_path().to_owned(), true));
                    slot.restart();
                }
                Fault::HostLoss => {
                    slot.process.kill9_with_servers();
                    logs.push((slot.process.log_path().to_owned(), true));
                    slot.hosts += 1;
                    slot.state_dir = dir
                        .path()
                        .join(format!("agent-{slot_index}-host-{}", slot.hosts));
                    slot.restart();
                }
                Fault::CoordinatorKill => {
                    if let Some(mut c) = coordinator.take() {
                        c.kill9();
                    }
                    std::thread::sleep(rng.millis(100, 1_000));
                    coordinator = Some(CoordinatorProcess::start_on(
                        &addr,
                        &data,
                        &coordinator_flags,
                    ));
                }
                Fault::Preemption => {
                    if slot.preempted {
                        // Its notice is still being handled: nothing new happens.
                        continue;
                    }
                    slot.metadata.preempt();
                    slot.preempted = true;
                }
                Fault::LinkCut | Fault::LinkStall => {
                    if link.is_some() {
                        continue;
                    }
                    if kind == Fault::LinkCut {
                        for slot in &slots {
                            slot.link.cut();
                        }
                        link = Some((kind, now + rng.millis(200, 2_500)));
                    } else {
                        for slot in &slots {
                            slot.link.stall();
                        }
                        // Sometimes past the lease TTL, so leases expire behind the stall.
                        link = Some((kind, now + rng.millis(500, 4_500)));
                    }
                }
                Fault::Partition => {
                    if slot.partitioned_until.is_some() {
                        continue;
                    }
                    // Past the TTL and the reaper's sweep, so the agent's units expire
                    // and are leased to others while it keeps running them; its results
                    // of that time arrive late, at a stale epoch.
                    slot.link.stall();
                    slot.partitioned_until = Some(now + rng.millis(4_000, 7_000));
                }
            }
            ledger.fault(kind);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    for slot in &slots {
        slot.link.heal();
        slot.link.resume();
    }
    if !finished {
        ledger.violation(format!(
            "the campaign did not finish within {limit:?} ({:?} units left)",
            units_left(&db, &name)
        ));
    }
    if let Some(snapshot) = results_snapshot(&runtime, &url, &name) {
        ledger.observe(&snapshot);
    } else {
        ledger.violation("the final Results call failed");
    }

    // Agents stop (SIGTERM: a spot host treats it as a preemption and exits cleanly) and
    // take their servers with them.
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.process.exit_status().is_none() {
            let status = slot.process.terminate(Duration::from_secs(30));
            if !status.success() {
                ledger.violation(format!("agent {i} exited with {status} on SIGTERM"));
            }
        }
        logs.push((slot.process.log_path().to_owned(), false));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let orphans = processes_with(&marker);
    if !orphans.is_empty() {
        ledger.violation(format!("server processes left behind: {orphans:?}"));
    }
    if let Some(mut c) = coordinator.take() {
        c.terminate(Duration::from_secs(30));
    }

    let mut agent_logs: Vec<(AgentLog, bool)> = logs
        .iter()
        .map(|(p, killed)| {
            let log = AgentLog::parse(&std::fs::read_to_string(p).unwrap_or_default());
            (log, *killed)
        })
        .collect();
    // A life that worked without registering (its coordinator was out of reach after a
    // restart; it resumed its leases from its state) is the agent of its state directory.
    let ids: HashMap<PathBuf, String> = logs
        .iter()
        .zip(&agent_logs)
        .filter_map(|((p, _), (log, _))| Some((p.parent()?.to_owned(), log.agent_id.clone()?)))
        .collect();
    for ((p, _), (log, _)) in logs.iter().zip(agent_logs.iter_mut()) {
        if log.agent_id.is_none() {
            log.agent_id = p.parent().and_then(|dir| ids.get(dir)).cloned();
        }
    }
    let figures = check_store(&db, &name, steps, &agent_logs, &mut ledger);
    let launches: usize = logs
        .iter()
        .map(|(p, _)| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .matches("launching the server")
                .count()
        })
        .sum();
    let finished_by_agents: usize = agent_logs.iter().map(|(l, _)| l.finished.len()).sum();
    let refused: usize = agent_logs.iter().map(|(l, _)| l.refused.len()).sum();
    eprintln!(
        "chaos: seed {seed}: {steps} steps in {:.1}s with {agents} agents; {ledger}",
        elapsed.as_secs_f64()
    );
    eprintln!(
        "chaos: {} agent lives, {launches} server launches, {finished_by_agents} steps finished \
         by agents for {} stored ({} run again after a fault), {refused} late result batches \
         refused, leases: {figures}",
        logs.len(),
        figures.results,
        finished_by_agents.saturating_sub(figures.results as usize),
    );
    for violation in ledger.violations() {
        eprintln!("chaos violation: {violation}");
    }
    if !ledger.violations().is_empty() {
        // Logs, agent states and the store stay for a look.
        eprintln!("chaos: kept {}", dir.keep().display());
    }
    assert!(
        ledger.violations().is_empty(),
        "seed {seed}: {} violations, first: {}",
        ledger.violations().len(),
        ledger.violations()[0]
    );
    if steps_wanted <= 1_040 {
        assert!(
            ledger.faults() >= MIN_FAULTS,
            "seed {seed}: only {} faults injected",
            ledger.faults()
        );
    }
}

/// What the store says about how the leases ended.
#[derive(Debug, Default)]
struct StoreFigures {
    results: u64,
    /// Stored results whose `step finished` line a SIGKILL cut off.
    unlogged: u64,
    leases: u64,
    by_end: BTreeMap<String, u64>,
}

impl std::fmt::Display for StoreFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ends: Vec<String> = self
            .by_end
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{} granted ({}); {} stored results finished just before a SIGKILL cut their log line",
            self.leases,
            ends.join(" "),
            self.unlogged
        )
    }
}

/// Checks the store against the campaign's invariants and the ledger; records violations.
fn check_store(
    db: &Path,
    campaign: &str,
    steps: usize,
    agent_logs: &[(AgentLog, bool)],
    ledger: &mut Ledger,
) -> StoreFigures {
    let conn = match open_read_only(db) {
        Ok(conn) => conn,
        Err(err) => {
            ledger.violation(format!("failed to open the store read-only: {err}"));
            return StoreFigures::default();
        }
    };
    let query = |sql: &str| -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = conn.prepare(sql).expect("prepare a check");
        let columns = stmt.column_count();
        stmt.query_map([campaign], |r| {
            (0..columns)
                .map(|i| r.get(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("run a check")
        .collect::<Result<_, _>>()
        .expect("read a check")
    };
    let int = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Integer(i) => *i,
        _ => -1,
    };
    let text = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Text(t) => t.clone(),
        _ => String::new(),
    };
    const OF_CAMPAIGN: &str = "(SELECT campaign_key FROM campaigns WHERE name = ?1)";

    // The campaign finished: every unit succeeded.
    for row in query(&format!(
        "SELECT state, COUNT(*) FROM units WHERE campaign_key = {OF_CAMPAIGN} GROUP BY state"
    )) {
        if text(&row[0]) != "succeeded" {
            ledger.violation(format!("{} units are {}", int(&row[1]), text(&row[0])));
        }
    }
    // Exactly one stored result per step.
    let step_count = int(&query(&format!(
        "SELECT COUNT(*) FROM steps s JOIN units u ON u.unit_key = s.unit_key
         WHERE u.campaign_key = {OF_CAMPAIGN}"
    ))[0][0]);
    if step_count != steps as i64 {
        ledger.violation(format!("the store has {step_count} steps, not {steps}"));
    }
    for row in query(&format!(
        "SELECT u.unit_id, s.idx, (SELECT COUNT(*) FROM step_results r
             WHERE r.unit_key = s.unit_key AND r.step_id = s.step_id)
         FROM steps s JOIN units u ON u.unit_key = s.unit_key
         WHERE u.campaign_key = {OF_CAMPAIGN}"
    )) {
        if int(&row[2]) != 1 {
            ledger.violation(format!(
                "unit {} step {} has {} stored results",
                text(&row[0]),
                int(&row[1]),
                int(&row[2])
            ));
        }
    }
    // Nothing left leased or open.
    for (what, sql) in [
        (
            "units left leased",
            "SELECT COUNT(*) FROM units WHERE campaign_key = {C} AND state = 'leased'",
        ),
        (
            "live leases",
            "SELECT COUNT(*) FROM leases l JOIN units u ON u.unit_key = l.unit_key
             WHERE u.campaign_key = {C} AND l.ended_at_ms IS NULL",
        ),
        (
            "open attempts",
            "SELECT COUNT(*) FROM unit_history WHERE campaign_key = {C} AND outcome IS NULL",
        ),
    ] {
        let n = int(&query(&sql.replace("{C}", OF_CAMPAIGN))[0][0]);
        if n != 0 {
            ledger.violation(format!("{n} {what}"));
        }
    }
    // No result from a stale epoch: stored while its epoch was the unit's current one
    // (before the next lease was granted), by the agent holding that epoch's lease.
    let stored = query(&format!(
        "SELECT u.unit_id, s.idx, r.step_id, r.agent_id, r.attempt, r.epoch, u.epoch,
             (SELECT agent_id FROM leases l WHERE l.unit_key = r.unit_key AND l.epoch = r.epoch),
             (SELECT granted_at_ms FROM leases l
                  WHERE l.unit_key = r.unit_key AND l.epoch = r.epoch + 1),
             (SELECT MIN(applied_at_ms) FROM result_batches b WHERE b.unit_key = r.unit_key
                  AND b.step_id = r.step_id AND b.attempt = r.attempt),
             r.finished_at_ms
         FROM step_results r JOIN units u ON u.unit_key = r.unit_key
         JOIN steps s ON s.unit_key = r.unit_key AND s.step_id = r.step_id
         WHERE u.campaign_key = {OF_CAMPAIGN}"
    ));
    let finished_by: HashMap<&str, BTreeSet<(&str, u64, u32)>> = {
        let mut map: HashMap<&str, BTreeSet<(&str, u64, u32)>> = HashMap::new();
        for (log, _) in agent_logs {
            if let Some(agent) = &log.agent_id {
                map.entry(agent.as_str()).or_default().extend(
                    log.finished
                        .iter()
                        .map(|f| (f.unit.as_str(), f.epoch, f.index)),
                );
            }
        }
        map
    };
    // Steps a SIGKILL interrupted, by agent: the kill may have landed after the step's
    // result was committed to the outbox and before its log line.
    let interrupted: BTreeSet<(&str, &str, u64, u32)> = agent_logs
        .iter()
        .filter(|(_, killed)| *killed)
        .filter_map(|(log, _)| {
            let step = log.running_at_end.as_ref()?;
            Some((
                log.agent_id.as_deref()?,
                step.unit.as_str(),
                step.epoch,
                step.index,
            ))
        })
        .collect();
    let mut unlogged = 0;
    let mut stored_keys = BTreeMap::new();
    for row in &stored {
        let (unit, index, step, agent) =
            (text(&row[0]), int(&row[1]), text(&row[2]), text(&row[3]));
        let (attempt, epoch, unit_epoch) = (int(&row[4]), int(&row[5]), int(&row[6]));
        let where_ = format!("unit {unit} step {index} (epoch {epoch}, agent {agent})");
        if epoch < 1 || epoch > unit_epoch {
            ledger.violation(format!("{where_}: epoch outside 1..={unit_epoch}"));
        }
        match &row[7] {
            rusqlite::types::Value::Text(holder) if *holder == agent => {}
            other => ledger.violation(format!(
                "{where_}: the lease of that epoch was held by {other:?}"
            )),
        }
        let applied = int(&row[9]);
        if let rusqlite::types::Value::Integer(next_granted) = row[8]
            && (applied < 0 || applied > next_granted)
        {
            ledger.violation(format!(
                "{where_}: stored at {applied}, after epoch {} was granted at {next_granted}",
                epoch + 1
            ));
        }
        let finished = finished_by
            .get(agent.as_str())
            .is_some_and(|set| set.contains(&(unit.as_str(), epoch as u64, index as u32)));
        if !finished
            && interrupted.contains(&(agent.as_str(), unit.as_str(), epoch as u64, index as u32))
        {
            unlogged += 1;
        } else if !finished {
            ledger.violation(format!(
                "{where_}: no log of that agent says it finished this step at this epoch"
            ));
        }
        stored_keys.insert(
            (unit, step),
            SeenResult {
                agent_id: agent,
                attempt: attempt as u32,
                finished_at_ms: int(&row[10]),
            },
        );
    }
    // Every result seen during the run is stored, unchanged.
    ledger.observe(&stored_keys);
    // Every batch an agent saw acknowledged is stored.
    let applied: BTreeSet<(String, i64)> = query(&format!(
        "SELECT h.agent_id, b.sequence FROM result_batches b
         JOIN unit_history h ON h.unit_key = b.unit_key AND h.attempt = b.attempt
         WHERE h.campaign_key = {OF_CAMPAIGN}"
    ))
    .iter()
    .map(|row| (text(&row[0]), int(&row[1])))
    .collect();
    let mut acked = 0;
    for (log, _) in agent_logs {
        let Some(agent) = &log.agent_id else { continue };
        for sequence in &log.acked {
            acked += 1;
            if !applied.contains(&(agent.clone(), *sequence as i64)) {
                ledger.violation(format!(
                    "agent {agent} saw batch {sequence} acknowledged, but the store has no such batch"
                ));
            }
        }
    }
    if acked == 0 {
        ledger.violation("no agent log shows an acknowledged batch: the ledger saw nothing");
    }

    let mut figures = StoreFigures {
        results: stored.len() as u64,
        unlogged,
        ..StoreFigures::default()
    };
    for row in query(&format!(
        "SELECT COALESCE(l.end_reason, 'live'), COUNT(*) FROM leases l
         JOIN units u ON u.unit_key = l.unit_key WHERE u.campaign_key = {OF_CAMPAIGN}
         GROUP BY 1"
    )) {
        figures.leases += int(&row[1]) as u64;
        figures.by_end.insert(text(&row[0]), int(&row[1]) as u64);
    }
    figures
}
