//! The node's side of the multiplexed inference protocol ([`MUX_PROTOCOL`]): each long-lived stream a client opens
//! is served by its own task, outside the swarm task. Requests are read one frame at a time against the node's
//! inbound byte budget, checked as on `/mlbridge/infer/1` (version, per-peer rate and requests in flight, shutdown),
//! run concurrently, and their answers written back by one writer per stream (flushed once per burst), in whatever
//! order they finish. Malformed frames count against the peer as invalid requests do; a frame over the size limit
//! closes the stream. A frame must arrive whole within [`FRAME_DEADLINE`] of its first byte (a trickling peer cannot
//! hold the budget), a request counts as in flight until its answer is written (a peer that stops reading stops
//! getting work done), and a write that makes no progress for [`FRAME_DEADLINE`] closes the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, keccak256};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use mlbridge_sdk::net::InboundBudget;
use mlbridge_sdk::net::mux::{Frame, MUX_PROTOCOL, ReadError, read_frame_within, write_frame};
use mlbridge_sdk::net::traffic::Proto;

/// A frame's header: its length (u32) and request id (u64).
const FRAME_HEADER: usize = 12;
use mlbridge_sdk::protocol::{ErrorKind, MAX_REQUEST_BYTES, Request, Response, WIRE_VERSION, decode, encode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::peers::PeerLoad;
use super::{Served, protocol_error, serve_embed, serve_infer};
use crate::inference::Engine;
use crate::metrics::NodeMetrics;
use crate::payment::PaymentService;
use crate::{Error, Result};

/// Longest a frame may take to arrive once started, and a burst of answers to be written.
pub(super) const FRAME_DEADLINE: Duration = Duration::from_secs(30);

/// What every stream task needs.
pub(super) struct MuxServer {
    pub(super) engine: Engine,
    pub(super) payments: Option<Arc<PaymentService>>,
    pub(super) load: Arc<PeerLoad>,
    pub(super) metrics: NodeMetrics,
    pub(super) budget: Arc<InboundBudget>,
    /// Invalid requests, for the swarm task to count (and ban at the limit).
    pub(super) strikes: mpsc::Sender<PeerId>,
    /// Set when the node is shutting down: new requests are turned away, answers in flight still go out.
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) latency: Duration,
}

/// Accept multiplexed streams until `shutdown`.
pub(super) fn spawn(
    mut control: libp2p_stream::Control,
    server: Arc<MuxServer>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let mut incoming = control
        .accept(StreamProtocol::new(MUX_PROTOCOL))
        .map_err(|e| Error::Network(format!("accepting {MUX_PROTOCOL}: {e}")))?;
    Ok(tokio::spawn(async move {
        loop {
            let (peer, stream) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = incoming.next() => match next { Some(s) => s, None => break },
            };
            if !server.load.open_stream(peer) {
                tracing::debug!(target: "node::p2p", %peer, "refusing another multiplexed stream from one peer");
                continue; // dropped: closed
            }
            let server = server.clone();
            tokio::spawn(async move {
                serve_stream(&server, peer, stream).await;
                server.load.close_stream(peer);
            });
        }
    }))
}

/// A request admitted against the peer's in-flight limit: released when its answer is written, or dropped unsent.
pub(super) struct Admitted {
    load: Arc<PeerLoad>,
    peer: PeerId,
}

impl Admitted {
    /// Admit one request of `peer` against its rate and in-flight limits; the error says which it is over.
    pub(super) fn new(load: &Arc<PeerLoad>, peer: PeerId) -> std::result::Result<Self, String> {
        load.admit(peer)?;
        Ok(Self { load: load.clone(), peer })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.load.done(self.peer);
    }
}

/// An answer waiting to be written: its id, its bytes, and the admission it releases once written.
type Outgoing = (u64, Vec<u8>, Option<Admitted>);

/// Answers waiting to be written on one stream.
type Answers = mpsc::Sender<Outgoing>;

async fn serve_stream(server: &Arc<MuxServer>, peer: PeerId, stream: libp2p::Stream) {
    let (mut r, w) = stream.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(256);
    // Writes end when the reader and every request it started are done (all senders dropped), or when one write
    // makes no progress within the deadline (the peer stopped reading): answers still queued are dropped, releasing
    // theirs, and the reader stops taking work.
    let traffic = server.metrics.p2p_bytes.clone();
    let writer = tokio::spawn(async move {
        let mut w = futures::io::BufWriter::with_capacity(64 << 10, w);
        let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer does not read its answers");
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some((id, body, admitted)) = next.take() {
                tokio::time::timeout(FRAME_DEADLINE, write_frame(&mut w, id, &body)).await.map_err(|_| stalled())??;
                traffic.add(Proto::Mux, false, FRAME_HEADER + body.len());
                drop(admitted);
                next = rx.try_recv().ok();
            }
            tokio::time::timeout(FRAME_DEADLINE, w.flush()).await.map_err(|_| stalled())??;
        }
        w.close().await
    });
    // Credit paid ahead is spent only by whoever paid it: the payer's credit key when the request carries one, else
    // the peer (the connection's handshake proved its id).
    let spender = Some(keccak256(peer.to_bytes()));
    // The writer gone (a peer that stopped reading), no more work is taken.
    while !tx.is_closed() {
        match read_frame_within(&mut r, MAX_REQUEST_BYTES, Some(&server.budget), Some(FRAME_DEADLINE)).await {
            Ok(Some(frame)) => {
                server.metrics.p2p_bytes.add(Proto::Mux, true, FRAME_HEADER + frame.body.len());
                on_frame(server, peer, spender, frame, &tx).await
            }
            Ok(None) | Err(ReadError::Io(_)) => break,
            Err(ReadError::Busy { id }) => {
                let msg = "the node is reading too many requests at once; retry shortly";
                reply(server, &tx, id, protocol_error(ErrorKind::Overloaded, msg), "overloaded").await;
            }
            Err(ReadError::TooLarge { id, size, limit }) => {
                // Answered (when the id got through), then the stream is closed: its body is never read.
                tracing::debug!(target: "node::p2p", %peer, size, limit, "closing a stream: frame over the limit");
                let _ = server.strikes.send(peer).await;
                let msg = format!("not a request: message of {size} bytes is over the {limit}-byte limit");
                let response = protocol_error(ErrorKind::Malformed, msg);
                match id {
                    Some(id) => reply(server, &tx, id, response, "malformed").await,
                    None => server.metrics.p2p_requests.with_label_values(&["malformed"]).inc(),
                }
                break;
            }
        }
    }
    drop(tx);
    if let Ok(Err(err)) = writer.await {
        tracing::debug!(target: "node::p2p", %peer, %err, "a multiplexed stream closed while answering");
    }
}

async fn reply(server: &MuxServer, tx: &Answers, id: u64, response: Response, outcome: &'static str) {
    server.metrics.p2p_requests.with_label_values(&[outcome]).inc();
    let _ = tx.send((id, encode(&response), None)).await;
}

async fn on_frame(server: &Arc<MuxServer>, peer: PeerId, spender: Option<B256>, frame: Frame, tx: &Answers) {
    let started = Instant::now();
    let id = frame.id;
    let request = match decode::<Request>(&frame.body, MAX_REQUEST_BYTES) {
        Ok(r) => r,
        Err(e) => {
            let _ = server.strikes.send(peer).await;
            let response = protocol_error(ErrorKind::Malformed, format!("not a request: {e}"));
            return reply(server, tx, id, response, "malformed").await;
        }
    };
    drop(frame);
    if request.version() != WIRE_VERSION {
        let msg = format!("wire version {} is not supported; this node speaks {WIRE_VERSION}", request.version());
        return reply(server, tx, id, protocol_error(ErrorKind::UnsupportedVersion, msg), "unsupported_version").await;
    }
    if !matches!(request, Request::Infer(_) | Request::Embed(_)) {
        let msg = format!("{MUX_PROTOCOL} carries inference and embeddings only; use /mlbridge/infer/1");
        return reply(server, tx, id, protocol_error(ErrorKind::BadInput, msg), "client_error").await;
    }
    if server.stopping.load(Ordering::SeqCst) {
        let response = protocol_error(ErrorKind::Overloaded, "the node is shutting down");
        return reply(server, tx, id, response, "overloaded").await;
    }
    let admitted = match Admitted::new(&server.load, peer) {
        Ok(a) => a,
        Err(msg) => return reply(server, tx, id, protocol_error(ErrorKind::Overloaded, msg), "overloaded").await,
    };
    let (server, tx) = (server.clone(), tx.clone());
    tokio::spawn(async move {
        if !server.latency.is_zero() {
            tokio::time::sleep(server.latency).await;
        }
        let payments = server.payments.as_deref();
        let Served { response, outcome } = match request {
            Request::Infer(r) => serve_infer(&server.engine, payments, r, spender).await,
            Request::Embed(r) => serve_embed(&server.engine, payments, r, spender).await,
            _ => unreachable!("refused above"),
        };
        // In flight until written (or dropped with the stream).
        let _ = tx.send((id, encode(&response), Some(admitted))).await;
        server.metrics.p2p_requests.with_label_values(&[outcome]).inc();
        if outcome == "ok" {
            server.metrics.p2p_request_seconds.observe(started.elapsed().as_secs_f64());
        }
    });
}
