//! OpenAI-compatible `POST /v1/embeddings` for text-embedding models.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson};

/// Request body: `{"model": "minilm-l6", "input": "text" | ["texts"]}`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    /// Model name, optionally `name:version` (e.g. `minilm-l6:1`).
    pub model: String,
    /// One text or several.
    pub input: TextInput,
    /// Only `float` is supported.
    #[serde(default)]
    pub encoding_format: Option<String>,
}

/// One text or a list of texts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TextInput {
    /// A single text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
}

pub(crate) async fn embeddings(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    if req.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError::bad_request("encoding_format must be \"float\""));
    }
    let (name, version) = match req.model.split_once(':') {
        Some((n, v)) => (
            n,
            Some(v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("model version '{v}' is not a number")))?),
        ),
        None => (req.model.as_str(), None),
    };
    let texts = match req.input {
        TextInput::One(t) => vec![t],
        TextInput::Many(ts) => ts,
    };
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("input must hold at least one non-empty text"));
    }
    let out = state.engine.embed(name, version, &texts).await?;
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": out.model,
        "usage": { "prompt_tokens": out.tokens, "total_tokens": out.tokens },
    })))
}
