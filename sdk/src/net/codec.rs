//! The request-response codec of [`crate::protocol::INFER_PROTOCOL`]: our CBOR messages, with the size limit
//! enforced while reading (at most `limit + 1` bytes are ever buffered) and before decoding, and a byte budget
//! shared by every inbound request being read: the sum buffered across all connections and streams never exceeds
//! it (a request that would cross it is turned away as the node being busy).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use super::traffic::{Proto, Traffic};
use crate::protocol::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Request, Response, decode, encode};

/// Bytes of inbound requests being read, across every connection, and the most there may be.
#[derive(Debug)]
pub struct InboundBudget {
    used: AtomicUsize,
    max: usize,
}

impl InboundBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), max })
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_add(n).filter(|t| *t <= self.max))
            .is_ok()
    }

    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Codec for [`Request`] / [`Response`].
#[derive(Clone, Debug)]
pub struct Codec {
    budget: Arc<InboundBudget>,
    traffic: Traffic,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(InboundBudget::new(DEFAULT_INBOUND_BUDGET))
    }
}

impl Codec {
    /// A codec whose inbound requests draw on `budget`.
    pub fn new(budget: Arc<InboundBudget>) -> Self {
        Self { budget, traffic: Traffic::default() }
    }

    /// Count the bytes read and written in `traffic`.
    pub fn with_traffic(self, traffic: Traffic) -> Self {
        Self { traffic, ..self }
    }
}

/// Default budget of inbound request bytes being read at once: 256 MiB.
pub const DEFAULT_INBOUND_BUDGET: usize = 256 << 20;

/// Returns the budget's bytes when dropped.
#[derive(Debug)]
struct Held<'a> {
    budget: &'a InboundBudget,
    bytes: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Bytes read at a time. Each stream being read holds one such buffer (not counted in the budget; bounded by the
/// connection and stream limits), and the budget counts only what was actually received.
const CHUNK: usize = 8 << 10;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over the {limit}-byte limit")));
    }
    Ok(buf)
}

/// Read at most `limit` bytes, in chunks each drawn from `budget` first; the bytes stay held until the caller drops
/// the guard. `Ok(None)` when the budget is exhausted.
async fn read_budgeted<'a, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    budget: &'a InboundBudget,
) -> io::Result<Option<(Vec<u8>, Held<'a>)>> {
    let mut held = Held { budget, bytes: 0 };
    let mut buf = Vec::new();
    let mut chunk = [0u8; CHUNK];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some((buf, held)));
        }
        // Only bytes received count, so an idle or trickling stream holds no more than it sent.
        if !budget.take(n) {
            return Ok(None);
        }
        held.bytes += n;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limit {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over the {limit}-byte limit")));
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    /// Bytes that are no request become [`Request::Malformed`] instead of an error: libp2p reports failed reads to
    /// nobody, and the receiver must be able to answer and penalise the sender.
    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        let (bytes, _held) = match read_budgeted(io, MAX_REQUEST_BYTES, &self.budget).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Request::Busy),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Request::Malformed(e.to_string())),
            Err(e) => return Err(e),
        };
        self.traffic.add(Proto::Infer, true, bytes.len());
        Ok(decode(&bytes, MAX_REQUEST_BYTES).unwrap_or_else(|e| Request::Malformed(e.to_string())))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        let bytes = read_limited(io, MAX_RESPONSE_BYTES).await?;
        self.traffic.add(Proto::Infer, true, bytes.len());
        decode(&bytes, MAX_RESPONSE_BYTES).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        if let Request::Malformed(_) | Request::Busy = req {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "Malformed and Busy are local and never sent"));
        }
        let bytes = encode(&req);
        self.traffic.add(Proto::Infer, false, bytes.len());
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        let bytes = encode(&res);
        self.traffic.add(Proto::Infer, false, bytes.len());
        io.write_all(&bytes).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn inbound_reads_draw_on_one_shared_budget_and_give_it_back() {
        let budget = InboundBudget::new(100_000);
        // A request that fits: read, its exact size held while in use, returned when dropped.
        let small = vec![7u8; 30_000];
        let (bytes, held) = run(read_budgeted(&mut small.as_slice(), 1 << 20, &budget)).unwrap().unwrap();
        assert_eq!(bytes, small);
        assert_eq!(budget.used(), 30_000, "exactly what was received is held");
        // Meanwhile a second one that does not fit beside it is turned away, and what it took is returned.
        let big = vec![1u8; 80_000];
        assert!(run(read_budgeted(&mut big.as_slice(), 1 << 20, &budget)).unwrap().is_none());
        assert_eq!(budget.used(), 30_000);
        drop(held);
        assert_eq!(budget.used(), 0, "everything given back");
        // Now it fits.
        assert!(run(read_budgeted(&mut big.as_slice(), 1 << 20, &budget)).unwrap().is_some());
        assert_eq!(budget.used(), 0);
        // Over the per-message limit: an error, budget intact.
        let err = run(read_budgeted(&mut big.as_slice(), 20_000, &budget)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_request_beyond_the_budget_is_busy_not_malformed() {
        let mut codec = Codec::new(InboundBudget::new(CHUNK));
        let req = vec![0u8; 3 * CHUNK];
        let proto = StreamProtocol::new(crate::protocol::INFER_PROTOCOL);
        let got = run(libp2p::request_response::Codec::read_request(&mut codec, &proto, &mut req.as_slice())).unwrap();
        assert_eq!(got, Request::Busy);
    }
}
