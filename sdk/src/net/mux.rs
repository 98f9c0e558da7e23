//! The multiplexed inference protocol [`MUX_PROTOCOL`]: one long-lived stream per client and node carries many
//! requests and their answers, each framed with a request id, so a request costs no substream, no protocol
//! negotiation and no trip through either side's swarm task (libp2p-stream hands the stream to our own tasks).
//!
//! A frame is a 4-byte big-endian length `n`, then `n` bytes: an 8-byte big-endian request id and the CBOR body (a
//! [`Request`] from the client, a [`Response`] from the node). Answers may come in any order; the id pairs them.
//! The length is checked against the message's limit ([`crate::protocol::MAX_REQUEST_BYTES`], [`MAX_RESPONSE_BYTES`]) before anything
//! is buffered, and the node reads request bytes against its inbound budget as they arrive. The version is in the
//! protocol name and in every message, as on `/mlbridge/infer/1`, which stays for audits, bids and older peers.
//!
//! [`Pipes`] is the client's side: one pipe (stream, writer task, reader task) per node, opened on first use and
//! replaced when it breaks. Queued requests are written together and flushed once.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::codec::InboundBudget;
use crate::protocol::{MAX_RESPONSE_BYTES, Request, Response, decode, encode};

/// The multiplexed inference protocol (versioned like every ML Bridge protocol).
pub const MUX_PROTOCOL: &str = "/mlbridge/infer-mux/1";

/// Bytes of a frame before its body: the length and the request id.
const ID_BYTES: usize = 8;

/// Requests queued on one pipe before new ones wait (the node bounds what it runs per peer anyway).
const PIPE_QUEUE: usize = 1024;

/// Answers one pipe waits for at once (requests whose caller gave up are dropped from it first).
const MAX_PENDING: usize = 4096;

/// One frame read: its request id and body.
#[derive(Debug)]
pub struct Frame {
    /// The request id.
    pub id: u64,
    /// The CBOR body.
    pub body: Vec<u8>,
}

/// Why a frame could not be read whole.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed or ended in the middle of a frame.
    Io(io::Error),
    /// The frame is over `limit` (nothing of its body was read; the stream cannot be read on).
    TooLarge {
        /// Its request id, when the frame got that far (to answer it before closing).
        id: Option<u64>,
        /// The announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The inbound budget ran out while reading frame `id` (its body was skipped, so the stream goes on).
    Busy {
        /// The request id.
        id: u64,
    },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Write one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, id: u64, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(ID_BYTES + body.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
    let mut head = [0u8; 4 + ID_BYTES];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4..].copy_from_slice(&id.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(body).await
}

/// Read one frame whose body is at most `limit` bytes; `Ok(None)` at a clean end of stream. With a `budget`, body
/// bytes are counted against it as they arrive and given back when the frame is returned.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    budget: Option<&InboundBudget>,
) -> Result<Option<Frame>, ReadError> {
    read_frame_within(r, limit, budget, None).await
}

/// [`read_frame`], with at most `deadline` from a frame's first byte to its last (a peer trickling a frame cannot
/// hold the budget); waiting for a frame to start is not bounded.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    budget: Option<&InboundBudget>,
    deadline: Option<std::time::Duration>,
) -> Result<Option<Frame>, ReadError> {
    let mut first = [0u8; 1];
    // A clean end only between frames: once a frame started, running out is an error.
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let rest = read_rest(r, first[0], limit, budget);
    match deadline {
        None => rest.await,
        Some(d) => tokio::time::timeout(d, rest)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "a frame took too long to arrive").into())),
    }
}

async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    first: u8,
    limit: usize,
    budget: Option<&InboundBudget>,
) -> Result<Option<Frame>, ReadError> {
    let mut len = [first, 0, 0, 0];
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len < ID_BYTES {
        return Err(ReadError::TooLarge { id: None, size: 0, limit });
    }
    let mut id = [0u8; ID_BYTES];
    r.read_exact(&mut id).await?;
    let id = u64::from_be_bytes(id);
    if len - ID_BYTES > limit {
        return Err(ReadError::TooLarge { id: Some(id), size: len - ID_BYTES, limit });
    }
    let size = len - ID_BYTES;
    let Some(budget) = budget else {
        let mut body = vec![0u8; size];
        r.read_exact(&mut body).await?;
        return Ok(Some(Frame { id, body }));
    };
    // Chunk by chunk, each drawn from the budget first: an idle or trickling peer holds only what it sent. Past the
    // budget the rest of the frame is read and dropped, so the stream stays in step.
    struct Taken<'a>(&'a InboundBudget, usize);
    impl Drop for Taken<'_> {
        fn drop(&mut self) {
            self.0.give(self.1);
        }
    }
    let mut taken = Taken(budget, 0);
    let mut body = Vec::new();
    let (mut got, mut busy) = (0, false);
    let mut chunk = [0u8; 8 << 10];
    while got < size {
        let want = (size - got).min(chunk.len());
        let n = r.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
        if busy {
            continue;
        }
        if !budget.take(n) {
            busy = true;
            body = Vec::new();
            continue;
        }
        taken.1 += n;
        body.extend_from_slice(&chunk[..n]);
    }
    if busy {
        return Err(ReadError::Busy { id });
    }
    Ok(Some(Frame { id, body }))
}

/// What went wrong sending over a pipe.
#[derive(Debug)]
pub enum PipeError {
    /// The node does not speak [`MUX_PROTOCOL`] (an older node): use `/mlbridge/infer/1`.
    Unsupported,
    /// The stream could not be opened or broke; the request may or may not have reached the node.
    Failed(String),
}

struct Outgoing {
    body: Vec<u8>,
    reply: oneshot::Sender<Result<Response, String>>,
}

#[derive(Clone)]
struct Pipe {
    queue: mpsc::Sender<Outgoing>,
}

/// One node's pipe, opened by one caller at a time (only callers to that node wait for it).
type Slot = Arc<tokio::sync::Mutex<Option<Pipe>>>;

/// How long a node that does not speak [`MUX_PROTOCOL`] is not asked again.
const UNSUPPORTED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The client's pipes, one per node. Cheap to clone.
#[derive(Clone)]
pub struct Pipes {
    control: libp2p_stream::Control,
    slots: Arc<Mutex<HashMap<PeerId, Slot>>>,
    unsupported: Arc<Mutex<HashMap<PeerId, std::time::Instant>>>,
}

impl std::fmt::Debug for Pipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipes").finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pipes {
    /// Pipes opened through `control` (the swarm's libp2p-stream behaviour).
    pub fn new(control: libp2p_stream::Control) -> Self {
        Self { control, slots: Arc::default(), unsupported: Arc::default() }
    }

    /// Send `request` to `peer` and wait for its answer (the caller bounds the wait).
    pub async fn request(&self, peer: PeerId, request: &Request) -> Result<Response, PipeError> {
        let body = encode(request);
        let (reply, answer) = oneshot::channel();
        let mut out = Outgoing { body, reply };
        for _ in 0..2 {
            let pipe = self.pipe(peer).await?;
            match pipe.queue.send(out).await {
                Ok(()) => {
                    return match answer.await {
                        Ok(Ok(r)) => Ok(r),
                        Ok(Err(e)) => Err(PipeError::Failed(e)),
                        Err(_) => Err(PipeError::Failed("the stream to the node closed".into())),
                    };
                }
                // The pipe died before taking it: open a new one once.
                Err(mpsc::error::SendError(back)) => out = back,
            }
        }
        Err(PipeError::Failed("the stream to the node keeps closing".into()))
    }

    /// Whether a live pipe to `peer` is open (a request can go without connecting first).
    pub fn has(&self, peer: PeerId) -> bool {
        let slot = locked(&self.slots).get(&peer).cloned();
        slot.is_some_and(|s| s.try_lock().is_ok_and(|p| p.as_ref().is_some_and(|p| !p.queue.is_closed())))
    }

    async fn pipe(&self, peer: PeerId) -> Result<Pipe, PipeError> {
        if locked(&self.unsupported).get(&peer).is_some_and(|at| at.elapsed() < UNSUPPORTED_FOR) {
            return Err(PipeError::Unsupported);
        }
        let slot = {
            let mut slots = locked(&self.slots);
            // A client that talked to many nodes over time: dead pipes' slots go.
            if slots.len() > 256 {
                slots.retain(|_, s| s.try_lock().map_or(true, |p| p.as_ref().is_some_and(|p| !p.queue.is_closed())));
            }
            slots.entry(peer).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(p) = slot.as_ref().filter(|p| !p.queue.is_closed()) {
            return Ok(p.clone());
        }
        let opened = self.control.clone().open_stream(peer, StreamProtocol::new(MUX_PROTOCOL)).await;
        let stream = match opened {
            Ok(s) => s,
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
                let mut unsupported = locked(&self.unsupported);
                unsupported.retain(|_, at| at.elapsed() < UNSUPPORTED_FOR);
                unsupported.insert(peer, std::time::Instant::now());
                return Err(PipeError::Unsupported);
            }
            Err(other) => return Err(PipeError::Failed(other.to_string())),
        };
        let (queue, rx) = mpsc::channel(PIPE_QUEUE);
        tokio::spawn(run_pipe(stream, rx));
        let pipe = Pipe { queue };
        *slot = Some(pipe.clone());
        Ok(pipe)
    }
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, String>>>>>;

fn lock(w: &Waiting) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Response, String>>>> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One pipe: the writer sends queued requests (flushing once per burst), the reader pairs answers with them by id.
/// When either side ends, every request still waiting fails.
async fn run_pipe(stream: libp2p::Stream, mut queue: mpsc::Receiver<Outgoing>) {
    let (mut r, w) = stream.split();
    let mut w = futures::io::BufWriter::with_capacity(64 << 10, w);
    let waiting: Waiting = Arc::default();
    let writer = {
        let waiting = waiting.clone();
        async move {
            let mut next_id = 0u64;
            while let Some(first) = queue.recv().await {
                let mut out = Some(first);
                while let Some(o) = out.take() {
                    next_id += 1;
                    {
                        let mut map = lock(&waiting);
                        if map.len() >= MAX_PENDING {
                            map.retain(|_, tx| !tx.is_closed());
                        }
                        if map.len() >= MAX_PENDING {
                            let _ = o.reply.send(Err("too many requests waiting on one node".into()));
                            out = queue.try_recv().ok();
                            continue;
                        }
                        map.insert(next_id, o.reply);
                    }
                    write_frame(&mut w, next_id, &o.body).await?;
                    out = queue.try_recv().ok();
                }
                w.flush().await?;
            }
            w.close().await
        }
    };
    let reader = {
        let waiting = waiting.clone();
        async move {
            loop {
                match read_frame(&mut r, MAX_RESPONSE_BYTES, None).await {
                    Ok(Some(Frame { id, body })) => {
                        let answer =
                            decode::<Response>(&body, MAX_RESPONSE_BYTES).map_err(|e| format!("bad answer: {e}"));
                        if let Some(tx) = lock(&waiting).remove(&id) {
                            let _ = tx.send(answer);
                        }
                    }
                    Ok(None) => return io::Result::Ok(()),
                    Err(ReadError::Io(e)) => return Err(e),
                    Err(ReadError::TooLarge { size, limit, .. }) => {
                        return Err(io::Error::other(format!(
                            "an answer of {size} bytes is over the {limit}-byte limit"
                        )));
                    }
                    Err(ReadError::Busy { .. }) => return Err(io::Error::other("unreachable: no budget on answers")),
                }
            }
        }
    };
    let why = tokio::select! {
        r = writer => r.err().map_or_else(|| "the client closed the stream".to_string(), |e| e.to_string()),
        r = reader => r.err().map_or_else(|| "the node closed the stream".to_string(), |e| e.to_string()),
    };
    for (_, tx) in lock(&waiting).drain() {
        let _ = tx.send(Err(why.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold_before_buffering() {
        let mut buf = Vec::new();
        write_frame(&mut buf, 7, b"hello").await.unwrap();
        write_frame(&mut buf, 8, &[1u8; 100]).await.unwrap();
        let mut r = futures::io::Cursor::new(buf.clone());
        let f = read_frame(&mut r, 100, None).await.unwrap().unwrap();
        assert_eq!((f.id, f.body.as_slice()), (7, b"hello".as_slice()));
        let f = read_frame(&mut r, 100, None).await.unwrap().unwrap();
        assert_eq!((f.id, f.body.len()), (8, 100));
        assert!(read_frame(&mut r, 100, None).await.unwrap().is_none(), "a clean end");
        // Over the limit: refused from the length alone.
        let mut r = futures::io::Cursor::new(buf.clone());
        read_frame(&mut r, 100, None).await.unwrap();
        assert!(matches!(
            read_frame(&mut r, 99, None).await,
            Err(ReadError::TooLarge { id: Some(8), size: 100, limit: 99 })
        ));
        // A 4 GiB announcement with nothing behind it allocates nothing.
        let mut r = futures::io::Cursor::new([u32::MAX.to_be_bytes(), [0, 0, 0, 0], [0, 0, 0, 5]].concat());
        assert!(matches!(read_frame(&mut r, 1 << 20, None).await, Err(ReadError::TooLarge { id: Some(5), .. })));
        // A frame cut short is an error, not a frame.
        let mut r = futures::io::Cursor::new(buf[..20].to_vec());
        read_frame(&mut r, 100, None).await.unwrap();
        assert!(matches!(read_frame(&mut r, 100, None).await, Err(ReadError::Io(_))));
    }

    #[tokio::test]
    async fn the_budget_counts_bytes_while_reading_and_a_frame_over_it_is_skipped() {
        let budget = InboundBudget::new(64);
        let mut buf = Vec::new();
        write_frame(&mut buf, 1, &[9u8; 100]).await.unwrap();
        write_frame(&mut buf, 2, &[9u8; 10]).await.unwrap();
        let mut r = futures::io::Cursor::new(buf);
        assert!(matches!(read_frame(&mut r, 1000, Some(&budget)).await, Err(ReadError::Busy { id: 1 })));
        assert_eq!(budget.used(), 0, "nothing stays held");
        let f = read_frame(&mut r, 1000, Some(&budget)).await.unwrap().unwrap();
        assert_eq!((f.id, f.body.len()), (2, 10), "the stream goes on after a skipped frame");
        assert_eq!(budget.used(), 0);
    }
}
