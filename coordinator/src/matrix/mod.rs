//! Matrix files: a campaign written as YAML dimensions (models × GPUs × frameworks ×
//! quantizations, plus workloads), expanded into units and steps.
//!
//! docs/matrix.md is the reference of the format and docs/frameworks.md of the built-in
//! framework presets. The pipeline, one module per stage:
//!
//! - `yaml`: text → a YAML tree whose every node knows its line and column;
//! - `decode`: tree → the typed file (`model`), checking keys, types and ranges;
//! - `validate`: names, references, presets (`presets`), placeholders
//!   (`placeholders`) and path expansion (`paths`);
//! - `expand`: cross product, `exclude`, `include`, fit pruning, units and steps.
//!
//! Every failure is a [`MatrixError`] naming the file, line and column.

mod decode;
mod error;
mod expand;
mod fit;
mod goal;
mod layout;
mod lm_eval;
mod model;
mod paths;
mod placeholders;
mod presets;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::path::Path;

use crate::domain::Expansion;

pub use error::MatrixError;

use error::Errors;
use paths::{Env, ProcessEnv};

/// Most units one matrix may expand to.
pub const MAX_UNITS: usize = 200_000;

/// Most steps (over all units) one matrix may expand to.
pub const MAX_STEPS: usize = 2_000_000;

/// Reads and expands the matrix file at `path`; errors name the path as the source.
pub fn expand_file(path: &Path) -> Result<Expansion, MatrixError> {
    let yaml = read_file(path)?;
    expand_str(&path.display().to_string(), &yaml)
}

/// Reads a matrix file as `Submit` would take it: refuses a file over
/// [`crate::limits::MAX_MATRIX_BYTES`] before reading it, and text that is not UTF-8 with
/// the line and column of the first byte that is not.
pub fn read_file(path: &Path) -> Result<String, MatrixError> {
    use std::io::Read;
    let read_error = |source| MatrixError::Read {
        path: path.to_owned(),
        source,
    };
    let limit = crate::limits::MAX_MATRIX_BYTES;
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte past the limit tells "too large" without reading a huge file (or a pipe
    // that never ends) whole.
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() > limit {
        let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(MatrixError::TooLarge {
            path: path.to_owned(),
            bytes: size.max(bytes.len() as u64),
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        // Characters before the bad byte on its line (the valid prefix is UTF-8).
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        let byte = err.as_bytes()[valid.len()];
        Errors::new(&path.display().to_string()).syntax(
            yaml::Pos::new(line, column),
            format!("the file is not UTF-8 text: byte 0x{byte:02x} here starts no character"),
            Some(
                "save the matrix as UTF-8 (iconv -t UTF-8, or your editor's encoding setting)"
                    .to_owned(),
            ),
        )
    })
}

/// Expands matrix text; `source_name` names it in errors (usually its path).
///
/// `${VAR}`, `${VAR:-default}` and a leading `~` in path fields are expanded with this
/// process's environment.
pub fn expand_str(source_name: &str, yaml: &str) -> Result<Expansion, MatrixError> {
    expand_with_env(source_name, yaml, &ProcessEnv)
}

/// [`expand_str`] with the environment read from `env`.
pub(crate) fn expand_with_env(
    source_name: &str,
    yaml: &str,
    env: &dyn Env,
) -> Result<Expansion, MatrixError> {
    let errors = Errors::new(source_name);
    let source = yaml::Source::new(yaml);
    let tree = yaml::parse(&errors, yaml)?;
    let file = decode::decode(&errors, &source, &tree)?;
    let resolved = validate::validate(&errors, &source, env, file)?;
    expand::expand(&errors, &resolved)
}
