//! Maps coordinator errors to gRPC statuses with messages a user can act on.

use tonic::Status;
use tracing::error;

use crate::matrix::MatrixError;
use crate::store::StoreError;

/// Renders an error with its whole `source` chain: "a: b: c".
pub use evalctl_common::error_chain as chain;

/// A matrix the coordinator cannot expand is the caller's error.
pub fn matrix_error(err: MatrixError) -> Status {
    Status::invalid_argument(chain(&err))
}

/// Maps a store error to a status: what the caller named does not exist → NOT_FOUND;
/// a fenced write that no longer applies (stale epoch, ended lease, cancelled unit, steps
/// without results) → FAILED_PRECONDITION; a batch that contradicts the unit →
/// INVALID_ARGUMENT. Anything else is ours: logged with its chain and reported as
/// INTERNAL.
pub fn store_error(err: StoreError) -> Status {
    let text = chain(&err);
    match err {
        StoreError::AgentNotFound { .. } | StoreError::LeaseNotFound { .. } => {
            Status::not_found(text)
        }
        StoreError::StaleEpoch { .. }
        | StoreError::LeaseEnded { .. }
        | StoreError::UnitCancelled { .. }
        | StoreError::StepsMissing { .. } => Status::failed_precondition(text),
        StoreError::UnitMismatch { .. }
        | StoreError::UnknownStep { .. }
        | StoreError::BadProbe { .. } => Status::invalid_argument(text),
        _ => {
            error!(error = %text, "store operation failed");
            Status::internal(text)
        }
    }
}

/// True for the errors [`store_error`] does not report as INTERNAL: the caller's request
/// was refused, and repeating it will not help.
pub fn is_refusal(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::AgentNotFound { .. }
            | StoreError::LeaseNotFound { .. }
            | StoreError::StaleEpoch { .. }
            | StoreError::LeaseEnded { .. }
            | StoreError::UnitCancelled { .. }
            | StoreError::StepsMissing { .. }
            | StoreError::UnitMismatch { .. }
            | StoreError::UnknownStep { .. }
            | StoreError::BadProbe { .. }
    )
}
