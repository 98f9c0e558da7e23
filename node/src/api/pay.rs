//! Payment over HTTP, for clients that do not speak libp2p: a voucher in the `X-MLBridge-Voucher` header
//! (`<channel id hex>:<cumulative amount in wei, decimal>:<65-byte signature hex>`) covering the job's units
//! (samples or texts) x the model's price (for a text generation: its most cost, every prompt token and
//! `max_tokens` output tokens; it is charged for the tokens produced), and the node's receipt in the answer (`X-MLBridge-Receipt` header and the
//! body: the receipt, its Merkle proof and the signed batch; the job id in it is the node's).
//!
//! Payment intervals: a voucher may pay ahead. The credit it leaves is drawn on by later requests that carry no
//! voucher but `X-MLBridge-Channel: <channel id>` and the same `X-MLBridge-Credit-Key: <secret, 16 to 64 bytes hex>`
//! the voucher came with (the key proves the request comes from whoever paid; send it only over TLS or loopback). A
//! voucher without a credit key pays for its own job only. Addresses on the free list (operators' own use) pay nothing unless they
//! attach a voucher; a request carrying a forwarding header is never free (it came through a proxy).

use std::net::SocketAddr;

use alloy::primitives::{B256, U256};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use mlbridge_sdk::protocol::{PaymentRefusal, ReceiptMsg, WireVoucher};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::inference::ModelConfig;
use crate::payment::{Authorization, PaymentService};

/// Header carrying the voucher.
pub const VOUCHER_HEADER: &str = "x-mlbridge-voucher";
/// Header carrying the node's receipt (JSON).
pub const RECEIPT_HEADER: &str = "x-mlbridge-receipt";
/// Header naming the channel whose credit (paid ahead) a request without a voucher draws on.
pub const CHANNEL_HEADER: &str = "x-mlbridge-channel";
/// Header carrying the client's secret credit key (hex, 16 to 64 bytes).
pub const CREDIT_KEY_HEADER: &str = "x-mlbridge-credit-key";

pub use crate::payment::credit_spender;

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|h| h.to_str().map(str::trim).map_err(|_| ApiError::bad_request(format!("the {name} header is not text"))))
        .transpose()
}

/// Format a voucher for [`VOUCHER_HEADER`].
pub fn voucher_header(v: &WireVoucher) -> String {
    format!("{}:{}:0x{}", v.channel_id, v.cumulative_amount, hex::encode(v.signature))
}

/// Parse [`VOUCHER_HEADER`].
pub fn parse_voucher(text: &str) -> Result<WireVoucher, String> {
    let mut parts = text.trim().split(':');
    let (Some(ch), Some(amount), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("expected <channel id>:<cumulative amount>:<signature>".into());
    };
    let channel_id: B256 = ch.parse().map_err(|e| format!("channel id: {e}"))?;
    let cumulative_amount = U256::from_str_radix(amount, 10).map_err(|e| format!("amount: {e}"))?;
    let bytes = hex::decode(sig.trim_start_matches("0x")).map_err(|e| format!("signature: {e}"))?;
    let signature: [u8; 65] = bytes.try_into().map_err(|_| "signature: must be 65 bytes".to_string())?;
    Ok(WireVoucher { channel_id, cumulative_amount, signature })
}

/// A receipt as JSON: the receipt's fields, its Merkle proof and the signed batch (hex signature).
pub fn receipt_json(r: &ReceiptMsg) -> Value {
    json!({
        "job_id": r.job_id, "model_id": r.model_id, "input_hash": r.input_hash, "output_hash": r.output_hash,
        "units": r.units.to_string(), "price": r.price.to_string(), "channel_id": r.channel_id,
        "issued_at": r.issued_at, "proof": r.proof,
        "batch": {
            "root": r.batch.root, "node": r.batch.node, "count": r.batch.count, "issued_at": r.batch.issued_at,
            "signature": format!("0x{}", hex::encode(r.batch.signature)),
        },
    })
}

impl From<Box<PaymentRefusal>> for ApiError {
    fn from(r: Box<PaymentRefusal>) -> Self {
        let status = match *r {
            PaymentRefusal::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::PAYMENT_REQUIRED,
        };
        ApiError::with_status(status, r.to_string())
    }
}

/// The caller's address, when the server knows it (`into_make_service_with_connect_info`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

/// A paid HTTP job in progress.
pub(crate) struct HttpPayment<'a> {
    pub(crate) service: &'a PaymentService,
    pub(crate) auth: Authorization,
}

/// Check the request's payment for a job of `units` (samples, texts) on `config`, priced per unit; `None` when the
/// node, the model or the caller is free.
pub(crate) fn authorize<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    config: &ModelConfig,
    units: u64,
) -> Result<Option<HttpPayment<'a>>, ApiError> {
    authorize_priced(state, headers, peer, U256::from(config.price_wei), units)
}

/// [`authorize`] for `units` at `unit_price` each.
pub(crate) fn authorize_priced<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    unit_price: U256,
    units: u64,
) -> Result<Option<HttpPayment<'a>>, ApiError> {
    let Some(service) = state.payments.as_deref() else { return Ok(None) };
    if unit_price.is_zero() {
        return Ok(None);
    }
    let PayHeaders { voucher, channel, spender } = pay_headers(headers)?;
    // Free callers pay nothing unless they attach a voucher (or name a channel) anyway.
    if voucher.is_none() && channel.is_none() && is_free_caller(service, headers, peer) {
        service.metrics().free_jobs.inc();
        return Ok(None);
    }
    let auth = service.authorize(voucher.as_ref(), channel, spender, unit_price, units)?;
    Ok(Some(HttpPayment { service, auth }))
}

/// Whether this request will pay on a node that charges: it brings payment headers, or its caller is not on the
/// free list.
pub(crate) fn pays(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<bool, ApiError> {
    let Some(service) = state.payments.as_deref() else { return Ok(false) };
    let h = pay_headers(headers)?;
    Ok(h.voucher.is_some() || h.channel.is_some() || !is_free_caller(service, headers, peer))
}

/// Refuse (402) a request to a priced model, before its prompt costs any work, when it brings no payment headers and
/// is not free (`most` is what its voucher must cover: a bound, as the prompt is not tokenized yet), or when its
/// voucher or credit cannot pay even `least`, the cheapest job.
pub(crate) fn require_payment(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    most: U256,
    least: U256,
) -> Result<(), ApiError> {
    let Some(service) = state.payments.as_deref() else { return Ok(()) };
    let PayHeaders { voucher, channel, spender } = pay_headers(headers)?;
    if most.is_zero() {
        return Ok(());
    }
    if voucher.is_some() || channel.is_some() {
        return Ok(service.precheck(voucher.as_ref(), channel, spender, least)?);
    }
    if is_free_caller(service, headers, peer) {
        return Ok(());
    }
    service.metrics().refused.with_label_values(&["no_voucher"]).inc();
    Err(Box::new(PaymentRefusal::Required { price: most, payee: service.payee() }).into())
}

fn is_free_caller(service: &PaymentService, headers: &HeaderMap, peer: Option<SocketAddr>) -> bool {
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|h| headers.contains_key(*h));
    peer.is_some_and(|p| service.is_free(p.ip(), forwarded))
}

/// A request's payment headers, parsed.
struct PayHeaders {
    voucher: Option<WireVoucher>,
    channel: Option<B256>,
    spender: Option<B256>,
}

fn pay_headers(headers: &HeaderMap) -> Result<PayHeaders, ApiError> {
    let voucher = header_text(headers, VOUCHER_HEADER)?
        .map(|t| parse_voucher(t).map_err(|e| ApiError::bad_request(format!("bad {VOUCHER_HEADER}: {e}"))))
        .transpose()?;
    let channel = header_text(headers, CHANNEL_HEADER)?
        .map(|t| t.parse::<B256>().map_err(|e| ApiError::bad_request(format!("bad {CHANNEL_HEADER}: {e}"))))
        .transpose()?;
    let spender = header_text(headers, CREDIT_KEY_HEADER)?
        .map(|t| match hex::decode(t.trim_start_matches("0x")) {
            Ok(key) if (16..=64).contains(&key.len()) => Ok(credit_spender(&key)),
            _ => Err(ApiError::bad_request(format!("bad {CREDIT_KEY_HEADER}: expected 16 to 64 bytes in hex"))),
        })
        .transpose()?;
    if let (Some(v), Some(c)) = (&voucher, channel)
        && v.channel_id != c
    {
        return Err(ApiError::bad_request(format!("{CHANNEL_HEADER} names another channel than the voucher")));
    }
    Ok(PayHeaders { voucher, channel, spender })
}

/// The receipt as a response header.
pub(crate) fn receipt_header(r: &ReceiptMsg) -> (axum::http::HeaderName, HeaderValue) {
    let value = HeaderValue::from_str(&receipt_json(r).to_string()).unwrap_or(HeaderValue::from_static("{}"));
    (axum::http::HeaderName::from_static(RECEIPT_HEADER), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voucher_header_round_trips_and_garbage_is_refused() {
        let v = WireVoucher {
            channel_id: B256::repeat_byte(3),
            cumulative_amount: U256::from(12345u64),
            signature: [7; 65],
        };
        assert_eq!(parse_voucher(&voucher_header(&v)).unwrap(), v);
        assert!(parse_voucher("nonsense").is_err());
        assert!(parse_voucher(&format!("{}:12:0x00", B256::ZERO)).is_err(), "short signature");
        assert!(parse_voucher(&format!("{}:-1:0x{}", B256::ZERO, "00".repeat(65))).is_err(), "negative amount");
    }
}
