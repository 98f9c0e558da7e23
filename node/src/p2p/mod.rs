//! The node's libp2p side: one task owns the `Swarm` and runs a `select!` loop over swarm events, commands from
//! [`P2pHandle`]s, answers of finished inferences, the advert timer and the reconnect timer.
//!
//! - Inference and embeddings come mostly over the multiplexed stream (`mux`: one long-lived stream per client,
//!   served by its own tasks, outside this loop); on `/mlbridge/infer/1` (audits, bids, older clients) inbound
//!   `Infer`/`Embed` requests run on the [`Engine`] in spawned tasks (the batcher does the compute on its own
//!   thread) and their answers come back to the loop over a bounded channel, because only the swarm's owner may
//!   answer. Errors are typed responses (unknown model, bad input, overloaded, unsupported version), never dropped
//!   streams. On both, a peer may have `max_inbound_per_peer` requests in flight and send
//!   `max_requests_per_sec_per_peer` (a token bucket, `peers`); beyond either it is answered "overloaded" at once.
//! - Text generation streams over `/mlbridge/generate/1` (`generate`: one substream per generation, events written
//!   as the scheduler makes them; closing the stream cancels); text-generation models are advertised priced per
//!   output token.
//! - Signed receipt batches of paid jobs (both front ends) are gossiped by batch while validators listen.
//! - Every `advert_interval` the node publishes a signed [`Advert`] (operator key + PeerId, models, prices, queue).
//! - It subscribes to the job topic of every model it serves and answers acceptable [`JobOffer`]s with a [`Bid`]
//!   sent to the offering peer.
//! - Gossip is validated explicitly (accept/reject); peers whose messages (gossip or requests) are invalid too often
//!   are banned (block list + disconnect) on top of gossipsub's score penalty.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::{B256, U256};
use alloy::signers::local::PrivateKeySigner;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use mlbridge_sdk::net::traffic::Proto;
use mlbridge_sdk::net::{
    Behaviour, BehaviourEvent, Codec, InboundBudget, NetConfig, build_swarm_with, learn_addresses,
};
use mlbridge_sdk::protocol::{
    ADVERTS_TOPIC, Advert, AdvertModel, AuditRequest, Bid, EmbedRequest, ErrorKind, IMAGE_INPUT, InferRequest,
    InferResponse, JobOffer, MAX_GOSSIP_BYTES, MAX_RESPONSE_BYTES, ModelRef, PaymentRefusal, ProtocolError,
    RECEIPTS_TOPIC, ReceiptBatchGossip, Request, Response, WIRE_VERSION, WireVoucher, decode, encode, jobs_topic,
};
use mlbridge_sdk::{Tensor, TensorData};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::P2pConfig;
use crate::inference::Engine;
use crate::inference::ModelConfig;
use crate::inference::engine::is_client_error;
use crate::metrics::NodeMetrics;
use crate::payment::{Authorization, Completed, JobInput, PaymentService, SignedBatch, credit_spender, guarded};

mod generate;
mod mux;
mod peers;

use peers::{PeerLoad, TokenBucket};

/// Multiplexed streams one peer may have open at once (a client needs one).
const MAX_STREAMS_PER_PEER: usize = 4;
use crate::{Error, Result};

/// Commands to the swarm task.
enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
}

/// Cloneable handle to the node's swarm task.
#[derive(Clone, Debug)]
pub struct P2pHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    auditors: Auditors,
}

/// Peers the operator lets fetch audit records without a validator signature (a job's inputs and outputs are the
/// client's data): `p2p.audit_allowlist`, plus [`P2pHandle::allow_auditor`]. Everyone else must be an active
/// validator in `Staking`.
type Auditors = Arc<std::sync::RwLock<std::collections::HashSet<PeerId>>>;

impl P2pHandle {
    /// The node's libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Let `peer` fetch audit records from now on.
    pub fn allow_auditor(&self, peer: PeerId) {
        self.auditors.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(peer);
    }

    /// Addresses the node listens on, each with its `/p2p/<id>` suffix (ready to use as bootstrap addresses).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::ListenAddrs(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Peers connected now.
    pub async fn peers(&self) -> Result<Vec<PeerId>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Peers(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

fn stopped() -> Error {
    Error::Network("the p2p task has stopped".into())
}

/// The node's libp2p identity: loaded from `path` (created on first run) or ephemeral.
pub fn load_identity(path: Option<&Path>) -> Result<Keypair> {
    let Some(path) = path else { return Ok(Keypair::generate_ed25519()) };
    let fail = |reason: String| Error::Config { path: path.to_owned(), reason };
    if path.is_file() {
        let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the identity: {e}")))?;
        return Keypair::from_protobuf_encoding(&bytes).map_err(|e| fail(format!("not a libp2p identity: {e}")));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::write(path, bytes).map_err(|e| fail(format!("cannot write the identity: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(key)
}

/// The configured operator key, or an ephemeral one (a free node needs no stable key).
pub fn operator_signer(config: &crate::config::NodeConfig) -> Result<PrivateKeySigner> {
    match config.operator_signer()? {
        Some(signer) => Ok(signer),
        None => {
            tracing::warn!(target: "node::p2p", "no operator key configured; adverts are signed with an ephemeral key");
            Ok(PrivateKeySigner::random())
        }
    }
}

/// Strike records kept for disconnected peers before the harmless ones are forgotten.
const MAX_STRIKE_RECORDS: usize = 10_000;

/// Start the swarm task. It stops when `shutdown` is cancelled.
pub fn spawn(
    engine: Engine,
    config: &P2pConfig,
    operator: PrivateKeySigner,
    metrics: NodeMetrics,
    payments: Option<Arc<PaymentService>>,
    shutdown: CancellationToken,
) -> Result<(P2pHandle, JoinHandle<()>)> {
    let keypair = load_identity(config.identity_file.as_deref())?;
    let peer_id = keypair.public().to_peer_id();
    let parse = |list: &[String], what: &str| -> Result<Vec<Multiaddr>> {
        list.iter()
            .map(|a| a.parse().map_err(|e| Error::Network(format!("{what} address '{a}' is not a multiaddr: {e}"))))
            .collect()
    };
    let net = NetConfig {
        listen: parse(&config.listen, "listen")?,
        bootstrap: parse(&config.bootstrap, "bootstrap")?,
        mdns: config.mdns,
        max_incoming_connections: config.max_incoming_connections.max(1),
        max_connections_per_peer: config.max_connections_per_peer.max(1),
        max_streams_per_connection: config.max_streams_per_connection.max(1),
        inbound_budget_bytes: config.inbound_budget_mib.max(1) << 20,
        ..NetConfig::default()
    };
    let auditors: Auditors = Arc::new(std::sync::RwLock::new(
        config
            .audit_allowlist
            .iter()
            .map(|p| p.parse().map_err(|e| Error::Network(format!("audit_allowlist: '{p}' is not a PeerId: {e}"))))
            .collect::<Result<_>>()?,
    ));
    let budget = InboundBudget::new(net.inbound_budget_bytes);
    let codec = Codec::new(budget.clone()).with_traffic(metrics.p2p_bytes.clone());
    let swarm = build_swarm_with(keypair, &net, codec).map_err(|e| Error::Network(e.to_string()))?;
    metrics.p2p_enabled.set(1);
    let (commands, rx) = mpsc::channel(64);
    let (answers_tx, answers) = mpsc::channel(1024);
    let load = Arc::new(PeerLoad::new(
        config.max_requests_per_sec_per_peer,
        config.max_inbound_per_peer,
        MAX_STREAMS_PER_PEER,
        metrics.clone(),
    ));
    let (strikes_tx, strikes) = mpsc::channel(256);
    let stopping_flag = Arc::new(AtomicBool::new(false));
    let mux = Arc::new(mux::MuxServer {
        engine: engine.clone(),
        payments: payments.clone(),
        load: load.clone(),
        metrics: metrics.clone(),
        budget,
        strikes: strikes_tx,
        stopping: stopping_flag.clone(),
        latency: Duration::from_millis(config.simulated_latency_ms),
    });
    // Generation streams end with the node: their accept loop stops at shutdown (not joined, like the streams).
    generate::spawn(swarm.behaviour().stream.new_control(), mux.clone(), shutdown.clone())?;
    let mux_task = mux::spawn(swarm.behaviour().stream.new_control(), mux, shutdown.clone())?;
    let mut actor = Actor {
        swarm,
        engine,
        config: config.clone(),
        bootstrap: mlbridge_sdk::net::Bootstrap::new(net.bootstrap.clone()),
        operator,
        metrics,
        payments,
        commands: rx,
        answers_tx,
        answers,
        load,
        audit_rates: HashMap::new(),
        strikes,
        stopping_flag,
        mux_task: Some(mux_task),
        auditors: auditors.clone(),
        invalid: HashMap::new(),
        job_topics: HashMap::new(),
        receipt_listeners: std::collections::HashSet::new(),
        peer_ips: HashMap::new(),
        stopping: false,
    };
    actor.subscribe()?;
    actor.dial_bootstrap();
    let task = tokio::spawn(actor.run(shutdown));
    Ok((P2pHandle { commands, peer_id, auditors }, task))
}

struct Answer {
    channel: ResponseChannel<Response>,
    response: Response,
    peer: PeerId,
    started: Instant,
    outcome: &'static str,
    /// Counted in the peer's in-flight requests (inference); audits are not.
    counted: bool,
}

struct Actor {
    swarm: Swarm<Behaviour>,
    engine: Engine,
    config: P2pConfig,
    /// Bootstrap peers (names resolved off the swarm).
    bootstrap: mlbridge_sdk::net::Bootstrap,
    operator: PrivateKeySigner,
    metrics: NodeMetrics,
    payments: Option<Arc<PaymentService>>,
    commands: mpsc::Receiver<Command>,
    answers_tx: mpsc::Sender<Answer>,
    answers: mpsc::Receiver<Answer>,
    /// Per-peer rate, requests in flight and streams (shared with the multiplexed streams' tasks).
    load: Arc<PeerLoad>,
    audit_rates: HashMap<PeerId, TokenBucket>,
    /// Invalid requests seen by the multiplexed streams' tasks.
    strikes: mpsc::Receiver<PeerId>,
    /// Shutting down, as the multiplexed streams' tasks see it.
    stopping_flag: Arc<AtomicBool>,
    /// The task accepting multiplexed streams.
    mux_task: Option<JoinHandle<()>>,
    auditors: Auditors,
    invalid: HashMap<PeerId, u32>,
    /// Job topic of each served model id -> (name, version).
    job_topics: HashMap<TopicHash, (String, u64)>,
    /// Peers subscribed to the receipts topic (validators).
    receipt_listeners: std::collections::HashSet<PeerId>,
    /// Remote address of each connected peer (to ban the address with the key).
    peer_ips: HashMap<PeerId, std::net::IpAddr>,
    /// Shutting down: new requests are turned away while the answers in flight go out.
    stopping: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn protocol_error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ProtocolError::new(kind, message))
}

/// Map an engine error to a typed protocol error and a metrics outcome.
fn engine_error(e: &Error) -> (Response, &'static str) {
    match e {
        Error::UnknownModel { .. } => (protocol_error(ErrorKind::UnknownModel, e.to_string()), "client_error"),
        Error::Overloaded { .. } | Error::QueueTimeout { .. } => {
            (protocol_error(ErrorKind::Overloaded, e.to_string()), "overloaded")
        }
        e if is_client_error(e) => (protocol_error(ErrorKind::BadInput, e.to_string()), "client_error"),
        e => {
            tracing::error!(target: "node::p2p", err = %e, "request failed");
            (protocol_error(ErrorKind::Internal, "internal error; the node's log has the details"), "error")
        }
    }
}

impl Actor {
    fn subscribe(&mut self) -> Result<()> {
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        gossip.subscribe(&IdentTopic::new(ADVERTS_TOPIC)).map_err(|e| Error::Network(e.to_string()))?;
        for c in self.engine.configs() {
            let topic = IdentTopic::new(jobs_topic(&c.sha256));
            gossip.subscribe(&topic).map_err(|e| Error::Network(e.to_string()))?;
            self.job_topics.insert(topic.hash(), (c.name.clone(), c.version));
        }
        Ok(())
    }

    fn dial_bootstrap(&mut self) {
        self.bootstrap.dial(&mut self.swarm);
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let interval = Duration::from_secs_f64(self.config.advert_interval_secs.max(0.05));
        let mut adverts = tokio::time::interval(interval);
        let mut reconnect = tokio::time::interval(Duration::from_secs(5));
        // Receipt batches as the signer makes them (paid jobs of both front ends), gossiped by batch. A free node
        // has none (and a closed channel must not be polled again: it is always ready).
        let (mut batches, mut signing) = match &self.payments {
            Some(p) => (p.receipt_signer().batches(), true),
            None => (tokio::sync::broadcast::channel(1).1, false),
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(addr) = self.bootstrap.resolved() => self.bootstrap.dial_resolved(&mut self.swarm, addr),
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(answer) = self.answers.recv() => self.on_answer(answer),
                Some(peer) = self.strikes.recv() => self.strike(peer),
                batch = batches.recv(), if signing => match batch {
                    Ok(b) => self.publish_batch(&b),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(target: "node::p2p", n, "receipt batches not gossiped (the task fell behind)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => signing = false,
                },
                _ = adverts.tick() => self.publish_advert(),
                _ = reconnect.tick() => {
                    if self.swarm.connected_peers().next().is_none() && !self.bootstrap.is_empty() {
                        tracing::info!(target: "node::p2p", "no peers; dialling the bootstrap peers again");
                        self.dial_bootstrap();
                    }
                }
            }
        }
        self.drain(Duration::from_secs(10)).await;
        if let Some(t) = self.mux_task.take() {
            let _ = t.await;
        }
        tracing::info!(target: "node::p2p", "p2p task stopped");
    }

    /// At shutdown: turn new requests away, send every answer still being computed (paid jobs are charged only
    /// once answered, and an answer is what the client paid for; a running generation is cut at its next step and
    /// its end sent), then give the swarm a moment to flush them.
    async fn drain(&mut self, limit: Duration) {
        self.stopping = true;
        self.stopping_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        // Answers of multiplexed streams go out from their own tasks: look again every few milliseconds.
        let mut look = tokio::time::interval(Duration::from_millis(5));
        while self.load.busy() {
            tokio::select! {
                Some(answer) = self.answers.recv() => self.on_answer(answer),
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = look.tick() => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(target: "node::p2p", "stopping with answers still in flight");
                    break;
                }
            }
        }
        let flush = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                () = tokio::time::sleep_until(flush) => break,
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::ListenAddrs(reply) => {
                let me = *self.swarm.local_peer_id();
                let addrs = self.swarm.listeners().map(|a| a.clone().with_p2p(me).unwrap_or_else(|a| a)).collect();
                let _ = reply.send(addrs);
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if learn_addresses(&mut self.swarm, &event) {
            return;
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(target: "node::p2p", %address, peer = %self.swarm.local_peer_id(), "listening");
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                if let Some(ip) = mlbridge_sdk::net::ipban::ip_of(endpoint.get_remote_address()) {
                    self.peer_ips.insert(peer_id, ip);
                }
                self.load.connected(peer_id);
                self.metrics.p2p_peers.set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                if num_established == 0 {
                    self.forget(peer_id);
                }
                self.metrics.p2p_peers.set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(ev)) => self.on_rpc(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.metrics.p2p_gossip.with_label_values(&["in"]).inc();
                self.metrics.p2p_bytes.add(Proto::Gossip, true, message.data.len());
                let acceptance = self.on_gossip(&message);
                if acceptance == MessageAcceptance::Reject {
                    self.metrics.p2p_gossip.with_label_values(&["rejected"]).inc();
                    self.strike(propagation_source);
                }
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic })) => {
                if topic == IdentTopic::new(ADVERTS_TOPIC).hash() {
                    // A new listener: advertise now rather than at the next tick.
                    self.publish_advert();
                } else if topic == IdentTopic::new(RECEIPTS_TOPIC).hash() {
                    self.receipt_listeners.insert(peer_id);
                    self.metrics.p2p_receipt_listeners.set(self.receipt_listeners.len() as i64);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { peer_id, topic }))
                if topic == IdentTopic::new(RECEIPTS_TOPIC).hash() =>
            {
                self.receipt_listeners.remove(&peer_id);
                self.metrics.p2p_receipt_listeners.set(self.receipt_listeners.len() as i64);
            }
            _ => {}
        }
    }

    fn on_rpc(&mut self, ev: request_response::Event<Request, Response>) {
        match ev {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                self.on_request(peer, request, channel);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(target: "node::p2p", %peer, %error, "inbound request failed");
            }
            // Our outbound requests are bids; their acks need no handling.
            _ => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let started = Instant::now();
        if request.version() != WIRE_VERSION {
            let msg = format!("wire version {} is not supported; this node speaks {WIRE_VERSION}", request.version());
            return self.reply_now(channel, protocol_error(ErrorKind::UnsupportedVersion, msg), "unsupported_version");
        }
        if let Request::Busy = request {
            let msg = "the node is reading too many requests at once; retry shortly";
            return self.reply_now(channel, protocol_error(ErrorKind::Overloaded, msg), "overloaded");
        }
        if let Request::Malformed(reason) = &request {
            let msg = format!("not a request: {reason}");
            self.strike(peer);
            return self.reply_now(channel, protocol_error(ErrorKind::Malformed, msg), "malformed");
        }
        if matches!(request, Request::Bid(_)) {
            return self.reply_now(
                channel,
                protocol_error(ErrorKind::BadInput, "nodes do not take bids"),
                "client_error",
            );
        }
        let request = match request {
            Request::Audit(a) => return self.on_audit(peer, a, channel, started),
            other => other,
        };
        if self.stopping {
            return self.reply_now(
                channel,
                protocol_error(ErrorKind::Overloaded, "the node is shutting down"),
                "overloaded",
            );
        }
        if let Err(msg) = self.load.admit(peer) {
            return self.reply_now(channel, protocol_error(ErrorKind::Overloaded, msg), "overloaded");
        }
        let (engine, tx, payments) = (self.engine.clone(), self.answers_tx.clone(), self.payments.clone());
        let latency = Duration::from_millis(self.config.simulated_latency_ms);
        tokio::spawn(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            // Credit paid ahead is spent only by whoever paid it: the payer's credit key when the request carries
            // one, else the peer (the connection's handshake proved its id).
            let spender = Some(alloy::primitives::keccak256(peer.to_bytes()));
            let served = match request {
                Request::Infer(r) => serve_infer(&engine, payments.as_deref(), r, spender).await,
                Request::Embed(r) => serve_embed(&engine, payments.as_deref(), r, spender).await,
                Request::Bid(_) | Request::Audit(_) | Request::Malformed(_) | Request::Busy => {
                    unreachable!("answered above")
                }
            };
            let Served { response, outcome } = served;
            let _ = tx.send(Answer { channel, response, peer, started, outcome, counted: true }).await;
        });
    }

    /// The audit protocol: a job's record goes only to an active validator in `Staking` (the request signed by its
    /// key, naming this very peer, recent) or to a peer on the operator's `audit_allowlist`, rate-limited per peer.
    fn on_audit(&mut self, peer: PeerId, a: AuditRequest, channel: ResponseChannel<Response>, started: Instant) {
        let Some(payments) = self.payments.clone() else {
            let msg = "this node is free: it keeps no paid jobs to audit";
            return self.reply_now(channel, protocol_error(ErrorKind::NotFound, msg), "client_error");
        };
        let listed = self.auditors.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&peer);
        let validator = if listed {
            None
        } else {
            match a.verify(&peer.to_bytes(), now_ms() / 1000) {
                Ok(v) => Some(v),
                Err(why) => {
                    let msg = format!(
                        "{why}: audit records (clients' inputs and outputs) are served only to active validators"
                    );
                    return self.reply_now(channel, protocol_error(ErrorKind::Forbidden, msg), "forbidden");
                }
            }
        };
        let rate = self.config.max_audits_per_sec_per_peer;
        if !self.audit_rates.entry(peer).or_insert_with(|| TokenBucket::new(rate)).take() {
            let msg = format!("more than {rate} audits per second from one peer");
            return self.reply_now(channel, protocol_error(ErrorKind::Overloaded, msg), "overloaded");
        }
        let tx = self.answers_tx.clone();
        tokio::spawn(async move {
            let checked = match validator {
                None => Ok(()),
                Some(v) => match payments.validators().is_active(v).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err((
                        protocol_error(
                            ErrorKind::Forbidden,
                            format!("{v} is not an active validator in Staking: audit records are for validators"),
                        ),
                        "forbidden",
                    )),
                    Err(e) => Err((
                        protocol_error(ErrorKind::Internal, format!("cannot check Staking now ({e}); retry later")),
                        "error",
                    )),
                },
            };
            let (response, outcome) = match checked.map(|()| payments.audit(&a.job_id)) {
                // Shared, not copied: the record is encoded straight from the store's Arc.
                Ok(Some(r)) => (Response::Audit(r), "audit"),
                Ok(None) => {
                    let msg = format!("no record of job {}; it is unknown or older than the retention", a.job_id);
                    (protocol_error(ErrorKind::NotFound, msg), "client_error")
                }
                Err(refused) => refused,
            };
            let _ = tx.send(Answer { channel, response, peer, started, outcome, counted: false }).await;
        });
    }

    fn reply_now(&mut self, channel: ResponseChannel<Response>, response: Response, outcome: &'static str) {
        self.metrics.p2p_requests.with_label_values(&[outcome]).inc();
        let _ = self.swarm.behaviour_mut().rpc.send_response(channel, response);
    }

    fn on_answer(&mut self, a: Answer) {
        if a.counted {
            self.load.done(a.peer);
        }
        self.metrics.p2p_requests.with_label_values(&[a.outcome]).inc();
        if a.outcome == "ok" {
            self.metrics.p2p_request_seconds.observe(a.started.elapsed().as_secs_f64());
        }
        if self.swarm.behaviour_mut().rpc.send_response(a.channel, a.response).is_err() {
            tracing::debug!(target: "node::p2p", peer = %a.peer, "the requester went away before the answer");
        }
    }

    /// Gossip a signed receipt batch for validators, in as many messages as its receipts need (nobody listening: the
    /// receipts stay in the ledger and the audit store).
    fn publish_batch(&mut self, b: &SignedBatch) {
        let Some(p) = &self.payments else { return };
        if self.receipt_listeners.is_empty() {
            return;
        }
        for msg in ReceiptBatchGossip::split(&b.batch, &b.leaves, &b.receipts) {
            let n = msg.receipts.len() as u64;
            let bytes = encode(&msg);
            let len = bytes.len();
            if self.swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(RECEIPTS_TOPIC), bytes).is_ok() {
                self.metrics.p2p_bytes.add(Proto::Gossip, false, len);
                p.metrics().receipts_published.inc_by(n);
            }
        }
    }

    fn on_gossip(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        let Some(source) = message.source else { return MessageAcceptance::Reject };
        if message.topic == IdentTopic::new(ADVERTS_TOPIC).hash() {
            return match decode::<Advert>(&message.data, MAX_GOSSIP_BYTES) {
                Ok(a) if a.verify(&source.to_bytes()) => MessageAcceptance::Accept,
                _ => MessageAcceptance::Reject,
            };
        }
        if let Some((name, version)) = self.job_topics.get(&message.topic).cloned() {
            return match decode::<JobOffer>(&message.data, MAX_GOSSIP_BYTES) {
                Ok(offer) if offer.version == WIRE_VERSION => {
                    self.maybe_bid(source, &offer, &name, version);
                    MessageAcceptance::Accept
                }
                _ => MessageAcceptance::Reject,
            };
        }
        MessageAcceptance::Ignore
    }

    /// Bid on an offer for a model we serve when its price and deadline suit us and we have spare capacity.
    fn maybe_bid(&mut self, client: PeerId, offer: &JobOffer, name: &str, version: u64) {
        let Ok(config) = self.engine.config(name, Some(version)) else { return };
        let price = U256::from(config.price_wei);
        let now_s = now_ms() / 1000;
        let queue = self.engine.queue_depth(name, Some(version));
        // Spare capacity: bid only while the model's queue is less than half full.
        let busy = queue * 2 >= self.engine.queue_capacity();
        if offer.model_id != config.sha256 || offer.deadline_unix <= now_s || offer.max_price_wei < price || busy {
            return;
        }
        let key = config.key();
        let h = self.engine.metrics().request_seconds.with_label_values(&[&key]);
        let mean_ms =
            if h.get_sample_count() > 0 { h.get_sample_sum() * 1e3 / h.get_sample_count() as f64 } else { 1.0 };
        let bid = Bid {
            version: WIRE_VERSION,
            job_id: offer.job_id,
            price_wei: price,
            expected_latency_ms: ((queue as f64 + 1.0) * mean_ms).ceil() as u32
                + self.config.simulated_latency_ms as u32,
            model: ModelRef { name: name.to_owned(), version: Some(version), id: Some(config.sha256) },
        };
        self.swarm.behaviour_mut().rpc.send_request(&client, Request::Bid(bid));
    }

    fn publish_advert(&mut self) {
        let models = self
            .engine
            .configs()
            .map(|c| AdvertModel {
                model_id: c.sha256,
                name: c.name.clone(),
                version: c.version,
                price_wei: U256::from(c.price_wei),
                queue_depth: self.engine.queue_depth(&c.name, Some(c.version)) as u32,
                input_token_price_wei: None,
            })
            // Text-generation models, priced per input and output token, for `generate` streams; a node that
            // charges lists only the versions it sells (those validators can check).
            .chain(self.engine.generation_configs().filter_map(|c| {
                // A node that does not charge says so: its prices are zero whatever the model's config says.
                let prices = match self.payments {
                    Some(_) => c.generation.as_ref()?.prices(),
                    None => mlbridge_sdk::generate::GenerationPrices::default(),
                };
                (self.payments.is_none() || c.generation.as_ref()?.sold_to_payers()).then(|| AdvertModel {
                    model_id: c.sha256,
                    name: c.name.clone(),
                    version: c.version,
                    price_wei: prices.output_wei,
                    queue_depth: 0,
                    input_token_price_wei: Some(prices.input_wei),
                })
            }))
            .collect();
        let advert = Advert {
            version: WIRE_VERSION,
            peer_id: self.swarm.local_peer_id().to_bytes(),
            operator: self.operator.address(),
            models,
            capacity: self.config.max_inbound_per_peer as u32,
            addrs: self
                .swarm
                .listeners()
                .chain(self.swarm.external_addresses())
                .filter(|a| !a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified())))
                .map(|a| a.to_vec())
                .collect(),
            issued_at_ms: now_ms(),
            signature: Vec::new(),
        };
        let Ok(signed) = advert.sign(&self.operator) else { return };
        let bytes = encode(&signed);
        let len = bytes.len();
        match self.swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(ADVERTS_TOPIC), bytes) {
            Ok(_) => {
                self.metrics.p2p_gossip.with_label_values(&["out"]).inc();
                self.metrics.p2p_bytes.add(Proto::Gossip, false, len);
            }
            // No subscribed peers yet: the next advert will go out.
            Err(err) => tracing::trace!(target: "node::p2p", %err, "advert not published"),
        }
    }

    /// Count an invalid message from `peer`; ban it at the configured limit.
    fn strike(&mut self, peer: PeerId) {
        let n = self.invalid.entry(peer).or_default();
        *n += 1;
        if *n == self.config.max_invalid_messages {
            let ip = self.peer_ips.get(&peer).copied();
            tracing::warn!(target: "node::p2p", %peer, ?ip, "banning peer and its address for invalid messages");
            self.metrics.p2p_banned.inc();
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            if let Some(ip) = ip {
                self.swarm.behaviour_mut().ip_ban.ban(ip);
            }
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// A peer's last connection closed: forget its per-peer state (its strikes stay, bounded, so a reconnect is no
    /// fresh start; a banned peer stays banned by key and address).
    fn forget(&mut self, peer: PeerId) {
        self.load.disconnected(peer);
        self.audit_rates.remove(&peer);
        self.receipt_listeners.remove(&peer);
        self.metrics.p2p_receipt_listeners.set(self.receipt_listeners.len() as i64);
        self.peer_ips.remove(&peer);
        if self.invalid.len() > MAX_STRIKE_RECORDS {
            self.invalid.retain(|_, n| *n >= self.config.max_invalid_messages);
        }
    }
}

/// What a served request produced.
pub(super) struct Served {
    pub(super) response: Response,
    pub(super) outcome: &'static str,
}

impl Served {
    fn error((response, outcome): (Response, &'static str)) -> Self {
        Self { response, outcome }
    }
}

fn refused(refusal: Box<PaymentRefusal>) -> Served {
    Served {
        response: Response::Error(ProtocolError {
            kind: ErrorKind::Payment,
            message: refusal.to_string(),
            payment: Some(*refusal),
        }),
        outcome: "payment_refused",
    }
}

/// How a job pays: its voucher, the channel whose credit it draws on, and who is asking.
#[derive(Clone, Copy)]
struct Pay<'a> {
    voucher: Option<&'a WireVoucher>,
    channel: Option<B256>,
    spender: Option<B256>,
}

/// Check the payment of a job of `units` on `config`, priced per unit (free when the node or the model charges
/// nothing).
fn authorize(
    payments: Option<&PaymentService>,
    config: &ModelConfig,
    pay: Pay<'_>,
    units: u64,
) -> std::result::Result<Option<Authorization>, Box<PaymentRefusal>> {
    let price = U256::from(config.price_wei);
    match payments {
        Some(p) if !price.is_zero() => p.authorize(pay.voucher, pay.channel, pay.spender, price, units).map(Some),
        _ => Ok(None),
    }
}

/// Answer a finished job; a paid one gets its receipt after the ledger holds it.
async fn finish(
    payments: Option<&PaymentService>,
    auth: Option<Authorization>,
    mut answer: InferResponse,
    config: &ModelConfig,
    input: JobInput,
) -> Served {
    // An answer the client could not read (over its size limit) is refused before it is charged: on the
    // multiplexed stream an oversize frame would also cost every other answer in flight on it.
    if !fits_response(&answer) {
        if let (Some(p), Some(auth)) = (payments, auth.as_ref()) {
            p.release(auth);
        }
        let message = format!(
            "the answer would exceed the {MAX_RESPONSE_BYTES}-byte response limit; send fewer samples per request"
        );
        return Served::error((protocol_error(ErrorKind::BadInput, message), "client_error"));
    }
    let receipt = match (payments, auth) {
        (Some(p), Some(auth)) => {
            p.corrupt(&mut answer.outputs);
            match p.complete(&auth, Completed { config, input, outputs: &answer.outputs }).await {
                Ok(r) => Some(r),
                Err(e) => return Served::error(engine_error(&e)),
            }
        }
        _ => None,
    };
    answer.receipt = receipt;
    Served { response: Response::Infer(Box::new(answer)), outcome: "ok" }
}

/// Room kept in a response for its receipt (leaf, proof, signed batch) and framing.
const RECEIPT_ALLOWANCE: usize = 64 << 10;

/// Whether `answer`, with its receipt, fits the client's response limit. Cheap for ordinary answers (a bound from
/// the element count: a CBOR number is at most 9 bytes); large ones are encoded to know.
fn fits_response(answer: &InferResponse) -> bool {
    let bound: usize = answer.outputs.iter().map(|t| t.data().len() * 9 + t.name().len() + 64).sum();
    bound + RECEIPT_ALLOWANCE <= MAX_RESPONSE_BYTES || encode(answer).len() + RECEIPT_ALLOWANCE <= MAX_RESPONSE_BYTES
}

/// Classes named in the answer to an encoded image.
const IMAGE_TOP_K: usize = 5;

pub(super) async fn serve_infer(
    engine: &Engine,
    payments: Option<&PaymentService>,
    r: InferRequest,
    spender: Option<B256>,
) -> Served {
    let config = match engine.config(&r.model.name, r.model.version) {
        Ok(c) => c.clone(),
        Err(e) => return Served::error(engine_error(&e)),
    };
    if r.model.id.is_some_and(|id| id != config.sha256) {
        let msg = format!("this node serves {} with different weights ({})", config.key(), config.sha256);
        return Served::error((protocol_error(ErrorKind::UnknownModel, msg), "client_error"));
    }
    // Checked before payment: the price is per sample, and a bad request must cost nothing.
    let units = match config.validate_inputs(&r.inputs) {
        Ok(b) => b as u64,
        Err(e) => return Served::error(engine_error(&e)),
    };
    let spender = r.credit_key.map(|k| credit_spender(k.as_slice())).or(spender);
    let pay = Pay { voucher: r.voucher.as_ref(), channel: r.channel, spender };
    let auth = match authorize(payments, &config, pay, units) {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    // A paid job keeps its inputs for the receipt and the audit record.
    let kept = auth.as_ref().map(|_| r.inputs.clone());
    let queue_timeout = r.queue_timeout_ms.map(|ms| Duration::from_millis(u64::from(ms)));
    // An encoded image is answered with its classes named too.
    let image = config.image.is_some() && r.inputs.first().is_some_and(|t| t.name() == IMAGE_INPUT);
    let work = async {
        let inference = engine.infer_within(&config.name, Some(config.version), r.inputs, queue_timeout).await?;
        let classes = match image {
            true => {
                let row = inference.rows()?.into_iter().next().unwrap_or_default();
                engine.classifier(&config.name, Some(config.version)).await?.top_k(&row, IMAGE_TOP_K)
            }
            false => Vec::new(),
        };
        Ok((inference, classes))
    };
    match guarded(payments, auth.as_ref(), work).await {
        Ok((inference, classes)) => {
            let answer = InferResponse {
                version: WIRE_VERSION,
                job_id: r.job_id,
                model_id: config.sha256,
                outputs: inference.outputs.as_ref().clone(),
                receipt: None,
                classes,
            };
            finish(payments, auth, answer, &config, JobInput::Tensors(kept.unwrap_or_default())).await
        }
        Err(e) => Served::error(engine_error(&e)),
    }
}

pub(super) async fn serve_embed(
    engine: &Engine,
    payments: Option<&PaymentService>,
    r: EmbedRequest,
    spender: Option<B256>,
) -> Served {
    let config = match engine.config(&r.model.name, r.model.version) {
        Ok(c) => c.clone(),
        Err(e) => return Served::error(engine_error(&e)),
    };
    // Checked before payment: the price is per text, and a request over the limits must cost nothing.
    if let Err(e) = engine.check_texts(&r.texts) {
        return Served::error(engine_error(&e));
    }
    let spender = r.credit_key.map(|k| credit_spender(k.as_slice())).or(spender);
    let pay = Pay { voucher: r.voucher.as_ref(), channel: r.channel, spender };
    let auth = match authorize(payments, &config, pay, r.texts.len() as u64) {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    let work = async {
        let emb = engine.embed(&config.name, Some(config.version), &r.texts).await?;
        let dim = emb.vectors.first().map_or(0, Vec::len);
        let data: Vec<f32> = emb.vectors.into_iter().flatten().collect();
        let shape = vec![r.texts.len() as i64, dim as i64];
        Tensor::new("embedding", shape, TensorData::Fp32(data)).map_err(Error::Sdk)
    };
    match guarded(payments, auth.as_ref(), work).await {
        Ok(t) => {
            let answer = InferResponse {
                version: WIRE_VERSION,
                job_id: r.job_id,
                model_id: config.sha256,
                outputs: vec![t],
                receipt: None,
                classes: Vec::new(),
            };
            finish(payments, auth, answer, &config, JobInput::Texts(r.texts)).await
        }
        Err(e) => Served::error(engine_error(&e)),
    }
}

#[cfg(test)]
mod tests {
    use mlbridge_sdk::{Tensor, TensorData};

    use super::*;

    fn answer(floats: usize) -> InferResponse {
        let data = TensorData::Fp32(vec![0.123_456_79; floats]);
        InferResponse {
            version: WIRE_VERSION,
            job_id: B256::ZERO,
            model_id: mlbridge_sdk::ModelId::of_bytes(b"model"),
            outputs: vec![Tensor::new("y", vec![1, floats as i64], data).unwrap()],
            receipt: None,
            classes: Vec::new(),
        }
    }

    #[test]
    fn an_answer_is_refused_only_when_it_would_not_fit_the_clients_limit() {
        assert!(fits_response(&answer(1_000)));
        // Between the cheap bound and the limit: encoded to know (f32 in CBOR is 5 bytes each).
        let near = (MAX_RESPONSE_BYTES - RECEIPT_ALLOWANCE) / 5 - 1_000;
        assert!(fits_response(&answer(near)), "{} bytes", encode(&answer(near)).len());
        assert!(!fits_response(&answer(MAX_RESPONSE_BYTES / 4)));
    }
}
