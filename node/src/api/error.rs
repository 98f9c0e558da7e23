//! HTTP errors: 4xx carry a message that names the problem; 5xx are generic and the detail goes to the log.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::inference::engine::is_client_error;

/// An error answer, as KServe v2 shapes it: `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), retry_after_secs: None }
    }

    /// An error with any status.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after_secs: None }
    }

    /// A 503 with `Retry-After: 1` (the node is busy; try again or elsewhere).
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), retry_after_secs: Some(1) }
    }

    /// A 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into(), retry_after_secs: None }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match &err {
            Error::UnknownModel { .. } => Self::not_found(err.to_string()),
            Error::Overloaded { .. } | Error::QueueTimeout { .. } => {
                Self { status: StatusCode::SERVICE_UNAVAILABLE, message: err.to_string(), retry_after_secs: Some(1) }
            }
            e if is_client_error(e) => Self::bad_request(err.to_string()),
            _ => {
                tracing::error!(target: "node::api", %err, "request failed");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "internal error; the node's log has the details".into(),
                    retry_after_secs: None,
                }
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rej: JsonRejection) -> Self {
        let status = match rej.status() {
            // Well-formed JSON of the wrong structure: still the client's request that is bad.
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "request body is larger than the node's limit (see --max-body-bytes)".into()
            }
            _ => rej.body_text(),
        };
        Self { status, message, retry_after_secs: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s (KServe's error shape, 400 instead of 422).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state).await.map(|axum::Json(v)| Self(v)).map_err(ApiError::from)
    }
}
