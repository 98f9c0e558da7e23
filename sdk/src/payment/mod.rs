//! Paying for inference: the payer's side of `PaymentChannels`.
//!
//! A [`Payer`] holds the payer key, its durable [`VoucherStore`], a transaction sender and a confirmation tracker.
//! - Channel life: [`Payer::open_channel`] (waits for N confirmations, reporting [`TxProgress`] for a progress bar),
//!   [`Payer::top_up`], [`Payer::close`] (starts the close window) and [`Payer::withdraw`] (takes the rest back).
//! - Per job: [`Payer::pay`] picks a channel to the node's operator, takes the next cumulative amount (reserved on
//!   disk first, so a restarted payer never signs a lower or conflicting amount) and signs the EIP-712 voucher.
//!   When no channel covers the price and the [`PaymentPolicy`] allows it, it opens or tops one up itself, never
//!   depositing more than `max_spend` in total. A job the node refused before working is given back
//!   ([`Payer::give_back`]).
//!
//! The network client ([`crate::client::Client`]) calls these for every paid request and verifies the receipt.

mod store;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, TxHash, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use tokio::sync::{Mutex, watch};

pub use store::{ChannelRecord, VoucherStore};

use crate::chain::bindings::PaymentChannels;
use crate::chain::{ConfirmationTracker, Deployment, SenderConfig, TrackerConfig, TxSender, TxState, rpc_error};
use crate::protocol::WireVoucher;
use crate::signer::FastSigner;
use crate::voucher::Voucher;
use crate::{Error, Result};

/// When the payer may open or top up channels by itself.
#[derive(Clone, Debug)]
pub struct PaymentPolicy {
    /// Most wei this payer deposits automatically in total (0 = never open or top up by itself).
    pub max_spend: U256,
    /// Deposit of each automatic open or top-up (at least the job's price).
    pub deposit: U256,
    /// Lifetime of automatically opened channels.
    pub channel_lifetime: Duration,
    /// A channel this close to its expiry (or closing) is not used for new jobs.
    pub expiry_margin: Duration,
    /// Prices reserved per disk write of the voucher store (see [`VoucherStore`]).
    pub reserve_ahead: u64,
}

impl Default for PaymentPolicy {
    fn default() -> Self {
        Self {
            max_spend: U256::ZERO,
            deposit: U256::from(10u64).pow(U256::from(16u64)), // 0.01 ETH
            channel_lifetime: Duration::from_secs(7 * 24 * 3600),
            expiry_margin: Duration::from_secs(3600),
            reserve_ahead: 16,
        }
    }
}

/// Everything a [`Payer`] needs.
#[derive(Clone, Debug)]
pub struct PayerConfig {
    /// Chain RPC (HTTP).
    pub rpc_url: String,
    /// The contract set.
    pub deployment: Deployment,
    /// Folder of the voucher store.
    pub store: PathBuf,
    /// Automatic funding.
    pub policy: PaymentPolicy,
    /// Confirmations to wait for on channel transactions.
    pub confirmations: u64,
    /// Chain polling interval.
    pub poll_interval: Duration,
}

/// Progress of a channel transaction, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxProgress {
    /// Sent; waiting to be mined.
    Sent(TxHash),
    /// Not in a block (again, after a reorg).
    Pending,
    /// In a block with `have` of `need` confirmations.
    Confirmations {
        /// Block number.
        block: u64,
        /// Confirmations so far.
        have: u64,
        /// Confirmations needed.
        need: u64,
    },
    /// Deep enough.
    Confirmed {
        /// Block number.
        block: u64,
    },
}

/// One job's payment.
#[derive(Clone, Debug)]
pub struct Payment {
    /// The node operator paid.
    pub payee: Address,
    /// The job's price.
    pub price: U256,
    /// The signed voucher.
    pub voucher: WireVoucher,
}

/// The payer. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Payer {
    signer: PrivateKeySigner,
    /// The same key, for the per-job voucher signatures.
    fast: FastSigner,
    provider: DynProvider,
    sender: TxSender<DynProvider>,
    tracker: ConfirmationTracker,
    deployment: Deployment,
    domain: Eip712Domain,
    store: VoucherStore,
    config: PayerConfig,
    funding: Mutex<U256>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Payer {
    /// Connect to the chain, check the deployment and open the store.
    pub async fn connect(signer: PrivateKeySigner, config: PayerConfig) -> Result<Self> {
        let url = config.rpc_url.parse().map_err(|e| Error::Rpc(format!("bad RPC URL '{}': {e}", config.rpc_url)))?;
        let provider = ProviderBuilder::new().connect_http(url).erased();
        config.deployment.verify(&provider).await?;
        let sender_config = SenderConfig { poll_interval: config.poll_interval, ..SenderConfig::default() };
        let sender = TxSender::new(provider.clone(), signer.clone(), sender_config, None).await?;
        let tracker_config = TrackerConfig {
            confirmations: config.confirmations,
            poll_interval: config.poll_interval,
            ..TrackerConfig::default()
        };
        let tracker = ConfirmationTracker::spawn(provider.clone(), tracker_config, None);
        let store = VoucherStore::open(&config.store, config.policy.reserve_ahead)?;
        Ok(Self {
            domain: config.deployment.domain(),
            deployment: config.deployment,
            fast: FastSigner::new(&signer),
            signer,
            provider,
            sender,
            tracker,
            store,
            config,
            funding: Mutex::new(U256::ZERO),
        })
    }

    /// The payer's address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The EIP-712 domain vouchers and receipts are signed in.
    pub fn domain(&self) -> &Eip712Domain {
        &self.domain
    }

    /// The voucher store.
    pub fn store(&self) -> &VoucherStore {
        &self.store
    }

    fn contract(&self) -> PaymentChannels::PaymentChannelsInstance<DynProvider> {
        PaymentChannels::new(self.deployment.payment_channels, self.provider.clone())
    }

    /// Send `tx` and wait for the configured confirmations, reporting progress; returns the mined receipt.
    async fn send_confirmed(
        &self,
        kind: &str,
        tx: TransactionRequest,
        progress: &mut (dyn FnMut(TxProgress) + Send),
    ) -> Result<TransactionReceipt> {
        let sent = self.sender.send(kind, tx).await?;
        progress(TxProgress::Sent(sent.hash));
        let state = self.tracker.track_sent(&sent).await?;
        self.wait(state, progress).await?;
        let receipt = self
            .provider
            .get_transaction_receipt(sent.hash)
            .await
            .map_err(rpc_error)?
            .ok_or_else(|| Error::Rpc(format!("no receipt for confirmed transaction {}", sent.hash)))?;
        if !receipt.status() {
            return Err(Error::Reverted { hash: sent.hash });
        }
        Ok(receipt)
    }

    async fn wait(
        &self,
        mut state: watch::Receiver<TxState>,
        progress: &mut (dyn FnMut(TxProgress) + Send),
    ) -> Result<u64> {
        let need = self.config.confirmations;
        loop {
            let current = *state.borrow_and_update();
            match current {
                TxState::Confirmed { block, .. } => {
                    progress(TxProgress::Confirmed { block });
                    return Ok(block);
                }
                TxState::Dropped => return Err(Error::Rpc("the transaction was dropped by the chain".into())),
                TxState::Included { block, .. } => {
                    let head = self.provider.get_block_number().await.unwrap_or(block);
                    progress(TxProgress::Confirmations {
                        block,
                        have: (head + 1).saturating_sub(block).min(need),
                        need,
                    });
                }
                TxState::Pending | TxState::Reorged { .. } | TxState::Resubmitted => progress(TxProgress::Pending),
            }
            tokio::select! {
                changed = state.changed() => changed.map_err(|_| Error::TrackerStopped)?,
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Read a channel from the chain into the store (keeping the amounts signed so far).
    pub async fn refresh(&self, channel: B256) -> Result<ChannelRecord> {
        let on_chain = self.contract().getChannel(channel).call().await.map_err(rpc_error)?;
        if on_chain.payer != self.address() {
            return Err(Error::NoChannel { channel });
        }
        let old = self.store.get(&channel);
        let rec = ChannelRecord {
            channel_id: channel,
            payee: on_chain.payee,
            deposit: U256::from(on_chain.deposit),
            expiry: on_chain.expiry,
            opened_block: old.as_ref().map_or(0, |o| o.opened_block),
            signed: old.as_ref().map_or(U256::from(on_chain.redeemed), |o| o.signed),
            reserved: old.as_ref().map_or(U256::from(on_chain.redeemed), |o| o.reserved),
            closes_at: on_chain.closesAt,
            // The contract keeps no flag; `withdraw` records it.
            withdrawn: old.as_ref().is_some_and(|o| o.withdrawn),
        };
        self.store.upsert(rec.clone())?;
        Ok(rec)
    }

    /// Open a channel to `payee` with `deposit` wei that can be redeemed until `expiry` (unix seconds); returns
    /// once it has the configured confirmations.
    pub async fn open_channel(
        &self,
        payee: Address,
        deposit: U256,
        expiry: u64,
        progress: &mut (dyn FnMut(TxProgress) + Send),
    ) -> Result<ChannelRecord> {
        let tx = self.contract().open(payee, expiry).value(deposit).into_transaction_request();
        let receipt = self.send_confirmed("open", tx, progress).await?;
        let opened = receipt
            .decoded_log::<PaymentChannels::ChannelOpened>()
            .ok_or_else(|| Error::Rpc("the open transaction emitted no ChannelOpened event".into()))?;
        let rec = ChannelRecord {
            channel_id: opened.channelId,
            payee,
            deposit,
            expiry,
            opened_block: receipt.block_number.unwrap_or_default(),
            signed: U256::ZERO,
            reserved: U256::ZERO,
            closes_at: 0,
            withdrawn: false,
        };
        self.store.upsert(rec.clone())?;
        tracing::info!(target: "sdk::payment", channel = %rec.channel_id, %payee, %deposit, "channel opened");
        Ok(rec)
    }

    /// Add `amount` wei to a channel's deposit; returns once confirmed.
    pub async fn top_up(
        &self,
        channel: B256,
        amount: U256,
        progress: &mut (dyn FnMut(TxProgress) + Send),
    ) -> Result<ChannelRecord> {
        let tx = self.contract().topUp(channel).value(amount).into_transaction_request();
        self.send_confirmed("top_up", tx, progress).await?;
        self.refresh(channel).await
    }

    /// Start closing a channel: the payee keeps the challenge window to redeem, then [`Payer::withdraw`] returns
    /// the rest. Returns the updated record (`closes_at` set).
    pub async fn close(&self, channel: B256, progress: &mut (dyn FnMut(TxProgress) + Send)) -> Result<ChannelRecord> {
        let tx = self.contract().startClose(channel).into_transaction_request();
        self.send_confirmed("close", tx, progress).await?;
        self.refresh(channel).await
    }

    /// Take back what the payee did not redeem, after the channel's redemption deadline. Returns the refund.
    pub async fn withdraw(&self, channel: B256, progress: &mut (dyn FnMut(TxProgress) + Send)) -> Result<U256> {
        let tx = self.contract().withdraw(channel).into_transaction_request();
        let receipt = self.send_confirmed("withdraw", tx, progress).await?;
        let refund = receipt.decoded_log::<PaymentChannels::ChannelWithdrawn>().map_or(U256::ZERO, |e| e.amount);
        let mut rec = self.refresh(channel).await?;
        rec.withdrawn = true;
        self.store.upsert(rec)?;
        Ok(refund)
    }

    /// Pay `price` wei to `payee` for one job: the next voucher on the best channel to it, funding one first when
    /// the policy allows.
    pub async fn pay(&self, payee: Address, price: U256) -> Result<Payment> {
        let margin = self.config.policy.expiry_margin.as_secs();
        let channel = match self.store.best_for(payee, price, now_secs(), margin) {
            Some(c) => c,
            None => self.fund(payee, price).await?,
        };
        let amount = match self.store.next_amount(&channel.channel_id, price) {
            Ok(a) => a,
            // Another job took the last of it meanwhile: fund and go again.
            Err(Error::ChannelExhausted { .. }) => {
                let c = self.fund(payee, price).await?;
                self.store.next_amount(&c.channel_id, price)?
            }
            Err(e) => return Err(e),
        };
        let signed = Voucher::new(channel.channel_id, amount).sign(&self.fast, &self.domain)?;
        Ok(Payment {
            payee,
            price,
            voucher: WireVoucher {
                channel_id: signed.channel_id,
                cumulative_amount: signed.cumulative_amount,
                signature: signed.signature,
            },
        })
    }

    /// The node refused `payment` before doing any work: its amount may be signed again for the next job.
    pub fn give_back(&self, payment: &Payment) {
        self.store.give_back(&payment.voucher.channel_id, payment.voucher.cumulative_amount, payment.price);
    }

    /// Open or top up a channel to `payee` within the spending limit (one at a time).
    async fn fund(&self, payee: Address, price: U256) -> Result<ChannelRecord> {
        let mut spent = self.funding.lock().await;
        let policy = &self.config.policy;
        let margin = policy.expiry_margin.as_secs();
        if let Some(c) = self.store.best_for(payee, price, now_secs(), margin) {
            return Ok(c); // someone funded it while we waited
        }
        let deposit = policy.deposit.max(price);
        if *spent + deposit > policy.max_spend {
            return Err(Error::SpendLimit { payee, price, limit: policy.max_spend });
        }
        let usable = self
            .store
            .list()
            .into_iter()
            .find(|c| c.payee == payee && c.usable(now_secs(), margin) && c.remaining() < price);
        let mut quiet = |_: TxProgress| {};
        let rec = match usable {
            Some(c) => self.top_up(c.channel_id, deposit, &mut quiet).await?,
            None => {
                let expiry = now_secs() + policy.channel_lifetime.as_secs();
                self.open_channel(payee, deposit, expiry, &mut quiet).await?
            }
        };
        *spent += deposit;
        Ok(rec)
    }
}
