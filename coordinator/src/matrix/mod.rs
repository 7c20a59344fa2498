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
    let yaml = std::fs::read_to_string(path).map_err(|source| MatrixError::Read {
        path: path.to_owned(),
        source,
    })?;
    expand_str(&path.display().to_string(), &yaml)
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
