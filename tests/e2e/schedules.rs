//! Schedules through the real coordinator and CLI (docs/schedules.md): the commands with
//! their errors and audit entries, and a schedule firing every 5 s while the coordinator is
//! killed with SIGKILL at random moments and restarted on the same database — every firing
//! gives exactly one campaign, or is recorded missed, and none is lost.
//!
//! Knobs: `EVALCTL_SCHEDULE_CHAOS_SEED` (default: from the clock), and
//! `EVALCTL_SCHEDULE_CHAOS_SECS` (how long the kills go on, default 90).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use evalctl_tests::{CoordinatorProcess, Rng, evalctl, json_stdout};
use serde_json::Value;

const MATRIX: &str = "campaign: ignored
models: [{ name: m, path: m }]
frameworks: [{ name: sim }]
quantizations: [{ name: bf16, bits: 16 }]
workloads:
  - name: chat
    dataset: { kind: random, input_tokens: 8, output_tokens: 4 }
    load: { concurrency: [1] }
    requests: 4
";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn schedule_commands_check_their_input_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let matrix = dir.path().join("m.yaml");
    std::fs::write(&matrix, MATRIX).unwrap();
    let m = matrix.to_str().unwrap();

    let bad = evalctl(
        Some(&url),
        &["schedule", "add", "n", m, "--cron", "61 * * * *"],
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("`61 * * * *` is not a cron pattern"),
        "{}",
        stderr(&bad)
    );
    let bad = evalctl(
        Some(&url),
        &[
            "schedule",
            "add",
            "n",
            m,
            "--cron",
            "0 1 * * *",
            "--timezone",
            "Mars/Base",
        ],
    );
    assert!(
        stderr(&bad).contains("`Mars/Base` is not an IANA time zone"),
        "{}",
        stderr(&bad)
    );

    let added = json_stdout(&evalctl(
        Some(&url),
        &[
            "schedule",
            "add",
            "nightly",
            m,
            "--cron",
            "0 1 * * *",
            "--timezone",
            "Europe/Berlin",
            "--json",
        ],
    ));
    assert_eq!(added["overlap"], "skip");
    assert_eq!(added["catch_up"], "once");
    let next = added["next_campaign"].as_str().unwrap();
    assert!(
        next.starts_with("nightly-") && next.ends_with("T01.00"),
        "{added}"
    );
    let again = evalctl(
        Some(&url),
        &["schedule", "add", "nightly", m, "--cron", "0 1 * * *"],
    );
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    let updated = json_stdout(&evalctl(
        Some(&url),
        &[
            "schedule",
            "update",
            "nightly",
            "--overlap",
            "cancel",
            "--json",
        ],
    ));
    assert_eq!(
        (updated["overlap"].as_str(), updated["cron"].as_str()),
        (Some("cancel"), Some("0 1 * * *"))
    );
    let paused = json_stdout(&evalctl(
        Some(&url),
        &["schedule", "pause", "nightly", "--json"],
    ));
    assert_eq!(paused["paused"], true);
    assert!(paused["next_fire_at_ms"].is_null(), "{paused}");

    // Run now, even paused: one campaign of the series.
    let run = evalctl(Some(&url), &["schedule", "run-now", "nightly"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        text.contains("Submitted campaign nightly-") && text.contains("-now"),
        "{text}"
    );
    // The series runs (no agent): with overlap `cancel` the next run-now cancels it.
    let run = evalctl(Some(&url), &["schedule", "run-now", "nightly", "--json"]);
    assert_eq!(json_stdout(&run)["outcome"], "submitted");
    let shown = json_stdout(&evalctl(
        Some(&url),
        &["schedule", "show", "nightly", "--json"],
    ));
    assert_eq!(shown["firings"].as_array().unwrap().len(), 2, "{shown}");

    let listed = json_stdout(&evalctl(Some(&url), &["schedule", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let removed = evalctl(Some(&url), &["schedule", "remove", "nightly"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let gone = evalctl(Some(&url), &["schedule", "show", "nightly"]);
    assert!(
        stderr(&gone).contains("no schedule is named `nightly`"),
        "{}",
        stderr(&gone)
    );

    let audit = json_stdout(&evalctl(Some(&url), &["audit", "--json"]));
    let actions: BTreeSet<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "schedule_add",
        "schedule_update",
        "schedule_pause",
        "schedule_run",
        "schedule_remove",
    ] {
        assert!(
            actions.contains(action),
            "{action} not audited: {actions:?}"
        );
    }
}

#[test]
fn a_five_second_schedule_under_random_kills_gives_one_campaign_per_firing() {
    let seed = env_number(
        "EVALCTL_SCHEDULE_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let secs = env_number("EVALCTL_SCHEDULE_CHAOS_SECS", 90);
    eprintln!(
        "schedule chaos: seed {seed} (EVALCTL_SCHEDULE_CHAOS_SEED={seed} reproduces it), {secs} s"
    );
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(dir.path());
    let addr = coordinator.addr().to_string();
    let url = coordinator.url();
    let matrix = dir.path().join("m.yaml");
    std::fs::write(&matrix, MATRIX).unwrap();
    let added = evalctl(
        Some(&url),
        &[
            "schedule",
            "add",
            "every5",
            matrix.to_str().unwrap(),
            "--cron",
            "*/5 * * * * *",
            "--overlap",
            "queue",
        ],
    );
    assert!(added.status.success(), "{}", stderr(&added));

    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(rng.millis(300, 6_000));
        coordinator.kill9();
        kills += 1;
        // Down for up to 8 s: sometimes over a firing or two, which catch-up `once` folds
        // into one run.
        std::thread::sleep(rng.millis(0, 8_000));
        coordinator = CoordinatorProcess::start_on(&addr, dir.path(), &[]);
    }
    // Read in the middle of a 5 s period, after the restart has finished what was claimed.
    std::thread::sleep(Duration::from_secs(3));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(5_000 - (now_ms + 2_500) % 5_000));

    let shown = json_stdout(&evalctl(
        Some(&url),
        &["schedule", "show", "every5", "--firings", "1000", "--json"],
    ));
    let firings = shown["firings"].as_array().unwrap();
    let campaigns: Vec<String> = json_stdout(&evalctl(Some(&url), &["status", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with("every5-"))
        .map(str::to_owned)
        .collect();

    // Every firing is a 5 s boundary, each once, none skipped from the first to the last.
    let mut instants: Vec<i64> = firings
        .iter()
        .map(|f| f["fire_at_ms"].as_i64().unwrap())
        .collect();
    instants.sort_unstable();
    assert!(instants.iter().all(|t| t % 5_000 == 0), "{instants:?}");
    assert!(
        instants.windows(2).all(|w| w[1] - w[0] == 5_000),
        "a firing is missing or recorded twice: {instants:?}"
    );
    // Submitted firings and the series' campaigns are the same names, each once.
    let submitted: BTreeSet<String> = firings
        .iter()
        .filter(|f| f["outcome"] == "submitted")
        .map(|f| f["campaign"].as_str().unwrap().to_owned())
        .collect();
    let stored: BTreeSet<String> = campaigns.iter().cloned().collect();
    assert_eq!(
        stored.len(),
        campaigns.len(),
        "a campaign name twice: {campaigns:?}"
    );
    assert_eq!(submitted, stored, "firings and campaigns differ");
    let outcomes: BTreeSet<&str> = firings
        .iter()
        .filter_map(|f| f["outcome"].as_str())
        .collect();
    assert!(
        outcomes.iter().all(|o| ["submitted", "missed"].contains(o)),
        "{outcomes:?}"
    );
    let missed = firings.iter().filter(|f| f["outcome"] == "missed").count();
    eprintln!(
        "schedule chaos: {kills} kills, {} firings: {} campaigns, {missed} missed",
        firings.len(),
        submitted.len()
    );
    assert!(
        kills >= 5 && submitted.len() >= 5,
        "{kills} kills, {} campaigns",
        submitted.len()
    );
}

/// A sim matrix whose server decodes a token in `decode_ms`: three repeats of one step.
/// Prefill takes 32 ms and a token 10 ms or more, so that timer jitter on a busy machine
/// stays well under compare's 5% between two runs of the same server.
fn series_matrix(decode_ms: u32) -> String {
    format!(
        "campaign: ignored
repeats: 3
models: [{{ name: m, path: m }}]
frameworks: [{{ name: sim }}]
quantizations: [{{ name: bf16, bits: 16 }}]
workloads:
  - name: chat
    api: completions
    dataset: {{ kind: random, input_tokens: 64, output_tokens: 8 }}
    load: {{ concurrency: [2] }}
    requests: 16
include:
  - {{ framework: sim, extra_args: --decode-ms-per-token {decode_ms} --prefill-us-per-token 500 }}
"
    )
}

/// Fires the schedule and waits until its campaign has a verdict; returns the campaign's
/// `status --json`.
fn fire_and_judge(url: &str) -> Value {
    let run = json_stdout(&evalctl(
        Some(url),
        &["schedule", "run-now", "nightly", "--json"],
    ));
    assert_eq!(run["outcome"], "submitted", "{run}");
    let campaign = run["campaign"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    evalctl_tests::eventually(Duration::from_secs(90), "the campaign's verdict", || {
        status = json_stdout(&evalctl(Some(url), &["status", &campaign, "--json"]));
        !status["series"]["verdict"].is_null()
    });
    assert_eq!(status["campaign"]["state"], "succeeded", "{status}");
    status
}

#[test]
fn a_series_of_three_where_the_third_regresses_says_so_in_status_report_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    // A webhook for the series' campaigns only (scope `schedules`, named by the schedule).
    let hook = evalctl_tests::HttpReceiver::start("127.0.0.1:0", 0);
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[[notify.sinks]]\nname = \"series-hook\"\nkind = \"webhook\"\nscope = \"schedules\"\nurl = \"{}\"\n",
            hook.url("/hook")
        ),
    )
    .unwrap();
    let coordinator =
        CoordinatorProcess::start_with(dir.path(), &["--config", config.to_str().unwrap()]);
    let url = coordinator.url();
    let _agent = evalctl_tests::AgentProcess::start(&url, &dir.path().join("agent"), &[]);
    let matrix = dir.path().join("m.yaml");
    std::fs::write(&matrix, series_matrix(10)).unwrap();
    let m = matrix.to_str().unwrap();
    let added = evalctl(
        Some(&url),
        &[
            "schedule",
            "add",
            "nightly",
            m,
            "--cron",
            "0 1 1 1 *",
            "--notify",
            "series-hook",
        ],
    );
    assert!(added.status.success(), "{}", stderr(&added));

    let first = fire_and_judge(&url);
    assert_eq!(first["series"]["verdict"], "no_baseline", "{first}");
    let second = fire_and_judge(&url);
    let first_name = first["campaign"]["name"].as_str().unwrap();
    assert_eq!(second["series"]["predecessor"], first_name);
    assert_eq!(second["series"]["baseline"], first_name);
    assert_eq!(second["series"]["verdict"], "passed", "{second}");

    // The third night's server decodes four times slower.
    std::fs::write(&matrix, series_matrix(40)).unwrap();
    let updated = evalctl(Some(&url), &["schedule", "update", "nightly", m]);
    assert!(updated.status.success(), "{}", stderr(&updated));
    let third = fire_and_judge(&url);
    let second_name = second["campaign"]["name"].as_str().unwrap();
    let third_name = third["campaign"]["name"].as_str().unwrap();
    let series = &third["series"];
    assert_eq!(series["baseline"], second_name, "{series}");
    assert_eq!(series["verdict"], "regressed", "{series}");
    assert!(series["regressions"].as_u64().unwrap() >= 1, "{series}");
    assert!(
        series["worst"][0]
            .as_str()
            .unwrap()
            .contains("m / cpu x1 / sim / bf16 / chat @ c=2"),
        "{series}"
    );

    // status shows it to people, the report too, and compare with one name agrees.
    let text =
        String::from_utf8_lossy(&evalctl(Some(&url), &["status", third_name]).stdout).into_owned();
    assert!(text.contains("verdict: REGRESSED"), "{text}");
    let report = dir.path().join("r.html");
    let out = evalctl(
        Some(&url),
        &["report", third_name, "-o", report.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains(r#"<p id="verdict">"#) && page.contains("regressed</strong>"));
    let compared = evalctl(Some(&url), &["compare", third_name, "--json"]);
    assert_eq!(compared.status.code(), Some(7), "{}", stderr(&compared));
    assert_eq!(json_stdout_any(&compared)["base"], second_name);

    // And it was notified: the regression with its verdict and the report command.
    let regression_event = || {
        hook.received()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .find(|e| e["kind"] == "regression")
    };
    let waited = std::time::Instant::now();
    while regression_event().is_none() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let regression = regression_event().unwrap_or_else(|| {
        panic!(
            "no regression event; received {:?}\ncoordinator log:\n{}",
            hook.received().len(),
            coordinator.log()
        )
    });
    assert_eq!(regression["campaign"]["name"], third_name, "{regression}");
    assert_eq!(regression["verdict"]["baseline"], second_name);
    assert!(
        regression["report_command"]
            .as_str()
            .unwrap()
            .starts_with("evalctl report ")
    );

    // Pinning the first makes it the baseline of later campaigns, and is audited.
    let pinned = evalctl(Some(&url), &["baseline", "pin", "nightly", first_name]);
    assert!(pinned.status.success(), "{}", stderr(&pinned));
    let fourth = fire_and_judge(&url);
    assert_eq!(fourth["series"]["baseline"], first_name, "{fourth}");
    assert_eq!(
        fourth["series"]["baseline_pinned"], false,
        "a stored verdict names its baseline"
    );
    assert_eq!(fourth["series"]["verdict"], "regressed");
}

/// stdout as JSON, whatever the exit code.
fn json_stdout_any(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(output)
        )
    })
}
