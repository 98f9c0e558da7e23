//! Paying for inference: the payer's side of `PaymentChannels`.
//!
//! A [`Payer`] holds the payer key, its durable [`VoucherStore`], a transaction sender and a confirmation tracker.
//! - Channel life: [`Payer::open_channel`] (waits for N confirmations, reporting [`TxProgress`] for a progress bar),
//!   [`Payer::top_up`], [`Payer::close`] (starts the close window) and [`Payer::withdraw`] (takes the rest back).
//! - Per job: [`Payer::pay`] picks a channel to the node's operator and, when the credit already signed ahead on it
//!   does not cover the job, signs an EIP-712 voucher paying ahead for the channel's credit window (see [`credit`];
//!   the amount is on disk first, so a restarted payer never signs a lower or conflicting amount). Most jobs go with
//!   no voucher at all. When no channel covers the price and the [`PaymentPolicy`] allows it, it opens or tops one
//!   up itself, never depositing more than `max_spend` in total. Each job's outcome is reported back
//!   ([`Payer::answered`], [`Payer::refused`], [`Payer::lost`]) so the window follows what the node earned.
//!
//! The network client ([`crate::client::Client`]) calls these for every paid request and verifies the receipt.

pub mod credit;
mod store;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, TxHash, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use tokio::sync::{Mutex, watch};

pub use credit::{Credit, CreditLimits};
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
    /// Most wei paid ahead of the answered jobs on one channel (the credit window's cap).
    pub max_credit_wei: U256,
    /// Most jobs paid ahead on one channel (the credit window's cap, at the job's price).
    pub max_credit_jobs: u64,
}

impl PaymentPolicy {
    /// The credit window's caps.
    pub fn credit_limits(&self) -> CreditLimits {
        CreditLimits { max_wei: self.max_credit_wei, max_jobs: self.max_credit_jobs }
    }
}

impl Default for PaymentPolicy {
    fn default() -> Self {
        Self {
            max_spend: U256::ZERO,
            deposit: U256::from(10u64).pow(U256::from(16u64)), // 0.01 ETH
            channel_lifetime: Duration::from_secs(7 * 24 * 3600),
            expiry_margin: Duration::from_secs(3600),
            max_credit_wei: U256::from(10u64).pow(U256::from(15u64)), // 0.001 ETH
            max_credit_jobs: 256,
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

/// One job's payment: the channel it is charged to, and the voucher to attach when the credit signed ahead did not
/// cover it. Report its outcome with [`Payer::answered`], [`Payer::refused`] or [`Payer::lost`].
#[derive(Clone, Debug)]
pub struct Payment {
    /// The node operator paid.
    pub payee: Address,
    /// The job's price.
    pub price: U256,
    /// The channel charged.
    pub channel_id: B256,
    /// A voucher paying ahead, when the job needs one.
    pub voucher: Option<WireVoucher>,
}

/// A channel's credit in this process, and the last voucher signed on it (sent again if the node lost it).
#[derive(Debug)]
struct Line {
    credit: Credit,
    last: Option<WireVoucher>,
}

/// The payer. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Payer {
    signer: PrivateKeySigner,
    /// The same key, for voucher signatures (libsecp256k1).
    fast: FastSigner,
    provider: DynProvider,
    sender: TxSender<DynProvider>,
    tracker: ConfirmationTracker,
    deployment: Deployment,
    domain: Eip712Domain,
    store: VoucherStore,
    config: PayerConfig,
    funding: Mutex<U256>,
    lines: std::sync::Mutex<std::collections::HashMap<B256, Line>>,
    credit_key: B256,
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
        let store = VoucherStore::open(&config.store)?;
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
            lines: std::sync::Mutex::new(std::collections::HashMap::new()),
            credit_key: PrivateKeySigner::random().to_bytes(),
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

    fn lines(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<B256, Line>> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pay `price` wei to `payee` for one job: charged to the credit signed ahead on a channel to it, or with a new
    /// voucher paying ahead for the channel's window; funds a channel first when none covers it and the policy
    /// allows.
    pub async fn pay(&self, payee: Address, price: U256) -> Result<Payment> {
        let margin = self.config.policy.expiry_margin.as_secs();
        // The channel with credit for this payee first; then the one with the most deposit left.
        for _ in 0..3 {
            let channel = match self
                .with_credit(payee, price, margin)
                .or_else(|| self.store.best_for(payee, price, now_secs(), margin))
            {
                Some(c) => c,
                None => self.fund(payee, price).await?,
            };
            if let Some(p) = self.charge(&channel, price)? {
                return Ok(p);
            }
            // The deposit does not cover the window the job needs (another job took the last of it): fund.
            self.fund(payee, price).await?;
        }
        Err(Error::SpendLimit { payee, price, limit: self.config.policy.max_spend })
    }

    /// A usable channel to `payee` whose credit signed ahead covers `price`.
    fn with_credit(&self, payee: Address, price: U256, margin: u64) -> Option<ChannelRecord> {
        let lines = self.lines();
        lines
            .iter()
            .filter(|(_, l)| l.credit.available() >= price)
            .filter_map(|(id, _)| self.store.get(id))
            .find(|c| c.payee == payee && c.usable(now_secs(), margin))
    }

    /// Charge `price` to `channel`: covered by its credit, or a voucher paying ahead (on disk before it is signed).
    /// `None` when the deposit cannot cover what the job needs.
    fn charge(&self, channel: &ChannelRecord, price: U256) -> Result<Option<Payment>> {
        let id = channel.channel_id;
        let mut lines = self.lines();
        let line = lines.entry(id).or_insert_with(|| Line { credit: Credit::resume(channel.signed), last: None });
        let payment = |voucher| Payment { payee: channel.payee, price, channel_id: id, voucher };
        let credit = &mut line.credit;
        let amount = match credit.need(price) {
            credit::Need::Covered => {
                credit.send(price);
                return Ok(Some(payment(None)));
            }
            credit::Need::Sign(amount) => amount,
        };
        // Pay ahead as far as the deposit allows, but at least for this job and those in flight.
        let deposit = self.store.get(&id).map_or(channel.deposit, |c| c.deposit);
        let amount = amount.min(deposit);
        if amount < credit.consumed + credit.in_flight + price || amount <= credit.signed {
            // An early top-up the deposit cannot make: the credit signed still pays for this job.
            if credit.available() >= price {
                credit.send(price);
                return Ok(Some(payment(None)));
            }
            return Ok(None);
        }
        self.store.sign_to(&id, amount)?;
        let signed = Voucher::new(id, amount).sign(&self.fast, &self.domain)?;
        let voucher = WireVoucher {
            channel_id: signed.channel_id,
            cumulative_amount: signed.cumulative_amount,
            signature: signed.signature,
        };
        credit.signed_to(amount);
        credit.send(price);
        line.last = Some(voucher.clone());
        Ok(Some(payment(Some(voucher))))
    }

    /// The node said the credit on `payment`'s channel does not cover it although this payer signed enough (a
    /// voucher it never received, say): the same job again with the last voucher signed on the channel, which costs
    /// the payer nothing new. `None` if there is none to send.
    pub fn resend(&self, payment: &Payment) -> Option<Payment> {
        let mut lines = self.lines();
        let line = lines.get_mut(&payment.channel_id)?;
        let last = line.last.clone()?;
        line.credit.send(payment.price);
        Some(Payment { voucher: Some(last), ..payment.clone() })
    }

    /// The node answered `payment`'s job with a valid receipt: its price is consumed and the window may grow.
    pub fn answered(&self, payment: &Payment) {
        if let Some(line) = self.lines().get_mut(&payment.channel_id) {
            line.credit.answered(payment.price, self.config.policy.credit_limits());
        }
    }

    /// The node answered `payment`'s job with a valid receipt charging `charged` (at most the price held: a text
    /// generation is charged for the tokens it produced); the rest of the hold is credit again.
    pub fn answered_part(&self, payment: &Payment, charged: U256) {
        if let Some(line) = self.lines().get_mut(&payment.channel_id) {
            line.credit.answered_part(payment.price, charged, self.config.policy.credit_limits());
        }
    }

    /// The node refused `payment`'s job before doing any work: nothing was charged (the voucher, if any, stays
    /// signed and counts as credit for the next jobs).
    pub fn refused(&self, payment: &Payment) {
        if let Some(line) = self.lines().get_mut(&payment.channel_id) {
            line.credit.refused(payment.price);
        }
    }

    /// `payment`'s job may have been charged but nothing valid came back (a timeout, a dropped connection, a bad
    /// receipt): its price counts as consumed, and the window does not grow.
    pub fn lost(&self, payment: &Payment) {
        if let Some(line) = self.lines().get_mut(&payment.channel_id) {
            line.credit.lost(payment.price);
        }
    }

    /// `payment`'s job ended without a valid answer, but what the node charged is known (a receipt good but for a
    /// cancel we did not make): `consumed` (at most its price) counts as consumed, the rest of the hold is free
    /// again, and the window does not grow.
    pub fn lost_part(&self, payment: &Payment, consumed: U256) {
        if let Some(line) = self.lines().get_mut(&payment.channel_id) {
            line.credit.lost_part(payment.price, consumed);
        }
    }

    /// The node says it has less credit on `payment`'s channel than this payer counted on: believed once per
    /// channel (the next job signs a new voucher, the window starts again at one job); `false` if it was believed
    /// before (the payment is refused instead: see [`Credit::forget`]).
    pub fn forget_credit(&self, payment: &Payment) -> bool {
        self.lines().get_mut(&payment.channel_id).is_some_and(|line| line.credit.forget())
    }

    /// The secret credit key this payer's requests on `channel` carry: the node lets only requests with it spend the
    /// credit its vouchers paid ahead. One per channel (derived from a secret random per process), so a node that
    /// learns the key of its own channel cannot spend the payer's credit at another node; a restarted payer moves
    /// the credit to its new key with its first voucher.
    pub fn credit_key(&self, channel: &B256) -> B256 {
        alloy::primitives::keccak256([self.credit_key.as_slice(), channel.as_slice()].concat())
    }

    /// A channel's credit as this process sees it.
    pub fn credit(&self, channel: &B256) -> Option<Credit> {
        self.lines().get(channel).map(|l| l.credit.clone())
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
