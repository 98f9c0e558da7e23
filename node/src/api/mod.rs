//! HTTP API: the KServe v2 REST protocol, image classification (an image in, its top classes out),
//! OpenAI-compatible embeddings and text generation (completions and chat, streamed or not), and `/metrics` on its
//! own router.
//!
//! [`router`] builds the app from an [`AppState`] (tests drive it with `tower::ServiceExt::oneshot`); serving it on
//! a socket is the caller's business (see `crate::server`).

pub mod admin;
pub mod binary;
pub mod classify;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod jsondata;
pub mod kserve;
pub mod models;
pub mod pay;

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower::ServiceBuilder;

use crate::inference::Engine;
use crate::metrics::NodeMetrics;

pub use error::ApiError;

/// What handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The inference engine.
    pub engine: Engine,
    /// Payments, in paid mode.
    pub payments: Option<std::sync::Arc<crate::payment::PaymentService>>,
    /// Bearer token of the admin endpoints (paid mode; written to a file only the operator can read).
    pub admin_token: Option<std::sync::Arc<str>>,
    /// The request timeout (set by [`router`] from its limits): a whole (non-stream) generated answer is cut and
    /// sent with what it has before it, counted from the request's arrival ([`Arrived`]).
    pub request_timeout: Option<Duration>,
}

/// When a request arrived (its head read, its body not yet): stamped by [`router`] where its timeout starts.
#[derive(Clone, Copy, Debug)]
pub struct Arrived(pub tokio::time::Instant);

async fn stamp(mut req: axum::extract::Request) -> axum::extract::Request {
    req.extensions_mut().insert(Arrived(tokio::time::Instant::now()));
    req
}

/// Limits of the public API.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Longest a request may take, body upload included.
    pub request_timeout: Duration,
    /// Requests served at once; more are refused with 503 at once.
    pub max_concurrent: usize,
}

impl Limits {
    /// The limits of an `[http]` config section.
    pub fn of(c: &crate::config::HttpConfig) -> Self {
        Self {
            max_body_bytes: c.max_body_bytes,
            request_timeout: Duration::from_secs_f64(c.request_timeout_secs.max(0.001)),
            max_concurrent: c.max_concurrent_requests.max(1),
        }
    }
}

/// The public API router: body limit, a timeout per request (408) and a bound on requests in service (503 beyond).
pub fn router(mut state: AppState, limits: Limits) -> Router {
    state.request_timeout.get_or_insert(limits.request_timeout);
    models::started_unix();
    Router::new()
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .route("/v2/models/{name}/versions/{version}", get(kserve::model_version_metadata))
        .route("/v2/models/{name}/versions/{version}/ready", get(kserve::model_version_ready))
        .route("/v2/models/{name}/versions/{version}/infer", post(kserve::infer_version))
        .route("/v2/models/{name}/classify", post(classify::classify))
        .route("/v2/models/{name}/versions/{version}/classify", post(classify::classify_version))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v2 for the KServe v2 API") })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // Inside the timeout: the stamp is taken when the timeout starts.
        .layer(axum::middleware::map_request(stamp))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |e: tower::BoxError| async move { layer_error(&e, limits) }))
                .load_shed()
                .concurrency_limit(limits.max_concurrent)
                .timeout(limits.request_timeout),
        )
        .with_state(state)
}

fn layer_error(e: &tower::BoxError, limits: Limits) -> ApiError {
    if e.is::<tower::timeout::error::Elapsed>() {
        let secs = limits.request_timeout.as_secs_f64();
        return ApiError::with_status(StatusCode::REQUEST_TIMEOUT, format!("the request took longer than {secs} s"));
    }
    if e.is::<tower::load_shed::error::Overloaded>() {
        return ApiError::overloaded(format!("{} requests are in service; retry shortly", limits.max_concurrent));
    }
    ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, "internal error; the node's log has the details")
}

/// The metrics router (`GET /metrics`), served on its own port, with the operator's admin endpoints
/// (`GET /admin/status`, `POST /admin/redeem`): keep that port private.
pub fn metrics_router(metrics: NodeMetrics, state: AppState) -> Router {
    Router::new().route("/metrics", get(render)).with_state(metrics).merge(admin::router(state))
}

async fn render(State(metrics): State<NodeMetrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}
