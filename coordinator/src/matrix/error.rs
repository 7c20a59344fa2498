//! The one error type of matrix expansion, and the helpers that build its messages:
//! every error but a failed read names the file, line and column, says what was expected,
//! and carries a `(hint: …)` where the user can act on one (a "did you mean" suggestion,
//! the list of valid values, the way to escape a brace).

use std::fmt;
use std::path::PathBuf;

use super::yaml::Pos;

/// Why a matrix file could not be expanded.
///
/// `Display` gives `FILE:LINE:COL: message` followed by ` (hint: …)` when there is one;
/// a failed read names the path and keeps the I/O error as its `source`.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The file could not be read.
    #[error("failed to read matrix file `{}`", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the coordinator accepts.
    #[error(
        "matrix file `{}` is {bytes} bytes; the limit is {limit} bytes (hint: split the \
         campaign into several matrix files)",
        path.display()
    )]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// [`crate::limits::MAX_MATRIX_BYTES`].
        limit: usize,
    },
    /// The text is not valid YAML (or is more than one YAML document).
    #[error("{}", Located { file, line: *line, column: *column, message, hint })]
    Syntax {
        /// Source name (the path, or the name given to `expand_str`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the YAML parser reported.
        message: String,
        /// What the user can do about it, when the cause is a common one.
        hint: Option<String>,
    },
    /// The YAML is well-formed but is not a valid matrix: an unknown key, a wrong type, a
    /// missing or out-of-range value, an unknown reference or placeholder, a duplicate, or a
    /// matrix over the size limits.
    #[error("{}", Located { file, line: *line, column: *column, message, hint })]
    Invalid {
        /// Source name (the path, or the name given to `expand_str`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what was expected.
        message: String,
        /// What the user can do about it, when there is something specific.
        hint: Option<String>,
    },
}

impl MatrixError {
    /// Line and column (1-based) the error points at; `None` for a failed read.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match self {
            MatrixError::Read { .. } | MatrixError::TooLarge { .. } => None,
            MatrixError::Syntax { line, column, .. }
            | MatrixError::Invalid { line, column, .. } => Some((*line, *column)),
        }
    }
}

/// Renders `FILE:LINE:COL: message (hint: …)`.
struct Located<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    message: &'a str,
    hint: &'a Option<String>,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Builds [`MatrixError::Invalid`] values for one source file.
#[derive(Debug, Clone)]
pub(crate) struct Errors {
    file: String,
}

impl Errors {
    /// Errors about the file called `file`.
    pub(crate) fn new(file: &str) -> Self {
        Errors {
            file: file.to_owned(),
        }
    }

    /// An error at `pos` without a hint.
    pub(crate) fn at(&self, pos: Pos, message: impl Into<String>) -> MatrixError {
        self.hinted(pos, message, None::<String>)
    }

    /// An error at `pos` with an optional hint.
    pub(crate) fn hinted(
        &self,
        pos: Pos,
        message: impl Into<String>,
        hint: Option<impl Into<String>>,
    ) -> MatrixError {
        MatrixError::Invalid {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            hint: hint.map(Into::into),
        }
    }

    /// A YAML syntax error at `pos`.
    pub(crate) fn syntax(
        &self,
        pos: Pos,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> MatrixError {
        MatrixError::Syntax {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            hint,
        }
    }

    /// "unknown X `name`; valid: a, b, c" with a did-you-mean hint when one is close.
    pub(crate) fn unknown<'c>(
        &self,
        pos: Pos,
        what: &str,
        name: &str,
        candidates: impl IntoIterator<Item = &'c str> + Clone,
    ) -> MatrixError {
        let list = quoted_list(candidates.clone());
        let message = if list.is_empty() {
            format!("unknown {what} `{name}`; none are defined")
        } else {
            format!("unknown {what} `{name}`; expected one of {list}")
        };
        self.hinted(pos, message, did_you_mean(name, candidates))
    }
}

/// "did you mean `x`?" when one candidate is close to `name` (same spelling ignoring case,
/// or a small edit distance), else `None`.
pub(crate) fn did_you_mean<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    closest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn closest<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter_map(|c| {
            let distance = if c.to_lowercase() == lower {
                0
            } else {
                strsim::damerau_levenshtein(&lower, &c.to_lowercase())
            };
            (distance <= limit || strsim::jaro_winkler(&lower, &c.to_lowercase()) >= 0.9)
                .then_some((distance, c))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// "`a`, `b`, `c`".
pub(crate) fn quoted_list<'c>(items: impl IntoIterator<Item = &'c str>) -> String {
    items
        .into_iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_line_column_and_hint() {
        let errors = Errors::new("m.yaml");
        let err = errors.hinted(Pos::new(3, 7), "bad value", Some("fix it"));
        assert_eq!(err.to_string(), "m.yaml:3:7: bad value (hint: fix it)");
        assert_eq!(err.line_col(), Some((3, 7)));
        let err = errors.at(Pos::new(1, 1), "bad");
        assert_eq!(err.to_string(), "m.yaml:1:1: bad");
    }

    #[test]
    fn read_error_names_the_path() {
        let err = MatrixError::Read {
            path: PathBuf::from("/no/such.yaml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            err.to_string(),
            "failed to read matrix file `/no/such.yaml`"
        );
        assert_eq!(err.line_col(), None);
    }

    #[test]
    fn suggestions_pick_the_closest_candidate() {
        let keys = [
            "campaign",
            "description",
            "priority",
            "models",
            "max_attempts",
        ];
        assert_eq!(closest("campain", keys), Some("campaign"));
        assert_eq!(closest("modles", keys), Some("models"));
        assert_eq!(closest("Models", keys), Some("models"));
        assert_eq!(closest("max-attempts", keys), Some("max_attempts"));
        assert_eq!(closest("zzz", keys), None);
        assert_eq!(
            did_you_mean("priorty", keys).as_deref(),
            Some("did you mean `priority`?")
        );
    }
}
