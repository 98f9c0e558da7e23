//! `mlbridge-validator run`: the validator's duties, as tasks around one shared state.
//!
//! - The network client (`mlbridge_sdk::client::Client`, which owns the libp2p swarm) joins the receipts and
//!   disputes topics and hands their messages to the **gossip loop** ([`receipts`]): each receipt is verified
//!   (batch signature, proof, the node registered in `Staking` under the PeerId that published it, recent), drawn
//!   by the [`crate::sampler::Sampler`], and a sampled one is audited and re-executed on a bounded set of tasks.
//!   A mismatch is challenged (commit, then reveal with the evidence) and the evidence gossiped
//!   ([`disputes`]). Dispute evidence from other validators is kept for voting.
//! - The **duties loop** ([`duties`]) follows the chain: attests once per epoch, scans `DisputeOpened` events and
//!   votes on others' disputes after re-executing the evidence, resolves disputes it took part in after their
//!   deadline, claims vote rewards, dispute credits and epoch rewards.
//!
//! Every transaction is tracked to the configured confirmations. Everything stops with the shutdown token.

mod disputes;
mod duties;
mod evidence;
mod receipts;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use libp2p::{Multiaddr, PeerId};
use mlbridge_sdk::client::{Client, ClientConfig, GossipMessage};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::protocol::{DISPUTES_TOPIC, DisputeEvidence, EVIDENCE_PARTS_TOPIC, RECEIPTS_TOPIC};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chain::ValidatorChain;
use crate::checks::CheckLog;
use crate::config::ValidatorConfig;
use crate::metrics::ValidatorMetrics;
use crate::reexec::Reexecutor;
use crate::sampler::Sampler;
use crate::{Error, Result};

/// Receipts remembered as already seen (replays are ignored, never sampled twice).
const MAX_SEEN_RECEIPTS: u64 = 200_000;
/// Receipts are remembered this much longer than they are admissible (a clock step must not reopen a replay).
const SEEN_TTL_MARGIN_SECS: u64 = 120;

/// A dispute known from its `DisputeOpened` event, and the evidence for it once a record bound to its receipt came.
struct KnownDispute {
    node: Address,
    leaf: B256,
    challenger: Address,
    /// Whether we hold the disputed model (evidence for a model we cannot run is not kept).
    model_held: bool,
    evidence: Option<DisputeEvidence>,
    /// Evidence arriving in parts: the first announcement the challenger signed, and its parts so far.
    parts: Option<(B256, Vec<Option<Vec<u8>>>)>,
    /// The announcement the kept evidence was assembled from (failed with it, so it is not assembled again).
    kept_announcement: Option<B256>,
    /// Digests of evidence records that could not be judged (never re-run, never kept again).
    failed: HashSet<B256>,
    /// Our verdict once judged (`true`: the node was wrong), so a retried vote does not re-execute.
    verdict: Option<bool>,
}

impl KnownDispute {
    fn new(node: Address, leaf: B256, challenger: Address, model_held: bool) -> Self {
        Self {
            node,
            leaf,
            challenger,
            model_held,
            evidence: None,
            parts: None,
            kept_announcement: None,
            failed: HashSet::new(),
            verdict: None,
        }
    }

    /// See [`Shared::add_part`].
    fn add_part(
        &mut self,
        announcement: B256,
        signer: Address,
        part: mlbridge_sdk::protocol::EvidencePart,
    ) -> PartAdded {
        if signer != self.challenger {
            return PartAdded::NotChallengers;
        }
        if self.evidence.is_some() || self.verdict.is_some() || self.failed.contains(&announcement) {
            return PartAdded::Redundant;
        }
        let (first, slots) = self.parts.get_or_insert_with(|| (announcement, vec![None; part.part_hashes.len()]));
        let index = part.index as usize;
        if *first != announcement || slots.len() != part.part_hashes.len() || slots[index].is_some() {
            return PartAdded::Redundant;
        }
        slots[index] = Some(part.bytes);
        if slots.iter().any(Option::is_none) {
            return PartAdded::Waiting;
        }
        let (announcement, slots) = self.parts.take().expect("assembled above");
        PartAdded::Complete(announcement, slots)
    }
}

/// Failed evidence records remembered per dispute (bounded; a record beyond is checked again if it comes back).
const MAX_FAILED_EVIDENCE: usize = 64;

/// Audits waiting or running, in all and per node.
#[derive(Default)]
struct PendingAudits {
    total: usize,
    by_node: HashMap<Address, usize>,
}

/// Whether an audit could be queued.
#[derive(Debug, PartialEq, Eq)]
enum AuditPlace {
    Taken,
    /// `max_pending` audits are waiting.
    AllFull,
    /// A quarter of them are this node's already.
    NodeFull,
}

impl PendingAudits {
    /// One more audit of `node`, if fewer than `max` are pending in all and fewer than a quarter of `max` for it.
    fn take(&mut self, node: Address, max: usize) -> AuditPlace {
        let mine = self.by_node.get(&node).copied().unwrap_or(0);
        if self.total >= max {
            return AuditPlace::AllFull;
        }
        if mine >= (max / 4).max(1) {
            return AuditPlace::NodeFull;
        }
        self.total += 1;
        self.by_node.insert(node, mine + 1);
        AuditPlace::Taken
    }

    /// Give back a place `take` gave for `node` (a release without a take changes nothing).
    fn release(&mut self, node: Address) {
        if let Some(n) = self.by_node.get_mut(&node) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_node.remove(&node);
            }
        }
    }
}

/// What gossiped evidence for a followed dispute must be about.
struct Subject {
    node: Address,
    leaf: B256,
    challenger: Address,
    model_held: bool,
    has_evidence: bool,
}

/// What one more (checked) part of large evidence gave.
enum PartAdded {
    /// New, and more parts are to come.
    Waiting,
    /// Already here, or not needed (evidence already kept, or another announcement came first): not forwarded.
    Redundant,
    /// Signed by someone other than the dispute's challenger: never kept, whoever signed it.
    NotChallengers,
    /// The last missing part: every part, in order (to be joined and judged outside the lock).
    Complete(B256, Vec<Option<Vec<u8>>>),
}

/// The digest evidence records are remembered by.
fn record_digest(ev: &DisputeEvidence) -> B256 {
    alloy::primitives::keccak256(mlbridge_sdk::protocol::encode(&ev.record))
}

/// State shared by the validator's tasks.
pub(crate) struct Shared {
    config: ValidatorConfig,
    chain: ValidatorChain,
    client: Client,
    signer: PrivateKeySigner,
    peer_bytes: Vec<u8>,
    reexec: Reexecutor,
    metrics: ValidatorMetrics,
    sampler: Mutex<Sampler>,
    checks: Mutex<CheckLog>,
    /// Registered PeerId of each node operator, asked on chain, kept a minute (a "not registered" is not kept).
    node_peers: moka::future::Cache<Address, Vec<u8>>,
    /// Receipt leaves already admitted (replays ignored).
    seen: moka::sync::Cache<B256, ()>,
    /// Disputes followed (from chain events), with their evidence. Gossiped evidence is kept only for these and only
    /// if it carries the disputed receipt and hashes to it, so nobody can crowd out a challenger's evidence.
    disputes: Mutex<HashMap<u64, KnownDispute>>,
    /// Audits waiting or running.
    pending_audits: Mutex<PendingAudits>,
    audit_slots: tokio::sync::Semaphore,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Shared {
    /// The PeerId `node` registered in `Staking` (`None`: not a registered node).
    async fn node_peer(&self, node: Address) -> Result<Option<Vec<u8>>> {
        let staking = self.chain.staking.clone();
        let peer = self
            .node_peers
            .try_get_with(node, async move {
                staking.nodeInfo(node).call().await.map(|info| info.peerId.to_vec()).map_err(crate::chain::rpc)
            })
            .await
            .map_err(|e: Arc<Error>| Error::from(mlbridge_sdk::Error::Rpc(e.to_string())))?;
        if peer.is_empty() {
            // Not kept: a node that registers now is known at once (its receipts relayed by honest peers must not
            // be held against them for a minute).
            self.node_peers.invalidate(&node).await;
            return Ok(None);
        }
        Ok(Some(peer))
    }

    /// Follow a dispute: its evidence is now accepted from gossip. Ours comes with the evidence we kept for it.
    fn know_dispute(&self, id: u64, node: Address, leaf: B256, challenger: Address, model_held: bool) {
        let own = if challenger == self.signer.address() { self.own_evidence(node, leaf) } else { None };
        let own = own.map(|mut ev| {
            ev.dispute_id = id;
            ev
        });
        let mut disputes = lock(&self.disputes);
        // The same id about another receipt (a reorg gave it to another dispute): start over, verdict included.
        if disputes.get(&id).is_some_and(|d| d.node != node || d.leaf != leaf || d.challenger != challenger) {
            disputes.remove(&id);
        }
        let d = disputes.entry(id).or_insert_with(|| KnownDispute::new(node, leaf, challenger, model_held));
        if own.is_some() {
            d.evidence = own;
        }
    }

    /// Stop following a dispute (settled or not ours to act on); if it was ours, our evidence for it is dropped too
    /// (another validator's dispute of the same receipt leaves ours alone).
    fn forget_dispute(&self, id: u64) {
        let removed = lock(&self.disputes).remove(&id);
        if let Some(d) = removed
            && d.challenger == self.signer.address()
        {
            self.drop_own_evidence(d.node, d.leaf);
        }
    }

    /// What gossiped evidence for `id` must be about (`None`: a dispute we do not follow).
    fn dispute_subject(&self, id: u64) -> Option<Subject> {
        lock(&self.disputes).get(&id).map(|d| Subject {
            node: d.node,
            leaf: d.leaf,
            challenger: d.challenger,
            model_held: d.model_held,
            has_evidence: d.evidence.is_some(),
        })
    }

    /// What parts of evidence for dispute `id` about `subject` must be signed over.
    fn evidence_subject(&self, id: u64, subject: &Subject) -> mlbridge_sdk::protocol::EvidenceSubject {
        let deployment = self.chain.deployment();
        mlbridge_sdk::protocol::EvidenceSubject {
            chain_id: deployment.chain_id,
            disputes: deployment.disputes,
            dispute_id: id,
            node: subject.node,
            leaf: subject.leaf,
        }
    }

    /// Add a part of large evidence, already checked against its announcement, which the dispute's challenger
    /// signed. The first announcement wins (a challenger gives one per dispute); a slot once filled is never
    /// overwritten (checked bytes cannot differ); the buffer is at most `MAX_EVIDENCE_BYTES` per dispute.
    fn add_part(&self, announcement: B256, signer: Address, part: mlbridge_sdk::protocol::EvidencePart) -> PartAdded {
        match lock(&self.disputes).get_mut(&part.dispute_id) {
            Some(d) => d.add_part(announcement, signer, part),
            None => PartAdded::Redundant,
        }
    }

    /// The evidence kept for dispute `id` was assembled from `announcement`'s parts.
    fn kept_from_parts(&self, id: u64, announcement: B256) {
        if let Some(d) = lock(&self.disputes).get_mut(&id)
            && d.evidence.is_some()
        {
            d.kept_announcement = Some(announcement);
        }
    }

    /// The challenger's announced evidence does not make valid evidence: never assembled again.
    fn parts_failed(&self, id: u64, announcement: B256) {
        if let Some(d) = lock(&self.disputes).get_mut(&id)
            && d.failed.len() < MAX_FAILED_EVIDENCE
        {
            d.failed.insert(announcement);
        }
    }

    /// Keep checked evidence (the first per dispute that has not failed to judge).
    fn keep_evidence(&self, ev: DisputeEvidence) {
        let digest = record_digest(&ev);
        if let Some(d) = lock(&self.disputes).get_mut(&ev.dispute_id)
            && d.verdict.is_none()
            && !d.failed.contains(&digest)
        {
            d.evidence.get_or_insert(ev);
            d.parts = None;
        }
    }

    /// The evidence `ev` could not be judged: drop it and never keep or re-run it again.
    fn evidence_failed(&self, ev: &DisputeEvidence) {
        let digest = record_digest(ev);
        if let Some(d) = lock(&self.disputes).get_mut(&ev.dispute_id) {
            if d.evidence.as_ref().is_some_and(|kept| record_digest(kept) == digest) {
                d.evidence = None;
            }
            if d.failed.len() + 1 < MAX_FAILED_EVIDENCE {
                d.failed.insert(digest);
                d.failed.extend(d.kept_announcement.take());
            }
        }
    }

    /// Remember our verdict on a dispute. A voter needs the evidence no longer (up to 8 MiB for days): it is
    /// dropped, and no more is kept or assembled; a challenger keeps its own to gossip it.
    fn judged(&self, id: u64, node_wrong: bool) {
        let me = self.signer.address();
        if let Some(d) = lock(&self.disputes).get_mut(&id) {
            d.verdict = Some(node_wrong);
            if d.challenger != me {
                d.evidence = None;
                d.parts = None;
            }
        }
    }

    /// Our verdict on a dispute, if already judged.
    fn verdict(&self, id: u64) -> Option<bool> {
        lock(&self.disputes).get(&id).and_then(|d| d.verdict)
    }

    fn evidence_file(&self, node: Address, leaf: B256) -> std::path::PathBuf {
        self.config.data_dir.join("evidence").join(format!("{node}-{leaf}.bin"))
    }

    /// Keep the evidence of a challenge we are about to reveal, on disk (it must outlive a restart, or voters could
    /// only ask the accused node, which may refuse, and our bond would be lost). Dropped when our dispute is done.
    fn keep_own_evidence(&self, node: Address, leaf: B256, ev: &DisputeEvidence) -> Result<()> {
        let path = self.evidence_file(node, leaf);
        let io = |e: std::io::Error| Error::Io { path: path.clone(), reason: e.to_string() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Whole or not at all: a crash mid-write must not leave a file that decodes to nothing.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, mlbridge_sdk::protocol::encode(ev)).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Our evidence against `node` for the receipt `leaf`.
    fn own_evidence(&self, node: Address, leaf: B256) -> Option<DisputeEvidence> {
        let bytes = std::fs::read(self.evidence_file(node, leaf)).ok()?;
        mlbridge_sdk::protocol::decode::<DisputeEvidence>(&bytes, usize::MAX).ok()
    }

    fn drop_own_evidence(&self, node: Address, leaf: B256) {
        let _ = std::fs::remove_file(self.evidence_file(node, leaf));
    }

    /// Whether evidence for `dispute` is kept (without copying it).
    fn has_evidence(&self, dispute: u64) -> bool {
        lock(&self.disputes).get(&dispute).is_some_and(|d| d.evidence.is_some())
    }

    fn evidence_for(&self, dispute: u64) -> Option<DisputeEvidence> {
        lock(&self.disputes).get(&dispute).and_then(|d| d.evidence.clone())
    }

    /// Reserve a place for one more audit of `node`: at most `max_pending` in all and a quarter of that per node,
    /// so a node flooding receipts of its own cannot crowd out the audits of the others (dropped samples are
    /// counted by the caller; a node that stalls or refuses audits is suspected by the audits themselves).
    fn take_audit(&self, node: Address) -> bool {
        let place = lock(&self.pending_audits).take(node, self.config.sampling.max_pending);
        if place == AuditPlace::NodeFull {
            tracing::debug!(target: "validator::audit", %node, "this node's share of the audit queue is full; sample dropped");
        }
        place == AuditPlace::Taken
    }

    fn release_audit(&self, node: Address) {
        lock(&self.pending_audits).release(node);
    }

    fn suspect(&self, node: Address) {
        let mut s = lock(&self.sampler);
        s.suspect(node);
        self.metrics.suspected_nodes.set(s.suspected() as i64);
    }
}

/// A running validator (for tests and the `run` command).
pub struct RunningValidator {
    /// The validator's address.
    pub address: Address,
    /// Its libp2p identity.
    pub peer_id: PeerId,
    /// Where `/metrics` is served.
    pub metrics_addr: Option<SocketAddr>,
    /// Its metrics.
    pub metrics: ValidatorMetrics,
    client: Client,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningValidator {
    /// The addresses its p2p side listens on (with `/p2p/<id>`).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.client.listen_addrs().await.map_err(Error::from)
    }

    /// Stop every task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The sampling secret in `data_dir/sampling-secret`, created on first start (readable by the owner only).
fn sampling_secret(data_dir: &Path) -> Result<B256> {
    let path = data_dir.join("sampling-secret");
    let io = |e: std::io::Error| Error::Io { path: path.clone(), reason: e.to_string() };
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text.trim().parse().map_err(|e| Error::Io { path: path.clone(), reason: format!("not a secret: {e}") });
    }
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let secret = PrivateKeySigner::random().to_bytes();
    std::fs::write(&path, format!("{secret}\n")).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(secret)
}

/// Start the validator: models, chain, network, then the gossip and duties loops. Returns once it listens.
pub async fn start(config: ValidatorConfig) -> Result<RunningValidator> {
    config.check().map_err(|reason| Error::Config { path: "config".into(), reason })?;
    let signer = crate::keys::load(&config)?;
    let chain = ValidatorChain::connect(&config, signer.clone(), false).await?;
    if !chain.staking.isActiveValidator(signer.address()).call().await.map_err(crate::chain::rpc)? {
        tracing::warn!(target: "validator", address = %signer.address(),
            "not an active validator in Staking: nodes refuse its audits and it cannot attest or vote; run `mlbridge-validator stake`");
    }
    let reexec = Reexecutor::open(&config.model_repository, config.onnxruntime.as_deref()).await?;
    let metrics = ValidatorMetrics::new()?;
    let shutdown = CancellationToken::new();
    let metrics_addr = match config.metrics.listen {
        Some(addr) => Some(crate::metrics::serve(metrics.clone(), addr, shutdown.clone()).await?),
        None => None,
    };
    let identity = mlbridge_node::p2p::load_identity(config.p2p.identity_file.as_deref())?;
    let peer_id = identity.public().to_peer_id();
    let parse = |list: &[String]| -> Result<Vec<Multiaddr>> {
        list.iter().map(|a| a.parse().map_err(|e| Error::Network(format!("'{a}' is not a multiaddr: {e}")))).collect()
    };
    let (gossip_tx, gossip_rx) = mpsc::channel::<GossipMessage>(4096);
    let net = NetConfig {
        listen: parse(&config.p2p.listen)?,
        bootstrap: parse(&config.p2p.bootstrap)?,
        mdns: config.p2p.mdns,
        heartbeat: Duration::from_millis(200),
        ..NetConfig::default()
    };
    let client = Client::start_with(
        identity,
        ClientConfig {
            net,
            request_timeout: Duration::from_secs_f64(config.audit.timeout_secs.max(0.1)),
            topics: vec![RECEIPTS_TOPIC.into(), DISPUTES_TOPIC.into(), EVIDENCE_PARTS_TOPIC.into()],
            gossip: Some(gossip_tx),
            ..ClientConfig::default()
        },
    )
    .map_err(|e| Error::Network(e.to_string()))?;
    let secret = sampling_secret(&config.data_dir)?;
    let shared = Arc::new(Shared {
        sampler: Mutex::new(Sampler::new(secret, config.sampling.clone())),
        checks: Mutex::new(CheckLog::new(&config.data_dir)),
        node_peers: moka::future::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(60)).build(),
        seen: moka::sync::Cache::builder()
            .max_capacity(MAX_SEEN_RECEIPTS)
            .time_to_live(Duration::from_secs(2 * mlbridge_sdk::client::MAX_RECEIPT_SKEW_SECS + SEEN_TTL_MARGIN_SECS))
            .build(),
        disputes: Mutex::new(HashMap::new()),
        pending_audits: Mutex::default(),
        audit_slots: tokio::sync::Semaphore::new(config.audit.concurrency),
        peer_bytes: peer_id.to_bytes(),
        config,
        chain,
        client: client.clone(),
        signer,
        reexec,
        metrics: metrics.clone(),
    });
    if shared.config.testing_challenge_honest {
        tracing::warn!(target: "validator", "testing_challenge_honest is set: this validator LIES (tests only) and will lose its bonds");
    }
    let tasks = vec![
        tokio::spawn(receipts::gossip_loop(shared.clone(), gossip_rx, shutdown.clone())),
        tokio::spawn(duties::duties_loop(shared.clone(), shutdown.clone())),
    ];
    tracing::info!(target: "validator", address = %shared.signer.address(), %peer_id, "validator started");
    Ok(RunningValidator { address: shared.signer.address(), peer_id, metrics_addr, metrics, client, shutdown, tasks })
}

/// Run until ctrl-c or SIGTERM.
pub async fn run(config: ValidatorConfig) -> Result<()> {
    let running = start(config).await?;
    for a in running.listen_addrs().await.unwrap_or_default() {
        println!("listening on {a}");
    }
    if let Some(m) = running.metrics_addr {
        println!("metrics on http://{m}/metrics");
    }
    wait_for_signal().await;
    tracing::info!(target: "validator", "shutting down");
    running.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use mlbridge_sdk::protocol::{EVIDENCE_PART_BYTES, EvidencePart, WIRE_VERSION};

    use super::*;

    /// Parts of `whole` as `check` would have passed them (signature not needed here), under a made-up announcement.
    fn parts_of(whole: &[u8], tag: u8) -> (B256, Vec<EvidencePart>) {
        let hashes: Vec<B256> = whole.chunks(EVIDENCE_PART_BYTES).map(alloy::primitives::keccak256).collect();
        let parts = whole
            .chunks(EVIDENCE_PART_BYTES)
            .enumerate()
            .map(|(i, bytes)| EvidencePart {
                version: WIRE_VERSION,
                dispute_id: 0,
                total_len: whole.len() as u32,
                index: i as u32,
                part_hashes: hashes.clone(),
                signature: [0; 65],
                bytes: bytes.to_vec(),
            })
            .collect();
        (alloy::primitives::keccak256([tag]), parts)
    }

    #[test]
    fn only_the_challengers_parts_assemble_once_in_any_order_and_the_first_announcement_wins() {
        let whole: Vec<u8> = (0..3 * EVIDENCE_PART_BYTES + 10).map(|i| (i % 251) as u8).collect();
        let (a, parts) = parts_of(&whole, 1);
        let (b, other) = parts_of(&whole[1..], 2);
        let (challenger, stranger) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let mut d = KnownDispute::new(Address::ZERO, B256::ZERO, challenger, true);
        assert!(
            matches!(d.add_part(b, stranger, other[0].clone()), PartAdded::NotChallengers),
            "a part signed by anyone but the challenger is never kept, not even as the first"
        );
        assert!(d.parts.is_none());
        assert!(matches!(d.add_part(a, challenger, parts[3].clone()), PartAdded::Waiting));
        assert!(
            matches!(d.add_part(b, challenger, other[0].clone()), PartAdded::Redundant),
            "the first announcement wins"
        );
        assert!(matches!(d.add_part(a, challenger, parts[3].clone()), PartAdded::Redundant), "a part already here");
        for p in [&parts[1], &parts[0]] {
            assert!(matches!(d.add_part(a, challenger, p.clone()), PartAdded::Waiting));
        }
        let PartAdded::Complete(announcement, slots) = d.add_part(a, challenger, parts[2].clone()) else {
            panic!("the last part completes the whole")
        };
        assert_eq!(announcement, a);
        assert_eq!(slots.into_iter().flatten().flatten().collect::<Vec<u8>>(), whole, "in order");
        assert!(d.parts.is_none(), "nothing buffered once complete");
        d.failed.insert(a);
        assert!(
            matches!(d.add_part(a, challenger, parts[0].clone()), PartAdded::Redundant),
            "a failed whole is not rebuilt"
        );
        assert!(
            matches!(d.add_part(b, challenger, other[0].clone()), PartAdded::Waiting),
            "another announcement may come next"
        );
    }

    #[test]
    fn one_node_cannot_take_every_audit_place() {
        let (flooder, other) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let mut p = PendingAudits::default();
        let taken = (0..100).filter(|_| p.take(flooder, 16) == AuditPlace::Taken).count();
        assert_eq!(taken, 4, "a quarter of the places per node");
        assert_eq!(p.take(flooder, 16), AuditPlace::NodeFull);
        assert_eq!(p.take(other, 16), AuditPlace::Taken, "another node's receipts are still audited");
        p.release(flooder);
        assert_eq!(p.take(flooder, 16), AuditPlace::Taken, "a place given back is taken again");
        for _ in 0..5 {
            p.release(flooder); // the fifth gives back nothing: the flooder holds four
        }
        assert_eq!(p.total, 1, "the other node's place is still held");
        p.release(other);
        assert_eq!((p.total, p.by_node.len()), (0, 0), "nothing left behind");
        let mut tiny = PendingAudits::default();
        assert_eq!((tiny.take(flooder, 1), tiny.take(other, 1)), (AuditPlace::Taken, AuditPlace::AllFull));
    }
}
