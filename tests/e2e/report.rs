//! `evalctl report` for a campaign with done, failed and pruned units: the page's
//! structure, then the page rendered by headless Chromium (skipped, saying why, when
//! Chromium is not installed; `scripts/setup-chromium.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use evalctl_tests::{CoordinatorProcess, evalctl, json_stdout};

use super::results_fixture::{run_local, stderr};

/// Two working configurations of one model (two quantizations), a model pruned for its
/// size on one 80 GB GPU, and a model whose server refuses its arguments (its units fail;
/// one attempt each).
const MATRIX: &str = r#"
campaign: report-e2e
max_attempts: 1
models:
  - { name: sim-1b, path: sim-1b, params_b: 1 }
  - { name: sim-huge, path: sim-huge, params_b: 400 }
  - { name: sim-broken, path: sim-broken, params_b: 1 }
gpus:
  - { type: H100-80GB, memory_gb: 80, counts: [1], price_per_hour: 2.5 }
frameworks:
  - name: sim
quantizations:
  - { name: bf16, bits: 16 }
  - { name: fp8, bits: 8 }
workloads:
  - name: chat
    api: chat
    dataset: { kind: random, input_tokens: 32, output_tokens: 8 }
    load: { concurrency: [1, 4] }
    requests: 8
exclude:
  - { model: sim-broken, quantization: fp8 }
include:
  - { model: sim-1b, quantization: bf16, extra_args: --decode-ms-per-token 3 }
  - { model: sim-1b, quantization: fp8, extra_args: --decode-ms-per-token 2 }
  - { model: sim-broken, extra_args: --no-such-flag }
"#;

/// Chromium, where the test may use it: `EVALCTL_CHROMIUM` or Debian's `/usr/bin/chromium`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("EVALCTL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// Runs headless Chromium on `page` with `mode` (`--dump-dom` or `--screenshot=…`) and
/// returns (stdout, stderr).
fn headless(chromium: &Path, profile: &Path, page: &Path, mode: &[&str]) -> (String, String) {
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(mode)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Script appended to a copy of the report: counts chart points that the browser laid out
/// inside their chart, and writes the counts into the DOM that `--dump-dom` prints.
const PROBE: &str = r#"<script>
const charts = [...document.querySelectorAll('figure.chart svg')];
let inside = 0, total = 0;
for (const svg of charts) {
  const box = svg.getBoundingClientRect();
  for (const pt of svg.querySelectorAll('circle.pt, rect.bar')) {
    total++;
    const r = pt.getBoundingClientRect();
    if (r.width > 0 && r.left >= box.left - 1 && r.right <= box.right + 1 &&
        r.top >= box.top - 1 && r.bottom <= box.bottom + 1) inside++;
  }
}
document.body.setAttribute('data-probe', `charts=${charts.length} marks=${total} inside=${inside}`);
</script>"#;

#[test]
fn report_shows_coverage_curves_and_failures_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let local = run_local(
        dir.path(),
        "report.yaml",
        MATRIX,
        &["--gpus", "H100-80GB:1"],
    );
    // Failed units make `local` exit 6.
    assert_eq!(local.status.code(), Some(6), "{}", stderr(&local));
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let status = json_stdout(&evalctl(Some(&url), &["status", "report-e2e", "--json"]));
    assert_eq!(status["campaign"]["units"]["failed"], 1, "{status}");
    assert_eq!(status["campaign"]["units"]["succeeded"], 2, "{status}");

    let page = dir.path().join("report.html");
    let written = json_stdout(&evalctl(
        Some(&url),
        &[
            "report",
            "report-e2e",
            "-o",
            page.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(written["steps"], 4, "{written}");
    let html = std::fs::read_to_string(&page).unwrap();

    // Structure: every section, the pruned and failed units with their reasons and log.
    for id in ["coverage", "performance", "cost", "energy", "failures"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    assert!(html.contains("sim-huge"), "pruned model listed");
    assert!(html.contains("pruned"));
    assert!(html.contains("weights need"), "pruning reason shown");
    assert!(html.contains("<td>excluded</td><td>sim-broken / H100-80GB x1 / sim / fp8</td>"));
    assert!(
        html.contains("1 excluded by the matrix"),
        "summary counts the exclusion"
    );
    assert!(html.contains(r#"class="state-failed""#));
    // A unit that succeeded on its first attempt made one try, not zero.
    assert!(
        html.contains(r#"<td>succeeded</td><td class="num">2/2</td><td class="num">1</td>"#),
        "succeeded units show their one try: {}",
        &html[html.find(r#"<table class="units""#).unwrap_or(0)..][..600]
    );
    assert!(html.contains("sim-broken"));
    assert!(
        html.contains("no-such-flag"),
        "the failure's log tail names the bad flag"
    );
    assert!(html.contains("TTFT p90 (ms)") && html.contains("TPOT p90 (ms)"));
    assert!(html.contains("output throughput (tokens/s)"));
    assert!(html.contains("Pareto front"));
    assert!(html.contains("tokens per joule"));
    assert!(html.contains("cost per million output tokens"));
    // 2 configurations × 2 loads on each of 3 charts.
    assert_eq!(html.matches(r#"class="pt""#).count(), 12);
    // Self-contained: nothing fetched.
    for needle in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "<link rel=\"stylesheet",
    ] {
        assert!(!html.contains(needle), "report references {needle}");
    }
    assert!(html.len() < 512 * 1024, "report is {} bytes", html.len());

    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED the Chromium part: no chromium at /usr/bin/chromium or EVALCTL_CHROMIUM \
             (scripts/setup-chromium.sh installs it)"
        );
        return;
    };
    // The page itself: no console output at all (it has no scripts; a failed load or a
    // parse problem would log here).
    let (dom, log) = headless(
        &chromium,
        &dir.path().join("profile-1"),
        &page,
        &["--dump-dom"],
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(dom.contains("Campaign report-e2e"), "DOM: {dom:.400}");

    // A probed copy: every chart point is laid out inside its chart.
    let probed = dir.path().join("probed.html");
    std::fs::write(&probed, html.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let (dom, log) = headless(
        &chromium,
        &dir.path().join("profile-2"),
        &probed,
        &["--dump-dom"],
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    // 3 charts per model and workload, a cost and an energy bar chart.
    assert!(
        dom.contains("data-probe=\"charts=5 marks=15 inside=15\""),
        "probe: {}",
        dom.lines()
            .find(|l| l.contains("data-probe"))
            .unwrap_or("no probe result")
    );

    let png = dir.path().join("report.png");
    headless(
        &chromium,
        &dir.path().join("profile-3"),
        &page,
        &[&format!("--screenshot={}", png.display())],
    );
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "screenshot is a PNG");
    assert!(
        bytes.len() > 20_000,
        "screenshot has content ({} bytes)",
        bytes.len()
    );
}
