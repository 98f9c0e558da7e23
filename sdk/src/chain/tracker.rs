//! The confirmation tracker: one per process, shared through a cloneable handle.
//!
//! One task follows the chain head over HTTP polling and keeps the hashes of recent blocks. Each tracked
//! transaction moves `Pending -> Included(B) -> Confirmed`, where confirmed means the head reached `B + N - 1`
//! (the inclusion block is the first confirmation; N = 3 by default). When a block we recorded is replaced (a
//! reorg), transactions included at or above it go back to `Pending` and our own are sent again from their raw
//! bytes, so they end up confirmed exactly once. RPC failures back off exponentially; tracked items are kept.
//! Subscribers get every state change on a broadcast stream, or one transaction's state on a `watch` channel.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{B256, Bytes, TxHash};
use alloy::providers::Provider;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{ChainMetrics, SentTx, rpc_error};
use crate::{Error, Result};

/// Tracker settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Confirmation depth N (the inclusion block counts as the first).
    pub confirmations: u64,
    /// Head polling interval; keep it well under the block time.
    pub poll_interval: Duration,
    /// How many recent blocks to remember for reorg detection.
    pub history: u64,
    /// Send one of our transactions again when it has been neither mined nor in the mempool this long.
    pub resubmit_after: Duration,
    /// Give up on a foreign transaction (no raw bytes) not seen for this long.
    pub drop_after: Duration,
    /// Longest wait between polls while the RPC fails.
    pub max_backoff: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            confirmations: 3,
            poll_interval: Duration::from_millis(500),
            history: 128,
            resubmit_after: Duration::from_secs(30),
            drop_after: Duration::from_secs(600),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Where a tracked transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxState {
    /// Not in a canonical block (yet, or again after a reorg).
    Pending,
    /// In canonical block `block`.
    Included {
        /// Block number.
        block: u64,
        /// Block hash.
        block_hash: B256,
    },
    /// `block` is N deep. Final for this tracker.
    Confirmed {
        /// Block number.
        block: u64,
        /// Block hash.
        block_hash: B256,
        /// Gas used.
        gas_used: u64,
    },
    /// The block it was included in was replaced; it is pending again.
    Reorged {
        /// The block that disappeared.
        block: u64,
    },
    /// Its raw bytes were sent again.
    Resubmitted,
    /// Given up on (foreign transaction not seen for too long). Final.
    Dropped,
}

/// A state change of a tracked transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxEvent {
    /// The transaction.
    pub hash: TxHash,
    /// Its kind label.
    pub kind: String,
    /// The new state.
    pub state: TxState,
    /// Head block when the change was seen.
    pub head: u64,
    /// When the change was seen.
    pub at: Instant,
}

enum Command {
    Track { hash: TxHash, raw: Option<Bytes>, kind: String, reply: oneshot::Sender<watch::Receiver<TxState>> },
}

/// Handle to the tracker task. Clone it freely; the task ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct ConfirmationTracker {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<TxEvent>,
    head: watch::Receiver<u64>,
}

impl ConfirmationTracker {
    /// Start the tracker task on the current tokio runtime.
    pub fn spawn<P>(provider: P, config: TrackerConfig, metrics: Option<ChainMetrics>) -> Self
    where
        P: Provider + Send + Sync + 'static,
    {
        let (commands, rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(1024);
        let (head_tx, head) = watch::channel(0);
        let actor = Actor {
            provider,
            config,
            metrics,
            rx,
            events: events.clone(),
            blocks: BTreeMap::new(),
            items: HashMap::new(),
            head: 0,
            processed: head_tx,
        };
        tokio::spawn(actor.run());
        Self { commands, events, head }
    }

    /// Track one of our transactions; it is re-sent from its raw bytes if a reorg or the mempool loses it.
    pub async fn track_sent(&self, sent: &SentTx) -> Result<watch::Receiver<TxState>> {
        self.track(sent.hash, Some(sent.raw.clone()), &sent.kind).await
    }

    /// Track any transaction by hash (`raw = None` for someone else's: it can only be waited for).
    pub async fn track(&self, hash: TxHash, raw: Option<Bytes>, kind: &str) -> Result<watch::Receiver<TxState>> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Track { hash, raw, kind: kind.to_owned(), reply })
            .await
            .map_err(|_| Error::TrackerStopped)?;
        rx.await.map_err(|_| Error::TrackerStopped)
    }

    /// Every state change of every tracked transaction.
    pub fn subscribe(&self) -> broadcast::Receiver<TxEvent> {
        self.events.subscribe()
    }

    /// The head block whose poll the tracker has finished: the state of every transaction tracked before that poll
    /// reflects the chain up to it (0 before the first successful poll).
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Wait until the tracker has finished a poll at `block` or above.
    pub async fn wait_head(&self, block: u64) -> Result<u64> {
        let mut head = self.head.clone();
        let seen = *head.wait_for(|h| *h >= block).await.map_err(|_| Error::TrackerStopped)?;
        Ok(seen)
    }
}

/// Wait until a watched transaction is confirmed (or dropped).
pub async fn wait_confirmed(mut state: watch::Receiver<TxState>) -> Result<TxState> {
    loop {
        let current = *state.borrow_and_update();
        if matches!(current, TxState::Confirmed { .. } | TxState::Dropped) {
            return Ok(current);
        }
        state.changed().await.map_err(|_| Error::TrackerStopped)?;
    }
}

struct Item {
    raw: Option<Bytes>,
    kind: String,
    state: TxState,
    watch: watch::Sender<TxState>,
    tracked_at: Instant,
    tracked_head: u64,
    last_attempt: Instant,
    gas_used: u64,
    cost_wei: u128,
}

struct Actor<P> {
    provider: P,
    config: TrackerConfig,
    metrics: Option<ChainMetrics>,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<TxEvent>,
    /// Canonical chain as we last saw it: number -> hash, contiguous.
    blocks: BTreeMap<u64, B256>,
    items: HashMap<TxHash, Item>,
    head: u64,
    /// Published after each completed poll.
    processed: watch::Sender<u64>,
}

impl<P: Provider> Actor<P> {
    async fn run(mut self) {
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                () = tokio::time::sleep(delay) => {
                    match self.poll().await {
                        Ok(()) => delay = self.config.poll_interval,
                        Err(err) => {
                            delay = (delay * 2).clamp(self.config.poll_interval, self.config.max_backoff);
                            if let Some(m) = &self.metrics { m.rpc_errors.inc(); }
                            tracing::warn!(target: "sdk::chain", %err, retry_in_ms = delay.as_millis() as u64, "chain poll failed");
                        }
                    }
                }
            }
        }
        tracing::debug!(target: "sdk::chain", "confirmation tracker stopped");
    }

    fn handle(&mut self, cmd: Command) {
        let Command::Track { hash, raw, kind, reply } = cmd;
        let rx = match self.items.get(&hash) {
            Some(item) => item.watch.subscribe(),
            None => {
                let (tx, rx) = watch::channel(TxState::Pending);
                let now = Instant::now();
                self.items.insert(
                    hash,
                    Item {
                        raw,
                        kind,
                        state: TxState::Pending,
                        watch: tx,
                        tracked_at: now,
                        tracked_head: self.head,
                        last_attempt: now,
                        gas_used: 0,
                        cost_wei: 0,
                    },
                );
                rx
            }
        };
        let _ = reply.send(rx);
    }

    async fn poll(&mut self) -> Result<()> {
        let head = self.provider.get_block_number().await.map_err(rpc_error)?;
        let reorg_from = self.sync_chain(head).await?;
        self.head = head;
        if let Some(m) = &self.metrics {
            m.head_block.set(head as i64);
        }
        if let Some(from) = reorg_from {
            self.handle_reorg(from).await;
        }
        self.update_items().await?;
        self.processed.send_replace(head);
        Ok(())
    }

    /// Bring `blocks` up to `head`; returns the lowest recorded height whose block was replaced, if any.
    async fn sync_chain(&mut self, head: u64) -> Result<Option<u64>> {
        let top = self.header(head).await?;
        if self.blocks.get(&head) == Some(&top.0) && self.blocks.last_key_value().map(|(n, _)| *n) == Some(head) {
            return Ok(None);
        }
        // Walk down from the head until the fetched chain joins the one we recorded.
        let mut fetched: BTreeMap<u64, B256> = BTreeMap::from([(head, top.0)]);
        let mut parent = top.1;
        let mut n = head;
        let floor = head.saturating_sub(self.config.history);
        // Nothing recorded yet (first poll): the head alone starts the record.
        let first_recorded = self.blocks.first_key_value().map(|(n, _)| *n);
        while let Some(first) = first_recorded
            && n > floor
            && n > first
        {
            if self.blocks.get(&(n - 1)) == Some(&parent) {
                break; // joined the recorded chain
            }
            let (hash, p) = self.header(n - 1).await?;
            fetched.insert(n - 1, hash);
            parent = p;
            n -= 1;
        }
        let lowest_fetched = n;
        let reorg_from = self
            .blocks
            .range(lowest_fetched..)
            .find(|(number, hash)| fetched.get(number) != Some(hash))
            .map(|(number, _)| *number);
        self.blocks.retain(|number, _| *number < lowest_fetched);
        self.blocks.extend(fetched);
        let keep_from = head.saturating_sub(self.config.history);
        self.blocks.retain(|number, _| *number >= keep_from);
        if let Some(from) = reorg_from {
            tracing::warn!(target: "sdk::chain", from, head, "chain reorganisation detected");
        }
        Ok(reorg_from)
    }

    async fn header(&self, number: u64) -> Result<(B256, B256)> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(rpc_error)?
            .ok_or_else(|| Error::Rpc(format!("block {number} not found")))?;
        Ok((block.header.hash, block.header.parent_hash))
    }

    async fn handle_reorg(&mut self, from: u64) {
        let hit: Vec<(TxHash, u64)> = self
            .items
            .iter()
            .filter_map(|(h, i)| match i.state {
                TxState::Included { block, .. } if block >= from => Some((*h, block)),
                _ => None,
            })
            .collect();
        for (hash, block) in hit {
            self.set_state(hash, TxState::Reorged { block });
            if let Some(m) = &self.metrics {
                m.tx_reorged.with_label_values(&[&self.items[&hash].kind]).inc();
            }
            self.set_state(hash, TxState::Pending);
            self.resubmit(hash).await;
        }
    }

    async fn resubmit(&mut self, hash: TxHash) {
        let Some(item) = self.items.get_mut(&hash) else { return };
        item.last_attempt = Instant::now();
        let Some(raw) = item.raw.clone() else { return };
        let kind = item.kind.clone();
        match self.provider.send_raw_transaction(&raw).await {
            Ok(_) => tracing::info!(target: "sdk::chain", %hash, "transaction sent again"),
            // "already known" / "nonce too low": the node has it or mined it; its receipt will tell.
            Err(err) => tracing::info!(target: "sdk::chain", %hash, %err, "resend not accepted"),
        }
        if let Some(m) = &self.metrics {
            m.tx_resubmitted.with_label_values(&[&kind]).inc();
            m.tx_sent.with_label_values(&[&kind]).inc();
        }
        self.set_state(hash, TxState::Resubmitted);
        self.set_state(hash, TxState::Pending);
    }

    async fn update_items(&mut self) -> Result<()> {
        let hashes: Vec<TxHash> = self.items.keys().copied().collect();
        for hash in hashes {
            let state = self.items[&hash].state;
            if matches!(state, TxState::Pending) {
                self.check_pending(hash).await?;
            }
            if let TxState::Included { block, block_hash } = self.items[&hash].state
                && self.head + 1 >= block + self.config.confirmations
            {
                let item = &self.items[&hash];
                let gas_used = item.gas_used;
                if let Some(m) = &self.metrics {
                    m.tx_confirmed.with_label_values(&[&item.kind]).inc();
                    m.gas_used.with_label_values(&[&item.kind]).inc_by(item.gas_used);
                    m.cost_wei.with_label_values(&[&item.kind]).inc_by(item.cost_wei as f64);
                    m.confirmation_blocks.observe(self.head.saturating_sub(item.tracked_head) as f64);
                    m.confirmation_seconds.observe(item.tracked_at.elapsed().as_secs_f64());
                }
                self.set_state(hash, TxState::Confirmed { block, block_hash, gas_used });
                self.items.remove(&hash);
            }
        }
        Ok(())
    }

    async fn check_pending(&mut self, hash: TxHash) -> Result<()> {
        let receipt = self.provider.get_transaction_receipt(hash).await.map_err(rpc_error)?;
        if let Some(r) = receipt {
            if let (Some(block), Some(block_hash)) = (r.block_number, r.block_hash) {
                // Only a receipt from a canonical block counts: checked against our recorded chain, or against
                // the node for blocks older than what we recorded (e.g. mined before tracking started).
                let canonical = match self.blocks.get(&block) {
                    Some(known) => *known == block_hash,
                    None => block <= self.head && self.header(block).await?.0 == block_hash,
                };
                if canonical {
                    let item = self.items.get_mut(&hash).expect("tracked");
                    item.gas_used = r.gas_used;
                    item.cost_wei = u128::from(r.gas_used) * r.effective_gas_price;
                    self.set_state(hash, TxState::Included { block, block_hash });
                }
            }
            return Ok(());
        }
        let item = &self.items[&hash];
        let waited = item.last_attempt.elapsed();
        if item.raw.is_some() && waited >= self.config.resubmit_after {
            let in_pool = self.provider.get_transaction_by_hash(hash).await.map_err(rpc_error)?.is_some();
            if in_pool {
                self.items.get_mut(&hash).expect("tracked").last_attempt = Instant::now();
            } else {
                self.resubmit(hash).await;
            }
        } else if item.raw.is_none() && item.tracked_at.elapsed() >= self.config.drop_after {
            if let Some(m) = &self.metrics {
                m.tx_dropped.with_label_values(&[&item.kind]).inc();
            }
            self.set_state(hash, TxState::Dropped);
            self.items.remove(&hash);
        }
        Ok(())
    }

    fn set_state(&mut self, hash: TxHash, state: TxState) {
        let Some(item) = self.items.get_mut(&hash) else { return };
        item.state = state;
        let _ = item.watch.send(state);
        tracing::debug!(target: "sdk::chain", %hash, ?state, head = self.head, "transaction state");
        let _ = self.events.send(TxEvent { hash, kind: item.kind.clone(), state, head: self.head, at: Instant::now() });
    }
}
