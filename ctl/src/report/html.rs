//! HTML building blocks for the report: escaping (every user string goes through
//! [`escape`]), tables, and the page's style sheet.

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table cell: text to escape, or a number aligned right.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text, escaped.
    Text(String),
    /// A number, right-aligned.
    Num(String),
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

/// A number cell with the report's formatting; "–" when absent.
pub fn num(v: Option<f64>) -> Cell {
    Cell::Num(v.map_or_else(|| "–".to_owned(), super::svg::number))
}

/// A table with a header row.
pub fn table(class: &str, headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut html = format!(r#"<table class="{}"><thead><tr>"#, escape(class));
    for h in headers {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html.push_str("</tr></thead><tbody>");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            match cell {
                Cell::Text(t) => {
                    let _ = write!(html, "<td>{}</td>", escape(t));
                }
                Cell::Num(t) => {
                    let _ = write!(html, r#"<td class="num">{}</td>"#, escape(t));
                }
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table>");
    html
}

/// The style sheet: system fonts, readable widths, no external resources.
pub const STYLE: &str = r#"
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
  max-width: 1180px; padding: 1rem 1.5rem 3rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
.meta { color: #555; margin-top: 0; }
.note { background: #fff7e0; border-left: 4px solid #e6a700; padding: .5rem .8rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e5e5e5; text-align: left;
  vertical-align: top; }
th { background: #f5f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.counts td.num { font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem 2rem; }
figure.chart { margin: .5rem 0; max-width: 100%; }
figure.chart svg { max-width: 100%; height: auto; background: #fff; }
figcaption { font-weight: 600; font-size: .95rem; margin: .2rem 0; }
ul.legend { list-style: none; padding: 0; margin: .3rem 0; font-size: .85rem;
  display: flex; flex-wrap: wrap; gap: .2rem 1.2rem; max-width: 560px; }
.swatch { display: inline-block; width: .9rem; height: .9rem; border-radius: 50%;
  margin-right: .35rem; vertical-align: -2px; }
.front-swatch { border: 2px dashed #444; border-radius: 0; width: .8rem; height: .8rem; }
pre.log { background: #1e1e1e; color: #e6e6e6; padding: .6rem; overflow-x: auto;
  font-size: .8rem; max-height: 22rem; white-space: pre-wrap; }
.state-failed { color: #b00020; font-weight: 600; }
.state-succeeded { color: #0a7a32; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_markup_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        let t = table("t", &["<h>"], &[vec!["<td>".into(), num(Some(1234.4))]]);
        assert!(t.contains("&lt;h&gt;") && t.contains("&lt;td&gt;"), "{t}");
        assert!(t.contains(r#"<td class="num">1234</td>"#), "{t}");
    }
}
