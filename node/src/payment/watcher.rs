//! The chain watcher: a local view of the channels that pay this node, built from `PaymentChannels` events.
//!
//! Only blocks with at least N confirmations (head >= B + N - 1) enter the confirmed view, so the reorgs that
//! happen in practice (shallower than N) never reach it. Newer `ChannelOpened` events are kept aside to tell a client
//! "unconfirmed, wait" rather than "unknown". The hash of the last applied block is checked on every poll; if a
//! reorg ever replaces it, the view is rebuilt from the deployment's start block. The view is saved in the ledger,
//! so a restarted node serves confirmed channels even while the RPC is down; while it is down the view simply
//! stops moving.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEventInterface;
use mlbridge_sdk::chain::bindings::PaymentChannels::{self, PaymentChannelsEvents};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use crate::{Error, Result};

const VIEW_KEY: &str = "chain_view";
/// Most blocks asked for in one `eth_getLogs`.
const LOG_CHUNK: u64 = 5_000;

/// A channel as the confirmed chain shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    /// Who signs vouchers.
    pub payer: Address,
    /// Who is paid.
    pub payee: Address,
    /// Confirmed deposit, wei.
    pub deposit: U256,
    /// Redeemed so far (confirmed), wei.
    pub redeemed: U256,
    /// Unix seconds after which it cannot be redeemed.
    pub expiry: u64,
    /// Unix seconds when the payer's close ends (0 = not closing).
    pub closes_at: u64,
    /// The payer took the rest back.
    pub withdrawn: bool,
}

impl ChannelView {
    /// When it stops being redeemable (close end or expiry, whichever is first).
    pub fn deadline(&self) -> u64 {
        if self.withdrawn {
            return 0;
        }
        if self.closes_at != 0 { self.closes_at.min(self.expiry) } else { self.expiry }
    }
}

/// What the watcher knows about a channel id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Confirmed.
    Confirmed(ChannelView),
    /// Opened (paying us) in a block that is not deep enough yet.
    Unconfirmed {
        /// Confirmations so far.
        have: u64,
    },
    /// A confirmed channel that pays someone else.
    Foreign {
        /// Its payee.
        payee: Address,
    },
    /// Not a channel (or not seen yet).
    Unknown,
}

/// Most channels of other payees remembered (to tell "another node's channel" from "no channel").
const MAX_FOREIGN: usize = 100_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct View {
    /// Confirmed channels paying us.
    channels: HashMap<B256, ChannelView>,
    /// Confirmed channels paying others: payee (bounded by `MAX_FOREIGN`; not saved).
    #[serde(skip)]
    foreign: HashMap<B256, Address>,
    /// Last block applied to `channels`, and its hash.
    synced: u64,
    synced_hash: B256,
    /// Channels opened to us in blocks above `synced`: block number.
    #[serde(skip)]
    unconfirmed: HashMap<B256, u64>,
    #[serde(skip)]
    head: u64,
}

/// Watcher settings.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// The `PaymentChannels` contract.
    pub contract: Address,
    /// Our operator address (the payee we watch).
    pub payee: Address,
    /// First block to scan.
    pub start_block: u64,
    /// Confirmation depth N.
    pub confirmations: u64,
    /// Poll interval.
    pub poll_interval: Duration,
}

/// Cloneable handle to the watcher's view.
#[derive(Clone, Debug)]
pub struct Watcher {
    view: Arc<RwLock<View>>,
    confirmations: u64,
}

impl Watcher {
    /// What is known about `channel`.
    pub fn lookup(&self, channel: &B256) -> Lookup {
        let v = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = v.channels.get(channel) {
            return Lookup::Confirmed(c.clone());
        }
        if let Some(payee) = v.foreign.get(channel) {
            return Lookup::Foreign { payee: *payee };
        }
        match v.unconfirmed.get(channel) {
            Some(block) => Lookup::Unconfirmed { have: (v.head + 1).saturating_sub(*block).min(self.confirmations) },
            None => Lookup::Unknown,
        }
    }

    /// A fixed view (tests, and tools that only read).
    pub fn fixed(channels: impl IntoIterator<Item = (B256, ChannelView)>, confirmations: u64) -> Self {
        let view = View { channels: channels.into_iter().collect(), ..View::default() };
        Self { view: Arc::new(RwLock::new(view)), confirmations }
    }

    /// The confirmation depth.
    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// Every confirmed channel paying us.
    pub fn channels(&self) -> Vec<(B256, ChannelView)> {
        let v = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        v.channels.iter().map(|(k, c)| (*k, c.clone())).collect()
    }

    /// Last block applied to the confirmed view (every event up to it is in the view).
    pub fn synced(&self) -> u64 {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).synced
    }

    /// Latest head block seen.
    pub fn head(&self) -> u64 {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).head
    }

    /// Load the saved view, sync once (a failure is logged, not fatal: the saved view serves meanwhile), and keep
    /// following the chain until `shutdown`.
    pub async fn start(
        provider: DynProvider,
        ledger: Ledger,
        config: WatcherConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>)> {
        let mut saved: View = ledger.meta(VIEW_KEY)?.unwrap_or_default();
        if saved.synced == 0 {
            saved.synced = config.start_block.saturating_sub(1);
        }
        let watcher = Self { view: Arc::new(RwLock::new(saved)), confirmations: config.confirmations.max(1) };
        let mut poller = Poller { provider, ledger, config, watcher: watcher.clone() };
        if let Err(err) = poller.poll().await {
            tracing::warn!(target: "node::payment", %err, "cannot reach the chain; serving the saved channel view");
        }
        let task = tokio::spawn(async move {
            let mut delay = poller.config.poll_interval;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                match poller.poll().await {
                    Ok(()) => delay = poller.config.poll_interval,
                    Err(err) => {
                        delay = (delay * 2).min(Duration::from_secs(10));
                        tracing::warn!(target: "node::payment", %err, "chain watcher poll failed; retrying");
                    }
                }
            }
        });
        Ok((watcher, task))
    }
}

struct Poller {
    provider: DynProvider,
    ledger: Ledger,
    config: WatcherConfig,
    watcher: Watcher,
}

fn rpc(e: impl std::fmt::Display) -> Error {
    Error::Chain(mlbridge_sdk::Error::Rpc(e.to_string()))
}

impl Poller {
    async fn block_hash(&self, n: u64) -> Result<Option<B256>> {
        let block = self.provider.get_block_by_number(BlockNumberOrTag::Number(n)).await.map_err(rpc)?;
        Ok(block.map(|b| b.header.hash))
    }

    async fn logs(&self, from: u64, to: u64) -> Result<Vec<alloy::rpc::types::Log>> {
        let filter = Filter::new().address(self.config.contract).from_block(from).to_block(to);
        self.provider.get_logs(&filter).await.map_err(rpc)
    }

    async fn poll(&mut self) -> Result<()> {
        let head = self.provider.get_block_number().await.map_err(rpc)?;
        let n = self.watcher.confirmations;
        let safe = (head + 1).saturating_sub(n);
        let mut view = self.watcher.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        // A reorg deeper than N replaced a block we applied: rebuild from scratch.
        if view.synced >= self.config.start_block
            && view.synced_hash != B256::ZERO
            && self.block_hash(view.synced).await? != Some(view.synced_hash)
        {
            tracing::warn!(target: "node::payment", block = view.synced, "a reorg deeper than the confirmation depth; rescanning channels");
            view = View { synced: self.config.start_block.saturating_sub(1), ..View::default() };
        }
        let mut from = view.synced + 1;
        let changed = from <= safe;
        while from <= safe {
            let to = (from + LOG_CHUNK - 1).min(safe);
            for log in self.logs(from, to).await? {
                self.apply(&mut view, &log);
            }
            from = to + 1;
        }
        if changed {
            view.synced = safe;
            view.synced_hash = self.block_hash(safe).await?.unwrap_or_default();
        }
        // Channels opened to us in blocks not deep enough yet.
        view.unconfirmed.clear();
        if safe < head {
            for log in self.logs(safe + 1, head).await? {
                if let Ok(e) = log.log_decode::<PaymentChannels::ChannelOpened>()
                    && e.inner.data.payee == self.config.payee
                {
                    view.unconfirmed.insert(e.inner.data.channelId, log.block_number.unwrap_or(head));
                }
            }
        }
        view.head = head;
        if changed {
            self.ledger.put_meta(VIEW_KEY, &view)?;
            self.ledger.flush().await?;
        }
        *self.watcher.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = view;
        Ok(())
    }

    fn apply(&self, view: &mut View, log: &alloy::rpc::types::Log) {
        let Ok(event) = PaymentChannelsEvents::decode_log(&log.inner) else { return };
        match event.data {
            PaymentChannelsEvents::ChannelOpened(e) if e.payee == self.config.payee => {
                view.channels.insert(
                    e.channelId,
                    ChannelView {
                        payer: e.payer,
                        payee: e.payee,
                        deposit: e.deposit,
                        redeemed: U256::ZERO,
                        expiry: e.expiry.saturating_to(),
                        closes_at: 0,
                        withdrawn: false,
                    },
                );
            }
            PaymentChannelsEvents::ChannelOpened(e) if view.foreign.len() < MAX_FOREIGN => {
                view.foreign.insert(e.channelId, e.payee);
            }
            PaymentChannelsEvents::ChannelToppedUp(e) => {
                if let Some(c) = view.channels.get_mut(&e.channelId) {
                    c.deposit = e.deposit;
                }
            }
            PaymentChannelsEvents::ChannelClosing(e) => {
                if let Some(c) = view.channels.get_mut(&e.channelId) {
                    c.closes_at = e.closesAt.saturating_to();
                }
            }
            PaymentChannelsEvents::ChannelWithdrawn(e) => {
                if let Some(c) = view.channels.get_mut(&e.channelId) {
                    c.withdrawn = true;
                }
            }
            PaymentChannelsEvents::Redeemed(e) => {
                if let Some(c) = view.channels.get_mut(&e.channelId) {
                    c.redeemed = c.redeemed.max(e.cumulativeAmount);
                }
            }
            _ => {}
        }
    }
}
