//! HTTP errors: 4xx carry a message that names the problem; 5xx are generic and the detail goes to the log.

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

    /// What the answer says.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match &err {
            Error::UnknownModel { .. } => Self::not_found(err.to_string()),
            Error::Overloaded { .. }
            | Error::QueueTimeout { .. }
            | Error::GenerationFull { .. }
            | Error::Interrupted(_) => {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON request body whose rejections are [`ApiError`]s (KServe's error shape, 400 instead of 422). Standard
/// clients do not all say it is JSON: the official Triton client sends no `Content-Type` at all. So the body is
/// parsed as JSON when the type is absent, any `application/json` (with parameters such as `charset`), a
/// `+json` type or `application/octet-stream` (the binary tensor extension's type); any other declared type (a
/// browser form's `text/plain` among them) is refused with 415.
pub struct ApiJson<T>(pub T);

/// Refuse (403) a request a browser sent for a page of another site (`Sec-Fetch-Site`): such a page can post a body
/// without `Content-Type` and no preflight, and a node that serves its operator's local callers free would work for
/// any page the operator opens (the node sends no CORS headers, so no such page could read the answer anyway).
pub(crate) fn refuse_cross_site(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site" | "same-site") => Err(ApiError::with_status(
            StatusCode::FORBIDDEN,
            "requests from web pages of other sites are refused (Sec-Fetch-Site)",
        )),
        _ => Ok(()),
    }
}

/// Refuse a cross-site browser request (see [`refuse_cross_site`]), and (415) a request whose `Content-Type` says it is
/// not JSON: none, `application/json` with any parameters,
/// a `+json` type and `application/octet-stream` (the binary tensor extension) are read as JSON.
pub(crate) fn require_json_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    refuse_cross_site(headers)?;
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let essence = value.to_str().unwrap_or("?").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = matches!(essence.as_str(), "" | "application/json" | "application/octet-stream")
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        return Ok(());
    }
    Err(ApiError::with_status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "the body must be JSON (Content-Type application/json, application/octet-stream for binary tensors, or none)",
    ))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_type(req.headers())?;
        let body = read_body(req, state).await?;
        parse_json(&body).map(Self)
    }
}

/// The whole request body (413 beyond the body limit).
pub(crate) async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state).await.map_err(|rej| {
        let status = rej.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the node's limit (see --max-body-bytes)".into()
        } else {
            rej.body_text()
        };
        ApiError { status, message, retry_after_secs: None }
    })
}

/// Parse a JSON request; errors name the field they are about (`inputs[0].shape: ...`), and nothing but whitespace
/// may follow the JSON (a binary-extension request whose length header was lost would leave bytes there). The
/// path-tracking parse runs only to explain a failure: it costs a tenth of a request's CPU on small tensors.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut *de);
    let message = match parsed {
        Err(e) => {
            let path = e.path().to_string();
            match path.as_str() {
                "." => format!("the body is not a valid request: {}", e.into_inner()),
                _ => format!("the body is not a valid request: {path}: {}", e.into_inner()),
            }
        }
        Ok(_) => match de.end() {
            Err(e) => format!(
                "the body has more after its JSON ({e}); a binary-extension request needs Inference-Header-Content-Length"
            ),
            Ok(()) => "the body is not a valid request".into(),
        },
    };
    Err(ApiError::bad_request(message))
}
