//! Rendering a framework's command template into the argv the agent executes.
//!
//! The template grammar is the matrix's (the coordinator checks it at submit time): `{name}` is
//! a placeholder, `{{` and `}}` are literal braces, a lone `{` or `}` is an error. Around that,
//! the text is split into words the way a POSIX shell splits a simple command — whitespace
//! separates words, `'…'` and `"…"` quote, `\` escapes — and nothing else: there are no
//! variables, globs, pipes or redirections, because the command is executed directly, not
//! through a shell. A command that needs a shell says so: `sh -c '…'`.
//!
//! A placeholder's value is never split or interpreted: a model path with spaces stays one
//! argument, a value containing quotes keeps them, and an empty value standing alone is an
//! empty argument. The exception is `{quant.args}` outside
//! quotes, which holds several arguments (`--quantization fp8`): its value is split like the
//! template itself, and an empty value adds no argument. The include's `extra_args` are
//! rendered the same way and appended.

use std::fmt;

/// The placeholders of a framework `command` (and of an include's `extra_args`): the wire
/// contract's list, which the coordinator checks templates against.
pub use evalctl_proto::template::SERVER as SERVER_PLACEHOLDERS;

use evalctl_proto::template::{self as grammar, SPLIT as SPLIT_PLACEHOLDERS, Segment, SyntaxError};

/// Values for the SERVER placeholders of a framework command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TemplateValues {
    /// `{model.name}`: the model's short name, e.g. `llama-3.1-8b`.
    pub model_name: String,
    /// `{model.path}`: what the server loads (hub id or local path).
    pub model_path: String,
    /// `{model.tokenizer}`: the model's tokenizer file, empty when none.
    pub model_tokenizer: String,
    /// `{host}`: the address the server listens on.
    pub host: String,
    /// `{port}`: the port the server listens on.
    pub port: u16,
    /// `{gpu.count}`: GPUs of the unit.
    pub gpu_count: u32,
    /// `{gpu.type}`: the GPU type, empty for CPU units.
    pub gpu_type: String,
    /// `{gpu.indices}`: the host's GPU indices leased to the unit, rendered `0,1`.
    pub gpu_indices: Vec<u32>,
    /// `{quant.name}`: the quantization's name, e.g. `fp8`.
    pub quant_name: String,
    /// `{quant.bits}`: bits per weight, rendered without a trailing `.0` (`16`, `4.5`).
    pub quant_bits: f64,
    /// `{quant.args}`: the quantization's arguments for this framework, split into words.
    pub quant_args: String,
    /// `{framework.name}`: the framework's name, e.g. `vllm`.
    pub framework_name: String,
    /// `{unit.id}`: the unit's id.
    pub unit_id: String,
}

impl TemplateValues {
    /// The values for the unit `unit_id` of configuration `config`, its server listening on
    /// `host:port` with the host's GPUs `gpu_indices` (empty for a CPU unit).
    pub fn for_unit(
        unit_id: &str,
        config: &evalctl_proto::v1::UnitConfig,
        host: &str,
        port: u16,
        gpu_indices: &[u32],
    ) -> TemplateValues {
        let model = config.model.clone().unwrap_or_default();
        let gpu = config.gpu.clone().unwrap_or_default();
        let quant = config.quantization.clone().unwrap_or_default();
        let framework = config.framework.clone().unwrap_or_default();
        TemplateValues {
            model_name: model.name,
            model_path: model.path,
            model_tokenizer: model.tokenizer,
            host: host.to_owned(),
            port,
            gpu_count: gpu_indices.len() as u32,
            gpu_type: gpu.gpu_type,
            gpu_indices: gpu_indices.to_vec(),
            quant_name: quant.name,
            quant_bits: quant.bits,
            quant_args: quant.args,
            framework_name: framework.name,
            unit_id: unit_id.to_owned(),
        }
    }

    /// The text placeholder `name` renders to, or `None` when `name` is not a SERVER
    /// placeholder.
    pub fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "model.name" => self.model_name.clone(),
            "model.path" => self.model_path.clone(),
            "model.tokenizer" => self.model_tokenizer.clone(),
            "port" => self.port.to_string(),
            "host" => self.host.clone(),
            "gpu.count" => self.gpu_count.to_string(),
            "gpu.type" => self.gpu_type.clone(),
            "gpu.indices" => self
                .gpu_indices
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "quant.name" => self.quant_name.clone(),
            "quant.bits" => self.quant_bits.to_string(),
            "quant.args" => self.quant_args.clone(),
            "framework.name" => self.framework_name.clone(),
            "unit.id" => self.unit_id.clone(),
            _ => return None,
        })
    }
}

/// A rendered command: the program and its arguments, ready to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedCommand {
    /// `argv[0]` is the program (a name looked up on `PATH`, or a path).
    pub argv: Vec<String>,
}

impl RenderedCommand {
    /// Shell-quoted one-line form, recorded as the exact launch command: pasted into a POSIX
    /// shell it runs the same argv.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|arg| quote(arg))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl From<Vec<String>> for RenderedCommand {
    fn from(argv: Vec<String>) -> Self {
        RenderedCommand { argv }
    }
}

impl fmt::Display for RenderedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// A command template that cannot be rendered. Each names the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A placeholder the template's kind does not have.
    #[error(
        "failed to render `{template}`: unknown placeholder `{{{name}}}` (hint: valid \
         placeholders are {valid}; write `{{{{` and `}}}}` for literal braces)"
    )]
    UnknownPlaceholder {
        /// The text between the braces.
        name: String,
        /// The template.
        template: String,
        /// The placeholders it may use, e.g. "{port} {host}".
        valid: String,
    },
    /// A `{` without its `}`.
    #[error(
        "failed to render `{template}`: unclosed `{{` at byte {offset} (hint: close the \
         placeholder with `}}`, or write `{{{{` for a literal brace)"
    )]
    Unclosed {
        /// Byte offset of the brace in the template.
        offset: usize,
        /// The template.
        template: String,
    },
    /// A `}` that closes nothing.
    #[error(
        "failed to render `{template}`: unmatched `}}` at byte {offset} (hint: write `}}}}` \
         for a literal brace)"
    )]
    Unmatched {
        /// Byte offset of the brace in the template.
        offset: usize,
        /// The template.
        template: String,
    },
    /// A quote that is never closed.
    #[error("failed to render `{template}`: unterminated {quote} quote")]
    UnterminatedQuote {
        /// `'` or `"`.
        quote: char,
        /// The template.
        template: String,
    },
    /// A `\` with nothing after it.
    #[error("failed to render `{template}`: it ends with an unescaped backslash")]
    TrailingBackslash {
        /// The template.
        template: String,
    },
    /// The value of a splitting placeholder (`{quant.args}`) does not split into words.
    #[error(
        "failed to render `{template}`: the value of `{{{name}}}`, `{value}`, has an \
         unterminated quote or a trailing backslash"
    )]
    BadValue {
        /// The placeholder.
        name: String,
        /// Its value.
        value: String,
        /// The template.
        template: String,
    },
    /// The command renders to no words at all.
    #[error("failed to render `{template}`: the command is empty")]
    Empty {
        /// The template (with the extra arguments).
        template: String,
    },
}

fn valid_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|p| format!("{{{p}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders `command` + `" "` + `extra_args` into an argv (see the module docs for the rules).
pub fn render_command(
    command: &str,
    extra_args: &str,
    values: &TemplateValues,
) -> Result<RenderedCommand, TemplateError> {
    let lookup = |name: &str| values.value(name);
    let mut argv = render_words(command, &lookup, SERVER_PLACEHOLDERS, SPLIT_PLACEHOLDERS)?;
    argv.extend(render_words(
        extra_args,
        &lookup,
        SERVER_PLACEHOLDERS,
        SPLIT_PLACEHOLDERS,
    )?);
    if argv.is_empty() {
        let template = if extra_args.is_empty() {
            command.to_owned()
        } else {
            format!("{command} {extra_args}")
        };
        return Err(TemplateError::Empty { template });
    }
    Ok(RenderedCommand { argv })
}

/// Renders a template whose placeholders are `names`, answered by `lookup`, each value one
/// word (the harness command of an `api: command` workload).
pub fn render_template(
    template: &str,
    names: &[&str],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<RenderedCommand, TemplateError> {
    let argv = render_words(template, lookup, names, &[])?;
    if argv.is_empty() {
        return Err(TemplateError::Empty {
            template: template.to_owned(),
        });
    }
    Ok(RenderedCommand { argv })
}

/// Renders one template into words.
fn render_words(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
    split: &[&str],
) -> Result<Vec<String>, TemplateError> {
    let segments = grammar::parse(template).map_err(|err| match err {
        SyntaxError::Unclosed { offset } => TemplateError::Unclosed {
            offset,
            template: template.to_owned(),
        },
        SyntaxError::Unmatched { offset } => TemplateError::Unmatched {
            offset,
            template: template.to_owned(),
        },
    })?;
    let mut words = Words::default();
    for segment in segments {
        match segment {
            Segment::Literal(text) => words.push_literal(&text),
            Segment::Placeholder { name, .. } => {
                let value = names
                    .contains(&name)
                    .then(|| lookup(name))
                    .flatten()
                    .ok_or_else(|| TemplateError::UnknownPlaceholder {
                        name: name.to_owned(),
                        template: template.to_owned(),
                        valid: valid_list(names),
                    })?;
                if split.contains(&name) {
                    words
                        .push_split_value(&value)
                        .map_err(|_| TemplateError::BadValue {
                            name: name.to_owned(),
                            value: value.clone(),
                            template: template.to_owned(),
                        })?;
                } else {
                    words.push_value(&value);
                }
            }
        }
    }
    words.finish().map_err(|err| match err {
        SplitError::UnterminatedQuote(quote) => TemplateError::UnterminatedQuote {
            quote,
            template: template.to_owned(),
        },
        SplitError::TrailingBackslash => TemplateError::TrailingBackslash {
            template: template.to_owned(),
        },
    })
}

/// Why text does not split into words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitError {
    UnterminatedQuote(char),
    TrailingBackslash,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Quote {
    #[default]
    None,
    Single,
    Double,
}

/// A shell-style word splitter fed piece by piece: literal text is interpreted (quotes,
/// escapes, whitespace), placeholder values are appended as they are.
#[derive(Debug, Default)]
struct Words {
    words: Vec<String>,
    /// The word being built; `Some("")` after `''`, which is an empty argument.
    current: Option<String>,
    quote: Quote,
    /// The previous character was an unconsumed backslash.
    escape: bool,
}

impl Words {
    fn word(&mut self) -> &mut String {
        self.current.get_or_insert_with(String::new)
    }

    fn end_word(&mut self) {
        if let Some(word) = self.current.take() {
            self.words.push(word);
        }
    }

    fn push_literal(&mut self, text: &str) {
        for c in text.chars() {
            if self.escape {
                self.escape = false;
                match (self.quote, c) {
                    // Line continuation.
                    (Quote::None | Quote::Double, '\n') => {}
                    // (No escapes are read inside single quotes.)
                    (Quote::None | Quote::Single, c) => self.word().push(c),
                    (Quote::Double, '$' | '`' | '"' | '\\') => self.word().push(c),
                    (Quote::Double, c) => {
                        let word = self.word();
                        word.push('\\');
                        word.push(c);
                    }
                }
                continue;
            }
            match (self.quote, c) {
                (Quote::None, ' ' | '\t' | '\n' | '\r') => self.end_word(),
                (Quote::None, '\'') => {
                    self.word();
                    self.quote = Quote::Single;
                }
                (Quote::None, '"') => {
                    self.word();
                    self.quote = Quote::Double;
                }
                (Quote::None | Quote::Double, '\\') => self.escape = true,
                (Quote::Single, '\'') | (Quote::Double, '"') => self.quote = Quote::None,
                (_, c) => self.word().push(c),
            }
        }
    }

    /// Appends a value verbatim to the current word, starting one if needed: an empty value
    /// standing alone is an empty argument. A backslash left pending before it escapes
    /// nothing and stays literal.
    fn push_value(&mut self, value: &str) {
        if std::mem::take(&mut self.escape) {
            self.word().push('\\');
        }
        self.word().push_str(value);
    }

    /// Appends a list-of-arguments value: inside quotes verbatim; outside, split into words,
    /// the first joining the current word and the last staying open (as a shell splits an
    /// unquoted expansion).
    fn push_split_value(&mut self, value: &str) -> Result<(), SplitError> {
        if self.quote != Quote::None {
            self.push_value(value);
            return Ok(());
        }
        if std::mem::take(&mut self.escape) {
            self.word().push('\\');
        }
        let fields = split(value)?;
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                self.end_word();
            }
            self.word().push_str(&field);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<String>, SplitError> {
        match self.quote {
            Quote::Single => return Err(SplitError::UnterminatedQuote('\'')),
            Quote::Double => return Err(SplitError::UnterminatedQuote('"')),
            Quote::None => {}
        }
        if self.escape {
            return Err(SplitError::TrailingBackslash);
        }
        self.end_word();
        Ok(self.words)
    }
}

/// Splits plain text (no placeholders) into words, shell-style.
fn split(text: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Words::default();
    words.push_literal(text);
    words.finish()
}

/// Quotes one argument for a POSIX shell: unchanged when it has only safe characters,
/// otherwise in single quotes (a `'` inside becomes `'\''`).
fn quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-+=/:.,@%^".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_words(template: &str, values: &TemplateValues) -> Result<Vec<String>, TemplateError> {
        render_words(
            template,
            &|name| values.value(name),
            SERVER_PLACEHOLDERS,
            SPLIT_PLACEHOLDERS,
        )
    }
    use proptest::prelude::*;

    #[test]
    fn splits_like_a_shell() {
        let cases: &[(&str, &[&str])] = &[
            ("a b  c", &["a", "b", "c"]),
            ("  a\tb\n", &["a", "b"]),
            ("'a b' \"c d\"", &["a b", "c d"]),
            ("a'b'\"c\"d", &["abcd"]),
            ("'' \"\"", &["", ""]),
            (r"a\ b", &["a b"]),
            (r#""a\"b\\c\d""#, &[r#"a"b\c\d"#]),
            (r"'a\b'", &[r"a\b"]),
            ("a\\\nb", &["ab"]),
            ("", &[]),
            ("   ", &[]),
        ];
        for (text, words) in cases {
            assert_eq!(split(text).unwrap(), *words, "{text:?}");
        }
        assert_eq!(split("'a"), Err(SplitError::UnterminatedQuote('\'')));
        assert_eq!(split("\"a"), Err(SplitError::UnterminatedQuote('"')));
        assert_eq!(split("a\\"), Err(SplitError::TrailingBackslash));
    }

    #[test]
    fn parse_handles_escaped_braces_and_multibyte_text() {
        let lookup = |name: &str| Some(format!("<{name}>"));
        let render = |text: &str| render_template(text, &["a", "b"], &lookup);
        assert_eq!(render("é{a}{{x}}ü{b}").unwrap().argv, ["é<a>{x}ü<b>"]);
        assert!(matches!(
            render("a {b").unwrap_err(),
            TemplateError::Unclosed { offset: 2, .. }
        ));
        assert!(matches!(
            render("a {b {c}").unwrap_err(),
            TemplateError::Unclosed { offset: 2, .. }
        ));
        assert!(matches!(
            render("a } b").unwrap_err(),
            TemplateError::Unmatched { offset: 2, .. }
        ));
    }

    #[test]
    fn split_value_joins_adjacent_text_like_a_shell() {
        let values = TemplateValues {
            quant_args: "x  y".into(),
            ..TemplateValues::default()
        };
        let words = |t: &str| server_words(t, &values).unwrap();
        assert_eq!(words("a{quant.args}b"), ["ax", "yb"]);
        assert_eq!(words("a \"{quant.args}\""), ["a", "x  y"]);
        assert_eq!(words("a '{quant.args}'"), ["a", "x  y"]);
        let empty = TemplateValues::default();
        assert_eq!(
            server_words("a {quant.args} b", &empty).unwrap(),
            ["a", "b"]
        );
        assert_eq!(server_words("a{quant.args}b", &empty).unwrap(), ["ab"]);
        assert_eq!(
            server_words("a \"{quant.args}\"", &empty).unwrap(),
            ["a", ""]
        );
    }

    #[test]
    fn quote_leaves_plain_words_alone() {
        assert_eq!(quote("--port=8000"), "--port=8000");
        assert_eq!(quote("/m/a,b:c@d"), "/m/a,b:c@d");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("{x}"), "'{x}'");
    }

    proptest! {
        #[test]
        fn display_splits_back_into_the_same_argv(
            argv in proptest::collection::vec(any::<String>(), 1..6)
        ) {
            let command = RenderedCommand { argv: argv.clone() };
            prop_assert_eq!(split(&command.display()).unwrap(), argv);
        }

        #[test]
        fn plain_values_are_always_one_argument(value in any::<String>()) {
            let values = TemplateValues { model_path: value.clone(), ..TemplateValues::default() };
            let rendered = render_command("serve {model.path}", "", &values).unwrap();
            prop_assert_eq!(rendered.argv, vec!["serve".to_owned(), value]);
        }
    }
}
