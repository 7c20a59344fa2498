//! JSON Lines: one object per row with the columns in schema order; nulls and non-finite
//! floats as `null` (JSON has no infinity; the text columns keep such values readable,
//! e.g. `load` = "rate=inf").

use std::io::Write;

use super::{Column, ExportError, RowSink, Value, check_shape};

/// Writes rows as JSON Lines.
pub struct JsonlSink<W: Write> {
    out: W,
    columns: Vec<Column>,
    line: String,
}

impl<W: Write> JsonlSink<W> {
    /// A sink writing `columns` to `out`.
    pub fn new(out: W, columns: &[Column]) -> JsonlSink<W> {
        JsonlSink {
            out,
            columns: columns.to_vec(),
            line: String::new(),
        }
    }
}

impl<W: Write> RowSink for JsonlSink<W> {
    fn write_row(&mut self, row: &[Value]) -> Result<(), ExportError> {
        check_shape(&self.columns, row)?;
        self.line.clear();
        self.line.push('{');
        for (i, (column, value)) in self.columns.iter().zip(row).enumerate() {
            if i > 0 {
                self.line.push(',');
            }
            self.line.push_str(&json_string(column.name));
            self.line.push(':');
            self.line.push_str(&json_value(value));
        }
        self.line.push_str("}\n");
        self.out.write_all(self.line.as_bytes())?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ExportError> {
        self.out.flush()?;
        Ok(())
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn json_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Str(s) => json_string(s),
        Value::F64(v) if v.is_finite() => serde_json::Value::from(*v).to_string(),
        Value::F64(_) => "null".to_owned(),
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kind;
    use super::*;

    #[test]
    fn rows_are_objects_in_column_order() {
        let columns = [
            Column {
                name: "z",
                kind: Kind::Str,
            },
            Column {
                name: "a",
                kind: Kind::F64,
            },
            Column {
                name: "b",
                kind: Kind::Bool,
            },
        ];
        let mut out = Vec::new();
        let mut sink = JsonlSink::new(&mut out, &columns);
        sink.write_row(&["q\"\n".into(), f64::NAN.into(), Value::Null])
            .unwrap();
        sink.write_row(&["x".into(), 1.5.into(), true.into()])
            .unwrap();
        drop(sink);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"z\":\"q\\\"\\n\",\"a\":null,\"b\":null}\n{\"z\":\"x\",\"a\":1.5,\"b\":true}\n"
        );
    }
}
