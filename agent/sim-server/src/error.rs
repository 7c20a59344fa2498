//! Errors the simulator answers with, in the OpenAI error shape:
//! `{"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}`.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error response of the simulated API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is malformed or asks for something the simulator does not do.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
        }
    }

    /// 400 naming the offending request field.
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..ApiError::invalid(message)
        }
    }

    /// 503 while the simulated startup delay runs.
    pub fn starting() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable",
            message: "the simulated server is still starting".to_owned(),
            param: None,
        }
    }

    /// 503 for a request that the server's shutdown cut short.
    pub fn shutting_down() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable",
            message: "the simulated server is shutting down".to_owned(),
            param: None,
        }
    }

    /// 404 for an unknown path.
    pub fn not_found(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!("no route for {path}"),
            param: None,
        }
    }

    /// Maps a body read failure (too large, truncated) to an error with the same status.
    pub fn from_body(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        ApiError {
            status,
            kind: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request_too_large"
            } else {
                "invalid_request_error"
            },
            message: format!("failed to read the request body: {}", rejection.body_text()),
            param: None,
        }
    }

    /// Maps a JSON syntax or shape error to a 400.
    pub fn from_json(err: serde_json::Error) -> Self {
        ApiError::invalid(format!("invalid JSON body: {err}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": null,
            }
        });
        (self.status, Json(body)).into_response()
    }
}
