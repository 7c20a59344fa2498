//! Helpers of the results tests (export, report, compare): campaigns run to their end with
//! `evalctl local` on the simulated server, then served by a coordinator process over the
//! same database.

use std::path::Path;
use std::process::Output;

use evalctl_tests::evalctl;

/// Runs `matrix_yaml` to its end with `evalctl local` in `data_dir` (extra flags, e.g.
/// `--gpus`), and returns the CLI's output.
pub fn run_local(data_dir: &Path, file_name: &str, matrix_yaml: &str, extra: &[&str]) -> Output {
    std::fs::create_dir_all(data_dir).expect("create the data dir");
    let matrix = data_dir.join(file_name);
    std::fs::write(&matrix, matrix_yaml).expect("write the matrix");
    let mut args = vec![
        "local",
        matrix.to_str().expect("utf-8 path"),
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
        "--json",
    ];
    args.extend_from_slice(extra);
    evalctl(None, &args)
}

/// Like [`run_local`], failing the test unless the campaign succeeded.
pub fn run_local_ok(data_dir: &Path, file_name: &str, matrix_yaml: &str, extra: &[&str]) {
    let output = run_local(data_dir, file_name, matrix_yaml, extra);
    assert!(
        output.status.success(),
        "evalctl local failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// stderr of a command, for assertion messages.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Splits CSV text into records of fields (RFC 4180: quoted fields may hold commas,
/// doubled quotes and line breaks).
pub fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}
