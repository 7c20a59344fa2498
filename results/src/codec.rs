//! The blobs a step result carries beside its document: per-request records and raw
//! telemetry, each as zstd-compressed JSON Lines (one JSON object per line).
//!
//! JSON Lines so any tool can read a blob after `zstd -d`; zstd at a fast level because
//! lines of timings compress about tenfold at almost no CPU.

use std::io::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::record::RequestRecord;

/// zstd level of every blob: fast, and JSON Lines of timings compress ~10×.
pub const ZSTD_LEVEL: i32 = 3;

/// Writes values as zstd-compressed JSON Lines, one at a time.
pub struct JsonLinesWriter {
    encoder: zstd::Encoder<'static, Vec<u8>>,
}

impl JsonLinesWriter {
    /// A writer into memory at [`ZSTD_LEVEL`].
    pub fn new() -> std::io::Result<JsonLinesWriter> {
        Ok(JsonLinesWriter {
            encoder: zstd::Encoder::new(Vec::new(), ZSTD_LEVEL)?,
        })
    }

    /// Appends one value as a line.
    pub fn write(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.encoder, value).map_err(std::io::Error::other)?;
        self.encoder.write_all(b"\n")
    }

    /// The compressed blob.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.encoder.finish()
    }
}

/// `values` as one zstd-compressed JSON Lines blob.
pub fn encode<'a, T: Serialize + 'a>(
    values: impl IntoIterator<Item = &'a T>,
) -> std::io::Result<Vec<u8>> {
    let mut writer = JsonLinesWriter::new()?;
    for value in values {
        writer.write(value)?;
    }
    writer.finish()
}

/// Reads back a blob of [`encode`] (or [`JsonLinesWriter`]); blank lines are skipped.
pub fn decode<T: DeserializeOwned>(blob: &[u8]) -> std::io::Result<Vec<T>> {
    let text = zstd::decode_all(blob)?;
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(std::io::Error::other))
        .collect()
}

/// Per-request records as a blob.
pub fn encode_records(records: &[RequestRecord]) -> std::io::Result<Vec<u8>> {
    encode(records)
}

/// Reads back [`encode_records`]' output.
pub fn decode_records(blob: &[u8]) -> std::io::Result<Vec<RequestRecord>> {
    decode(blob)
}

/// Why [`count_lines`] refused a blob.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// The bytes are not a zstd frame, or it is damaged.
    #[error("not valid zstd data")]
    NotZstd(#[source] std::io::Error),
    /// The blob decompresses to more than the limit.
    #[error("records decompress to more than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
}

/// Counts the lines of a blob (a last line without its newline counts; an empty blob has
/// none) without holding the decompressed text: a receiver's check that the blob is zstd
/// and decompresses to at most `limit` bytes.
pub fn count_lines(blob: &[u8], limit: u64) -> Result<u64, CountError> {
    use std::io::Read as _;
    if blob.is_empty() {
        return Ok(0);
    }
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(blob).map_err(CountError::NotZstd)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut total, mut last) = (0u64, 0u64, b'\n');
    loop {
        let n = decoder.read(&mut buf).map_err(CountError::NotZstd)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err(CountError::TooLarge { limit });
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    if last != b'\n' {
        lines += 1;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RequestRecord;

    #[test]
    fn records_round_trip_and_count() {
        let records: Vec<RequestRecord> = (0..50)
            .map(|i| RequestRecord {
                index: i,
                input_tokens: i * 3,
                ..RequestRecord::default()
            })
            .collect();
        let blob = encode_records(&records).unwrap();
        assert_eq!(decode_records(&blob).unwrap(), records);
        assert_eq!(count_lines(&blob, 1 << 20).unwrap(), 50);
        assert_eq!(count_lines(&[], 1).unwrap(), 0);
    }

    #[test]
    fn count_lines_refuses_garbage_and_oversize() {
        assert!(matches!(
            count_lines(b"not zstd", 1 << 20),
            Err(CountError::NotZstd(_))
        ));
        let blob = zstd::encode_all(&b"a\nb\nc"[..], ZSTD_LEVEL).unwrap();
        assert_eq!(
            count_lines(&blob, 100).unwrap(),
            3,
            "an unterminated last line counts"
        );
        assert!(matches!(
            count_lines(&blob, 2),
            Err(CountError::TooLarge { limit: 2 })
        ));
    }
}
