//! The KServe v2 binary tensor data extension: a request or answer is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the raw little-endian bytes of the tensors whose
//! `parameters.binary_data_size` says so, in the order they are listed. Large tensors skip JSON numbers entirely.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mlbridge_sdk::{DataType, TensorData};
use serde::de::DeserializeOwned;

use super::error::{ApiError, require_json_type};

/// The header that gives the JSON part's length.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request body: the JSON header, and the binary section that follows it (empty for a plain JSON request).
pub struct InferBody<T> {
    /// The JSON part.
    pub header: T,
    /// The bytes after the JSON part.
    pub binary: bytes::Bytes,
}

impl<S, T> FromRequest<S> for InferBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_type(req.headers())?;
        let json_len = header_length(req.headers())?;
        let body = super::error::read_body(req, state).await?;
        let (json, binary) = match json_len {
            None => (body.clone(), bytes::Bytes::new()),
            Some(n) if n <= body.len() => (body.slice(..n), body.slice(n..)),
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
        };
        let header = super::error::parse_json(&json)?;
        Ok(Self { header, binary })
    }
}

fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    let Some(v) = headers.get(HEADER_LENGTH) else { return Ok(None) };
    v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
        ApiError::bad_request("Inference-Header-Content-Length must be the JSON header's length in bytes")
    })
}

/// `parameters.binary_data_size` of a tensor, if it says its data is in the binary section.
pub fn binary_size(parameters: Option<&serde_json::Value>, name: &str) -> Result<Option<usize>, ApiError> {
    let Some(size) = parameters.and_then(|p| p.get("binary_data_size")) else { return Ok(None) };
    size.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("input '{name}': binary_data_size must be a byte count")))
}

/// Read `size` bytes of `datatype` elements from the binary section at `*offset` (little-endian, as the extension
/// defines), moving the offset on.
pub fn take(
    binary: &[u8],
    offset: &mut usize,
    size: usize,
    datatype: DataType,
    name: &str,
) -> Result<TensorData, ApiError> {
    let end = offset.checked_add(size).filter(|&e| e <= binary.len()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "input '{name}': binary_data_size {size} runs past the end of the binary data ({} bytes after the JSON)",
            binary.len()
        ))
    })?;
    let bytes = &binary[*offset..end];
    *offset = end;
    TensorData::from_le(datatype, bytes).ok_or_else(|| {
        ApiError::bad_request(format!(
            "input '{name}': binary_data_size {size} is not a whole number of {} elements ({} bytes each)",
            datatype.as_str(),
            datatype.size_of()
        ))
    })
}

/// An answer with a JSON header and binary tensors after it.
pub fn response(json: Vec<u8>, binary: Vec<u8>) -> Response {
    let json_len = json.len();
    let mut body = json;
    body.extend_from_slice(&binary);
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(HEADER_LENGTH, HeaderValue::from(json_len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datatype_round_trips_and_bad_sizes_are_refused() {
        let cases = [
            TensorData::Bool(vec![true, false, true]),
            TensorData::Uint8(vec![0, 7, 255]),
            TensorData::Int8(vec![-128, 0, 127]),
            TensorData::Int32(vec![i32::MIN, -1, i32::MAX]),
            TensorData::Int64(vec![i64::MIN, 1, i64::MAX]),
            TensorData::Fp32(vec![-1.5, 0.0, f32::MAX]),
            TensorData::Fp64(vec![-2.25, 1e-300, f64::MAX]),
        ];
        let mut binary = Vec::new();
        for c in &cases {
            c.write_le(&mut binary);
        }
        let mut offset = 0;
        for c in &cases {
            let dt = c.datatype();
            let got = take(&binary, &mut offset, 3 * dt.size_of(), dt, "x").unwrap();
            assert_eq!(&got, c);
        }
        assert_eq!(offset, binary.len());
        let mut offset = 0;
        assert!(take(&binary, &mut offset, 5, DataType::Fp32, "x").is_err(), "not whole elements");
        let mut offset = binary.len() - 2;
        assert!(take(&binary, &mut offset, 4, DataType::Fp32, "x").is_err(), "past the end");
        let mut offset = usize::MAX;
        assert!(take(&binary, &mut offset, 4, DataType::Fp32, "x").is_err(), "no overflow");
    }
}
