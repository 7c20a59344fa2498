//! Environment expansion in path fields (model `path` and `tokenizer`, dataset `path`):
//! `${VAR}`, `${VAR:-default}` and a leading `~`.
//!
//! Expansion happens where the matrix is expanded (the coordinator on submit, `evalctl` on
//! a dry run), with that process's environment, read through [`Env`] so tests pass a map.
//! A `$` not followed by `{` is kept as written.

use std::collections::BTreeMap;

/// Looks up environment variables.
pub(crate) trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a path could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` names a variable that is not set and gives no default.
    Unset {
        /// The variable.
        name: String,
        /// Byte offset of its `$`.
        offset: usize,
    },
    /// `${` without `}`, or a name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    Malformed {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// The path starts with `~` and `HOME` is not set.
    NoHome,
}

/// Expands `${VAR}`, `${VAR:-default}` (the default also when `VAR` is empty) and then a
/// leading `~` or `~/` (from `HOME`).
pub(crate) fn expand(text: &str, env: &dyn Env) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let start = offset + at;
        let body_start = at + 2;
        let close = rest[body_start..]
            .find('}')
            .ok_or(ExpandError::Malformed { offset: start })?;
        let body = &rest[body_start..body_start + close];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if !super::decode::is_env_name(name) {
            return Err(ExpandError::Malformed { offset: start });
        }
        let value = match (env.var(name), default) {
            (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
            (Some(v), _) => v,
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                return Err(ExpandError::Unset {
                    name: name.to_owned(),
                    offset: start,
                });
            }
        };
        out.push_str(&value);
        let consumed = body_start + close + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    out.push_str(rest);

    if out == "~" || out.starts_with("~/") {
        let home = env
            .var("HOME")
            .filter(|h| !h.is_empty())
            .ok_or(ExpandError::NoHome)?;
        out = format!("{}{}", home.trim_end_matches('/'), &out[1..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn expands_variables_defaults_and_home() {
        let e = env(&[("HOME", "/home/u"), ("CACHE", "/data/cache"), ("EMPTY", "")]);
        assert_eq!(expand("${CACHE}/m.gguf", &e).unwrap(), "/data/cache/m.gguf");
        assert_eq!(expand("${NOPE:-/tmp}/m", &e).unwrap(), "/tmp/m");
        assert_eq!(expand("${EMPTY:-/tmp}/m", &e).unwrap(), "/tmp/m");
        assert_eq!(expand("${CACHE:-/tmp}/m", &e).unwrap(), "/data/cache/m");
        assert_eq!(
            expand("${EVALCTL_CACHE:-~/.cache/evalctl}/models/x.gguf", &e).unwrap(),
            "/home/u/.cache/evalctl/models/x.gguf"
        );
        assert_eq!(expand("~", &e).unwrap(), "/home/u");
        assert_eq!(expand("a/~/b $HOME", &e).unwrap(), "a/~/b $HOME");
        assert_eq!(expand("org/model", &e).unwrap(), "org/model");
    }

    #[test]
    fn reports_unset_and_malformed_references() {
        let e = env(&[]);
        assert_eq!(
            expand("a/${NOPE}/b", &e).unwrap_err(),
            ExpandError::Unset {
                name: "NOPE".into(),
                offset: 2
            }
        );
        assert_eq!(
            expand("${NOPE", &e).unwrap_err(),
            ExpandError::Malformed { offset: 0 }
        );
        assert_eq!(
            expand("x${1A}", &e).unwrap_err(),
            ExpandError::Malformed { offset: 1 }
        );
        assert_eq!(expand("~/x", &e).unwrap_err(), ExpandError::NoHome);
    }
}
