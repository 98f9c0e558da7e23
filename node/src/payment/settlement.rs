//! Settlement: a background task that redeems the best voucher of each channel with `redeemMany`.
//!
//! A channel is due when its unredeemed value reaches `gas_multiple` times the current cost of redeeming it, when
//! its redemption deadline (expiry or close) is near, on `redeem --now` and at shutdown. Each batch is sent with the
//! chain layer's sender and tracked to N confirmations (the tracker re-sends it after a reorg); only then are the
//! `Redeemed` events written to the ledger. A revert naming a channel takes that channel out of the batch; a revert
//! that names none (a signature the contract's ECDSA refuses, say) is traced to its vouchers by simulating each one
//! alone, and those are taken out, so one bad voucher never stops settlement of the others. A refused channel is
//! marked failed (the gate takes no more work on it) and retried every round, except when it can never be redeemed
//! again (expired or closed). An RPC failure, a dropped transaction or a timeout leaves everything for the next
//! round. The contract pays a voucher
//! only above what is already redeemed, so a retried or duplicated batch can never pay twice, and since the ledger
//! keeps the best voucher until the chain shows it redeemed, none is ever lost.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionReceipt;
use mlbridge_sdk::chain::bindings::PaymentChannels;
use mlbridge_sdk::chain::{ConfirmationTracker, ContractRevert, TxSender, TxState, wait_confirmed};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::gate::{Gate, now_ms};
use super::ledger::{ChannelEntry, SettlementRecord};
use super::metrics::PaymentMetrics;
use crate::{Error, Result};

/// Settlement settings.
#[derive(Clone, Debug)]
pub struct SettlementConfig {
    /// How often to look for due channels.
    pub interval: Duration,
    /// Redeem a channel once its unredeemed value is this many times the gas cost of redeeming it.
    pub gas_multiple: u64,
    /// Gas one channel's redemption costs inside `redeemMany` (for the threshold).
    pub redeem_gas: u64,
    /// Redeem a channel whose deadline is this close, whatever its value.
    pub deadline_margin: Duration,
    /// Vouchers per transaction.
    pub max_batch: usize,
    /// Longest wait for a batch's confirmations before retrying it.
    pub confirm_timeout: Duration,
    /// Longest time spent settling at shutdown.
    pub shutdown_timeout: Duration,
}

/// What one settlement round did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SettleReport {
    /// Confirmed transactions.
    pub transactions: Vec<SettlementRecord>,
    /// Channels still due afterwards (a failure will be retried).
    pub pending: usize,
}

enum Command {
    Now(oneshot::Sender<std::result::Result<SettleReport, String>>),
}

/// The settlement task's end of its command channel.
#[derive(Debug)]
pub struct SettleInbox(mpsc::Receiver<Command>);

/// A handle and the inbox the task will read (the task may start later, e.g. once the RPC answers).
pub fn channel() -> (SettlerHandle, SettleInbox) {
    let (commands, rx) = mpsc::channel(8);
    (SettlerHandle { commands }, SettleInbox(rx))
}

/// Handle to the settlement task.
#[derive(Clone, Debug)]
pub struct SettlerHandle {
    commands: mpsc::Sender<Command>,
}

impl SettlerHandle {
    /// Redeem every channel with unredeemed value now and wait for the confirmations.
    pub async fn settle_now(&self) -> Result<SettleReport> {
        let (tx, rx) = oneshot::channel();
        let stopped = || Error::Settlement("the settlement task has stopped".into());
        self.commands.send(Command::Now(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?.map_err(Error::Settlement)
    }
}

/// The settlement task's state.
pub struct Settler {
    /// Voucher state.
    pub gate: Arc<Gate>,
    /// Sends from the operator key.
    pub sender: Arc<TxSender<DynProvider>>,
    /// Confirmation tracking.
    pub tracker: ConfirmationTracker,
    /// Chain access.
    pub provider: DynProvider,
    /// `PaymentChannels`.
    pub contract: alloy::primitives::Address,
    /// Settings.
    pub config: SettlementConfig,
    /// Metrics.
    pub metrics: PaymentMetrics,
}

impl Settler {
    /// Run until `shutdown`, then settle everything once more (bounded by `shutdown_timeout`).
    pub async fn run(self, inbox: SettleInbox, shutdown: CancellationToken) {
        let mut rx = inbox.0;
        {
            let mut tick = tokio::time::interval(self.config.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(Command::Now(reply)) = rx.recv() => {
                        let result = self.settle(true).await.map_err(|e| e.to_string());
                        self.metrics.settle_rounds.inc();
                        let _ = reply.send(result);
                    }
                    _ = tick.tick() => {
                        if let Err(err) = self.settle(false).await {
                            tracing::warn!(target: "node::payment", %err, "settlement round failed; retrying next round");
                        }
                        self.metrics.settle_rounds.inc();
                    }
                }
            }
            match tokio::time::timeout(self.config.shutdown_timeout, self.settle(true)).await {
                Ok(Ok(r)) => {
                    tracing::info!(target: "node::payment", txs = r.transactions.len(), left = r.pending, "settled at shutdown")
                }
                Ok(Err(err)) => {
                    tracing::warn!(target: "node::payment", %err, "settlement at shutdown failed; the ledger keeps the vouchers for the next start")
                }
                Err(_) => {
                    tracing::warn!(target: "node::payment", "settlement at shutdown timed out; the ledger keeps the vouchers for the next start")
                }
            }
        }
    }

    /// Channels due now (all with unredeemed value when `force`).
    async fn due(&self, force: bool) -> Result<Vec<ChannelEntry>> {
        let now = now_ms() / 1000;
        let mut entries = self.gate.entries()?;
        let synced = self.gate.watcher().synced();
        let mut undone = Vec::new();
        for e in &mut entries {
            if let super::watcher::Lookup::Confirmed(view) = self.gate.watcher().lookup(&e.channel_id) {
                // The chain may know of redemptions the ledger missed (a crash between confirmation and bookkeeping).
                if view.redeemed > e.redeemed {
                    self.gate.mark_redeemed(&e.channel_id, view.redeemed, synced)?;
                    e.redeemed = view.redeemed;
                }
                // The confirmed view has applied the block of our redemption and shows less: a reorg deeper than
                // the confirmation depth undid it. Take the ledger back to what the chain holds and redeem again.
                if view.redeemed < e.redeemed && e.redeemed_block != 0 && synced >= e.redeemed_block {
                    tracing::warn!(target: "node::payment", channel = %e.channel_id, block = e.redeemed_block,
                        "a reorg deeper than the confirmation depth undid a redemption; redeeming again");
                    self.metrics.redemptions_undone.inc();
                    self.gate.mark_reorged(&e.channel_id, view.redeemed)?;
                    e.redeemed = view.redeemed;
                    undone.push(e.channel_id);
                }
                // The deadline as the chain has it now: a close started after our last job moves it closer.
                e.deadline = view.deadline();
            }
        }
        entries.retain(|e| !e.unredeemed().is_zero());
        if force || entries.is_empty() {
            return Ok(entries);
        }
        let gas_price = self.provider.get_gas_price().await.map_err(rpc)?;
        let threshold =
            U256::from(gas_price) * U256::from(self.config.redeem_gas) * U256::from(self.config.gas_multiple);
        let margin = self.config.deadline_margin.as_secs();
        // A channel refused for a passing reason is retried every round: the gate refuses its client meanwhile.
        entries.retain(|e| {
            e.unredeemed() >= threshold
                || e.deadline <= now + margin
                || undone.contains(&e.channel_id)
                || e.failed.is_some()
        });
        Ok(entries)
    }

    async fn settle(&self, force: bool) -> Result<SettleReport> {
        let mut due = self.due(force).await?;
        let mut report = SettleReport::default();
        while !due.is_empty() {
            let take = due.len().min(self.config.max_batch.max(1));
            let batch: Vec<ChannelEntry> = due.drain(..take).collect();
            match self.redeem(batch).await {
                Ok(Some(record)) => report.transactions.push(record),
                Ok(None) => {}
                Err(e) => {
                    report.pending = due.len() + take;
                    return if report.transactions.is_empty() { Err(e) } else { Ok(report) };
                }
            }
        }
        self.update_gauges();
        Ok(report)
    }

    /// Redeem one batch: send, take out channels the contract refuses, wait for N confirmations, book it.
    async fn redeem(&self, mut batch: Vec<ChannelEntry>) -> Result<Option<SettlementRecord>> {
        let contract = PaymentChannels::new(self.contract, self.provider.clone());
        let sent = loop {
            if batch.is_empty() {
                return Ok(None);
            }
            let vouchers: Vec<PaymentChannels::SignedVoucher> = batch
                .iter()
                .map(|e| {
                    let (r, vs) = mlbridge_sdk::voucher::compact(&e.best_signature);
                    PaymentChannels::SignedVoucher { channelId: e.channel_id, cumulativeAmount: e.best_amount, r, vs }
                })
                .collect();
            let tx = contract.redeemMany(vouchers).into_transaction_request();
            match self.sender.send("redeem", tx).await {
                Ok(sent) => break sent,
                Err(mlbridge_sdk::Error::Contract(revert)) => {
                    let named = match &revert {
                        ContractRevert::PaymentChannels(e) => refused_channel(e),
                        _ => None,
                    };
                    let refused = match named {
                        Some((channel, permanent)) => vec![(channel, revert.to_string(), permanent)],
                        None => self.simulate_each(&contract, &batch).await?,
                    };
                    if refused.is_empty() {
                        return Err(Error::Settlement(format!(
                            "redeemMany refused ({revert}) although each voucher alone redeems; retrying next round"
                        )));
                    }
                    for (channel, reason, permanent) in refused {
                        tracing::error!(target: "node::payment", %channel, %reason, permanent,
                            "the contract refuses this channel's voucher; no more work is accepted on it");
                        if permanent {
                            self.metrics.vouchers_lost.inc();
                        }
                        self.gate.mark_failed(&channel, reason, permanent)?;
                        batch.retain(|e| e.channel_id != channel);
                    }
                }
                Err(e) => return Err(Error::Chain(e)),
            }
        };
        tracing::info!(target: "node::payment", tx = %sent.hash, channels = batch.len(), "redemption sent");
        let state = self.tracker.track_sent(&sent).await.map_err(Error::Chain)?;
        let confirmed = tokio::time::timeout(self.config.confirm_timeout, wait_confirmed(state)).await;
        let block = match confirmed {
            Ok(Ok(TxState::Confirmed { block, .. })) => block,
            Ok(Ok(other)) => return Err(Error::Settlement(format!("redemption {} ended {other:?}", sent.hash))),
            Ok(Err(e)) => return Err(Error::Chain(e)),
            Err(_) => return Err(Error::Settlement(format!("redemption {} not confirmed in time", sent.hash))),
        };
        let receipt = self
            .provider
            .get_transaction_receipt(sent.hash)
            .await
            .map_err(rpc)?
            .ok_or_else(|| Error::Settlement(format!("no receipt for confirmed redemption {}", sent.hash)))?;
        if !receipt.status() {
            return Err(Error::Settlement(format!("redemption {} reverted on chain; retrying", sent.hash)));
        }
        self.book(&batch, &receipt, block).await.map(Some)
    }

    /// A batch reverted without naming a channel: redeem each voucher alone in a simulated call (`eth_call`) and
    /// return the channels whose voucher the contract refuses, with the reason and whether it is permanent.
    async fn simulate_each(
        &self,
        contract: &PaymentChannels::PaymentChannelsInstance<DynProvider>,
        batch: &[ChannelEntry],
    ) -> Result<Vec<(B256, String, bool)>> {
        let mut refused = Vec::new();
        for e in batch {
            let call = contract.redeem(e.channel_id, e.best_amount, Bytes::copy_from_slice(&e.best_signature));
            let Err(err) = call.call().await else { continue };
            let Some(data) = err.as_revert_data() else { return Err(rpc(err)) };
            let (reason, permanent) = match ContractRevert::decode(&data) {
                Some(ContractRevert::PaymentChannels(pc)) => {
                    let permanent = refused_channel(&pc).is_some_and(|(_, p)| p);
                    (ContractRevert::PaymentChannels(pc).to_string(), permanent)
                }
                Some(other) => (other.to_string(), false),
                None => (format!("reverted with 0x{}", alloy::hex::encode(&data)), false),
            };
            refused.push((e.channel_id, reason, permanent));
        }
        Ok(refused)
    }

    /// Write a confirmed redemption to the ledger and the metrics.
    async fn book(&self, batch: &[ChannelEntry], receipt: &TransactionReceipt, block: u64) -> Result<SettlementRecord> {
        let mut record = SettlementRecord {
            tx_hash: receipt.transaction_hash,
            block,
            channels: 0,
            jobs: 0,
            amount: U256::ZERO,
            protocol_fee: U256::ZERO,
            gas_used: receipt.gas_used,
            gas_cost: U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price),
            at_ms: now_ms(),
        };
        for log in receipt.inner.logs() {
            // The fee is the batch's (one fee on the total); the amounts are per channel.
            if let Ok(b) = log.log_decode::<PaymentChannels::BatchRedeemed>() {
                record.protocol_fee += b.inner.data.fee;
                continue;
            }
            let Ok(e) = log.log_decode::<PaymentChannels::Redeemed>() else { continue };
            let e = e.inner.data;
            if let Some(entry) = batch.iter().find(|b| b.channel_id == e.channelId) {
                record.jobs += entry.jobs.saturating_sub(entry.jobs_settled);
            }
            record.channels += 1;
            record.amount += e.amount;
            self.gate.mark_redeemed(&e.channelId, e.cumulativeAmount, block)?;
        }
        self.gate.ledger().put_settlement(&record)?;
        self.gate.ledger().flush().await?;
        let m = &self.metrics;
        m.settlements.inc();
        m.settled_jobs.inc_by(record.jobs);
        m.settlement_gas.inc_by(record.gas_used);
        m.settlement_cost_wei.inc_by(f64::from(record.gas_cost));
        m.revenue_wei.inc_by(f64::from(record.amount - record.protocol_fee));
        m.protocol_fees_wei.inc_by(f64::from(record.protocol_fee));
        tracing::info!(target: "node::payment", tx = %record.tx_hash, block, channels = record.channels, jobs = record.jobs,
            gas = record.gas_used, amount = %record.amount, "redemption confirmed");
        Ok(record)
    }

    fn update_gauges(&self) {
        if let Ok(entries) = self.gate.entries() {
            let total: U256 = entries.iter().map(ChannelEntry::unredeemed).sum();
            self.metrics.unredeemed_wei.set(f64::from(total));
        }
    }
}

fn rpc(e: impl std::fmt::Display) -> Error {
    Error::Chain(mlbridge_sdk::Error::Rpc(e.to_string()))
}

/// The channel a `PaymentChannels` revert names, when it is about one channel's voucher, and whether the refusal is
/// permanent. Only an expired (or closed) channel is: a `ChannelNotFound` can come from an RPC node that lags, so
/// everything else is retried.
fn refused_channel(e: &PaymentChannels::PaymentChannelsErrors) -> Option<(B256, bool)> {
    use PaymentChannels::PaymentChannelsErrors as E;
    match e {
        E::ChannelExpired(x) => Some((x.channelId, true)),
        E::ChannelNotFound(x) => Some((x.channelId, false)),
        E::ChannelInsufficientDeposit(x) => Some((x.channelId, false)),
        E::VoucherInvalidSigner(x) => Some((x.channelId, false)),
        E::VoucherPayeeMismatch(x) => Some((x.channelId, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_expired_channel_is_given_up() {
        use PaymentChannels::PaymentChannelsErrors as E;
        let id = B256::repeat_byte(1);
        let expired = E::ChannelExpired(PaymentChannels::ChannelExpired { channelId: id, deadline: U256::ZERO });
        assert_eq!(refused_channel(&expired), Some((id, true)));
        // A lagging RPC can say "not found": retried, never given up.
        let missing = E::ChannelNotFound(PaymentChannels::ChannelNotFound { channelId: id });
        assert_eq!(refused_channel(&missing), Some((id, false)));
        let signer = E::VoucherInvalidSigner(PaymentChannels::VoucherInvalidSigner {
            channelId: id,
            signer: alloy::primitives::Address::ZERO,
        });
        assert_eq!(refused_channel(&signer), Some((id, false)));
        assert_eq!(refused_channel(&E::VoucherEmptyBatch(PaymentChannels::VoucherEmptyBatch {})), None);
    }
}
