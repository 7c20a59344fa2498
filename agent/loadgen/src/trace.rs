//! Timestamped request traces to replay: the Mooncake JSON Lines format and plain
//! timestamp/length files, read and checked line by line.
//!
//! | format | fields |
//! |---|---|
//! | Mooncake JSON Lines | `timestamp` (ms since the first request; ties common), `input_length`, `output_length`, `hash_ids` (one id per block of `block_tokens` input tokens: `len(hash_ids) == ceil(input_length / block_tokens)`; requests sharing an id share that block) |
//! | JSON Lines | `timestamp`, `input_length`, `output_length` |
//! | CSV | a header naming `timestamp`, `input_length`, `output_length` (any order, more columns ignored), then one request per row |
//!
//! Timestamps are milliseconds and must not decrease. A window keeps the requests whose
//! timestamps fall in `[start, end)`; offsets are then measured from the first kept request.
//! Every error names the file, the line and the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Mooncake's block size: one hash id per 512 input tokens.
pub const DEFAULT_BLOCK_TOKENS: u32 = 512;

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// Arrival, in milliseconds from the first request of the window.
    pub offset_ms: f64,
    /// Prompt length in tokens.
    pub input_length: u64,
    /// Output length in tokens (`max_tokens`).
    pub output_length: u32,
    /// Ids of the prompt's blocks, in order (Mooncake); `None` in plain traces, whose prompts
    /// share nothing.
    pub hash_ids: Option<Vec<u64>>,
}

/// A trace file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("failed to read the trace {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not what the format expects.
    #[error("{path}:{line}: {field}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The field at fault (`line` when the line as a whole is).
        field: String,
        /// What was expected.
        message: String,
    },
    /// Nothing in the file (or in the window).
    #[error("{path}: {message}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// How a trace is read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TraceOptions {
    /// Tokens per hash id (Mooncake: 512).
    pub block_tokens: u32,
    /// Keep only requests with `start_ms <= timestamp < end_ms`.
    pub window_ms: Option<(f64, f64)>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            block_tokens: DEFAULT_BLOCK_TOKENS,
            window_ms: None,
        }
    }
}

/// Reads and checks the trace at `path`: CSV when its name ends in `.csv`, JSON Lines
/// otherwise (Mooncake when its lines carry `hash_ids`).
pub fn read(path: &Path, options: &TraceOptions) -> Result<Vec<TraceRequest>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, options)
}

/// Parses trace text (see [`read`]); `path` names the file in errors and picks the format.
pub fn parse(
    path: &Path,
    text: &str,
    options: &TraceOptions,
) -> Result<Vec<TraceRequest>, TraceError> {
    if options.block_tokens == 0 {
        return Err(TraceError::Empty {
            path: path.to_owned(),
            message: "the block size must be at least 1 token".into(),
        });
    }
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let rows = if csv {
        csv_rows(path, text)?
    } else {
        jsonl_rows(path, text)?
    };
    let mut previous: Option<(usize, f64)> = None;
    let mut kept = Vec::new();
    for row in rows {
        let err = |field: &str, message: String| TraceError::Line {
            path: path.to_owned(),
            line: row.line,
            field: field.to_owned(),
            message,
        };
        if let Some((line, before)) = previous
            && row.timestamp < before
        {
            return Err(err(
                "timestamp",
                format!(
                    "{} is earlier than {before} on line {line}: a trace must be sorted by timestamp",
                    row.timestamp
                ),
            ));
        }
        previous = Some((row.line, row.timestamp));
        if let Some(ids) = &row.hash_ids {
            let blocks = row.input_length.div_ceil(u64::from(options.block_tokens));
            if ids.len() as u64 != blocks {
                return Err(err(
                    "hash_ids",
                    format!(
                        "{} ids for an input_length of {}: blocks of {} tokens need {blocks}",
                        ids.len(),
                        row.input_length,
                        options.block_tokens
                    ),
                ));
            }
        }
        let inside = options
            .window_ms
            .is_none_or(|(start, end)| row.timestamp >= start && row.timestamp < end);
        if inside {
            kept.push(row);
        }
    }
    let Some(first) = kept.first().map(|r| r.timestamp) else {
        return Err(TraceError::Empty {
            path: path.to_owned(),
            message: match options.window_ms {
                Some((start, end)) => {
                    format!("no request has a timestamp in the window [{start} ms, {end} ms)")
                }
                None => "the trace has no requests".into(),
            },
        });
    };
    Ok(kept
        .into_iter()
        .map(|r| TraceRequest {
            offset_ms: r.timestamp - first,
            input_length: r.input_length,
            output_length: r.output_length,
            hash_ids: r.hash_ids,
        })
        .collect())
}

/// A request as read, before the window.
struct Row {
    line: usize,
    timestamp: f64,
    input_length: u64,
    output_length: u32,
    hash_ids: Option<Vec<u64>>,
}

/// One JSON Lines record; fields are checked one by one so an error names its field.
#[derive(Deserialize)]
struct JsonRecord {
    timestamp: Option<serde_json::Value>,
    input_length: Option<serde_json::Value>,
    output_length: Option<serde_json::Value>,
    hash_ids: Option<serde_json::Value>,
}

fn jsonl_rows(path: &Path, text: &str) -> Result<Vec<Row>, TraceError> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |field: &str, message: String| TraceError::Line {
            path: path.to_owned(),
            line,
            field: field.to_owned(),
            message,
        };
        let record: JsonRecord = serde_json::from_str(raw)
            .map_err(|e| err("line", format!("not a JSON object: {e}")))?;
        let timestamp = number(record.timestamp.as_ref(), "timestamp", &err)?;
        let input_length = count(record.input_length.as_ref(), "input_length", 1, &err)?;
        let output_length = count(record.output_length.as_ref(), "output_length", 1, &err)?;
        let output_length = u32::try_from(output_length)
            .map_err(|_| err("output_length", format!("{output_length} is too large")))?;
        let hash_ids = match &record.hash_ids {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(k, v)| {
                        v.as_u64().ok_or_else(|| {
                            err(
                                "hash_ids",
                                format!("item {k} is {v}, expected a non-negative integer"),
                            )
                        })
                    })
                    .collect::<Result<Vec<u64>, _>>()?,
            ),
            Some(other) => {
                return Err(err(
                    "hash_ids",
                    format!("{other} is not a list of integers"),
                ));
            }
        };
        rows.push(Row {
            line,
            timestamp,
            input_length,
            output_length,
            hash_ids,
        });
    }
    Ok(rows)
}

fn csv_rows(path: &Path, text: &str) -> Result<Vec<Row>, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_at, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| {
        names.iter().position(|n| *n == name).ok_or_else(|| TraceError::Line {
            path: path.to_owned(),
            line: header_at + 1,
            field: name.to_owned(),
            message: format!(
                "the header has no `{name}` column (it needs timestamp, input_length, output_length)"
            ),
        })
    };
    let (ts, input, output) = (
        column("timestamp")?,
        column("input_length")?,
        column("output_length")?,
    );
    let mut rows = Vec::new();
    for (i, raw) in lines {
        let line = i + 1;
        let cells: Vec<&str> = raw.split(',').map(str::trim).collect();
        let err = |field: &str, message: String| TraceError::Line {
            path: path.to_owned(),
            line,
            field: field.to_owned(),
            message,
        };
        let cell = |at: usize, field: &str| {
            cells
                .get(at)
                .filter(|c| !c.is_empty())
                .map(|c| serde_json::Value::from(c.parse::<f64>().ok()))
                .ok_or_else(|| err(field, "missing".into()))
        };
        let timestamp = number(Some(&cell(ts, "timestamp")?), "timestamp", &err)?;
        let input_length = count(Some(&cell(input, "input_length")?), "input_length", 1, &err)?;
        let output_length = count(
            Some(&cell(output, "output_length")?),
            "output_length",
            1,
            &err,
        )?;
        rows.push(Row {
            line,
            timestamp,
            input_length,
            output_length: u32::try_from(output_length)
                .map_err(|_| err("output_length", format!("{output_length} is too large")))?,
            hash_ids: None,
        });
    }
    Ok(rows)
}

/// A finite number ≥ 0.
fn number(
    value: Option<&serde_json::Value>,
    field: &str,
    err: &impl Fn(&str, String) -> TraceError,
) -> Result<f64, TraceError> {
    let value = value.ok_or_else(|| err(field, "missing".into()))?;
    value
        .as_f64()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            err(
                field,
                format!("{value} is not a number of milliseconds ≥ 0"),
            )
        })
}

/// A whole number ≥ `min`.
fn count(
    value: Option<&serde_json::Value>,
    field: &str,
    min: u64,
    err: &impl Fn(&str, String) -> TraceError,
) -> Result<u64, TraceError> {
    let value = value.ok_or_else(|| err(field, "missing".into()))?;
    let n = value
        .as_u64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .ok_or_else(|| err(field, format!("{value} is not a whole number of tokens")))?;
    if n < min {
        return Err(err(field, format!("{n} is less than {min}")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_at(name: &str, text: &str) -> Result<Vec<TraceRequest>, String> {
        parse(Path::new(name), text, &TraceOptions::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn mooncake_lines_become_offsets_with_their_blocks() {
        let text = r#"{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 2353, 2354]}
{"timestamp": 27482, "input_length": 512, "output_length": 1, "hash_ids": [46]}

{"timestamp": 30535, "input_length": 513, "output_length": 8, "hash_ids": [46, 9]}
"#;
        let trace = parse_at("t.jsonl", text).unwrap();
        assert_eq!(trace.len(), 3);
        assert_eq!(trace[0].offset_ms, 0.0);
        assert_eq!(trace[1].offset_ms, 0.0, "ties are kept");
        assert_eq!(trace[2].offset_ms, 3053.0);
        assert_eq!(trace[2].hash_ids, Some(vec![46, 9]));
        assert_eq!((trace[0].input_length, trace[0].output_length), (6955, 52));
    }

    #[test]
    fn a_window_keeps_its_requests_and_restarts_the_clock() {
        let text =
            "timestamp,input_length,output_length\n0,10,1\n1000,20,2\n2000,30,3\n3000,40,4\n";
        let options = TraceOptions {
            window_ms: Some((1000.0, 3000.0)),
            ..TraceOptions::default()
        };
        let trace = parse(Path::new("t.csv"), text, &options).unwrap();
        let got: Vec<(f64, u64)> = trace
            .iter()
            .map(|r| (r.offset_ms, r.input_length))
            .collect();
        assert_eq!(got, vec![(0.0, 20), (1000.0, 30)]);
        let none = TraceOptions {
            window_ms: Some((5000.0, 6000.0)),
            ..TraceOptions::default()
        };
        let err = parse(Path::new("t.csv"), text, &none)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.csv: no request has a timestamp in the window [5000 ms, 6000 ms)"
        );
    }

    #[test]
    fn bad_lines_are_refused_with_file_line_and_field() {
        let cases = [
            (
                "t.jsonl",
                "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n{\"timestamp\": 3, \"output_length\": 1}\n",
                "t.jsonl:2: input_length: missing",
            ),
            (
                "t.jsonl",
                "{\"timestamp\": 5, \"input_length\": 5, \"output_length\": 1}\n\n{\"timestamp\": 4, \"input_length\": 5, \"output_length\": 1}\n",
                "t.jsonl:3: timestamp: 4 is earlier than 5 on line 1: a trace must be sorted by timestamp",
            ),
            (
                "t.jsonl",
                "{\"timestamp\": 0, \"input_length\": 1025, \"output_length\": 1, \"hash_ids\": [1, 2]}\n",
                "t.jsonl:1: hash_ids: 2 ids for an input_length of 1025: blocks of 512 tokens need 3",
            ),
            (
                "t.jsonl",
                "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1, -2]}\n",
                "t.jsonl:1: hash_ids: item 1 is -2, expected a non-negative integer",
            ),
            (
                "t.jsonl",
                "{\"timestamp\": \"soon\", \"input_length\": 5, \"output_length\": 1}\n",
                "t.jsonl:1: timestamp: \"soon\" is not a number of milliseconds ≥ 0",
            ),
            (
                "t.jsonl",
                "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1}\n",
                "t.jsonl:1: input_length: 0 is less than 1",
            ),
            ("t.jsonl", "[1, 2]\n", "t.jsonl:1: line: not a JSON object"),
            (
                "t.csv",
                "timestamp,input_length\n0,5\n",
                "t.csv:1: output_length: the header has no `output_length` column",
            ),
            (
                "t.csv",
                "timestamp,input_length,output_length\n0,5,1\n10,,1\n",
                "t.csv:3: input_length: missing",
            ),
            ("t.jsonl", "\n\n", "t.jsonl: the trace has no requests"),
        ];
        for (name, text, want) in cases {
            let err = parse_at(name, text).unwrap_err();
            assert!(
                err.starts_with(want),
                "{name} {text:?}:\n got {err}\nwant {want}"
            );
        }
    }
}
