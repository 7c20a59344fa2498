//! Bounds on what a client may send, beyond the gRPC message size: string lengths and the
//! size of a matrix. The matrix module bounds its expansion itself (combinations, units,
//! steps: `matrix::MAX_UNITS`, `matrix::MAX_STEPS`); the agent service bounds its own
//! fields. Each check answers INVALID_ARGUMENT naming the field and the limit.

use tonic::Status;

/// Largest gRPC message the coordinator decodes or encodes (a matrix file, a result batch
/// with its records travel in one message).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Largest header list a client may send (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Largest matrix file accepted by `Submit`.
pub const MAX_MATRIX_BYTES: usize = 4 * 1024 * 1024;

/// Longest name or id (campaign, agent, token, submitter).
pub const MAX_SHORT_FIELD: usize = 256;

/// Longest free text (a cancel reason, a matrix's source name).
pub const MAX_TEXT_FIELD: usize = 4096;

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 64;

/// Audit entries in one `ListAudit` reply when the caller asks for none in particular.
pub const DEFAULT_AUDIT_PAGE: usize = 100;

/// Most audit entries in one `ListAudit` reply, whatever the caller asks for; the rest
/// come in further pages.
pub const MAX_AUDIT_PAGE: usize = 1000;

/// Refuses `value` when it is longer than `max` bytes.
pub fn at_most(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        Err(Status::invalid_argument(format!(
            "field `{field}` is {} bytes; the limit is {max}",
            value.len()
        )))
    } else {
        Ok(())
    }
}

/// A name or id: at most [`MAX_SHORT_FIELD`] bytes.
pub fn short_field(field: &str, value: &str) -> Result<(), Status> {
    at_most(field, value, MAX_SHORT_FIELD)
}

/// Free text: at most [`MAX_TEXT_FIELD`] bytes.
pub fn text_field(field: &str, value: &str) -> Result<(), Status> {
    at_most(field, value, MAX_TEXT_FIELD)
}

/// A matrix file: not empty, at most [`MAX_MATRIX_BYTES`].
pub fn matrix(yaml: &str) -> Result<(), Status> {
    if yaml.trim().is_empty() {
        return Err(Status::invalid_argument("field `matrix_yaml` is empty"));
    }
    at_most("matrix_yaml", yaml, MAX_MATRIX_BYTES)
}

/// A token name: 1 to [`MAX_TOKEN_NAME`] letters, digits, `.`, `_` or `-`.
pub fn token_name(name: &str) -> Result<(), Status> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid token name `{}`: use 1 to {MAX_TOKEN_NAME} letters, digits, '.', '_' or '-'",
            name.chars().take(80).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_field() {
        let err = short_field("campaign", &"x".repeat(MAX_SHORT_FIELD + 1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("campaign"), "{}", err.message());
        assert!(short_field("campaign", "nightly").is_ok());
        assert!(matrix("  \n").is_err());
        assert!(token_name("ci-runner.1").is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(token_name(bad).is_err(), "{bad}");
        }
    }
}
