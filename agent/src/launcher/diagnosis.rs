//! Why a server did not start, read from the end of its log: the line that says so and the
//! kind of failure it is, so that a unit fails with the engine's own words and the
//! coordinator can react to the kind (a refused command line fails everywhere and is not
//! retried).
//!
//! The patterns are the messages of the engines' argument parsers (Python's argparse for
//! vLLM, SGLang and TensorRT-LLM, pydantic for vLLM's configuration checks, clap for TGI's
//! launcher and evalctl's simulator, llama.cpp's own), of the OS (a port in use, a missing
//! program), of PyTorch and CUDA (out of memory), of Hugging Face's loaders and llama.cpp
//! (model files not found). They are matched on the log's lines from the last one back: the
//! cause of a crash is usually the last thing the engine printed that matches, while the
//! lines after it are the wrapping tracebacks ("Engine core initialization failed").

/// The kinds of failure the agent tells apart are the wire contract's, so the coordinator
/// gets the same kind the agent found.
pub use evalctl_proto::v1::FailureClass;

/// A few words for messages, e.g. "bad argument".
pub fn label(class: FailureClass) -> &'static str {
    match class {
        FailureClass::BadArgument => "bad argument",
        FailureClass::PortInUse => "port in use",
        FailureClass::OutOfMemory => "out of memory",
        FailureClass::MissingModel => "model files not found",
        FailureClass::MissingEngine => "engine not installed",
        FailureClass::ImageUnavailable => "image unavailable",
        FailureClass::BadDataset => "bad dataset file",
        FailureClass::Unspecified => "not recognised",
    }
}

/// A recognised failure: its kind and the log line that showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The kind of failure.
    pub class: FailureClass,
    /// The server's own line, trimmed (at most [`MAX_LINE_CHARS`] characters).
    pub line: String,
}

impl Diagnosis {
    /// `bad argument: <the engine's line>`, for the unit's error.
    pub fn describe(&self) -> String {
        format!("{}: {}", label(self.class), self.line)
    }
}

/// The longest log line a diagnosis quotes; longer ones are cut with an ellipsis.
pub const MAX_LINE_CHARS: usize = 300;

/// Substrings that mark a line as showing a failure of one kind, matched case-sensitively
/// (the engines' spelling is stable and a case-blind "error" matches far too much). Kinds
/// are tried in this order for each line, so a line that names two (an argparse error about
/// a model path) counts as the first.
const PATTERNS: &[(FailureClass, &[&str])] = &[
    (
        FailureClass::BadArgument,
        &[
            // argparse (vLLM, SGLang, trtllm-serve's click prints "Error: No such option").
            ": error: argument ",
            ": error: unrecognized arguments:",
            ": error: the following arguments are required:",
            ": error: invalid choice:",
            "Error: No such option:",
            "Error: Invalid value for",
            // pydantic, which checks vLLM's configuration (a tensor-parallel size of 0).
            " validation error for ",
            "validation errors for ",
            // clap (TGI's launcher, evalctl's simulator).
            "error: unexpected argument '",
            "error: invalid value '",
            "error: the argument '",
            // llama.cpp's argument parser.
            "error: invalid argument: ",
            "error: unknown argument: ",
            // Docker's and Podman's `create` refusing an option or a combination.
            "Error: invalid config provided:",
            "unknown flag: ",
            "unknown shorthand flag: ",
        ],
    ),
    (
        FailureClass::PortInUse,
        &[
            "Address already in use",
            "address already in use",
            "EADDRINUSE",
            "couldn't bind HTTP server socket",
        ],
    ),
    (
        FailureClass::OutOfMemory,
        &[
            "CUDA out of memory",
            "OutOfMemoryError",
            "CUDA error: out of memory",
            "cudaErrorMemoryAllocation",
            "No available memory for the cache blocks",
            "larger than the available KV cache memory",
            "Not enough memory",
            "not enough memory",
            "failed to allocate",
            "Cannot allocate memory",
        ],
    ),
    (
        FailureClass::MissingModel,
        &[
            "does not appear to have a file named",
            "is not a local folder and is not a valid model identifier",
            "Repository Not Found",
            "Can't load the configuration of",
            "Incorrect path_or_model_id",
            "failed to load model",
            "error loading model",
            "gguf_init_from_file",
        ],
    ),
    (
        FailureClass::MissingEngine,
        &[
            // Python without the engine's package (`python3 -m sglang.launch_server`).
            "No module named ",
            // bash and dash, when a command runs the program through a shell.
            ": command not found",
            ": not found",
            // `env PROGRAM` (the ollama preset) when PROGRAM is not on PATH.
            "': No such file or directory",
        ],
    ),
];

/// The failure the end of a server's log shows, if any line of it matches.
pub fn diagnose(log_tail: &str) -> Option<Diagnosis> {
    log_tail.lines().rev().find_map(|line| {
        let line = strip_ansi(line);
        let class = PATTERNS.iter().find_map(|(class, needles)| {
            needles
                .iter()
                .any(|needle| line.contains(needle))
                .then_some(*class)
        })?;
        Some(Diagnosis {
            class,
            line: quoted(&line),
        })
    })
}

/// A missing program, from the OS error of a spawn that failed.
pub fn diagnose_spawn(program: &str, error: &std::io::Error) -> Option<Diagnosis> {
    (error.kind() == std::io::ErrorKind::NotFound).then(|| Diagnosis {
        class: FailureClass::MissingEngine,
        line: quoted(&format!("`{program}`: {error}")),
    })
}

/// `line` trimmed and cut to [`MAX_LINE_CHARS`].
fn quoted(line: &str) -> String {
    let plain = line.trim();
    match plain.char_indices().nth(MAX_LINE_CHARS) {
        Some((cut, _)) => format!("{}…", &plain[..cut]),
        None => plain.to_owned(),
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`), which clap and some loggers
/// print even into files. Hand-written: a whole crate for one `CSI` form is not worth it.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(log: &str) -> Option<FailureClass> {
        diagnose(log).map(|d| d.class)
    }

    #[test]
    fn argument_parsers_refusals_are_bad_arguments() {
        let logs = [
            "usage: vllm serve [model_tag] [options]\nvllm serve: error: argument --tensor-parallel-size/-tp: invalid int value: 'x'",
            "launch_server.py: error: unrecognized arguments: --no-such-flag",
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for ParallelConfig\ntensor_parallel_size\n  Input should be greater than 0",
            "\u{1b}[1m\u{1b}[31merror:\u{1b}[0m unexpected argument '\u{1b}[33m--bogus\u{1b}[0m' found\n\nUsage: evalctl-agent sim-server [OPTIONS]\n\nFor more information, try '--help'.",
            "error: invalid argument: --no-such-flag",
            "Error: No such option: --tp",
            // Podman's and Docker's `create`.
            "Error: invalid config provided: cannot set shmsize when running in the {host } IPC Namespace",
            "Error: unknown flag: --no-such-option\nSee 'podman create --help'",
            "unknown shorthand flag: 'z' in -z",
        ];
        for log in logs {
            assert_eq!(class_of(log), Some(FailureClass::BadArgument), "{log}");
        }
        let clap = diagnose(logs[3]).unwrap();
        assert_eq!(clap.line, "error: unexpected argument '--bogus' found");
        assert_eq!(
            clap.describe(),
            "bad argument: error: unexpected argument '--bogus' found"
        );
    }

    #[test]
    fn the_last_matching_line_wins_over_the_tracebacks_after_it() {
        let log = "INFO loading weights\n\
                   Traceback (most recent call last):\n\
                   torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n\
                   \n\
                   RuntimeError: Engine core initialization failed. See root cause above.\n";
        let d = diagnose(log).unwrap();
        assert_eq!(d.class, FailureClass::OutOfMemory);
        assert!(d.line.starts_with("torch.OutOfMemoryError"), "{}", d.line);
    }

    #[test]
    fn ports_models_and_engines_are_told_apart() {
        let cases = [
            (
                "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use",
                FailureClass::PortInUse,
            ),
            (
                "srv    init: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8000",
                FailureClass::PortInUse,
            ),
            (
                "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
                FailureClass::OutOfMemory,
            ),
            (
                "OSError: /models/x does not appear to have a file named config.json.",
                FailureClass::MissingModel,
            ),
            (
                "gguf_init_from_file: failed to open GGUF file '/m/x.gguf' (No such file or directory)",
                FailureClass::MissingModel,
            ),
            (
                "/usr/bin/python3: No module named sglang",
                FailureClass::MissingEngine,
            ),
            (
                "env: 'ollama': No such file or directory",
                FailureClass::MissingEngine,
            ),
            ("sh: 1: vllm: not found", FailureClass::MissingEngine),
        ];
        for (log, class) in cases {
            assert_eq!(class_of(log), Some(class), "{log}");
        }
    }

    #[test]
    fn ordinary_logs_and_empty_ones_show_nothing() {
        assert_eq!(class_of(""), None);
        assert_eq!(
            class_of("INFO Started server process\nINFO Waiting for application startup.\nkilled"),
            None
        );
    }

    #[test]
    fn long_lines_are_cut_and_spawn_errors_name_the_program() {
        let long = format!("error: invalid argument: {}", "x".repeat(1000));
        let d = diagnose(&long).unwrap();
        assert_eq!(d.line.chars().count(), MAX_LINE_CHARS + 1);
        assert!(d.line.ends_with('…'));

        let not_found = std::io::Error::from(std::io::ErrorKind::NotFound);
        let d = diagnose_spawn("vllm", &not_found).unwrap();
        assert_eq!(d.class, FailureClass::MissingEngine);
        assert!(d.line.starts_with("`vllm`: "), "{}", d.line);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(diagnose_spawn("vllm", &denied), None);
    }
}
