//! Streaming text generation over libp2p: the [`GENERATE_PROTOCOL`] wire types and the client's side of a stream.
//!
//! A client opens one substream per generation (a generation lasts seconds, so the protocol negotiation is noise),
//! writes one frame holding a [`GenerateRequest`], and reads [`GenerateEvent`] frames as the node produces them:
//! pieces of text, then one `Done` (or one `Error`). Closing the stream cancels the generation at the node's next
//! decoding step. Frames are the multiplexed protocol's (a 4-byte length, an 8-byte id, CBOR), with id 0; a request
//! is at most [`MAX_GENERATE_REQUEST_BYTES`], an event at most [`MAX_EVENT_BYTES`]. The version is in the
//! protocol name and in the request.

use futures::AsyncWriteExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::net::mux::{read_frame, write_frame};
use crate::protocol::{ModelRef, ProtocolError, decode, encode};
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
}

/// How a generation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateDone {
    /// `stop` (a stop token or string) or `length` (`max_tokens`).
    pub finish: String,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Output token ids (what a validator re-checks).
    pub output: Vec<u32>,
    /// The seed used.
    pub seed: u64,
}

/// What a node sends on a generation stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Open a generation stream to `peer` and send `request`; the node's events arrive on the returned receiver (an
/// `Error` event for a refusal; the channel closes after `Done` or when the stream breaks). Dropping the receiver
/// closes the stream, which cancels the generation.
pub async fn open(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    request: &GenerateRequest,
) -> Result<mpsc::Receiver<GenerateEvent>> {
    let net = |e: String| Error::Network(format!("generation stream to {peer}: {e}"));
    let mut stream =
        control.open_stream(peer, StreamProtocol::new(GENERATE_PROTOCOL)).await.map_err(|e| net(e.to_string()))?;
    write_frame(&mut stream, 0, &encode(request)).await.map_err(|e| net(e.to_string()))?;
    stream.flush().await.map_err(|e| net(e.to_string()))?;
    let (tx, rx) = mpsc::channel(EVENTS);
    // A node sends at most a piece of text per token and the end: more is a node misbehaving.
    let mut allowed = request.max_tokens.map_or(MAX_EVENTS, |m| m as usize + 2).min(MAX_EVENTS);
    tokio::spawn(async move {
        loop {
            if allowed == 0 {
                break;
            }
            allowed -= 1;
            let frame = tokio::select! {
                frame = read_frame(&mut stream, MAX_EVENT_BYTES, None) => frame,
                () = tx.closed() => break,
            };
            let Ok(Some(frame)) = frame else { break };
            let Ok(event) = decode::<GenerateEvent>(&frame.body, MAX_EVENT_BYTES) else { break };
            let last = !matches!(event, GenerateEvent::Text(_));
            if tx.send(event).await.is_err() || last {
                break;
            }
        }
        // Dropping the stream closes it: the node stops generating.
        let _ = stream.close().await;
    });
    Ok(rx)
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
