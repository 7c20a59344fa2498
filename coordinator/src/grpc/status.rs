//! Maps coordinator errors to gRPC statuses with messages a user can act on.

use std::error::Error;

use tonic::Status;
use tracing::error;

use crate::matrix::MatrixError;
use crate::store::StoreError;

/// Renders an error with its whole `source` chain: "a: b: c".
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A matrix the coordinator cannot expand is the caller's error.
pub fn matrix_error(err: MatrixError) -> Status {
    Status::invalid_argument(chain(&err))
}

/// A store failure is ours; it is logged with its chain and reported as INTERNAL.
pub fn store_error(err: StoreError) -> Status {
    let text = chain(&err);
    error!(error = %text, "store operation failed");
    Status::internal(text)
}
