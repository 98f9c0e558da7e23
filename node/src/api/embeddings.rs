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

/// Request body: `{"model": "minilm-l6", "input": "text" | ["texts"] | [token ids] | [[token ids]]}`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    /// Model name, optionally `name:version` (e.g. `minilm-l6:1`).
    pub model: String,
    /// One text or several, or token ids (one sequence or several) from the model's own vocabulary.
    pub input: EmbeddingInput,
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

/// What OpenAI's `input` may hold.
#[derive(Debug)]
pub enum EmbeddingInput {
    /// A single text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// One sequence of token ids: the model's own vocabulary, special tokens included (`[CLS] ... [SEP]` for the
    /// BERT-style encoders), as its tokenizer gives them.
    Ids(Vec<u32>),
    /// Several sequences of token ids.
    ManyIds(Vec<Vec<u32>>),
}

/// Most entries `input` may list (the node's own per-request limits are far lower; this bounds what parsing a
/// hostile body can allocate before they are checked).
const MAX_INPUT_ENTRIES: usize = 65_536;

/// Read as it streams: the first entry decides the kind, the rest must be of that kind (serde's untagged enums
/// would first copy the whole body into a tree of values).
impl<'de> Deserialize<'de> for EmbeddingInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};

        #[derive(Deserialize)]
        #[serde(untagged)]
        enum First {
            Text(String),
            Id(u32),
            Ids(Vec<u32>),
        }

        fn rest<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(first: T, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut all = vec![first];
            while let Some(next) = seq.next_element()? {
                if all.len() == MAX_INPUT_ENTRIES {
                    return Err(A::Error::custom(format!("input lists more than {MAX_INPUT_ENTRIES} entries")));
                }
                all.push(next);
            }
            Ok(all)
        }

        struct Input;
        impl<'de> Visitor<'de> for Input {
            type Value = EmbeddingInput;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a text, a list of texts, a list of token ids or a list of lists of token ids")
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EmbeddingInput::One(v.to_owned()))
            }

            fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(EmbeddingInput::One(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                Ok(match seq.next_element::<First>()? {
                    None => EmbeddingInput::Many(Vec::new()),
                    Some(First::Text(t)) => EmbeddingInput::Many(rest(t, seq)?),
                    Some(First::Id(i)) => EmbeddingInput::Ids(rest(i, seq)?),
                    Some(First::Ids(ids)) => EmbeddingInput::ManyIds(rest(ids, seq)?),
                })
            }
        }
        d.deserialize_any(Input)
    }
}

/// The vectors of a job and what its receipt records as its input and output.
struct Embedded {
    model: String,
    vectors: Vec<Vec<f32>>,
    tokens: usize,
    input: JobInput,
    outputs: Vec<Tensor>,
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
    let (texts, ids) = match req.input {
        EmbeddingInput::One(t) => (vec![t], None),
        EmbeddingInput::Many(ts) => (ts, None),
        EmbeddingInput::Ids(seq) => (Vec::new(), Some(vec![seq])),
        EmbeddingInput::ManyIds(seqs) => (Vec::new(), Some(seqs)),
    };
    // Checked before payment: the price is per text (or sequence), and a request over the limits must cost nothing.
    let ids = match ids {
        None if texts.is_empty() || texts.iter().any(String::is_empty) => {
            return Err(ApiError::bad_request("input must hold at least one non-empty text"));
        }
        None => {
            state.engine.check_texts(&texts)?;
            None
        }
        Some(seqs) => {
            let (inputs, tokens) = state.engine.encode_ids(name, Some(config.version), &seqs).await?;
            // The model's own checks (its token-id range, its longest input), still before payment.
            config.validate_inputs(&inputs)?;
            Some((inputs, tokens, seqs.len()))
        }
    };
    let units = ids.as_ref().map_or(texts.len(), |(_, _, n)| *n) as u64;
    let paid = pay::authorize(&state, &headers, peer.0, &config, units)?;
    // Everything that can fail runs inside `guarded`, so a failure releases the job's price.
    let work = async {
        match ids {
            // Token ids run as one inference of the model: the record is its inputs and outputs (what a validator
            // re-executes), the vectors its first output's rows.
            Some((inputs, tokens, _)) => {
                let out = state.engine.infer(name, Some(config.version), inputs.clone()).await?;
                let vectors = out.rows()?;
                let outputs = out.outputs.as_ref().clone();
                Ok(Embedded { model: out.model, vectors, tokens, input: JobInput::Tensors(inputs), outputs })
            }
            None => {
                let out = state.engine.embed(name, Some(config.version), &texts).await?;
                let dim = out.vectors.first().map_or(0, Vec::len);
                let flat: Vec<f32> = out.vectors.iter().flatten().copied().collect();
                let tensor = Tensor::new("embedding", vec![texts.len() as i64, dim as i64], TensorData::Fp32(flat))
                    .map_err(crate::Error::Sdk)?;
                let (model, vectors, tokens) = (out.model, out.vectors, out.tokens);
                Ok(Embedded { model, vectors, tokens, input: JobInput::Texts(texts.clone()), outputs: vec![tensor] })
            }
        }
    };
    let out = guarded(paid.as_ref().map(|p| p.service), paid.as_ref().map(|p| &p.auth), work).await?;
    let receipt = match paid {
        Some(p) => {
            let done = Completed { config: &config, input: out.input, outputs: &out.outputs };
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
