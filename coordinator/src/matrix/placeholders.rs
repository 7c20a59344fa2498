//! `{placeholder}` templates: parsing, checking against the names a field allows, and
//! rendering the few that expansion itself fills in.
//!
//! The grammar is that of Rust's `format!`: `{name}` is a placeholder, `{{` and `}}` are
//! literal braces, and a lone `{` or `}` is an error. Server commands keep their
//! placeholders: the agent renders them when it launches a unit (only `{quant.args}` is
//! resolved here, into `QuantizationSpec::args`). Model paths are rendered at expansion.

use super::error::{Errors, MatrixError, closest};
use super::model::At;
use super::yaml::Source;

/// The placeholder vocabularies and the grammar, from the wire contract (the agent renders
/// with the same definitions).
pub(crate) use evalctl_proto::template::{
    HARNESS, MODEL_PATH, SERVER, Segment, SyntaxError as TemplateError, parse,
};

/// Checks that `template` parses and uses only `allowed` placeholders; errors point at the
/// offending brace and list the valid names.
pub(crate) fn check(
    errors: &Errors,
    source: &Source<'_>,
    field: &str,
    template: &At<String>,
    allowed: &[&str],
) -> Result<(), MatrixError> {
    let text = &template.value;
    let locate = |offset: usize, len: usize| {
        let end = text[offset..]
            .char_indices()
            .map(|(i, c)| offset + i + c.len_utf8())
            .take_while(|&e| e <= offset + len.max(1))
            .last()
            .unwrap_or(text.len());
        source.find_in(template.pos, template.span, &text[offset..end])
    };
    match parse(text) {
        Err(TemplateError::Unclosed { offset }) => Err(errors.hinted(
            locate(offset, 12),
            format!("`{field}`: unclosed `{{`"),
            Some("close the placeholder with `}`, or write `{{` for a literal brace"),
        )),
        Err(TemplateError::Unmatched { offset }) => Err(errors.hinted(
            locate(offset, 1),
            format!("`{field}`: unmatched `}}`"),
            Some("write `}}` for a literal brace"),
        )),
        Ok(segments) => {
            for segment in segments {
                if let Segment::Placeholder { name, offset } = segment
                    && !allowed.contains(&name)
                {
                    let valid = allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let hint = closest(name.trim(), allowed.iter().copied())
                        .map(|c| format!("did you mean `{{{c}}}`?"))
                        .unwrap_or_else(|| "write `{{` and `}}` for literal braces".to_owned());
                    return Err(errors.hinted(
                        locate(offset, name.len() + 2),
                        format!("`{field}`: unknown placeholder `{{{name}}}`; valid here: {valid}"),
                        Some(hint),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Whether `template` uses the placeholder `name` (false when it does not parse).
pub(crate) fn uses(template: &str, name: &str) -> bool {
    parse(template).is_ok_and(|segments| {
        segments
            .iter()
            .any(|s| matches!(s, Segment::Placeholder { name: n, .. } if *n == name))
    })
}

/// Renders a checked template, asking `value` for each placeholder; placeholders it does
/// not know are kept as written.
pub(crate) fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    match parse(template) {
        Err(_) => template.to_owned(),
        Ok(segments) => segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Literal(text) => text,
                Segment::Placeholder { name, .. } => {
                    value(name).unwrap_or_else(|| format!("{{{name}}}"))
                }
            })
            .collect(),
    }
}

/// `text` as one literal word of a command template the coordinator writes: as it is when
/// it needs no quoting, else quoted as a POSIX shell would need it (the agent splits
/// templates that way); braces escaped either way.
pub(crate) fn quote_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@+%{}".contains(c));
    if plain {
        return escape_braces(text);
    }
    // A NUL byte cannot be quoted; the matrix's YAML strings hold none.
    let quoted = shlex::try_quote(text).map_or_else(|_| text.to_owned(), |q| q.into_owned());
    escape_braces(&quoted)
}

/// `text` with its braces escaped for the template grammar.
pub(crate) fn escape_braces(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

#[cfg(test)]
mod tests {
    use super::super::yaml::Pos;
    use super::*;

    fn at(text: &str) -> At<String> {
        At {
            value: text.to_owned(),
            pos: Pos::new(5, 10),
            span: None,
        }
    }

    #[test]
    fn parses_placeholders_and_escaped_braces() {
        let segments = parse("run {model.path} --json '{{\"a\": 1}}' {port}").unwrap();
        assert_eq!(
            segments,
            vec![
                Segment::Literal("run ".into()),
                Segment::Placeholder {
                    name: "model.path",
                    offset: 4
                },
                Segment::Literal(" --json '{\"a\": 1}' ".into()),
                Segment::Placeholder {
                    name: "port",
                    offset: 37
                },
            ]
        );
        assert_eq!(
            parse("a {b").unwrap_err(),
            TemplateError::Unclosed { offset: 2 }
        );
        assert_eq!(
            parse("a {b {c}").unwrap_err(),
            TemplateError::Unclosed { offset: 2 }
        );
        assert_eq!(
            parse("a } b").unwrap_err(),
            TemplateError::Unmatched { offset: 2 }
        );
    }

    #[test]
    fn check_rejects_unknown_placeholders_with_the_valid_list() {
        let errors = Errors::new("m.yaml");
        let source = Source::new("");
        let err = check(
            &errors,
            &source,
            "frameworks[0].command",
            &at("serve {model.nme}"),
            SERVER,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown placeholder `{model.nme}`"), "{text}");
        assert!(text.contains("{model.name} {model.path}"), "{text}");
        assert!(text.contains("did you mean `{model.name}`?"), "{text}");
        assert_eq!(err.line_col(), Some((5, 10)));

        let err = check(&errors, &source, "x", &at("a {b"), SERVER).unwrap_err();
        assert!(err.to_string().contains("unclosed `{`"), "{err}");
        let err = check(&errors, &source, "x", &at("awk '{print}'"), HARNESS).unwrap_err();
        assert!(
            err.to_string().contains("unknown placeholder `{print}`"),
            "{err}"
        );
        check(&errors, &source, "x", &at("awk '{{print}}' {out}"), HARNESS).unwrap();
    }

    #[test]
    fn check_points_inside_the_scalar() {
        let text = "command: serve {model.path} {bogus}\n";
        let source = Source::new(text);
        let template = At {
            value: "serve {model.path} {bogus}".to_owned(),
            pos: Pos::new(1, 10),
            span: Some((9, text.len() - 1)),
        };
        let err = check(&Errors::new("m.yaml"), &source, "c", &template, SERVER).unwrap_err();
        assert_eq!(err.line_col(), Some((1, 29)));
    }

    #[test]
    fn render_fills_known_and_keeps_unknown() {
        let out = render("/m/{quant.name}/{{x}}/{port}", |n| {
            (n == "quant.name").then(|| "q8_0".to_owned())
        });
        assert_eq!(out, "/m/q8_0/{x}/{port}");
        assert!(uses("a {quant.args}", "quant.args"));
        assert!(!uses("a {{quant.args}}", "quant.args"));
    }
}
