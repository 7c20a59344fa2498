//! The matrix file as a YAML tree in which every node and every mapping key knows its line
//! and column.
//!
//! serde-saphyr parses the text (anchors, aliases and `<<` merge keys included, with its
//! budget against alias bombs); each node is read through its `Spanned` wrapper, so later
//! checks can point at the exact place of a wrong value, not only at syntax errors. Scalars
//! keep the byte range of their source text too, which lets placeholder errors point inside
//! a command string.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter, Spanned};

use super::error::{Errors, MatrixError};

/// A 1-based line and column in the matrix file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Pos {
    /// A position.
    pub(crate) const fn new(line: usize, column: usize) -> Self {
        Pos { line, column }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// Where the node starts (for a block mapping: its first key).
    pub pos: Pos,
    /// Byte range of a scalar's source text (quotes included), when known.
    pub span: Option<(usize, usize)>,
    /// The value.
    pub value: Value,
}

/// The value of a [`Node`], typed the way YAML 1.2's core schema reads plain scalars.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i128),
    /// A finite float.
    Float(f64),
    /// A string (quoted, or plain text that is no other type; also `.inf` and `.nan`).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, keys in file order (duplicates are rejected while reading).
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    /// The key's text.
    pub name: String,
    /// Where the key is.
    pub pos: Pos,
}

impl Node {
    /// A short description of what the node is, for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing (null)".to_owned(),
            Value::Bool(b) => format!("the boolean `{b}`"),
            Value::Int(i) => format!("the integer `{i}`"),
            Value::Float(x) => format!("the number `{x}`"),
            Value::Str(s) => format!("the string `{}`", shorten(s)),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }

    /// Whether the node is `null` (absent value).
    pub(crate) fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// The source text with a line index, to turn byte offsets into positions.
#[derive(Debug, Clone)]
pub(crate) struct Source<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    /// Indexes `text`.
    pub(crate) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source { text, line_starts }
    }

    /// The whole text.
    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// The position of byte `offset`.
    pub(crate) fn pos_of(&self, offset: usize) -> Pos {
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        Pos::new(line, column)
    }

    /// The position of the first occurrence of `needle` in the source text of `node`,
    /// or the node's own position when the text is not found there (escapes, aliases).
    pub(crate) fn find_in(&self, node_pos: Pos, span: Option<(usize, usize)>, needle: &str) -> Pos {
        span.and_then(|(start, end)| {
            let raw = self.text.get(start..end)?;
            let at = raw.find(needle)?;
            Some(self.pos_of(start + at))
        })
        .unwrap_or(node_pos)
    }
}

/// Parses `text` into a tree. Syntax errors, a second document and duplicate keys are
/// reported with their positions.
pub(crate) fn parse(errors: &Errors, text: &str) -> Result<Node, MatrixError> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        strict_booleans: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        reject_unsupported_tags: true,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(raw) => convert(errors, raw),
        Err(err) => Err(syntax_error(errors, &err)),
    }
}

/// A breached parser budget in words (its `Debug` text is `Nodes { nodes: 250001 }`).
fn budget_breach(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Events { events } => format!("more than {events} YAML events"),
        B::Aliases { aliases } => format!("{aliases} aliases (`*name`)"),
        B::Anchors { anchors } => format!("{anchors} anchors (`&name`)"),
        B::Depth { depth } => format!("nesting {depth} levels deep"),
        B::Documents { documents } => format!("{documents} YAML documents"),
        B::Nodes { nodes } => format!("more than {} values", nodes.saturating_sub(1)),
        B::ScalarBytes { total_scalar_bytes } => {
            format!("{total_scalar_bytes} bytes of text in values")
        }
        B::MergeKeys { merge_keys } => format!("{merge_keys} merge keys (`<<`)"),
        B::AliasAnchorRatio { aliases, anchors } => {
            format!("{aliases} aliases of {anchors} anchors (an alias bomb?)")
        }
        _ => "a limit of the YAML parser".to_owned(),
    }
}

fn syntax_error(errors: &Errors, err: &serde_saphyr::Error) -> MatrixError {
    let inner = err.without_snippet();
    let pos = inner
        .location()
        .or_else(|| err.location())
        .map(|l| Pos::new(to_usize(l.line()), to_usize(l.column())))
        .filter(|p| p.line > 0)
        .unwrap_or(Pos::new(1, 1));
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return errors.syntax(
            pos,
            format!(
                "the matrix is too large or too deeply nested: {}",
                budget_breach(breach)
            ),
            Some(
                "a matrix this size is almost always generated by mistake, or an alias bomb; \
                 split the campaign into several matrix files"
                    .to_owned(),
            ),
        );
    }
    let message = DefaultMessageFormatter.format_message(inner).into_owned();
    let hint = (message.contains("flow mapping") || message.contains("flow sequence")).then(|| {
        "inside `{ … }` and `[ … ]`, quote values that contain `{`, `}`, `[`, `]` or `,` \
         (command templates, paths with `{quant.name}`), or write the entry in block style"
            .to_owned()
    });
    let message = if message.contains("multiple YAML documents") {
        "a matrix file holds one YAML document; found a second one (`---`)".to_owned()
    } else {
        format!("invalid YAML: {message}")
    };
    errors.syntax(pos, message, hint)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Converts serde-saphyr's spanned values into [`Node`]s, rejecting duplicate keys and
/// keys that are not scalars.
fn convert(errors: &Errors, raw: Spanned<Raw>) -> Result<Node, MatrixError> {
    let location = raw.defined;
    let pos = Pos::new(to_usize(location.line()), to_usize(location.column()));
    let span = location.span();
    let span = match (span.byte_offset(), span.byte_len()) {
        (Some(offset), Some(len)) => Some((to_usize(offset), to_usize(offset + len))),
        _ => None,
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(x) => Value::Float(x),
        // No value of a matrix may hold NUL: it cannot pass into a command line, an
        // environment variable or a path, and would fail only at launch, on the agent.
        Raw::Str(s) if s.contains('\0') => {
            return Err(errors.hinted(
                pos,
                format!(
                    "the string `{}` contains a NUL character (`\\0`)",
                    shorten(&s.replace('\0', "\\0"))
                ),
                Some("NUL cannot be passed to a process as an argument, an environment value or a path; remove it"),
            ));
        }
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|item| convert(errors, item))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(entries) => {
            let mut out: Vec<(Key, Node)> = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key = convert(errors, key)?;
                let name = match &key.value {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Float(x) => x.to_string(),
                    Value::Null => String::new(),
                    Value::Seq(_) | Value::Map(_) => {
                        return Err(errors.at(
                            key.pos,
                            format!("expected a plain key, found {}", key.describe()),
                        ));
                    }
                };
                if let Some((first, _)) = out.iter().find(|(k, _)| k.name == name) {
                    return Err(errors.at(
                        key.pos,
                        format!("duplicate key `{name}` (first given at {})", first.pos),
                    ));
                }
                out.push((Key { name, pos: key.pos }, convert(errors, value)?));
            }
            Value::Map(out)
        }
    };
    Ok(Node { pos, span, value })
}

/// What serde-saphyr hands over for one node, children still wrapped in `Spanned`.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(i128::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(i128::from(v)))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        i128::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Node {
        parse(&Errors::new("t.yaml"), text).expect("valid YAML")
    }

    fn map(node: &Node) -> &[(Key, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn scalars_are_typed_and_positioned() {
        let node = tree("a: 8\nb: 1.5\nc: \"8\"\nd: inf\ne: .inf\nf: yes\ng: ~\nh: 20m\n");
        let entries = map(&node);
        let values: Vec<_> = entries.iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(8),
                Value::Float(1.5),
                Value::Str("8".into()),
                Value::Str("inf".into()),
                Value::Str(".inf".into()),
                Value::Str("yes".into()),
                Value::Null,
                Value::Str("20m".into()),
            ]
        );
        assert_eq!(entries[2].0.pos, Pos::new(3, 1));
        assert_eq!(entries[2].1.pos, Pos::new(3, 4));
    }

    #[test]
    fn aliases_and_merge_keys_resolve() {
        let node = tree("base: &b { x: 1 }\nuse: *b\nmerged:\n  <<: *b\n  y: 2\n");
        let entries = map(&node);
        assert_eq!(map(&entries[1].1)[0].0.name, "x");
        let merged: Vec<_> = map(&entries[2].1)
            .iter()
            .map(|(k, _)| k.name.clone())
            .collect();
        assert_eq!(merged, vec!["y", "x"]);
    }

    #[test]
    fn duplicate_keys_are_errors_naming_both_places() {
        let err = parse(&Errors::new("t.yaml"), "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.line_col(), Some((3, 1)));
        assert!(
            err.to_string()
                .contains("duplicate key `a` (first given at 1:1)"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse(&Errors::new("t.yaml"), "a: [1, 2\nb: 3\n").unwrap_err();
        assert!(matches!(err, MatrixError::Syntax { .. }), "{err:?}");
        assert!(err.line_col().is_some());
        assert!(err.to_string().starts_with("t.yaml:"), "{err}");
        let err = parse(&Errors::new("t.yaml"), "a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.to_string().contains("one YAML document"), "{err}");
    }

    #[test]
    fn source_maps_offsets_and_finds_text_inside_scalars() {
        let text = "a: 1\ncmd: run {x} --y\n";
        let source = Source::new(text);
        assert_eq!(source.pos_of(0), Pos::new(1, 1));
        assert_eq!(source.pos_of(5), Pos::new(2, 1));
        let node = tree(text);
        let cmd = &map(&node)[1].1;
        assert_eq!(source.find_in(cmd.pos, cmd.span, "{x}"), Pos::new(2, 10));
        assert_eq!(source.find_in(cmd.pos, cmd.span, "{nope}"), cmd.pos);
    }
}
