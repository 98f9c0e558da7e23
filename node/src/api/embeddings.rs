//! OpenAI-compatible `POST /v1/embeddings` for text-embedding models.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mlbridge_sdk::{Tensor, TensorData};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::pay::{self, PeerAddr};
use crate::payment::{Completed, JobInput, guarded};

/// Request body: `{"model": "minilm-l6", "input": "text" | ["texts"]}`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    /// Model name, optionally `name:version` (e.g. `minilm-l6:1`).
    pub model: String,
    /// One text or several.
    pub input: TextInput,
    /// `float` (default) or `base64` (each vector as the base64 of its little-endian f32 bytes, as OpenAI returns
    /// it and as the official `openai` client asks by default).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Dimensions wanted: the model's own only (these models cannot shorten their vectors); anything else is a 400.
    #[serde(default)]
    pub dimensions: Option<u64>,
    /// Accepted and ignored (OpenAI's end-user id).
    #[serde(default)]
    pub user: Option<String>,
}

/// How vectors are written in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Float,
    Base64,
}

/// A vector as OpenAI's `base64` encoding writes it: little-endian f32 bytes, standard base64.
fn base64_vector(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
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
    peer: PeerAddr,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let encoding = match req.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be \"float\" or \"base64\", not \"{other}\""
            )));
        }
    };
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
    let config = state.engine.config(name, version)?.clone();
    // Checked for embedding models with a fixed size (any other model is refused below for what it is).
    let fixed = config.outputs.first().filter(|o| o.dims.iter().all(|&d| d > 0));
    if let (Some(wanted), Some(out), crate::inference::Task::TextEmbedding) = (req.dimensions, fixed, config.task) {
        let dims = out.dims.iter().product::<i64>() as u64;
        if wanted != dims {
            return Err(ApiError::bad_request(format!(
                "model {} returns {dims}-dimensional embeddings and cannot shorten them; omit dimensions or ask for {dims}",
                config.key()
            )));
        }
    }
    // Checked before payment: the price is per text, and a request over the limits must cost nothing.
    state.engine.check_texts(&texts)?;
    let paid = pay::authorize(&state, &headers, peer.0, &config, texts.len() as u64)?;
    // Everything that can fail runs inside `guarded`, so a failure releases the job's price.
    let work = async {
        let out = state.engine.embed(name, Some(config.version), &texts).await?;
        let dim = out.vectors.first().map_or(0, Vec::len);
        let flat: Vec<f32> = out.vectors.iter().flatten().copied().collect();
        let tensor = Tensor::new("embedding", vec![texts.len() as i64, dim as i64], TensorData::Fp32(flat))
            .map_err(crate::Error::Sdk)?;
        Ok((out, tensor))
    };
    let (out, tensor) = guarded(paid.as_ref().map(|p| p.service), paid.as_ref().map(|p| &p.auth), work).await?;
    let receipt = match paid {
        Some(p) => {
            let outputs = [tensor];
            let done = Completed { config: &config, input: JobInput::Texts(texts.clone()), outputs: &outputs };
            Some(p.service.complete(&p.auth, done).await?)
        }
        None => None,
    };
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| match encoding {
            Encoding::Float => json!({ "object": "embedding", "index": i, "embedding": v }),
            Encoding::Base64 => json!({ "object": "embedding", "index": i, "embedding": base64_vector(&v) }),
        })
        .collect();
    let mut body = json!({
        "object": "list",
        "data": data,
        "model": out.model,
        "usage": { "prompt_tokens": out.tokens, "total_tokens": out.tokens },
    });
    Ok(match &receipt {
        Some(r) => {
            body["receipt"] = pay::receipt_json(r);
            ([pay::receipt_header(r)], Json(body)).into_response()
        }
        None => Json(body).into_response(),
    })
}
