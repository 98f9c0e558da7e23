//! Streaming text generation over libp2p: the [`GENERATE_PROTOCOL`] wire types and the client's side of a stream.
//!
//! A client opens one substream per generation (a generation lasts seconds, so the protocol negotiation is noise),
//! writes one frame holding a [`GenerateRequest`], and reads [`GenerateEvent`] frames as the node produces them:
//! pieces of text, then one `Done` (or one `Error`). Closing the client's side of the stream cancels the
//! generation at the node's next decoding step; the node still sends the end (finish `cancelled`, with the receipt of
//! what was produced when it was paid). Frames are the multiplexed protocol's (a 4-byte length, an 8-byte id, CBOR), with id 0; a request
//! is at most [`MAX_GENERATE_REQUEST_BYTES`], an event at most [`MAX_EVENT_BYTES`]. The version is in the
//! protocol name and in the request.

use futures::AsyncWriteExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::net::mux::{read_frame, write_frame};
use alloy::primitives::{B256, U256};

use crate::protocol::{ModelRef, ProtocolError, ReceiptMsg, WireVoucher, decode, encode};
use crate::{Error, Result};

/// The streaming generation protocol.
pub const GENERATE_PROTOCOL: &str = "/mlbridge/generate/1";

/// Largest generation request: a prompt the largest context could hold, with room for a conversation's framing
/// (a request is held while its generation runs, so it is kept far below the tensor protocols' 16 MiB).
pub const MAX_GENERATE_REQUEST_BYTES: usize = 1 << 20;

/// Largest event frame (a piece of text is a few bytes; `Done` lists the output token ids).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Most events one stream may send (a context's worth of tokens, and the end).
const MAX_EVENTS: usize = 1 << 16;

/// Events buffered per stream on the client before the reader waits for the caller.
const EVENTS: usize = 256;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// What to continue: a text, a conversation (the node applies the model's chat template), or token ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GeneratePrompt {
    /// Plain text, continued as written.
    Text(String),
    /// A conversation; the answer is the assistant's next turn.
    Chat(Vec<ChatTurn>),
    /// Token ids of the model's own vocabulary.
    Ids(Vec<u32>),
}

/// A generation request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Wire version.
    pub version: u16,
    /// The model.
    pub model: ModelRef,
    /// The prompt.
    pub prompt: GeneratePrompt,
    /// Most output tokens (`None`: the model's default).
    pub max_tokens: Option<u32>,
    /// Softmax temperature; 0 = greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0 = all).
    pub top_k: u32,
    /// Nucleus sampling mass (1 = all).
    pub top_p: f32,
    /// Sampling seed (`None`: the node picks one and reports it).
    pub seed: Option<u64>,
    /// Strings that end the output (not included).
    pub stop: Vec<String>,
    /// Payment (paid nodes): a voucher covering the generation's most cost (see [`GenerationPrices::most`]).
    #[serde(default)]
    pub voucher: Option<WireVoucher>,
    /// Charge the credit paid ahead on this channel (DESIGN.md §3); a voucher names its own channel.
    #[serde(default)]
    pub channel: Option<B256>,
    /// The payer's secret credit key (see [`crate::protocol::InferRequest::credit_key`]).
    #[serde(default)]
    pub credit_key: Option<B256>,
}

impl GenerateRequest {
    /// A free request with the node's defaults: greedy, no stop strings, no payment.
    pub fn new(model: ModelRef, prompt: GeneratePrompt) -> Self {
        Self {
            version: crate::protocol::WIRE_VERSION,
            model,
            prompt,
            max_tokens: None,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            voucher: None,
            channel: None,
            credit_key: None,
        }
    }

    /// The most prompt tokens this prompt can honestly become: a byte-level BPE token covers at least one byte, and
    /// a chat template adds at most [`TEMPLATE_TOKENS_PER_TURN`] per message and as many again around them. A node
    /// that counts more prompt tokens than this is overcharging. (Only a bound: a client without the tokenizer cannot
    /// check the exact count.)
    pub fn prompt_token_bound(&self) -> u64 {
        match &self.prompt {
            GeneratePrompt::Text(t) => text_token_bound(t.len()),
            GeneratePrompt::Ids(ids) => ids.len() as u64,
            GeneratePrompt::Chat(turns) => chat_token_bound(turns.iter().map(|t| t.role.len() + t.content.len())),
        }
    }
}

/// The most tokens a text prompt of `bytes` can honestly become (see [`GenerateRequest::prompt_token_bound`]).
pub fn text_token_bound(bytes: usize) -> u64 {
    bytes as u64 + TEMPLATE_TOKENS
}

/// The most tokens a conversation can honestly become, from each message's role and content bytes.
pub fn chat_token_bound(messages: impl IntoIterator<Item = usize>) -> u64 {
    messages.into_iter().map(|bytes| bytes as u64 + TEMPLATE_TOKENS_PER_TURN).sum::<u64>() + TEMPLATE_TOKENS
}

/// Chat-template tokens a node may add per message (role markers, separators) when a client bounds a prompt's size.
pub const TEMPLATE_TOKENS_PER_TURN: u64 = 16;

/// Template tokens a node may add once per prompt (a default system message, the assistant's opening, a BOS).
pub const TEMPLATE_TOKENS: u64 = 64;

/// A generation model's per-token prices (DESIGN.md §3: an input and an output token are units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationPrices {
    /// Wei per prompt token.
    pub input_wei: U256,
    /// Wei per generated token.
    pub output_wei: U256,
}

impl GenerationPrices {
    /// What `prompt` input tokens and `output` generated tokens cost (saturating). With `max_tokens` as `output`:
    /// the most a generation can cost, what a node holds while it runs (it charges what was produced).
    pub fn cost(&self, prompt: u64, output: u64) -> U256 {
        self.input_wei
            .saturating_mul(U256::from(prompt))
            .saturating_add(self.output_wei.saturating_mul(U256::from(output)))
    }

    /// Whether the generation is free.
    pub fn is_free(&self) -> bool {
        self.input_wei.is_zero() && self.output_wei.is_zero()
    }
}

/// What a generation receipt's input hash commits to: the prompt tokens (chat template applied) and every decoding
/// parameter, the seed included, so a validator can replay exactly the rule the node had to follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    /// Most output tokens.
    pub max_tokens: u32,
    /// Softmax temperature (0 = greedy).
    pub temperature: f32,
    /// Top-k (0 = all).
    pub top_k: u32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Sampling seed.
    pub seed: u64,
    /// Stop strings.
    pub stop: Vec<String>,
}

/// sha256 over a generation's prompt tokens and parameters, each field fixed-width little-endian and lists
/// length-prefixed (a receipt's input hash for a generation).
pub fn input_hash(prompt: &[u32], p: &GenerationParams) -> B256 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"mlbridge-generation/1");
    h.update((prompt.len() as u64).to_le_bytes());
    for t in prompt {
        h.update(t.to_le_bytes());
    }
    h.update(p.max_tokens.to_le_bytes());
    h.update(p.temperature.to_bits().to_le_bytes());
    h.update(p.top_k.to_le_bytes());
    h.update(p.top_p.to_bits().to_le_bytes());
    h.update(p.seed.to_le_bytes());
    h.update((p.stop.len() as u64).to_le_bytes());
    for s in &p.stop {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    B256::from(<[u8; 32]>::from(h.finalize()))
}

/// sha256 over a generation's output tokens and how it ended (a receipt's output hash for a generation).
pub fn output_hash(output: &[u32], finish: &str) -> B256 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"mlbridge-generation-output/1");
    h.update((output.len() as u64).to_le_bytes());
    for t in output {
        h.update(t.to_le_bytes());
    }
    h.update((finish.len() as u64).to_le_bytes());
    h.update(finish.as_bytes());
    B256::from(<[u8; 32]>::from(h.finalize()))
}

/// A paid generation as the node keeps it for validators (inside an [`crate::protocol::AuditRecord`]): what its
/// receipt's hashes commit to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationAudit {
    /// Prompt token ids (chat template applied).
    pub prompt: Vec<u32>,
    /// Decoding parameters and seed.
    pub params: GenerationParams,
    /// Output token ids.
    pub output: Vec<u32>,
    /// `stop`, `length`, or `cancelled` (the client closed the stream; charged for what was produced).
    pub finish: String,
}

impl GenerationAudit {
    /// The receipt's input hash.
    pub fn input_hash(&self) -> B256 {
        input_hash(&self.prompt, &self.params)
    }

    /// The receipt's output hash.
    pub fn output_hash(&self) -> B256 {
        output_hash(&self.output, &self.finish)
    }
}

/// How a generation ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateDone {
    /// `stop` (a stop token or string) or `length` (`max_tokens`).
    pub finish: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Output token ids (what a validator re-checks).
    pub output: Vec<u32>,
    /// The seed used.
    pub seed: u64,
    /// Prompt token ids (paid generations: with the parameters and seed they make the receipt's input hash).
    #[serde(default)]
    pub prompt_ids: Vec<u32>,
    /// The weights that ran.
    #[serde(default)]
    pub model: Option<ModelRef>,
    /// The node's receipt (paid generations): units are prompt plus output tokens, the price what they cost.
    #[serde(default)]
    pub receipt: Option<Box<ReceiptMsg>>,
}

/// What a node sends on a generation stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GenerateEvent {
    /// A piece of output text.
    Text(String),
    /// The end.
    Done(GenerateDone),
    /// The node refused or failed the generation.
    Error(ProtocolError),
}

/// Opens generation streams (a libp2p-stream control; cheap to clone).
#[derive(Clone)]
pub struct Streams(pub(crate) libp2p_stream::Control);

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streams")
    }
}

/// Cancels a generation while its end still comes: the client closes its side of the stream, the node stops at its
/// next step and sends the end (finish `cancelled`, with the receipt of what was produced when it was paid).
/// Dropping it does not cancel: the client's side closes once the end came or the receiver was dropped.
#[derive(Debug)]
pub struct Cancel(tokio::sync::oneshot::Sender<()>);

impl Cancel {
    /// Cancel the generation (its events go on until the end).
    pub fn cancel(self) {
        let _ = self.0.send(());
    }

    /// A cancel handle and what it signals, for tests of what holds one.
    #[cfg(test)]
    pub(crate) fn pair() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(tx), rx)
    }
}

/// Open a generation stream to `peer` and send `request`; the node's events arrive on the returned receiver (an
/// `Error` event for a refusal; the channel closes after the end or when the stream breaks). [`Cancel`] stops the
/// generation and lets its end come; dropping the receiver abandons the stream (the node stops generating too).
pub async fn open(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &GenerateRequest,
) -> Result<(mpsc::Receiver<GenerateEvent>, Cancel)> {
    use futures::AsyncReadExt;
    let net = |e: String| Error::Network(format!("generation stream to {peer}: {e}"));
    let mut stream =
        control.open_stream(peer, StreamProtocol::new(GENERATE_PROTOCOL)).await.map_err(|e| net(e.to_string()))?;
    write_frame(&mut stream, 0, &encode(request)).await.map_err(|e| net(e.to_string()))?;
    stream.flush().await.map_err(|e| net(e.to_string()))?;
    let (mut r, mut w) = stream.split();
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let (reading, read_done) = tokio::sync::oneshot::channel::<()>();
    // Our side closes on a cancel, or once the reader below is done (the end came, the stream broke, or the caller
    // dropped the receiver); a dropped `Cancel` alone does not close it.
    tokio::spawn(async move {
        tokio::select! {
            Ok(()) = cancelled => {}
            _ = read_done => {}
        }
        let _ = w.close().await;
    });
    let (tx, rx) = mpsc::channel(EVENTS);
    // A node sends at most a piece of text per token and the end: more is a node misbehaving.
    let mut allowed = request.max_tokens.map_or(MAX_EVENTS, |m| m as usize + 2).min(MAX_EVENTS);
    tokio::spawn(async move {
        let _reading = reading;
        while allowed > 0 {
            allowed -= 1;
            let frame = tokio::select! {
                frame = read_frame(&mut r, MAX_EVENT_BYTES, None) => frame,
                () = tx.closed() => break,
            };
            let Ok(Some(frame)) = frame else { break };
            let Ok(event) = decode::<GenerateEvent>(&frame.body, MAX_EVENT_BYTES) else { break };
            let last = !matches!(event, GenerateEvent::Text(_));
            if tx.send(event).await.is_err() || last {
                break;
            }
        }
        // Dropping the read half (and, with the cancel handle, the write half) closes the stream.
    });
    Ok((rx, Cancel(cancel)))
}

/// Collect a stream's text and its end (`Err` for a refusal or a broken stream).
pub async fn collect(peer: PeerId, mut events: mpsc::Receiver<GenerateEvent>) -> Result<(String, GenerateDone)> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerateEvent::Text(t) => text.push_str(&t),
            GenerateEvent::Done(done) => return Ok((text, done)),
            GenerateEvent::Error(e) => {
                return Err(Error::Remote { peer: peer.to_string(), kind: e.kind, message: e.message });
            }
        }
    }
    Err(Error::Network(format!("the generation stream from {peer} ended before its end")))
}
