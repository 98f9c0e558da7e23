//! The node's side of streaming generation ([`GENERATE_PROTOCOL`]): one substream per generation. The request frame
//! is read against the inbound budget within [`FRAME_DEADLINE`], checked like an HTTP request (version, shutdown,
//! model, limits), and the scheduler's events are written back as frames as they come. The peer closing its side
//! cancels the generation; a write that makes no progress within the deadline ends it too. A peer may have
//! [`STREAMS_PER_PEER`] open at once (more are answered "overloaded"). A node that charges for work refuses generation
//! over p2p until per-token charging exists.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use mlbridge_sdk::generate::{
    GENERATE_PROTOCOL, GenerateDone, GenerateEvent, GeneratePrompt, GenerateRequest, MAX_GENERATE_REQUEST_BYTES,
};
use mlbridge_sdk::net::mux::{read_frame_within, write_frame};
use mlbridge_sdk::protocol::{ErrorKind, ProtocolError, WIRE_VERSION, decode, encode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mux::{FRAME_DEADLINE, MuxServer};
use crate::generate::{Event, Generator, Message, Prompt, Sampling};
use crate::{Error, Result};

/// Generation streams one peer may have open at once (each is one sequence; the scheduler's queue bounds the rest).
const STREAMS_PER_PEER: usize = 64;

/// Open generation streams per peer.
#[derive(Default)]
struct Open(std::sync::Mutex<std::collections::HashMap<PeerId, usize>>);

impl Open {
    fn try_open(&self, peer: PeerId) -> bool {
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(peer).or_default();
        if *n >= STREAMS_PER_PEER {
            return false;
        }
        *n += 1;
        true
    }

    fn close(&self, peer: PeerId) {
        let mut open = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// Accept generation streams until `shutdown`.
pub(super) fn spawn(
    mut control: libp2p_stream::Control,
    server: Arc<MuxServer>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let mut incoming = control
        .accept(StreamProtocol::new(GENERATE_PROTOCOL))
        .map_err(|e| Error::Network(format!("accepting {GENERATE_PROTOCOL}: {e}")))?;
    let open = Arc::new(Open::default());
    Ok(tokio::spawn(async move {
        loop {
            let (peer, mut stream) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = incoming.next() => match next { Some(s) => s, None => break },
            };
            if !open.try_open(peer) {
                let busy = ProtocolError::new(
                    ErrorKind::Overloaded,
                    format!("{STREAMS_PER_PEER} generation streams from one peer are open; wait for one to end"),
                );
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(FRAME_DEADLINE, send(&mut stream, &GenerateEvent::Error(busy))).await;
                    let _ = stream.close().await;
                });
                continue;
            }
            let (server, open) = (server.clone(), open.clone());
            tokio::spawn(async move {
                serve(&server, peer, stream).await;
                open.close(peer);
            });
        }
    }))
}

fn refusal(e: &Error) -> ProtocolError {
    let kind = match e {
        Error::UnknownModel { .. } => ErrorKind::UnknownModel,
        Error::GenerationFull { .. } | Error::Overloaded { .. } => ErrorKind::Overloaded,
        e if crate::inference::engine::is_client_error(e) => ErrorKind::BadInput,
        _ => ErrorKind::Internal,
    };
    let message = if kind == ErrorKind::Internal {
        tracing::error!(target: "node::p2p", %e, "generation failed");
        "internal error; the node's log has the details".to_owned()
    } else {
        e.to_string()
    };
    ProtocolError::new(kind, message)
}

/// Check the request and queue its generation.
async fn start(server: &MuxServer, body: &[u8]) -> std::result::Result<(mpsc::Receiver<Event>, u64), ProtocolError> {
    let req: GenerateRequest = decode(body, MAX_GENERATE_REQUEST_BYTES)
        .map_err(|e| ProtocolError::new(ErrorKind::Malformed, format!("not a generation request: {e}")))?;
    if req.version != WIRE_VERSION {
        let message = format!("wire version {} is not spoken here (this node speaks {WIRE_VERSION})", req.version);
        return Err(ProtocolError::new(ErrorKind::UnsupportedVersion, message));
    }
    if server.stopping.load(Ordering::Relaxed) {
        return Err(ProtocolError::new(ErrorKind::Overloaded, "the node is shutting down; use another node"));
    }
    if server.payments.is_some() {
        return Err(ProtocolError::new(
            ErrorKind::Payment,
            "this node charges for its work, and paid text generation (per-token prices over a payment channel) is \
             not available yet; use a node that serves generation free",
        ));
    }
    let generator: Arc<Generator> =
        server.engine.generator(&req.model.name, req.model.version).await.map_err(|e| match e {
            // A tensor model of that name: for generation this node does not have it (the client tries another).
            Error::BadRequest(message) => ProtocolError::new(ErrorKind::UnknownModel, message),
            e => refusal(&e),
        })?;
    if req.model.id.is_some_and(|id| id != generator.config().sha256) {
        let message = format!("this node's {} has other weights than asked", generator.config().key());
        return Err(ProtocolError::new(ErrorKind::UnknownModel, message));
    }
    let prompt = match req.prompt {
        GeneratePrompt::Text(t) => Prompt::Text(t),
        GeneratePrompt::Ids(ids) => Prompt::Ids(ids),
        GeneratePrompt::Chat(turns) => {
            Prompt::Chat(turns.into_iter().map(|t| Message { role: t.role, content: t.content }).collect())
        }
    };
    let prompt = generator.prompt_tokens(prompt).await.map_err(|e| refusal(&e))?;
    let sampling = Sampling {
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        seed: req.seed.unwrap_or_else(rand::random),
    };
    let max_tokens = req.max_tokens.map(|m| m as usize);
    let max_tokens = generator.check(&prompt, max_tokens, &sampling).map_err(|e| refusal(&e))?;
    let request = crate::generate::GenerateRequest { prompt, max_tokens, sampling, stop: req.stop };
    let rx = generator.submit(request).map_err(|e| refusal(&e))?;
    Ok((rx, sampling.seed))
}

async fn serve(server: &MuxServer, peer: PeerId, stream: libp2p::Stream) {
    let (mut r, mut w) = stream.split();
    // The request must come within the deadline, waiting for it included (an idle stream would hold a slot).
    let first = tokio::time::timeout(
        FRAME_DEADLINE,
        read_frame_within(&mut r, MAX_GENERATE_REQUEST_BYTES, Some(&server.budget), Some(FRAME_DEADLINE)),
    )
    .await;
    let Ok(Ok(Some(frame))) = first else {
        tracing::debug!(target: "node::p2p", %peer, "a generation stream without a whole request");
        return;
    };
    let started = start(server, &frame.body).await;
    drop(frame); // not held while the generation waits and runs
    let mut events = match started {
        Ok((rx, _)) => rx,
        Err(e) => {
            if e.kind == ErrorKind::Malformed {
                let _ = server.strikes.try_send(peer);
            }
            let _ = send(&mut w, &GenerateEvent::Error(e)).await;
            let _ = w.close().await;
            return;
        }
    };
    let mut probe = [0u8; 1];
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // The peer sends nothing after its request: a read that returns means it closed (or misbehaves).
            _ = r.read(&mut probe) => break,
        };
        let (wire, last) = match event {
            Some(Event::Text(t)) => (GenerateEvent::Text(t), false),
            Some(Event::Done(c)) => {
                let done = GenerateDone {
                    finish: c.finish.as_str().to_owned(),
                    prompt_tokens: c.prompt_tokens as u32,
                    output: c.output,
                    seed: c.sampling.seed,
                };
                (GenerateEvent::Done(done), true)
            }
            None => {
                let error = ProtocolError::new(ErrorKind::Internal, "the generation stopped; the node's log says why");
                (GenerateEvent::Error(error), true)
            }
        };
        let sent = tokio::time::timeout(FRAME_DEADLINE, send(&mut w, &wire)).await;
        if !matches!(sent, Ok(Ok(()))) || last {
            break;
        }
    }
    // Dropping `events` cancels a generation still running.
    drop(events);
    let _ = w.close().await;
}

async fn send<W: futures::AsyncWrite + Unpin>(w: &mut W, event: &GenerateEvent) -> std::io::Result<()> {
    write_frame(w, 0, &encode(event)).await?;
    w.flush().await
}
