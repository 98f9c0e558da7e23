//! The node's side of streaming generation ([`GENERATE_PROTOCOL`]): one substream per generation. The request frame
//! is read against the inbound budget within [`FRAME_DEADLINE`], checked like an HTTP request (version, shutdown,
//! model, limits), and the scheduler's events are written back as frames as they come. The peer closing its side
//! cancels the generation, whose end (finish `cancelled`, with the receipt of what was produced) is still sent; a
//! write that makes no progress within the deadline ends it too. A node shutting down cuts its generations and charges
//! nothing for them (an `overloaded` error: retry elsewhere). A generation counts against its peer's request
//! rate and requests in flight (`[p2p] max_requests_per_sec_per_peer`, `max_inbound_per_peer`) from its stream's
//! opening to its end, like an inference (more are answered "overloaded"). A node that charges for work holds the
//! generation's most cost on the request's voucher or credit before queueing it and charges per token at the end
//! ([`crate::payment::generation`]); the end then carries the receipt and the prompt token ids it commits to.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use alloy::primitives::keccak256;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use mlbridge_sdk::generate::{
    GENERATE_PROTOCOL, GenerateDone, GenerateEvent, GeneratePrompt, GenerateRequest, MAX_GENERATE_REQUEST_BYTES,
};
use mlbridge_sdk::net::mux::{read_frame_within, write_frame};
use mlbridge_sdk::protocol::{ErrorKind, ModelRef, ProtocolError, WIRE_VERSION, decode, encode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::mux::{Admitted, FRAME_DEADLINE, MuxServer};
use crate::generate::{Generator, Message, Prompt, Sampling};
use crate::payment::credit_spender;
use crate::payment::generation::{Charge, Metered, Metering, meter};
use crate::{Error, Result};

/// Accept generation streams until `shutdown`.
pub(super) fn spawn(
    mut control: libp2p_stream::Control,
    server: Arc<MuxServer>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let mut incoming = control
        .accept(StreamProtocol::new(GENERATE_PROTOCOL))
        .map_err(|e| Error::Network(format!("accepting {GENERATE_PROTOCOL}: {e}")))?;
    Ok(tokio::spawn(async move {
        loop {
            let (peer, mut stream) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = incoming.next() => match next { Some(s) => s, None => break },
            };
            // In flight from here to its end (a stream waiting for its request included).
            let admitted = match Admitted::new(&server.load, peer) {
                Ok(a) => a,
                Err(msg) => {
                    let busy = ProtocolError::new(ErrorKind::Overloaded, msg);
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(FRAME_DEADLINE, send(&mut stream, &GenerateEvent::Error(busy))).await;
                        let _ = stream.close().await;
                    });
                    continue;
                }
            };
            let (server, shutdown) = (server.clone(), shutdown.clone());
            tokio::spawn(async move {
                serve(&server, peer, stream, &shutdown).await;
                drop(admitted);
            });
        }
    }))
}

fn refusal(e: &Error) -> ProtocolError {
    let kind = match e {
        Error::UnknownModel { .. } => ErrorKind::UnknownModel,
        Error::GenerationFull { .. } | Error::Overloaded { .. } | Error::Interrupted(_) => ErrorKind::Overloaded,
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

/// Check the request (and its payment, on a node that charges) and queue its generation.
async fn start(server: &MuxServer, peer: PeerId, body: &[u8]) -> std::result::Result<Started, ProtocolError> {
    let req: GenerateRequest = decode(body, MAX_GENERATE_REQUEST_BYTES)
        .map_err(|e| ProtocolError::new(ErrorKind::Malformed, format!("not a generation request: {e}")))?;
    if req.version != WIRE_VERSION {
        let message = format!("wire version {} is not spoken here (this node speaks {WIRE_VERSION})", req.version);
        return Err(ProtocolError::new(ErrorKind::UnsupportedVersion, message));
    }
    if server.stopping.load(Ordering::Relaxed) {
        return Err(ProtocolError::new(ErrorKind::Overloaded, "the node is shutting down; use another node"));
    }
    let payments = server.payments.as_ref();
    let version = match payments {
        Some(_) => crate::payment::generation::sold_version(&server.engine, &req.model.name, req.model.version)
            .map_err(|e| refusal(&e))?,
        None => req.model.version,
    };
    let generator: Arc<Generator> = server.engine.generator(&req.model.name, version).await.map_err(|e| match e {
        // A tensor model of that name: for generation this node does not have it (the client tries another).
        Error::BadRequest(message) => ProtocolError::new(ErrorKind::UnknownModel, message),
        e => refusal(&e),
    })?;
    if req.model.id.is_some_and(|id| id != generator.config().sha256) {
        let message = format!("this node's {} has other weights than asked", generator.config().key());
        return Err(ProtocolError::new(ErrorKind::UnknownModel, message));
    }
    // A paid model's request whose payment cannot pay even the least job (none at all, an unknown channel, a bad
    // voucher, no credit of its own) is refused before its prompt costs any work.
    let prices = generator.generation().prices();
    let spender = Some(req.credit_key.map_or_else(|| keccak256(peer.to_bytes()), |k| credit_spender(k.as_slice())));
    let payment_refusal = |r: Box<mlbridge_sdk::protocol::PaymentRefusal>| ProtocolError {
        kind: ErrorKind::Payment,
        message: r.to_string(),
        payment: Some(*r),
    };
    if let Some(service) = payments.filter(|_| !prices.is_free()) {
        if req.voucher.is_none() && req.channel.is_none() {
            // The most this request can cost (its prompt's bound, `max_tokens`): what a voucher must cover.
            let max_tokens = req.max_tokens.map_or(generator.generation().default_max_tokens as u64, u64::from);
            let price = prices.cost(req.prompt_token_bound(), max_tokens);
            let refusal = mlbridge_sdk::protocol::PaymentRefusal::Required { price, payee: service.payee() };
            return Err(payment_refusal(Box::new(refusal)));
        }
        // The least it can hold: one prompt token and the output tokens it asks for (a request beyond the context is
        // refused, not cut).
        let least = prices.cost(1, req.max_tokens.map_or(1, u64::from));
        service.precheck(req.voucher.as_ref(), req.channel, spender, least).map_err(payment_refusal)?;
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
    Generator::check_stops(&req.stop).map_err(|e| refusal(&e))?;
    // Paid: the most this generation can cost is held before it is queued (a bad request costs nothing).
    let charge = match payments {
        Some(service) if !prices.is_free() => {
            let most = prices.cost(prompt.len() as u64, max_tokens as u64);
            let auth =
                service.authorize(req.voucher.as_ref(), req.channel, spender, most, 1).map_err(payment_refusal)?;
            Some(Charge { service: service.clone(), auth, prices })
        }
        _ => None,
    };
    let paid = charge.is_some();
    let config = generator.config();
    let model = ModelRef { name: config.name.clone(), version: Some(config.version), id: Some(config.sha256) };
    let prompt_ids = if paid { prompt.clone() } else { Vec::new() };
    let request = crate::generate::GenerateRequest { prompt, max_tokens, sampling, stop: req.stop };
    let metering = meter(&generator, request, charge).map_err(|e| refusal(&e))?;
    Ok(Started { metering, model, prompt_ids })
}

/// A queued generation.
struct Started {
    metering: Metering,
    /// The weights that run it.
    model: ModelRef,
    /// Its prompt tokens, for a paid generation's end (the receipt's input hash is over them).
    prompt_ids: Vec<u32>,
}

async fn serve(server: &MuxServer, peer: PeerId, stream: libp2p::Stream, shutdown: &CancellationToken) {
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
    let started = start(server, peer, &frame.body).await;
    drop(frame); // not held while the generation waits and runs
    let Started { metering, model, mut prompt_ids } = match started {
        Ok(s) => s,
        Err(e) => {
            if e.kind == ErrorKind::Malformed {
                let _ = server.strikes.try_send(peer);
            }
            let _ = send(&mut w, &GenerateEvent::Error(e)).await;
            let _ = w.close().await;
            return;
        }
    };
    let Metering { mut events, cancel, forfeit } = metering;
    let mut probe = [0u8; 1];
    let (mut open, mut stopping) = (true, false);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // The node is shutting down: the generation ends at the next step, uncharged (the client did not
            // cancel it, and is told to retry elsewhere), unless its charge already began (then its end and receipt
            // go out as usual), before the node stops waiting for answers in flight.
            () = shutdown.cancelled(), if !stopping => {
                stopping = true;
                forfeit.claim("it is shutting down");
                cancel.cancel();
                continue;
            }
            // The peer sends nothing after its request: a read that returns means it closed its side (or
            // misbehaves): the generation is cancelled, and its end (the receipt of what was produced) still goes.
            _ = r.read(&mut probe), if open => {
                open = false;
                cancel.cancel();
                continue;
            }
        };
        let (wire, last) = match event {
            // A token whose text is held back (or a stop token) sends nothing.
            Some(Metered::Token { text, .. }) if text.is_empty() => continue,
            Some(Metered::Token { text, .. }) => (GenerateEvent::Text(text), false),
            Some(Metered::Done(c, receipt)) => {
                let done = GenerateDone {
                    finish: c.finish.as_str().to_owned(),
                    prompt_tokens: c.prompt_tokens as u32,
                    output: c.output,
                    seed: c.sampling.seed,
                    // The receipt's input hash is over the prompt tokens: a paying client gets them to check it.
                    prompt_ids: std::mem::take(&mut prompt_ids),
                    model: Some(model.clone()),
                    receipt,
                };
                (GenerateEvent::Done(done), true)
            }
            Some(Metered::Failed(e)) => (GenerateEvent::Error(refusal(&e)), true),
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
    // Dropping `events` cancels a generation still running (a paid one is charged for what it produced).
    drop(events);
    drop(cancel);
    let _ = w.close().await;
}

async fn send<W: futures::AsyncWrite + Unpin>(w: &mut W, event: &GenerateEvent) -> std::io::Result<()> {
    write_frame(w, 0, &encode(event)).await?;
    w.flush().await
}
