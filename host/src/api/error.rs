//! One error shape for every endpoint:
//! `{"error": {"code", "message", "field"?, "details"?}}` with a fitting status.

use crate::control::ControlError;
use crate::ingest::IngestError;
use crate::resource::{Problem, Problems};
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an API client. Never carries internal details: a
/// backend failure is logged here and answered as a generic 500/503.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable `snake_case` code.
    pub code: &'static str,
    /// Human sentence.
    pub message: String,
    /// The input at fault (JSON path or header name).
    pub field: Option<String>,
    /// Every problem, when there are several.
    pub details: Vec<Problem>,
    /// More members of the error object (e.g. a schema violation's
    /// `violations`); boxed, as errors are returned often and rarely have any.
    pub extra: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            details: Vec::new(),
            extra: None,
        }
    }

    /// Adds a member to the error object.
    pub fn with_member(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(name.to_owned(), value);
        self
    }

    /// Names the input at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 for a malformed request.
    pub fn bad_request(
        code: &'static str,
        message: impl Into<String>,
        field: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).with_field(field)
    }

    /// 404 for something this tenant does not have (or that does not exist at all).
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {name:?} does not exist"),
        )
    }

    /// 401 for a missing or wrong key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message).with_field("Authorization")
    }

    /// 409 for a request that conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 400 listing every validation problem; `field` is the first one's.
    pub fn invalid(code: &'static str, problems: Problems) -> Self {
        let errors = problems.into_vec();
        let message = match errors.as_slice() {
            [] => "invalid request".to_owned(),
            [one] => format!("{}: {}", display_field(&one.field), one.message),
            [first, rest @ ..] => {
                format!(
                    "{}: {} (and {} more problems)",
                    display_field(&first.field),
                    first.message,
                    rest.len()
                )
            }
        };
        let field = errors.first().map(|e| e.field.clone());
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
            field,
            details: errors,
            extra: None,
        }
    }

    /// 500, logging the cause but never revealing it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

fn display_field(field: &str) -> &str {
    if field.is_empty() { "body" } else { field }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        if !self.details.is_empty() {
            error["details"] = json!(self.details);
        }
        for (k, v) in self.extra.into_iter().flat_map(|extra| *extra) {
            error[k.as_str()] = v;
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::conflict(format!("{what} already exists")),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down",
            ),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is unavailable; try again",
                )
            }
            StoreError::Backend(cause) => Self::internal(cause),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound { what, name } => Self::not_found(what, &name),
            ControlError::Conflict { message, field } => {
                let err = Self::conflict(message);
                match field {
                    Some(f) => err.with_field(f),
                    None => err,
                }
            }
            ControlError::Invalid { code, problems } => Self::invalid(code, problems),
            ControlError::Unresolved { code, problems } => {
                let mut err = Self::invalid(code, problems);
                err.status = StatusCode::UNPROCESSABLE_ENTITY;
                err
            }
            ControlError::Store(e) => e.into(),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut err = Self::new(status, e.code(), e.to_string());
        err.field = e.field().map(str::to_owned);
        err
    }
}

/// The JSON form of an ingest error, for per-entry batch results.
pub fn ingest_error_json(e: &IngestError) -> serde_json::Value {
    let mut error = json!({"code": e.code(), "message": e.to_string(), "status": e.status()});
    if let Some(f) = e.field() {
        error["field"] = json!(f);
    }
    error
}
