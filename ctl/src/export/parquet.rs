//! Parquet through Arrow: rows gather in column builders that go to the writer every
//! [`BATCH_ROWS`] rows, and row groups are bounded, so memory stays bounded however many
//! rows come.

use std::io::Write;
use std::sync::Arc;

use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::{Compression, ZstdLevel};
use ::parquet::file::properties::WriterProperties;
use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use super::{Column, ExportError, Kind, RowSink, Value, check_shape};

/// Rows gathered before they are handed to the writer.
const BATCH_ROWS: usize = 8192;

/// Rows per row group: the writer holds one row group's encoded pages in memory.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// zstd level of the pages: fast, and still small.
const ZSTD_LEVEL: i32 = 3;

/// Writes rows as a Parquet file.
pub struct ParquetSink<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    columns: Vec<Column>,
    builders: Vec<Builder>,
    rows: usize,
}

enum Builder {
    Str(StringBuilder),
    F64(Float64Builder),
    U64(UInt64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
}

/// The Arrow schema of `columns`: every column nullable.
pub fn schema(columns: &[Column]) -> Schema {
    Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c.name, data_type(c.kind), true))
            .collect::<Vec<_>>(),
    )
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Str => DataType::Utf8,
        Kind::F64 => DataType::Float64,
        Kind::U64 => DataType::UInt64,
        Kind::I64 => DataType::Int64,
        Kind::Bool => DataType::Boolean,
    }
}

impl<W: Write + Send> ParquetSink<W> {
    /// Starts a Parquet file with the schema of `columns`.
    pub fn new(out: W, columns: &[Column]) -> Result<ParquetSink<W>, ExportError> {
        let schema = Arc::new(schema(columns));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
        Ok(ParquetSink {
            writer,
            schema,
            columns: columns.to_vec(),
            builders: columns.iter().map(|c| new_builder(c.kind)).collect(),
            rows: 0,
        })
    }

    fn flush_batch(&mut self) -> Result<(), ExportError> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(finish_builder).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch)?;
        self.rows = 0;
        Ok(())
    }
}

fn new_builder(kind: Kind) -> Builder {
    match kind {
        Kind::Str => Builder::Str(StringBuilder::new()),
        Kind::F64 => Builder::F64(Float64Builder::new()),
        Kind::U64 => Builder::U64(UInt64Builder::new()),
        Kind::I64 => Builder::I64(Int64Builder::new()),
        Kind::Bool => Builder::Bool(BooleanBuilder::new()),
    }
}

fn finish_builder(builder: &mut Builder) -> ArrayRef {
    match builder {
        Builder::Str(b) => Arc::new(b.finish()),
        Builder::F64(b) => Arc::new(b.finish()),
        Builder::U64(b) => Arc::new(b.finish()),
        Builder::I64(b) => Arc::new(b.finish()),
        Builder::Bool(b) => Arc::new(b.finish()),
    }
}

/// Appends `value` to `builder`; a value of another type than the column's is stored as
/// null (the row builders never produce one; a unit test checks every column).
fn append(builder: &mut Builder, value: &Value) {
    match (builder, value) {
        (Builder::Str(b), Value::Str(v)) => b.append_value(v),
        (Builder::F64(b), Value::F64(v)) => b.append_value(*v),
        (Builder::U64(b), Value::U64(v)) => b.append_value(*v),
        (Builder::I64(b), Value::I64(v)) => b.append_value(*v),
        (Builder::Bool(b), Value::Bool(v)) => b.append_value(*v),
        (Builder::Str(b), _) => b.append_null(),
        (Builder::F64(b), _) => b.append_null(),
        (Builder::U64(b), _) => b.append_null(),
        (Builder::I64(b), _) => b.append_null(),
        (Builder::Bool(b), _) => b.append_null(),
    }
}

impl<W: Write + Send> RowSink for ParquetSink<W> {
    fn write_row(&mut self, row: &[Value]) -> Result<(), ExportError> {
        check_shape(&self.columns, row)?;
        for (builder, value) in self.builders.iter_mut().zip(row) {
            append(builder, value);
        }
        self.rows += 1;
        debug_assert!(self.builders.iter().all(|b| builder_len(b) == self.rows));
        if self.rows >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), ExportError> {
        self.flush_batch()?;
        let mut out = self.writer.into_inner()?;
        out.flush()?;
        Ok(())
    }
}

fn builder_len(builder: &Builder) -> usize {
    match builder {
        Builder::Str(b) => b.len(),
        Builder::F64(b) => b.len(),
        Builder::U64(b) => b.len(),
        Builder::I64(b) => b.len(),
        Builder::Bool(b) => b.len(),
    }
}

#[cfg(test)]
mod tests {
    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, UInt64Type};

    use super::*;

    #[test]
    fn rows_read_back_with_their_types() {
        let columns = [
            Column {
                name: "name",
                kind: Kind::Str,
            },
            Column {
                name: "tput",
                kind: Kind::F64,
            },
            Column {
                name: "n",
                kind: Kind::U64,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let file = std::fs::File::create(&path).unwrap();
        let mut sink: Box<dyn RowSink> = Box::new(ParquetSink::new(file, &columns).unwrap());
        for i in 0..(BATCH_ROWS as u64 + 5) {
            let name = if i == 3 {
                Value::Null
            } else {
                format!("r{i}").into()
            };
            sink.write_row(&[name, (i as f64 / 2.0).into(), i.into()])
                .unwrap();
        }
        sink.finish().unwrap();

        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.schema().as_ref(), &schema(&columns));
        let mut rows = 0u64;
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let names = batch.column(0).as_string::<i32>();
            let tput = batch.column(1).as_primitive::<Float64Type>();
            let n = batch.column(2).as_primitive::<UInt64Type>();
            for r in 0..batch.num_rows() {
                let i = rows + r as u64;
                assert_eq!(n.value(r), i);
                assert_eq!(tput.value(r), i as f64 / 2.0);
                if i == 3 {
                    assert!(names.is_null(r));
                } else {
                    assert_eq!(names.value(r), format!("r{i}"));
                }
            }
            rows += batch.num_rows() as u64;
        }
        assert_eq!(rows, BATCH_ROWS as u64 + 5);
    }
}
