//! OpenAI-compatible text generation: `POST /v1/completions` and `POST /v1/chat/completions`, whole answers or a
//! server-sent event stream (`stream: true`; the last chunk carries `usage`, then `data: [DONE]`), for the
//! text-generation models of the repository. The official `openai` clients work with only `base_url` set.
//!
//! Parameters: `max_tokens` (or `max_completion_tokens`), `temperature` (OpenAI's default 1; 0 is greedy), `top_p`,
//! `top_k` (an extension), `seed` (the node picks one when it is absent and returns it, so every answer can be
//! reproduced), `stop` (a string or up to 4), `stream`, `stream_options.include_usage`. `n > 1`, `echo`, `logprobs`
//! and penalties other than 0 are refused with a 400 rather than ignored. A client that goes away (a closed stream,
//! a dropped connection) cancels its sequence at the next decoding step.
//!
//! On a node that charges, a caller off its free list pays per token with the voucher headers of [`super::pay`]:
//! the generation's most cost is held, and it is charged for the tokens produced (a client that goes away pays for
//! what was produced until then). The answer carries the receipt: in the `X-MLBridge-Receipt` header and a `receipt`
//! field of a whole answer, in the last chunk (the one with `usage`) of a stream. Paid generations use versions that
//! validators can check (`[generation] verifiable`).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::{ApiError, ApiJson};
use super::pay::{PeerAddr, receipt_header, receipt_json};
use super::{AppState, Arrived};
use crate::generate::{Completion, GenerateRequest, Generator, Message, Sampling};
use crate::payment::generation::{Charge, Metered, Metering, meter};
use mlbridge_sdk::generate::{chat_token_bound, text_token_bound};
use mlbridge_sdk::protocol::ReceiptMsg;

/// A string or a list of strings (`stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `/v1/completions`'s `prompt`: a text, a list holding one text, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What both endpoints take besides the prompt or messages.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    best_of: Option<u32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: Prompt,
    #[serde(flatten)]
    common: Common,
}

/// A chat message's content: a text, or a list of parts of which only text parts are taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

/// Which endpoint: it decides the object names and the shape of a choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Chat,
}

/// The model version this request gets: a paying caller of a node that charges gets only versions validators can
/// check (the newest of them when it names none); a free caller gets what it asks for.
fn version_for(
    state: &AppState,
    headers: &HeaderMap,
    peer: PeerAddr,
    name: &str,
    asked: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    if super::pay::pays(state, headers, peer.0)? {
        return Ok(crate::payment::generation::sold_version(&state.engine, name, asked)?);
    }
    Ok(asked)
}

/// Refuse a request whose payment cannot pay (see [`super::pay::require_payment`]) before its prompt is tokenized:
/// the most it can cost is bounded by `prompt_bound` tokens (bytes plus template) and its `max_tokens` (or the
/// model's default) at the model's prices; the least is one prompt token and the output tokens it asks for.
fn require_payment(
    state: &AppState,
    headers: &HeaderMap,
    peer: PeerAddr,
    generator: &Generator,
    prompt_bound: u64,
    c: &Common,
) -> Result<(), ApiError> {
    let g = generator.generation();
    let asked = c.max_completion_tokens.or(c.max_tokens);
    let prices = g.prices();
    let most = prices.cost(prompt_bound, asked.unwrap_or(g.default_max_tokens as u64));
    super::pay::require_payment(state, headers, peer.0, most, prices.cost(1, asked.unwrap_or(1)))
}

fn model_name(model: &str) -> Result<(&str, Option<u64>), ApiError> {
    match model.split_once(':') {
        Some((n, v)) => {
            let v =
                v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("model version '{v}' is not a number")))?;
            Ok((n, Some(v)))
        }
        None => Ok((model, None)),
    }
}

/// Check what this node does not do, then the sampling parameters and stop strings.
fn parameters(c: &Common) -> Result<(Sampling, Vec<String>, Option<usize>), ApiError> {
    if c.n.is_some_and(|n| n != 1) || c.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n and best_of must be 1: one choice per request"));
    }
    if c.echo == Some(true) {
        return Err(ApiError::bad_request("echo is not supported"));
    }
    if c.logprobs.as_ref().is_some_and(|v| !v.is_null() && *v != Value::Bool(false)) {
        return Err(ApiError::bad_request("logprobs are not supported"));
    }
    if c.presence_penalty.is_some_and(|p| p != 0.0) || c.frequency_penalty.is_some_and(|p| p != 0.0) {
        return Err(ApiError::bad_request("presence_penalty and frequency_penalty must be 0 (not supported)"));
    }
    let stop = match &c.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(v)) => v.clone(),
    };
    Generator::check_stops(&stop)?;
    let sampling = Sampling {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0),
        top_p: c.top_p.unwrap_or(1.0),
        seed: c.seed.unwrap_or_else(rand::random),
    };
    sampling.check()?;
    let max = c.max_completion_tokens.or(c.max_tokens).map(|m| usize::try_from(m).unwrap_or(usize::MAX));
    Ok((sampling, stop, max))
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    peer: PeerAddr,
    arrived: Option<Extension<Arrived>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let asked = Asked::new(Kind::Text, arrived, &state);
    let (name, version) = model_name(&req.common.model)?;
    let version = version_for(&state, &headers, peer, name, version)?;
    let generator = state.engine.generator(name, version).await?;
    let bytes = match &req.prompt {
        Prompt::Text(t) => text_token_bound(t.len()),
        Prompt::Texts(v) => text_token_bound(v.iter().map(String::len).sum()),
        Prompt::Ids(ids) => ids.len() as u64,
    };
    require_payment(&state, &headers, peer, &generator, bytes, &req.common)?;
    let prompt = match req.prompt {
        Prompt::Text(t) => generator.prompt_tokens(crate::generate::Prompt::Text(t)).await?,
        Prompt::Texts(mut v) if v.len() == 1 => {
            generator.prompt_tokens(crate::generate::Prompt::Text(v.remove(0))).await?
        }
        Prompt::Texts(_) => return Err(ApiError::bad_request("prompt must be one text (one choice per request)")),
        Prompt::Ids(ids) => ids,
    };
    run(&state, &headers, peer, generator, prompt, &req.common, asked).await
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    peer: PeerAddr,
    arrived: Option<Extension<Arrived>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let asked = Asked::new(Kind::Chat, arrived, &state);
    let (name, version) = model_name(&req.common.model)?;
    let version = version_for(&state, &headers, peer, name, version)?;
    let generator = state.engine.generator(name, version).await?;
    let bytes = chat_token_bound(req.messages.iter().map(|m| {
        m.role.len()
            + match &m.content {
                None => 0,
                Some(Content::Text(t)) => t.len(),
                Some(Content::Parts(parts)) => parts.iter().map(|p| p.text.as_ref().map_or(0, String::len)).sum(),
            }
    }));
    require_payment(&state, &headers, peer, &generator, bytes, &req.common)?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must hold at least one message"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant") {
            return Err(ApiError::bad_request(format!(
                "message role '{}' is not supported (system, developer, user, assistant)",
                m.role
            )));
        }
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content parts of type '{kind}' are not supported"
                            )));
                        }
                    }
                }
                text
            }
        };
        let role = if m.role == "developer" { "system".to_owned() } else { m.role };
        messages.push(Message { role, content });
    }
    let prompt = generator.prompt_tokens(crate::generate::Prompt::Chat(messages)).await?;
    run(&state, &headers, peer, generator, prompt, &req.common, asked).await
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.output.len(),
        "total_tokens": c.prompt_tokens + c.output.len(),
    })
}

/// Everything a response's objects share.
struct Head {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    seed: u64,
    fingerprint: String,
}

impl Head {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn base(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "seed": self.seed,
            "choices": choices,
        })
    }

    /// A streamed piece of text (or, for chat, the opening role delta when `text` is `None`).
    fn delta(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Text => json!({ "index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null }),
            Kind::Chat => {
                let delta = match (text, finish) {
                    (None, None) => json!({ "role": "assistant", "content": "" }),
                    (Some(t), _) => json!({ "content": t }),
                    (None, Some(_)) => json!({}),
                };
                json!({ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null })
            }
        };
        self.base(true, json!([choice]))
    }
}

/// Which endpoint was asked, and when the request arrived (a whole answer is cut before the request timeout counted
/// from then, body upload included).
struct Asked {
    kind: Kind,
    at: tokio::time::Instant,
    /// The body took more than half the request timeout to arrive (measured when the handler began, before any
    /// work such as loading the model).
    slow_upload: bool,
}

impl Asked {
    fn new(kind: Kind, arrived: Option<Extension<Arrived>>, state: &AppState) -> Self {
        let at = arrived.map_or_else(tokio::time::Instant::now, |a| a.0.0);
        Self { kind, at, slow_upload: state.request_timeout.is_some_and(|t| at.elapsed() > t / 2) }
    }
}

/// Shares of the request timeout: a whole answer still running at the first is cut (it ends at the scheduler's next
/// step, with what it produced, charged for that); one whose end has not come by the second (a step longer than
/// what was left, such as a long prefill) is given up, uncharged, with a 503 before the timeout's 408.
const CUT_AT: f64 = 5.0 / 6.0;
const GIVE_UP_AT: f64 = 11.0 / 12.0;
const GAVE_UP: &str = "a whole answer it could not end within the request timeout; ask for fewer tokens, or stream";

async fn run(
    state: &AppState,
    headers: &HeaderMap,
    peer: PeerAddr,
    generator: std::sync::Arc<Generator>,
    prompt: Vec<u32>,
    c: &Common,
    asked: Asked,
) -> Result<Response, ApiError> {
    let Asked { kind, at, slow_upload } = asked;
    // A whole answer whose request took half the timeout to arrive is refused before any work: its prefill could
    // not be counted on to end before the cut, and given up there it would be work done for nothing.
    if !c.stream && slow_upload {
        return Err(ApiError::with_status(
            StatusCode::REQUEST_TIMEOUT,
            "the request took more than half the request timeout to arrive; send it faster, or stream the answer",
        ));
    }
    let (sampling, stop, max_tokens) = parameters(c)?;
    let max_tokens = generator.check(&prompt, max_tokens, &sampling)?;
    // Paid: the most this generation can cost is held before it is queued; it is charged for what it produces.
    let prices = generator.generation().prices();
    let most = prices.cost(prompt.len() as u64, max_tokens as u64);
    let charge = match super::pay::authorize_priced(state, headers, peer.0, most, 1)? {
        Some(p) => {
            let service = state.payments.clone().expect("a payment comes from the payment service");
            Some(Charge { service, auth: p.auth, prices })
        }
        None => None,
    };
    // A client that leaves before the end (a closed stream, a dropped connection) is charged for what was produced.
    let Metering { events: mut rx, cancel, forfeit } =
        meter(&generator, GenerateRequest { prompt, max_tokens, sampling, stop }, charge)?;
    let config = generator.config();
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let head = Head {
        id: format!("{prefix}-{:032x}", rand::random::<u128>()),
        created: now_unix(),
        model: format!("{}:{}", config.name, config.version),
        kind,
        seed: sampling.seed,
        fingerprint: format!("mlbridge-{}", &config.sha256.to_string()[..16]),
    };
    if c.stream {
        let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
        return Ok(stream(head, rx, include_usage).into_response());
    }
    // A whole answer that would outlive the request timeout is cut (finish `cancelled`) and sent with what it has and
    // its receipt: dropped by the timeout instead, it would be charged for text its client never got.
    let mut text = String::new();
    let by = |share: f64| state.request_timeout.and_then(|t| at.checked_add(t.mul_f64(share)));
    let (done, receipt) = match within(by(CUT_AT), collect(&mut rx, &mut text)).await {
        Some(answer) => answer?,
        None => {
            cancel.cancel();
            match within(by(GIVE_UP_AT), collect(&mut rx, &mut text)).await {
                Some(answer) => answer?,
                None if forfeit.claim(GAVE_UP) => return Err(crate::Error::Interrupted(GAVE_UP.into()).into()),
                // Its charge had begun: the end and its receipt are moments away.
                None => collect(&mut rx, &mut text).await?,
            }
        }
    };
    let choice = match kind {
        Kind::Text => json!({ "index": 0, "text": text, "finish_reason": done.finish.as_str(), "logprobs": null }),
        Kind::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": done.finish.as_str(),
            "logprobs": null,
        }),
    };
    let mut body = head.base(false, json!([choice]));
    body["usage"] = usage(&done);
    match receipt {
        Some(r) => {
            body["receipt"] = receipt_json(&r);
            Ok(([receipt_header(&r)], Json(body)).into_response())
        }
        None => Ok(Json(body).into_response()),
    }
}

/// `fut`'s output, or `None` if `by` (when there is one) came first.
async fn within<T>(by: Option<tokio::time::Instant>, fut: impl std::future::Future<Output = T>) -> Option<T> {
    match by {
        Some(by) => tokio::time::timeout_at(by, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// The text into `text` (kept if this is dropped), then the completion and its receipt.
async fn collect(
    rx: &mut mpsc::Receiver<Metered>,
    text: &mut String,
) -> Result<(Completion, Option<Box<ReceiptMsg>>), ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            Metered::Token { text: t, .. } => text.push_str(&t),
            Metered::Done(c, receipt) => return Ok((c, receipt)),
            Metered::Failed(e) => return Err(e.into()),
        }
    }
    Err(ApiError::with_status(StatusCode::INTERNAL_SERVER_ERROR, "the generation stopped; the node's log says why"))
}

fn sse(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// The SSE stream: for chat an opening role delta, then a chunk per piece of text, a last chunk with the finish
/// reason (and `usage`, unless the client asked for the separate usage chunk of `include_usage`), `[DONE]`.
fn stream(
    head: Head,
    rx: mpsc::Receiver<Metered>,
    include_usage: bool,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let opening = (head.kind == Kind::Chat).then(|| sse(&head.delta(None, None)));
    let body = futures::stream::unfold(Some((head, rx)), move |state| async move {
        let (head, mut rx) = state?;
        match rx.recv().await {
            // A token whose text is held back (or a stop token) sends nothing.
            Some(Metered::Token { text, .. }) if text.is_empty() => Some((vec![], Some((head, rx)))),
            Some(Metered::Token { text, .. }) => {
                let ev = sse(&head.delta(Some(&text), None));
                Some((vec![ev], Some((head, rx))))
            }
            Some(Metered::Done(done, receipt)) => {
                let mut last = head.delta(None, Some(done.finish.as_str()));
                let mut out = Vec::new();
                if include_usage {
                    out.push(sse(&last));
                    last = head.base(true, json!([]));
                }
                last["usage"] = usage(&done);
                if let Some(r) = receipt {
                    last["receipt"] = receipt_json(&r);
                }
                out.push(sse(&last));
                out.push(Ok(SseEvent::default().data("[DONE]")));
                Some((out, None))
            }
            Some(Metered::Failed(e)) => {
                let error = json!({ "error": { "message": ApiError::from(e).message() } });
                Some((vec![sse(&error)], None))
            }
            None => {
                let error = json!({ "error": { "message": "the generation stopped; the node's log says why" } });
                Some((vec![sse(&error)], None))
            }
        }
    })
    .flat_map(futures::stream::iter);
    Sse::new(futures::stream::iter(opening).chain(body)).keep_alive(KeepAlive::default())
}
