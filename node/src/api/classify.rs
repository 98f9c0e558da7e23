//! `POST /v2/models/{name}[/versions/{version}]/classify`: an image in, its most probable classes out.
//!
//! The body is the image itself (JPEG or PNG; `Content-Type` `image/jpeg`, `image/png`, `application/octet-stream`
//! or none), or JSON `{"image": "<base64>", "top_k": 5}`. `?top_k=` works for both (default 5, at most the model's
//! classes). The answer is `{"model_name", "model_version", "model_id", "classes": [{"index", "label", "score"}]}`,
//! with the receipt on a node that charges (one image is one unit of the model's price). The job is the model's
//! inference on the image as sent ([`crate::inference::image`]): the same as a KServe request with one `UINT8`
//! input `image` of shape `[1, n]`, which is also what the receipt's input hash and the audit record hold.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::pay::{self, PeerAddr};
use crate::inference::image::image_tensor;
use crate::payment::{Completed, JobInput, guarded};

/// Classes listed when the request names no `top_k`.
const DEFAULT_TOP_K: usize = 5;

/// `?top_k=`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TopK {
    top_k: Option<usize>,
}

/// The JSON form of the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBody {
    /// The image file, base64 (standard alphabet, padding optional).
    image: String,
    top_k: Option<usize>,
}

pub(crate) async fn classify(
    State(state): State<AppState>,
    peer: PeerAddr,
    Path(name): Path<String>,
    Query(q): Query<TopK>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    run(&state, peer, &headers, &name, None, q, body).await
}

pub(crate) async fn classify_version(
    State(state): State<AppState>,
    peer: PeerAddr,
    Path((name, version)): Path<(String, String)>,
    Query(q): Query<TopK>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = version
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request(format!("model version '{version}' is not a number")))?;
    run(&state, peer, &headers, &name, Some(version), q, body).await
}

/// The image bytes and `top_k` of a request body (raw image or JSON).
fn read_body(headers: &HeaderMap, body: Bytes, query: Option<usize>) -> Result<(Vec<u8>, Option<usize>), ApiError> {
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => {
            use base64::Engine as _;
            let parsed: JsonBody = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("not a classify request ({{\"image\": base64}}): {e}")))?;
            let image = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(parsed.image.trim_end_matches('='))
                .map_err(|e| ApiError::bad_request(format!("image is not base64: {e}")))?;
            Ok((image, query.or(parsed.top_k)))
        }
        "" | "application/octet-stream" | "image/jpeg" | "image/jpg" | "image/png" => Ok((body.to_vec(), query)),
        other => Err(ApiError::with_status(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the image itself (image/jpeg, image/png) or JSON with base64, not {other}"),
        )),
    }
}

async fn run(
    state: &AppState,
    peer: PeerAddr,
    headers: &HeaderMap,
    name: &str,
    version: Option<u64>,
    q: TopK,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config = state.engine.config(name, version)?.clone();
    let classifier = state.engine.classifier(&config.name, Some(config.version)).await?;
    let (image, top_k) = read_body(headers, body, q.top_k)?;
    if image.is_empty() {
        return Err(ApiError::bad_request("the body holds no image"));
    }
    let classes = config.outputs[0].dims.iter().product::<i64>() as usize;
    let top_k = top_k.unwrap_or(DEFAULT_TOP_K);
    if top_k == 0 || top_k > classes {
        return Err(ApiError::bad_request(format!("top_k must be between 1 and {classes} (the model's classes)")));
    }
    let inputs = vec![image_tensor(image)];
    // Checked before payment (its size); one image is one unit.
    let units = config.validate_inputs(&inputs)? as u64;
    let paid = pay::authorize(state, headers, peer.0, &config, units)?;
    let kept = paid.as_ref().map(|_| inputs.clone());
    let work = state.engine.infer(&config.name, Some(config.version), inputs);
    let inference = guarded(paid.as_ref().map(|p| p.service), paid.as_ref().map(|p| &p.auth), work).await?;
    let receipt = match paid {
        Some(p) => {
            let done = Completed {
                config: &config,
                input: JobInput::Tensors(kept.unwrap_or_default()),
                outputs: &inference.outputs,
            };
            Some(p.service.complete(&p.auth, done).await?)
        }
        None => None,
    };
    let probabilities = inference.rows()?.into_iter().next().unwrap_or_default();
    let mut answer = json!({
        "model_name": config.name,
        "model_version": config.version.to_string(),
        "model_id": config.sha256.to_string(),
        "classes": classifier.top_k(&probabilities, top_k),
        "cached": inference.cached,
    });
    Ok(match &receipt {
        Some(r) => {
            answer["receipt"] = pay::receipt_json(r);
            ([pay::receipt_header(r)], Json(answer)).into_response()
        }
        None => Json(answer).into_response(),
    })
}
