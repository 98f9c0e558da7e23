//! OpenAI-compatible `GET /v1/models` and `GET /v1/models/{id}`: what the node serves, in the shape the `openai`
//! clients read. Ids are `name` (the latest version) and `name:version`, as `/v1/embeddings` accepts them.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::inference::ModelConfig;

/// When this node started serving (unix seconds): OpenAI's `created` for every model it serves.
pub(crate) fn started_unix() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED
        .get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn model_object(id: String, config: &ModelConfig) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": started_unix(),
        "owned_by": "mlbridge",
        "task": config.task,
        "version": config.version,
    })
}

/// `GET /v1/models`: every model (tensor, embedding and text-generation) by name (its latest version) and by
/// `name:version`.
pub(crate) async fn list(State(state): State<AppState>) -> Json<Value> {
    let mut data = Vec::new();
    let all: Vec<&ModelConfig> = state.engine.configs().chain(state.engine.generation_configs()).collect();
    for (i, config) in all.iter().enumerate() {
        // Configs come by name then version: the last of a name is its latest.
        if all.get(i + 1).is_none_or(|next| next.name != config.name) {
            data.push(model_object(config.name.clone(), config));
        }
    }
    for config in &all {
        data.push(model_object(format!("{}:{}", config.name, config.version), config));
    }
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{id}`.
pub(crate) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (name, version) = match id.split_once(':') {
        Some((n, v)) => (
            n,
            Some(v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("model version '{v}' is not a number")))?),
        ),
        None => (id.as_str(), None),
    };
    let config = match state.engine.config(name, version) {
        Ok(c) => c,
        Err(_) => state
            .engine
            .generation_configs()
            .filter(|c| c.name == name && version.is_none_or(|v| v == c.version))
            .last()
            .ok_or_else(|| ApiError::from(crate::Error::UnknownModel { name: name.to_owned(), version }))?,
    };
    Ok(Json(model_object(id.clone(), config)))
}
