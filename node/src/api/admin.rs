//! Operator endpoints on the (private) metrics port: `GET /admin/status` and `POST /admin/redeem`, used by
//! `mlbridge-node status` and `mlbridge-node redeem --now` while the node runs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::payment::PaymentService;

/// The admin routes.
pub fn router(state: AppState) -> Router {
    Router::new().route("/admin/status", get(status)).route("/admin/redeem", post(redeem)).with_state(state)
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
