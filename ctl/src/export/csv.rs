//! CSV: a header row, then one line per row; fields quoted only when they must be
//! (RFC 4180), nulls as empty fields, floats in their shortest round-trip form.

use std::io::Write;

use super::{Column, ExportError, RowSink, Value, check_shape};

/// Writes rows as CSV.
pub struct CsvSink<W: Write> {
    out: W,
    columns: Vec<Column>,
    line: String,
}

impl<W: Write> CsvSink<W> {
    /// Writes the header and returns the sink.
    pub fn new(mut out: W, columns: &[Column]) -> Result<CsvSink<W>, ExportError> {
        let header: Vec<String> = columns.iter().map(|c| quote(c.name)).collect();
        writeln!(out, "{}", header.join(","))?;
        Ok(CsvSink {
            out,
            columns: columns.to_vec(),
            line: String::new(),
        })
    }
}

impl<W: Write> RowSink for CsvSink<W> {
    fn write_row(&mut self, row: &[Value]) -> Result<(), ExportError> {
        check_shape(&self.columns, row)?;
        self.line.clear();
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                self.line.push(',');
            }
            self.line.push_str(&field(value));
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ExportError> {
        self.out.flush()?;
        Ok(())
    }
}

fn field(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Str(s) => quote(s),
        Value::F64(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
    }
}

/// Quotes a field when it holds a comma, quote or line break (doubling inner quotes).
fn quote(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kind;
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        let columns = [
            Column {
                name: "a",
                kind: Kind::Str,
            },
            Column {
                name: "b",
                kind: Kind::F64,
            },
            Column {
                name: "c",
                kind: Kind::U64,
            },
        ];
        let mut out = Vec::new();
        let mut sink = CsvSink::new(&mut out, &columns).unwrap();
        sink.write_row(&["x, \"y\"".into(), 0.25.into(), Value::Null])
            .unwrap();
        sink.write_row(&["plain".into(), f64::INFINITY.into(), 7u64.into()])
            .unwrap();
        assert!(matches!(
            sink.write_row(&[Value::Null]),
            Err(ExportError::RowShape { .. })
        ));
        drop(sink);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a,b,c\n\"x, \"\"y\"\"\",0.25,\nplain,inf,7\n"
        );
    }
}
