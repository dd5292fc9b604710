//! Errors on the wire: `{"error_code": <stable number>, "message": "..."}` with the HTTP status
//! that fits. The codes are the engine's [`ErrorCode`]s; this file only picks statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sluice_engine::{ErrorCode, FetchError, ProduceError, QueueError, StreamError, TopicError};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong and what is allowed.
    pub message: String,
    /// Overrides the status the code implies (body-size rejections keep axum's).
    pub status: Option<StatusCode>,
    /// Facts a client acts on without parsing the message (a conflict's versions).
    pub details: Option<serde_json::Value>,
}

/// Every error response's body.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    /// The stable code (`docs/http-api.md` lists them); a retired code is never reused.
    error_code: u16,
    /// What went wrong and what is allowed, for a person to act on.
    message: &'a str,
    /// For some errors, the facts as fields: a stream conflict (1021) has `stream`,
    /// `expected_version` and `actual_version` (and `deleted_at` for a deleted stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl ApiError {
    /// An error with the status its code implies.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), status: None, details: None }
    }

    /// A malformed or out-of-range request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// The HTTP status of an answer with this error.
    pub(crate) fn status(&self) -> StatusCode {
        self.status.unwrap_or(match self.code {
            ErrorCode::UnknownTopic
            | ErrorCode::UnknownPartition
            | ErrorCode::UnknownGroup
            | ErrorCode::UnknownMember
            | ErrorCode::UnknownQueue
            | ErrorCode::UnknownDelivery
            | ErrorCode::StreamNotFound
            | ErrorCode::SnapshotNotFound => StatusCode::NOT_FOUND,
            ErrorCode::TopicExists
            | ErrorCode::StaleGeneration
            | ErrorCode::NotAssigned
            | ErrorCode::GroupActive
            | ErrorCode::TopicsMismatch
            | ErrorCode::ProducerFenced
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::QueueExists
            | ErrorCode::NotLeased
            | ErrorCode::WrongExpectedVersion => StatusCode::CONFLICT,
            ErrorCode::InvalidName | ErrorCode::InvalidConfig | ErrorCode::InvalidRequest => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::RecordTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::OffsetOutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Storage | ErrorCode::Corrupt | ErrorCode::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code.number(), message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error_code: self.code.number(),
            message: &self.message,
            details: self.details.as_ref(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<TopicError> for ApiError {
    fn from(error: TopicError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

impl From<ProduceError> for ApiError {
    fn from(error: ProduceError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

impl From<FetchError> for ApiError {
    fn from(error: FetchError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

impl From<StreamError> for ApiError {
    fn from(error: StreamError) -> Self {
        let mut api = Self::new(error.code(), error.to_string());
        if let StreamError::WrongExpectedVersion { stream, expected, actual, deleted_at, .. } =
            &error
        {
            api.details = Some(serde_json::json!({
                "stream": stream,
                "expected_version": expected.to_string(),
                "actual_version": actual,
                "deleted_at": deleted_at,
            }));
        }
        api
    }
}

/// Parses a JSON request body into `T`, with a 400 that says what was wrong.
///
/// # Errors
/// A malformed body, or one whose fields do not fit `T`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::invalid(format!("malformed JSON body: {error}")))
}
