//! Tabular exports of stored results: a fixed, typed column list per kind of row (steps,
//! per-request records) and one writer per file format. Rows are written one at a time
//! as the coordinator streams them, so a large campaign never sits in memory at once.

mod csv;
mod jsonl;
mod parquet;
pub mod requests;
pub mod scores;
pub mod steps;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

/// A file format `evalctl export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet with typed columns (zstd pages).
    Parquet,
}

/// The type of a column; every value of the column has it or is null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text.
    Str,
    /// 64-bit float.
    F64,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer (Unix milliseconds).
    I64,
    /// Boolean.
    Bool,
}

/// A named, typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name (snake_case, units in the name: `ttft_p90_ms`).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
}

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent.
    Null,
    /// Text.
    Str(String),
    /// Float.
    F64(f64),
    /// Unsigned integer.
    U64(u64),
    /// Signed integer.
    I64(i64),
    /// Boolean.
    Bool(bool),
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_owned())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::F64(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::U64(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::U64(u64::from(v))
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::I64(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds one row and, from the same code, its column list: every `put` names its
/// column, so a column cannot drift away from its value. A row builder must call `put`
/// for every column on every row, with a null value where it has none.
#[derive(Debug, Default)]
pub struct RowBuilder {
    columns: Vec<Column>,
    values: Vec<Value>,
}

impl RowBuilder {
    /// Appends a cell of column `name`.
    pub fn put(&mut self, name: &'static str, kind: Kind, value: impl Into<Value>) {
        self.columns.push(Column { name, kind });
        self.values.push(value.into());
    }

    /// The columns put so far.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The cells put so far.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Empties the builder for the next row, keeping its allocations.
    pub fn clear(&mut self) {
        self.columns.clear();
        self.values.clear();
    }
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file could not be created or written.
    #[error("failed to write the file")]
    Io(#[from] std::io::Error),
    /// The Parquet encoder refused the data.
    #[error("failed to encode Parquet")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    /// Arrow refused a batch (a column of the wrong length or type).
    #[error("failed to build an Arrow batch")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A row does not fit the column list (a bug in the row builder).
    #[error("row has {got} cells, the schema {expected} columns")]
    RowShape {
        /// Columns of the schema.
        expected: usize,
        /// Cells of the row.
        got: usize,
    },
}

/// Where rows go: one implementation per format.
pub trait RowSink {
    /// Appends one row; its cells follow the column list the sink was opened with.
    fn write_row(&mut self, row: &[Value]) -> Result<(), ExportError>;
    /// Flushes everything and closes the file.
    fn finish(self: Box<Self>) -> Result<(), ExportError>;
}

/// Creates `path` and returns a sink writing `columns` in `format`.
pub fn create(
    format: Format,
    path: &Path,
    columns: &[Column],
) -> Result<Box<dyn RowSink>, ExportError> {
    let file = BufWriter::new(File::create(path)?);
    Ok(match format {
        Format::Csv => Box::new(csv::CsvSink::new(file, columns)?),
        Format::Jsonl => Box::new(jsonl::JsonlSink::new(file, columns)),
        Format::Parquet => Box::new(parquet::ParquetSink::new(file, columns)?),
    })
}

/// Checks that `row` has one cell per column.
fn check_shape(columns: &[Column], row: &[Value]) -> Result<(), ExportError> {
    if row.len() == columns.len() {
        Ok(())
    } else {
        Err(ExportError::RowShape {
            expected: columns.len(),
            got: row.len(),
        })
    }
}
