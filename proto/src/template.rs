//! The command templates of a matrix: their grammar and the placeholder vocabulary of each
//! kind of template. The coordinator checks templates against it at submit time; the agent
//! renders them at launch. Both sides use this one definition, so a placeholder the
//! coordinator accepts is always one the agent can fill.
//!
//! The grammar is that of Rust's `format!`: `{name}` is a placeholder, `{{` and `}}` are
//! literal braces, and a lone `{` or `}` is an error. `docs/matrix.md` lists every placeholder
//! with its meaning.

/// Placeholders of a framework `command` (and of an include's `extra_args`), rendered by the
/// agent at launch.
pub const SERVER: &[&str] = &[
    "model.name",
    "model.path",
    "model.tokenizer",
    "port",
    "host",
    "gpu.count",
    "gpu.type",
    "gpu.indices",
    "quant.name",
    "quant.bits",
    "quant.args",
    "framework.name",
    "unit.id",
];

/// SERVER placeholders whose value is a list of arguments (`--quantization fp8`), split
/// shell-style when unquoted.
pub const SPLIT: &[&str] = &["quant.args"];

/// Placeholders of an `api: command` workload's harness command, rendered by the agent.
pub const HARNESS: &[&str] = &["url", "model.path", "model.name", "model.served", "out"];

/// Placeholders of a model's `path`, rendered by the coordinator at expansion.
pub const MODEL_PATH: &[&str] = &["quant.name"];

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Literal text (with `{{`/`}}` already unescaped).
    Literal(String),
    /// A `{name}` placeholder.
    Placeholder {
        /// Text between the braces.
        name: &'a str,
        /// Byte offset of the opening brace in the template.
        offset: usize,
    },
}

/// A template that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// A `{` without its `}`.
    Unclosed {
        /// Byte offset of the brace.
        offset: usize,
    },
    /// A `}` that closes nothing.
    Unmatched {
        /// Byte offset of the brace.
        offset: usize,
    },
}

/// Splits `template` into literal text and placeholders.
pub fn parse(template: &str) -> Result<Vec<Segment<'_>>, SyntaxError> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    let mut start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => {
                literal.push_str(&template[start..i]);
                literal.push('{');
                i += 2;
                start = i;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                literal.push_str(&template[start..i]);
                literal.push('}');
                i += 2;
                start = i;
            }
            b'{' => {
                literal.push_str(&template[start..i]);
                let close = template[i + 1..]
                    .find(['{', '}'])
                    .map(|j| i + 1 + j)
                    .filter(|&j| bytes[j] == b'}')
                    .ok_or(SyntaxError::Unclosed { offset: i })?;
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Placeholder {
                    name: &template[i + 1..close],
                    offset: i,
                });
                i = close + 1;
                start = i;
            }
            b'}' => return Err(SyntaxError::Unmatched { offset: i }),
            _ => i += 1,
        }
    }
    literal.push_str(&template[start..]);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_literals_and_escaped_braces() {
        assert_eq!(
            parse("serve {model.path} --x {{y}} ✓{port}").unwrap(),
            vec![
                Segment::Literal("serve ".into()),
                Segment::Placeholder {
                    name: "model.path",
                    offset: 6,
                },
                Segment::Literal(" --x {y} ✓".into()),
                Segment::Placeholder {
                    name: "port",
                    offset: 32,
                },
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn lone_braces_are_errors_at_their_offset() {
        assert_eq!(parse("a {b"), Err(SyntaxError::Unclosed { offset: 2 }));
        assert_eq!(parse("a {b {c}"), Err(SyntaxError::Unclosed { offset: 2 }));
        assert_eq!(parse("a } b"), Err(SyntaxError::Unmatched { offset: 2 }));
    }

    #[test]
    fn the_vocabularies_are_distinct_names() {
        for list in [SERVER, SPLIT, HARNESS, MODEL_PATH] {
            let mut names = list.to_vec();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), list.len(), "{list:?}");
        }
        assert!(SPLIT.iter().all(|name| SERVER.contains(name)));
    }
}
