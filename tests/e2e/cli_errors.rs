//! The CLI's errors: clear messages, hints and documented exit codes.

use evalctl_tests::{CoordinatorProcess, evalctl, json_stdout, workspace_root};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unreachable_coordinator_exits_3_with_a_hint() {
    let output = evalctl(None, &["status"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("failed to connect to the coordinator at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("(hint:"), "{err}");
}

#[test]
fn invalid_matrix_exits_5_naming_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "campaign: x\nrepeats: 1\nmodles: []\n").unwrap();
    let output = evalctl(None, &["submit", "--dry-run", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("bad.yaml:3:1"), "{err}");
    assert!(err.contains("modles"), "{err}");
}

#[test]
fn missing_matrix_file_names_the_path() {
    let output = evalctl(None, &["submit", "--dry-run", "/nonexistent/m.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/m.yaml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_campaign_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let output = evalctl(Some(&coordinator.url()), &["status", "no-such-campaign"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("no-such-campaign"));
}

#[test]
fn dry_run_needs_no_coordinator_and_matches_the_library_expansion() {
    let path = workspace_root().join("matrices/nightly-h100.yaml");
    let output = evalctl(
        None,
        &["submit", "--dry-run", "--json", path.to_str().unwrap()],
    );
    let report = json_stdout(&output);
    let expansion = evalctl_coordinator::matrix::expand_file(&path).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["units"], expansion.units.len() as u64);
    assert_eq!(report["steps"], expansion.step_count() as u64);
    let pruned = report["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "pruned")
        .count();
    assert!(
        pruned > 0,
        "nightly-h100 should prune combinations that do not fit"
    );
    let units = report["unit_list"].as_array().unwrap();
    for (unit, expanded) in units.iter().zip(&expansion.units) {
        assert_eq!(unit["command"], expanded.config.framework.command.as_str());
    }

    let human = evalctl(None, &["submit", "--dry-run", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("dry run: nothing stored"), "{text}");
    assert!(
        text.contains(&format!("{} units", expansion.units.len())),
        "{text}"
    );
    assert!(text.contains("pruned"), "{text}");
}

#[test]
fn a_matrix_with_nothing_to_run_exits_5_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.yaml");
    let quickstart =
        std::fs::read_to_string(workspace_root().join("matrices/quickstart.yaml")).unwrap();
    // The quickstart's dimensions, every combination excluded (its includes left out: they
    // extend combinations that would no longer exist).
    let dimensions = &quickstart[..quickstart.find("\ninclude:").expect("an include section")];
    std::fs::write(
        &path,
        format!("{dimensions}\nexclude:\n  - {{ framework: sim }}\n"),
    )
    .unwrap();
    let output = evalctl(None, &["submit", "--dry-run", path.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{err}");
    assert!(err.contains("has nothing to run"), "{err}");
    assert!(err.contains("--allow-empty"), "{err}");
    let output = evalctl(
        None,
        &[
            "submit",
            "--dry-run",
            "--allow-empty",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn matrix_files_are_refused_alike_by_dry_run_and_submit_with_the_matrix_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 5 MB: over the 4 MiB matrix limit, under the 16 MiB message limit.
    let big = dir.path().join("big.yaml");
    let mut text = String::from("campaign: big\n");
    while text.len() < 5_000_000 {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, &text).unwrap();
    // 50 MB: over the message limit too; the matrix limit is still what is named.
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, text.repeat(10)).unwrap();
    let coordinator = CoordinatorProcess::start(&dir.path().join("data"));
    for (file, dry_run) in [(&big, true), (&big, false), (&huge, false)] {
        let mut args = vec!["submit", file.to_str().unwrap()];
        if dry_run {
            args.push("--dry-run");
        }
        let output = evalctl(Some(&coordinator.url()), &args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(5), "{args:?}: {err}");
        assert!(
            err.contains("the limit is 4194304 bytes") && !err.contains("16777216"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_matrix_that_is_not_utf8_exits_5_naming_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"campaign: x\n# caf\xe9\n").unwrap();
    let output = evalctl(None, &["submit", "--dry-run", path.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{err}");
    assert!(
        err.contains("latin1.yaml:2:6") && err.contains("not UTF-8"),
        "{err}"
    );
}

#[test]
fn each_subcommand_shows_only_the_flags_it_uses() {
    let help = |args: &[&str]| {
        let output = evalctl(None, args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for connected in [&["status", "--help"][..], &["token", "list", "--help"]] {
        let text = help(connected);
        for flag in ["--coordinator", "--token", "--ca-file"] {
            assert!(text.contains(flag), "{connected:?} shows {flag}:\n{text}");
        }
    }
    for offline in [&["bench", "--help"][..], &["local", "--help"]] {
        let text = help(offline);
        for flag in ["--coordinator", "--token ", "--token-file", "--ca-file"] {
            assert!(!text.contains(flag), "{offline:?} hides {flag}:\n{text}");
        }
    }
    // The connection flags work before and after the subcommand; after it, they win.
    let dir = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(dir.path());
    let url = coordinator.url();
    let before = evalctl(None, &["--coordinator", &url, "status"]);
    assert!(before.status.success(), "{}", stderr(&before));
    let after = evalctl(None, &["status", "--coordinator", &url]);
    assert!(after.status.success(), "{}", stderr(&after));
    let overridden = evalctl(
        Some(&url),
        &["status", "--coordinator", "http://127.0.0.1:1"],
    );
    assert_eq!(overridden.status.code(), Some(3), "{}", stderr(&overridden));
}
