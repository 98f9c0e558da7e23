//! The KServe Open Inference Protocol v2 (REST/JSON), as Triton, KServe and Seldon speak it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mlbridge_sdk::{DataType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::binary::{self, InferBody};
use super::error::ApiError;
use super::jsondata::JsonData;
use super::pay::{self, PeerAddr};
use crate::inference::ModelConfig;
use crate::payment::{Completed, JobInput, guarded};

/// `POST .../infer` body.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters (accepted; none are needed).
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<InputTensor>,
    /// Outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor in JSON.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    /// Name.
    pub name: String,
    /// Shape, batch dimension first.
    pub shape: Vec<i64>,
    /// KServe datatype name.
    pub datatype: String,
    /// Tensor parameters (`binary_data_size`: the data is in the binary section after the JSON).
    #[serde(default)]
    pub parameters: Option<Value>,
    /// Row-major data, flat or nested (a flat numeric array is read straight into a typed vector); absent when the
    /// data is binary.
    #[serde(default)]
    pub data: Option<JsonData>,
}

/// A requested output.
#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Output parameters (`binary_data`: answer this output as binary).
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `POST .../infer` answer.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    parameters: serde_json::Map<String, Value>,
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
struct OutputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: DataType,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

#[derive(Debug, Serialize)]
struct TensorMetadata {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
}

pub(crate) async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "live": true }))
}

pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    Json(serde_json::json!({ "ready": true, "models": state.engine.configs().count() }))
}

pub(crate) async fn server_metadata() -> impl IntoResponse {
    Json(serde_json::json!({
        "name": "mlbridge-node",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository", "binary_tensor_data", "embeddings"],
    }))
}

fn parse_version(v: &str) -> Result<u64, ApiError> {
    v.parse().map_err(|_| ApiError::bad_request(format!("model version '{v}' is not a number")))
}

fn metadata(state: &AppState, config: &ModelConfig) -> Value {
    let specs = |s: &[crate::inference::TensorSpec]| -> Vec<TensorMetadata> {
        s.iter()
            .map(|t| TensorMetadata { name: t.name.clone(), datatype: t.datatype, shape: t.shape_with_batch() })
            .collect()
    };
    serde_json::json!({
        "name": config.name,
        "versions": state.engine.versions(&config.name).iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": specs(&config.inputs),
        "outputs": specs(&config.outputs),
        "parameters": {
            "version": config.version.to_string(),
            "model_id": config.sha256.to_string(),
            "precision": config.precision,
            "task": format!("{:?}", config.task),
            "max_batch_size": config.max_batch_size,
            "price_wei": config.price_wei.to_string(),
            "description": config.description,
        }
    })
}

pub(crate) async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let config = state.engine.config(&name, None)?;
    Ok(Json(metadata(&state, config)))
}

pub(crate) async fn model_version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let config = state.engine.config(&name, Some(parse_version(&version)?))?;
    Ok(Json(metadata(&state, config)))
}

fn readiness(state: &AppState, name: &str, version: Option<u64>) -> Result<impl IntoResponse + use<>, ApiError> {
    let config = state.engine.config(name, version)?;
    let ready = state.engine.is_ready(name, Some(config.version));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((
        status,
        Json(serde_json::json!({ "name": config.name, "version": config.version.to_string(), "ready": ready })),
    ))
}

pub(crate) async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    readiness(&state, &name, None)
}

pub(crate) async fn model_version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    readiness(&state, &name, Some(parse_version(&version)?))
}

pub(crate) async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    peer: PeerAddr,
    headers: HeaderMap,
    body: InferBody<InferRequest>,
) -> Result<Response, ApiError> {
    run_infer(&state, &name, None, body, peer, &headers).await
}

pub(crate) async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    peer: PeerAddr,
    headers: HeaderMap,
    body: InferBody<InferRequest>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    run_infer(&state, &name, Some(version), body, peer, &headers).await
}

async fn run_infer(
    state: &AppState,
    name: &str,
    version: Option<u64>,
    body: InferBody<InferRequest>,
    peer: PeerAddr,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let InferBody { header: req, binary } = body;
    let config = state.engine.config(name, version)?;
    if req.inputs.is_empty() {
        return Err(ApiError::bad_request("the request has no inputs"));
    }
    // Binary answers: for every output when the request asks (`binary_data_output`), else per requested output.
    let all_binary = req.parameters.as_ref().and_then(|p| p.get("binary_data_output")).and_then(Value::as_bool);
    // An empty list asks for nothing in particular: every output, as when it is absent.
    let requested = req.outputs.filter(|o| !o.is_empty());
    if let Some(outputs) = &requested {
        for r in outputs {
            let params = r.parameters.as_ref().and_then(Value::as_object);
            if let Some(other) = params.and_then(|p| p.keys().find(|k| k.as_str() != "binary_data")) {
                return Err(ApiError::bad_request(format!(
                    "output '{}': parameter '{other}' is not supported (classification and shared memory are not                      offered; binary_data is)",
                    r.name
                )));
            }
        }
    }
    let wanted: Option<Vec<(String, bool)>> = requested.map(|o| {
        o.into_iter()
            .map(|r| {
                let binary = r.parameters.as_ref().and_then(|p| p.get("binary_data")).and_then(Value::as_bool);
                (r.name, binary.or(all_binary).unwrap_or(false))
            })
            .collect()
    });
    if let Some(names) = &wanted {
        for (n, _) in names {
            if !config.outputs.iter().any(|o| &o.name == n) {
                return Err(ApiError::bad_request(format!("model {} has no output named '{n}'", config.key())));
            }
        }
    }
    let mut offset = 0;
    let inputs = req
        .inputs
        .into_iter()
        .map(|input| to_tensor_from(input, &binary, &mut offset))
        .collect::<Result<Vec<_>, _>>()?;
    if offset != binary.len() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the JSON but the inputs' binary_data_size add up to {offset}",
            binary.len()
        )));
    }
    // Checked before payment: the price is per sample, and a bad request must cost nothing.
    let units = config.validate_inputs(&inputs)? as u64;
    let paid = pay::authorize(state, headers, peer.0, config, units)?;
    let kept = paid.as_ref().map(|_| inputs.clone());
    let work = state.engine.infer(&config.name, Some(config.version), inputs);
    let inference = guarded(paid.as_ref().map(|p| p.service), paid.as_ref().map(|p| &p.auth), work).await?;
    let receipt = match paid {
        Some(p) => {
            let done =
                Completed { config, input: JobInput::Tensors(kept.unwrap_or_default()), outputs: &inference.outputs };
            Some(p.service.complete(&p.auth, done).await?)
        }
        None => None,
    };
    let mut binary_out = Vec::new();
    let outputs = inference
        .outputs
        .iter()
        .filter_map(|t| {
            let as_binary = match &wanted {
                Some(w) => w.iter().find(|(n, _)| n == t.name())?.1,
                None => all_binary.unwrap_or(false),
            };
            let (parameters, data) = if as_binary {
                let start = binary_out.len();
                t.data().write_le(&mut binary_out);
                (Some(serde_json::json!({ "binary_data_size": binary_out.len() - start })), None)
            } else {
                (None, Some(data_json(t.data())))
            };
            Some(OutputTensor {
                name: t.name().to_owned(),
                shape: t.shape().to_vec(),
                datatype: t.datatype(),
                parameters,
                data,
            })
        })
        .collect();
    let mut parameters = serde_json::Map::new();
    parameters.insert("cached".into(), Value::Bool(inference.cached));
    parameters.insert("model_id".into(), Value::String(config.sha256.to_string()));
    if let Some(r) = &receipt {
        parameters.insert("receipt".into(), pay::receipt_json(r));
    }
    let answer = InferResponse {
        model_name: config.name.clone(),
        model_version: inference.version.to_string(),
        id: req.id,
        parameters,
        outputs,
    };
    let body = if binary_out.is_empty() {
        Json(answer).into_response()
    } else {
        let json = serde_json::to_vec(&answer)
            .map_err(|e| ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        binary::response(json, binary_out)
    };
    Ok(match &receipt {
        Some(r) => ([pay::receipt_header(r)], body).into_response(),
        None => body,
    })
}

/// An input tensor to a typed one, its data from JSON or (`binary_data_size`) from the binary section at `*offset`.
fn to_tensor_from(input: InputTensor, binary: &[u8], offset: &mut usize) -> Result<Tensor, ApiError> {
    let Some(size) = binary::binary_size(input.parameters.as_ref(), &input.name)? else { return to_tensor(input) };
    if input.data.is_some() {
        return Err(ApiError::bad_request(format!(
            "input '{}': give its data either in JSON or as binary_data_size, not both",
            input.name
        )));
    }
    let datatype = parse_datatype(&input)?;
    let data = binary::take(binary, offset, size, datatype, &input.name)?;
    Tensor::new(input.name, input.shape, data).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn parse_datatype(input: &InputTensor) -> Result<DataType, ApiError> {
    input.datatype.parse().map_err(|_| {
        ApiError::bad_request(format!("input '{}': datatype '{}' is not supported", input.name, input.datatype))
    })
}

/// A JSON input tensor to a typed one: datatype known, every element of the right kind, count matching the shape.
pub(crate) fn to_tensor(input: InputTensor) -> Result<Tensor, ApiError> {
    let datatype = parse_datatype(&input)?;
    let Some(data) = input.data else {
        return Err(ApiError::bad_request(format!(
            "input '{}' has no data (and no binary_data_size parameter)",
            input.name
        )));
    };
    // Fast path: a flat array of numbers, read in the request's one parse, to the datatype's vector.
    let fast = match (datatype, data) {
        (DataType::Fp32, JsonData::Floats(v)) => Ok(TensorData::Fp32(v.into_iter().map(|x| x as f32).collect())),
        (DataType::Fp32, JsonData::Ints(v)) => Ok(TensorData::Fp32(v.into_iter().map(|x| x as f32).collect())),
        (DataType::Fp64, JsonData::Floats(v)) => Ok(TensorData::Fp64(v)),
        (DataType::Fp64, JsonData::Ints(v)) => Ok(TensorData::Fp64(v.into_iter().map(|x| x as f64).collect())),
        (DataType::Int64, JsonData::Ints(v)) => Ok(TensorData::Int64(v)),
        (DataType::Int32, JsonData::Ints(v)) => match v.iter().map(|&x| i32::try_from(x)).collect() {
            Ok(narrow) => Ok(TensorData::Int32(narrow)),
            Err(_) => Err(JsonData::Ints(v)),
        },
        (_, other) => Err(other),
    };
    let data = match fast {
        Ok(data) => {
            return Tensor::new(input.name, input.shape, data).map_err(|e| ApiError::bad_request(e.to_string()));
        }
        Err(other) => other,
    };
    // General path: nested arrays, other datatypes, and precise messages for bad elements.
    let value = data.into_value();
    let mut flat = Vec::new();
    flatten(&value, &mut flat);
    let name = input.name.clone();
    let bad = |i: usize, what: &str| ApiError::bad_request(format!("input '{name}': element {i} is not {what}"));
    let ints = |lo: i64, hi: i64, what: &str| -> Result<Vec<i64>, ApiError> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| v.as_i64().filter(|x| (lo..=hi).contains(x)).ok_or_else(|| bad(i, what)))
            .collect()
    };
    let data = match datatype {
        DataType::Bool => TensorData::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, "a boolean")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => TensorData::Uint8(ints(0, 255, "a UINT8")?.into_iter().map(|x| x as u8).collect()),
        DataType::Int8 => TensorData::Int8(ints(-128, 127, "an INT8")?.into_iter().map(|x| x as i8).collect()),
        DataType::Int32 => TensorData::Int32(
            ints(i32::MIN.into(), i32::MAX.into(), "an INT32")?.into_iter().map(|x| x as i32).collect(),
        ),
        DataType::Int64 => TensorData::Int64(ints(i64::MIN, i64::MAX, "an INT64")?),
        DataType::Fp32 => TensorData::Fp32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().map(|x| x as f32).ok_or_else(|| bad(i, "a number")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Fp64 => TensorData::Fp64(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, "a number")))
                .collect::<Result<_, _>>()?,
        ),
    };
    Tensor::new(input.name, input.shape, data).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn data_json(data: &TensorData) -> Value {
    match data {
        TensorData::Bool(v) => serde_json::json!(v),
        TensorData::Uint8(v) => serde_json::json!(v),
        TensorData::Int8(v) => serde_json::json!(v),
        TensorData::Int32(v) => serde_json::json!(v),
        TensorData::Int64(v) => serde_json::json!(v),
        TensorData::Fp32(v) => serde_json::json!(v),
        TensorData::Fp64(v) => serde_json::json!(v),
    }
}
