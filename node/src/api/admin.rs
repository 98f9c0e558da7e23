//! Operator endpoints on the metrics port: `GET /admin/status` and `POST /admin/redeem`, used by
//! `mlbridge-node status` and `mlbridge-node redeem --now` while the node runs. The metrics port is often opened to
//! a scraper, so every admin call needs `Authorization: Bearer <token>`: a random token the node writes at start to
//! a file next to its ledger ([`token_path`], readable by the operator's account only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::payment::PaymentService;

/// The admin routes (refused with 401 without the node's token).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/redeem", post(redeem))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Where a node with ledger `ledger` keeps its admin token.
pub fn token_path(ledger: &std::path::Path) -> std::path::PathBuf {
    let mut name = ledger.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_else(|| "ledger".into());
    name.push(".admin-token");
    ledger.with_file_name(name)
}

/// A fresh random token written to [`token_path`] with mode 0600.
pub fn write_token(ledger: &std::path::Path) -> crate::Result<std::sync::Arc<str>> {
    use std::io::Write;
    let token: std::sync::Arc<str> =
        alloy::hex::encode(alloy::signers::local::PrivateKeySigner::random().to_bytes()).into();
    let path = token_path(ledger);
    let fail = |e: std::io::Error| crate::Error::Config {
        path: "payment.ledger".into(),
        reason: format!("cannot write the admin token to {}: {e}", path.display()),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(fail)?;
    // An existing file keeps its old mode on open: make it the operator's alone again.
    #[cfg(unix)]
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(fail)?;
    file.write_all(token.as_bytes()).map_err(fail)?;
    Ok(token)
}

async fn require_token(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let ok = match (&state.admin_token, given.and_then(|g| g.strip_prefix("Bearer "))) {
        (Some(token), Some(given)) => {
            // Constant-time comparison: the token must not leak byte by byte through timing.
            token.len() == given.len() && token.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        }
        _ => false,
    };
    if ok {
        next.run(req).await
    } else {
        ApiError::with_status(
            StatusCode::UNAUTHORIZED,
            "admin endpoints need the node's token (Authorization: Bearer, from the file next to the ledger)",
        )
        .into_response()
    }
}

fn service(state: &AppState) -> Result<&PaymentService, ApiError> {
    state
        .payments
        .as_deref()
        .ok_or_else(|| ApiError::not_found("this node is not in paid mode ([payment] enabled = false)"))
}

/// The node's payment state as JSON.
pub fn status_json(p: &PaymentService) -> Result<Value, crate::Error> {
    let head = p.gate().watcher().head();
    let channels: Vec<Value> = p
        .gate()
        .entries()?
        .iter()
        .map(|e| {
            json!({
                "channel": e.channel_id, "payer": e.payer, "jobs": e.jobs, "charged_wei": e.charged.to_string(),
                "best_voucher_wei": e.best_amount.to_string(), "redeemed_wei": e.redeemed.to_string(),
                "unredeemed_wei": e.unredeemed().to_string(), "deadline": e.deadline, "failed": e.failed,
            })
        })
        .collect();
    let settlements: Vec<Value> = p
        .gate()
        .ledger()
        .settlements(10)?
        .iter()
        .map(|s| {
            json!({
                "tx": s.tx_hash, "block": s.block, "confirmations": (head + 1).saturating_sub(s.block),
                "channels": s.channels, "jobs": s.jobs, "amount_wei": s.amount.to_string(),
                "protocol_fee_wei": s.protocol_fee.to_string(), "gas_used": s.gas_used,
                "gas_cost_wei": s.gas_cost.to_string(), "at_ms": s.at_ms,
            })
        })
        .collect();
    Ok(json!({ "payee": p.payee(), "head": head, "channels": channels, "settlements": settlements }))
}

async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(status_json(service(&state)?)?))
}

async fn redeem(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let report = service(&state)?
        .settler()
        .settle_now()
        .await
        .map_err(|e| ApiError::with_status(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}
