//! Sending transactions from one key: nonces from the node's pending count under one lock (concurrent sends
//! serialised, nonces the chain forgot reused), gas estimation with a margin, EIP-1559 fees under a configurable cap
//! (never a hard-coded gas price), and fee bumps when a transaction is not mined in time.

use std::time::{Duration, Instant};

use alloy::consensus::TxEnvelope;
use alloy::eips::BlockNumberOrTag;
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder};
use alloy::primitives::{Address, Bytes, TxHash};
use alloy::providers::Provider;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::TransportError;
use tokio::sync::Mutex;

use super::{ChainMetrics, ContractRevert, rpc_error};
use crate::{Error, Result};

/// How the sender prices and retries transactions.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Extra gas over the estimate, in percent.
    pub gas_margin_percent: u64,
    /// Highest max fee per gas we ever pay, wei.
    pub max_fee_per_gas: u128,
    /// Highest priority fee (tip) per gas, wei.
    pub max_priority_fee_per_gas: u128,
    /// Re-send with higher fees when not mined within this time.
    pub bump_after: Duration,
    /// Fee increase per bump, percent (nodes require at least 10 to replace).
    pub bump_percent: u128,
    /// Sends (original plus bumps) before giving up.
    pub max_attempts: u32,
    /// How often to look for the receipt.
    pub poll_interval: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            gas_margin_percent: 20,
            max_fee_per_gas: 500_000_000_000,        // 500 gwei
            max_priority_fee_per_gas: 3_000_000_000, // 3 gwei
            bump_after: Duration::from_secs(36),
            bump_percent: 15,
            max_attempts: 6,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// A signed, sent transaction: everything needed to track it, bump it or send it again after a reorg.
#[derive(Clone, Debug)]
pub struct SentTx {
    /// Transaction hash.
    pub hash: TxHash,
    /// The signed EIP-2718 bytes.
    pub raw: Bytes,
    /// Nonce.
    pub nonce: u64,
    /// What it does ("redeem", "open", ...), for metrics.
    pub kind: String,
    /// The complete request it was built from.
    pub request: TransactionRequest,
}

/// Sends transactions from one key. Share it (`Arc`) between tasks; sends are serialised on the nonce.
#[derive(Debug)]
pub struct TxSender<P> {
    provider: P,
    wallet: EthereumWallet,
    address: Address,
    chain_id: u64,
    nonce: Mutex<Option<u64>>,
    config: SenderConfig,
    metrics: Option<ChainMetrics>,
}

impl<P: Provider> TxSender<P> {
    /// A sender for `signer` over `provider` (a plain provider, without a wallet filler).
    pub async fn new(
        provider: P,
        signer: PrivateKeySigner,
        config: SenderConfig,
        metrics: Option<ChainMetrics>,
    ) -> Result<Self> {
        let chain_id = provider.get_chain_id().await.map_err(rpc_error)?;
        let address = signer.address();
        Ok(Self {
            provider,
            wallet: EthereumWallet::from(signer),
            address,
            chain_id,
            nonce: Mutex::new(None),
            config,
            metrics,
        })
    }

    /// The sending account.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// Estimate, price, sign and send `tx`. Returns once the node accepted it (not mined).
    pub async fn send(&self, kind: &str, mut tx: TransactionRequest) -> Result<SentTx> {
        tx.from = Some(self.address);
        tx.chain_id = Some(self.chain_id);
        let estimate = self.provider.estimate_gas(tx.clone()).await.map_err(|e| classify(e, self.address))?;
        tx.gas = Some(estimate + estimate * self.config.gas_margin_percent / 100);
        let (max_fee, tip) = self.fees().await?;
        tx.max_fee_per_gas = Some(max_fee);
        tx.max_priority_fee_per_gas = Some(tip);
        tx.gas_price = None;

        let mut nonce_slot = self.nonce.lock().await;
        // The node's pending count, read under the lock, is the next nonce. It is below what we used last only if
        // the chain forgot our transactions (a reorg deeper than anyone tracked, or a dropped pool): reuse those
        // nonces rather than leave a gap that would hold every later transaction forever.
        let pending = self.provider.get_transaction_count(self.address).pending().await.map_err(rpc_error)?;
        if let Some(next) = *nonce_slot
            && pending < next
        {
            tracing::warn!(target: "sdk::chain", next, pending, "the chain forgot transactions of ours; reusing their nonces");
        }
        let nonce = pending;
        tx.nonce = Some(nonce);
        match self.sign_and_send(kind, tx).await {
            Ok(sent) => {
                *nonce_slot = Some(nonce + 1);
                Ok(sent)
            }
            Err(e) => {
                // Re-read the nonce from the chain next time rather than guess what the node kept.
                *nonce_slot = None;
                Err(e)
            }
        }
    }

    /// Send `tx` and wait until it is mined, bumping fees while it is not. Fails on revert.
    pub async fn send_and_wait(&self, kind: &str, tx: TransactionRequest) -> Result<(SentTx, TransactionReceipt)> {
        // Every version (original and bumps) stays whole: whichever is mined is returned with its own raw bytes.
        let mut versions = vec![self.send(kind, tx).await?];
        let mut last_send = Instant::now();
        loop {
            for sent in &versions {
                if let Some(receipt) = self.provider.get_transaction_receipt(sent.hash).await.map_err(rpc_error)? {
                    if !receipt.status() {
                        return Err(Error::Reverted { hash: sent.hash });
                    }
                    return Ok((sent.clone(), receipt));
                }
            }
            if last_send.elapsed() >= self.config.bump_after {
                let latest = versions.last().expect("at least the original");
                let attempts = versions.len() as u32;
                if attempts >= self.config.max_attempts {
                    return Err(Error::NotMined { nonce: latest.nonce, attempts });
                }
                let bumped = self.bump(latest).await?;
                versions.push(bumped);
                last_send = Instant::now();
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Replace a pending transaction (same nonce) with one paying `bump_percent` more.
    pub async fn bump(&self, sent: &SentTx) -> Result<SentTx> {
        let mut tx = sent.request.clone();
        let old_fee = tx.max_fee_per_gas.unwrap_or_default();
        let old_tip = tx.max_priority_fee_per_gas.unwrap_or_default();
        let factor = 100 + self.config.bump_percent;
        let (market_fee, _) = self.fees().await.unwrap_or((old_fee, old_tip));
        let new_fee = (old_fee * factor / 100).max(market_fee);
        if new_fee > self.config.max_fee_per_gas {
            return Err(Error::FeeCapExceeded { needed: new_fee, cap: self.config.max_fee_per_gas });
        }
        tx.max_fee_per_gas = Some(new_fee);
        tx.max_priority_fee_per_gas = Some((old_tip * factor / 100).max(1).min(new_fee));
        tracing::info!(target: "sdk::chain", nonce = sent.nonce, old_fee, new_fee, "bumping fees of a pending transaction");
        self.sign_and_send(&sent.kind, tx).await
    }

    async fn sign_and_send(&self, kind: &str, tx: TransactionRequest) -> Result<SentTx> {
        let nonce = tx.nonce.unwrap_or_default();
        let envelope: TxEnvelope = tx
            .clone()
            .build(&self.wallet)
            .await
            .map_err(|e| Error::Signature(format!("cannot build transaction: {e}")))?;
        let raw: Bytes = envelope.encoded_2718().into();
        let hash = *envelope.tx_hash();
        // Confirmation is the tracker's job; the pending handle is not needed.
        let _pending = self.provider.send_raw_transaction(&raw).await.map_err(|e| classify(e, self.address))?;
        if let Some(m) = &self.metrics {
            m.tx_sent.with_label_values(&[kind]).inc();
        }
        tracing::debug!(target: "sdk::chain", %hash, nonce, kind, "transaction sent");
        Ok(SentTx { hash, raw, nonce, kind: kind.to_owned(), request: tx })
    }

    /// EIP-1559 fees from the chain, capped by the config; an error if the base fee alone is above the cap.
    async fn fees(&self) -> Result<(u128, u128)> {
        let estimate = self.provider.estimate_eip1559_fees().await.map_err(rpc_error)?;
        let cap = self.config.max_fee_per_gas;
        let tip = estimate.max_priority_fee_per_gas.min(self.config.max_priority_fee_per_gas);
        if estimate.max_fee_per_gas <= cap {
            return Ok((estimate.max_fee_per_gas, tip.min(estimate.max_fee_per_gas)));
        }
        let base_fee = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(rpc_error)?
            .and_then(|b| b.header.base_fee_per_gas)
            .map(u128::from)
            .unwrap_or_default();
        if base_fee >= cap {
            return Err(Error::FeeCapExceeded { needed: estimate.max_fee_per_gas, cap });
        }
        Ok((cap, tip.min(cap - base_fee)))
    }
}

/// Turn an RPC error into a contract revert, an insufficient-funds error naming the account, or a plain RPC error.
pub(crate) fn classify(e: TransportError, from: Address) -> Error {
    if let Some(revert) = e.as_error_resp().and_then(|p| p.as_revert_data()).and_then(|d| ContractRevert::decode(&d)) {
        return Error::Contract(revert);
    }
    let msg = e.to_string();
    if msg.to_lowercase().contains("insufficient funds") {
        return Error::InsufficientFunds { address: from, reason: msg };
    }
    Error::Rpc(msg)
}
