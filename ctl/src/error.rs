//! User-facing errors of `evalctl` and their documented exit codes (docs/cli.md).

use std::path::PathBuf;
use std::process::ExitCode;

use evalctl_coordinator::domain::EmptyCampaign;
use evalctl_coordinator::matrix::MatrixError;
use evalctl_proto::client::TlsProblem;

/// Exit code: a command failed for a reason not listed below.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: the command line itself is wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the coordinator could not be reached, or its TLS setup and the CLI's do not
/// match (an untrusted certificate, `http://` to a TLS port).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the named campaign (or other object) does not exist.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: the matrix file is invalid.
pub const EXIT_INVALID_MATRIX: u8 = 5;
/// Exit code: `watch` saw the campaign end failed or cancelled.
pub const EXIT_CAMPAIGN_FAILED: u8 = 6;
/// Exit code: `compare` flagged a regression.
pub const EXIT_REGRESSION: u8 = 7;
/// Exit code: `local --check` found a problem that would fail units on this host.
pub const EXIT_NOT_READY: u8 = 8;

/// Errors a user can see.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The matrix file does not expand.
    #[error("invalid matrix")]
    InvalidMatrix(#[source] MatrixError),
    /// The matrix expands to no unit to run.
    #[error(transparent)]
    EmptyCampaign(EmptyCampaign),
    /// A file could not be read.
    #[error("failed to read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The coordinator URL is malformed.
    #[error("invalid coordinator URL `{url}`")]
    BadUrl {
        /// The URL given.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection to the coordinator.
    #[error("failed to connect to the coordinator at {url}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS setup cannot work: the coordinator's certificate is not trusted, or an
    /// `http://` URL points at its TLS port. Retrying would not help.
    #[error("failed to connect to the coordinator at {url}: {description}")]
    Tls {
        /// The URL tried.
        url: String,
        /// What is wrong, naming the files given ([`TlsProblem::describe`]).
        description: String,
        /// What is wrong.
        problem: TlsProblem,
        /// The transport error or status it was found in; none when a probe of the port
        /// found it (the failed call's own chain, "operation was canceled", says nothing).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The coordinator answered with an error status.
    #[error("{what} failed: {}", .status.message())]
    Rpc {
        /// The call, e.g. "submit".
        what: &'static str,
        /// The status the coordinator answered.
        status: tonic::Status,
    },
    /// Writing output failed.
    #[error("failed to write output")]
    Output(#[source] std::io::Error),
    /// A file could not be written.
    #[error("failed to write `{path}`")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A benchmark could not run.
    #[error("benchmark failed")]
    Bench(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored step result is not a document this CLI can read.
    #[error("failed to read the stored result of step {step_id}")]
    BadResult {
        /// The step.
        step_id: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A stored step's request records could not be decoded.
    #[error("failed to read the request records of step {step_id}")]
    BadRecords {
        /// The step.
        step_id: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An export file could not be written.
    #[error("failed to export campaign `{campaign}` to `{path}`")]
    Export {
        /// The campaign.
        campaign: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: crate::export::ExportError,
    },
    /// The GPU price file could not be used.
    #[error("invalid GPU price file")]
    Prices(#[source] crate::analysis::cost::PriceFileError),
    /// A flag's value is invalid.
    #[error("invalid {flag}")]
    BadFlag {
        /// The flag, e.g. "--slo".
        flag: &'static str,
        /// What is wrong with it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Part of `evalctl local` failed.
    #[error("failed to {what}")]
    Local {
        /// What was being done, e.g. "start the coordinator".
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CliError {
    /// A one-line hint the user can act on, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Tls { url, problem, .. } => Some(problem.hint(url)),
            CliError::Unreachable { .. } => Some(
                "start one with `evalctl-coordinator`, or point --coordinator / EVALCTL_COORDINATOR at a running one".into(),
            ),
            CliError::Rpc { status, .. } if status.code() == tonic::Code::NotFound => {
                Some("`evalctl status` lists the campaigns the coordinator knows".into())
            }
            CliError::Rpc { status, .. } if status.code() == tonic::Code::Unavailable => {
                Some("is the coordinator running? check --coordinator / EVALCTL_COORDINATOR".into())
            }
            CliError::InvalidMatrix(_) => {
                Some("docs/matrix.md describes every key of the matrix format".into())
            }
            CliError::Prices(_) => {
                Some("docs/results.md describes the price file: `prices: {GPU_TYPE: price per GPU-hour}`".into())
            }
            CliError::BadFlag { flag, .. } => {
                Some(format!("docs/cli.md and `evalctl <command> --help` describe {flag}"))
            }
            CliError::Export {
                source: crate::export::ExportError::Io(_),
                ..
            } => Some("check that the directory exists and is writable".into()),
            _ => None,
        }
    }

    /// The documented exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::InvalidMatrix(_) | CliError::EmptyCampaign(_) => EXIT_INVALID_MATRIX,
            CliError::Unreachable { .. } | CliError::Tls { .. } => EXIT_UNREACHABLE,
            CliError::Rpc { status, .. } => match status.code() {
                tonic::Code::NotFound => EXIT_NOT_FOUND,
                tonic::Code::InvalidArgument => EXIT_INVALID_MATRIX,
                tonic::Code::Unavailable => EXIT_UNREACHABLE,
                _ => EXIT_FAILURE,
            },
            CliError::BadUrl { .. } | CliError::BadFlag { .. } => EXIT_USAGE,
            CliError::Read { .. }
            | CliError::Output(_)
            | CliError::Write { .. }
            | CliError::Bench(_)
            | CliError::BadResult { .. }
            | CliError::BadRecords { .. }
            | CliError::Export { .. }
            | CliError::Prices(_)
            | CliError::Local { .. } => EXIT_FAILURE,
        })
    }

    /// A matrix file that could not be read (the I/O error) or was refused as read (too
    /// large, not UTF-8).
    pub fn matrix_file(err: evalctl_coordinator::matrix::MatrixError) -> CliError {
        match err {
            evalctl_coordinator::matrix::MatrixError::Read { path, source } => {
                CliError::Read { path, source }
            }
            other => CliError::InvalidMatrix(other),
        }
    }

    /// Wraps a status from the call `what`.
    pub fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> CliError {
        move |status| CliError::Rpc { what, status }
    }
}
