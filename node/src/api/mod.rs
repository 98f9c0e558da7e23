//! HTTP API: the KServe v2 REST protocol, OpenAI-compatible embeddings, and `/metrics` on its own router.
//!
//! [`router`] builds the app from an [`AppState`] (tests drive it with `tower::ServiceExt::oneshot`); serving it on
//! a socket is the caller's business (see `crate::server`).

pub mod admin;
pub mod embeddings;
pub mod error;
pub mod kserve;
pub mod pay;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};

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
}

/// The public API router with a request body limit of `max_body_bytes`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
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
        .route("/v1/embeddings", post(embeddings::embeddings))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v2 for the KServe v2 API") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The metrics router (`GET /metrics`), served on its own port, with the operator's admin endpoints
/// (`GET /admin/status`, `POST /admin/redeem`): keep that port private.
pub fn metrics_router(metrics: NodeMetrics, state: AppState) -> Router {
    Router::new().route("/metrics", get(render)).with_state(metrics).merge(admin::router(state))
}

async fn render(State(metrics): State<NodeMetrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
}
