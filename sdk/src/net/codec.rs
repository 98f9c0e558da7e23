//! The request-response codec of [`crate::protocol::INFER_PROTOCOL`]: our CBOR messages, with the size limit
//! enforced while reading (at most `limit + 1` bytes are ever buffered) and before decoding.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::protocol::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Request, Response, decode, encode};

/// Codec for [`Request`] / [`Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Codec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over the {limit}-byte limit")));
    }
    Ok(buf)
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
        let bytes = match read_limited(io, MAX_REQUEST_BYTES).await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Request::Malformed(e.to_string())),
            Err(e) => return Err(e),
        };
        Ok(decode(&bytes, MAX_REQUEST_BYTES).unwrap_or_else(|e| Request::Malformed(e.to_string())))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        let bytes = read_limited(io, MAX_RESPONSE_BYTES).await?;
        decode(&bytes, MAX_RESPONSE_BYTES).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        if let Request::Malformed(_) = req {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "Request::Malformed is local and never sent"));
        }
        io.write_all(&encode(&req)).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        io.write_all(&encode(&res)).await?;
        io.close().await
    }
}
