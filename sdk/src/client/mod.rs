//! The network client: joins ML Bridge as a libp2p peer, keeps a live view of nodes from their signed adverts,
//! and runs inferences with a routing [`Strategy`] and failover.
//!
//! One task owns the client's `Swarm` (like the node's); [`Client`] is a cheap, cloneable handle that talks to it
//! through bounded commands with `oneshot` replies. Outbound requests wait in a map keyed by request id.
//! [`Client::infer`] picks a node, sends the request, and on a timeout, a lost connection, an overloaded or failing
//! node tries the next one (each request is answered once; client mistakes are returned at once, not retried).
//! [`Client::offer`] is the open market: gossip a [`JobOffer`], collect [`Bid`]s, send the job to the best one.
//!
//! With a [`Payer`] ([`Client::with_payer`]) every request to a node that charges for the model is paid at the
//! advertised price: from the credit paid ahead on a channel to the node, or with a voucher paying ahead for the
//! channel's credit window (DESIGN.md §3, payment intervals). Every answer must carry the node's receipt for exactly
//! this job (job id, model, input and output hashes, price, channel) proving into a batch the advertised operator
//! signed (each batch signature is checked once and cached); otherwise the answer is refused. Each outcome is
//! reported to the payer, so its window follows what the node earned; an unconfirmed channel is retried on the same
//! node for a while, and a node that lost the last voucher gets it again.

mod generation;
mod receipts;
mod routing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{B256, U256};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

pub use receipts::MAX_RECEIPT_SKEW_SECS;
use receipts::{BatchCache, Job, check_receipt};
pub use routing::Strategy;
use routing::{Candidate, Measured, Router};

use crate::net::mux::{PipeError, Pipes};
use crate::net::{Behaviour, BehaviourEvent, NetConfig, build_swarm, learn_addresses};
use crate::payment::{Payer, Payment};
use crate::protocol::{
    ADVERTS_TOPIC, Advert, AdvertModel, Bid, EmbedRequest, ErrorKind, InferRequest, InferResponse, JobOffer,
    MAX_GOSSIP_BYTES, ModelRef, PaymentRefusal, Request, Response, WIRE_VERSION, WireVoucher, decode, encode,
    jobs_topic, tensors_hash, texts_hash,
};
use crate::{Error, ModelId, Result, Tensor};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Network settings (listen addresses, bootstrap peers, mDNS).
    pub net: NetConfig,
    /// Routing strategy.
    pub strategy: Strategy,
    /// Connect phase: longest wait to reach a node we are not connected to.
    pub connect_timeout: Duration,
    /// Queue phase: a node answers "overloaded" instead of running a request that waited longer in its queue.
    pub queue_timeout: Option<Duration>,
    /// Whole request (queue + compute + transfer) once connected, before failing over.
    pub request_timeout: Duration,
    /// Generation: the longest a node may take per output token on average. A stream that has not ended after the
    /// request timeout plus `max_tokens` times this is given up on (the caller gets an error, the generation is
    /// cancelled and its end still read), however steadily it drips text.
    pub generation_token_time: Duration,
    /// Nodes to try per request.
    pub attempts: usize,
    /// Adverts older than this are ignored.
    pub advert_ttl: Duration,
    /// More gossip topics to join (a validator's receipts and disputes); their messages go to `gossip`.
    pub topics: Vec<String>,
    /// Where messages of `topics` are delivered (dropped when full: the receiver keeps up or loses some).
    pub gossip: Option<mpsc::Sender<GossipMessage>>,
}

/// A message heard on one of [`ClientConfig::topics`]. The client checked only its size and the gossip signature;
/// the receiver checks the content and reports its verdict with [`Client::validate`]: only accepted messages are
/// forwarded, and rejected ones count against the peer that relayed them (gossipsub peer scoring).
#[derive(Clone, Debug)]
pub struct GossipMessage {
    /// The topic it came on.
    pub topic: String,
    /// The peer that published it (gossip messages are signed by their publisher).
    pub source: PeerId,
    /// The bytes.
    pub data: Vec<u8>,
    /// Gossipsub's id of the message (for the verdict).
    pub id: gossipsub::MessageId,
    /// The peer that relayed it to us (for the verdict).
    pub relayed_by: PeerId,
}

pub use libp2p::gossipsub::MessageAcceptance;

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            net: NetConfig { listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("valid")], ..NetConfig::default() },
            strategy: Strategy::default(),
            connect_timeout: Duration::from_secs(5),
            queue_timeout: Some(Duration::from_secs(10)),
            request_timeout: Duration::from_secs(30),
            generation_token_time: Duration::from_secs(1),
            attempts: 3,
            advert_ttl: Duration::from_secs(30),
            topics: Vec::new(),
            gossip: None,
        }
    }
}

/// Output tokens a paid generation pays ahead for when its request names no `max_tokens`.
pub const DEFAULT_PAID_MAX_TOKENS: u32 = 256;

/// What the client knows about a node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// libp2p identity.
    pub peer_id: PeerId,
    /// Operator address (signed the advert).
    pub operator: alloy::primitives::Address,
    /// Models, prices and queue depths from the latest advert.
    pub models: Vec<AdvertModel>,
    /// Advertised per-peer in-flight limit (self-reported; not used for routing).
    pub capacity: u32,
    /// Our requests in flight to it.
    pub outstanding: usize,
    /// Age of the latest advert.
    pub age: Duration,
}

/// A successful inference.
#[derive(Clone, Debug)]
pub struct InferOutcome {
    /// The node that answered.
    pub node: PeerId,
    /// Its answer.
    pub response: InferResponse,
    /// Nodes tried (1 = no failover).
    pub attempts: usize,
    /// How it was paid (paid jobs): the channel, the price, and the voucher if the job carried one.
    pub paid: Option<Payment>,
}

impl InferOutcome {
    /// The `k` most probable classes of an image classifier's answer ([`Client::classify`]): taken from its first
    /// output, the class probabilities the receipt covers, and named by the labels the node sent with them (a class
    /// it did not name gets an empty label). NaN never ranks.
    pub fn top_classes(&self, k: usize) -> Vec<crate::protocol::ClassScore> {
        let Some(crate::TensorData::Fp32(p)) = self.response.outputs.first().map(Tensor::data) else {
            return Vec::new();
        };
        let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let named = |i: usize| self.response.classes.iter().find(|c| c.index as usize == i).map(|c| c.label.clone());
        order
            .into_iter()
            .take(k)
            .map(|i| crate::protocol::ClassScore { index: i as u32, label: named(i).unwrap_or_default(), score: p[i] })
            .collect()
    }
}

/// The result of an open-market job.
#[derive(Clone, Debug)]
pub struct OfferOutcome {
    /// Every bid received.
    pub bids: Vec<(PeerId, Bid)>,
    /// The inference on the chosen node.
    pub outcome: InferOutcome,
}

enum Command {
    Nodes(oneshot::Sender<Vec<NodeInfo>>),
    Pick {
        model: String,
        version: Option<u64>,
        exclude: Vec<PeerId>,
        reply: oneshot::Sender<Option<Picked>>,
    },
    Send {
        peer: PeerId,
        request: Box<Request>,
        reply: oneshot::Sender<std::result::Result<Response, String>>,
    },
    Offer {
        offer: JobOffer,
        bids: mpsc::Sender<(PeerId, Bid)>,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
    EndOffer(B256),
    /// A job picked for `peer` ended: what routing measures of the node.
    Done {
        peer: PeerId,
        ok: bool,
        ms: f64,
    },
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Connect {
        peer: PeerId,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    },
    Validate {
        id: gossipsub::MessageId,
        relayed_by: PeerId,
        verdict: MessageAcceptance,
    },
}

/// A node chosen for a request, with what its advert says about the model.
#[derive(Clone, Copy, Debug)]
struct Picked {
    peer: PeerId,
    operator: alloy::primitives::Address,
    price: U256,
}

/// Handle to the client task. Clone it freely; the task ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    config: ClientConfig,
    payer: Option<Arc<Payer>>,
    batches: Arc<BatchCache>,
    pipes: Pipes,
    /// Opens generation streams.
    streams: crate::generate::Streams,
}

impl Client {
    /// Start a client with a fresh identity.
    pub fn start(config: ClientConfig) -> Result<Self> {
        Self::start_with(Keypair::generate_ed25519(), config)
    }

    /// Start a client with `keypair`.
    pub fn start_with(keypair: Keypair, config: ClientConfig) -> Result<Self> {
        let peer_id = keypair.public().to_peer_id();
        let mut swarm = build_swarm(keypair, &config.net)?;
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(ADVERTS_TOPIC))
            .map_err(|e| Error::Network(e.to_string()))?;
        let mut topics = HashMap::new();
        for t in &config.topics {
            let topic = IdentTopic::new(t.clone());
            swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| Error::Network(e.to_string()))?;
            topics.insert(topic.hash(), t.clone());
        }
        let bootstrap = crate::net::Bootstrap::new(config.net.bootstrap.clone());
        bootstrap.dial(&mut swarm);
        let pipes = Pipes::new(swarm.behaviour().stream.new_control());
        let streams = crate::generate::Streams(swarm.behaviour().stream.new_control());
        let (commands, rx) = mpsc::channel(256);
        let actor = Actor {
            swarm,
            commands: rx,
            nodes: HashMap::new(),
            outstanding: HashMap::new(),
            pending: HashMap::new(),
            measured: HashMap::new(),
            offers: HashMap::new(),
            dialling: HashMap::new(),
            router: Router::default(),
            strategy: config.strategy,
            advert_ttl: config.advert_ttl,
            topics,
            gossip: config.gossip.clone(),
            bootstrap,
        };
        tokio::spawn(actor.run());
        Ok(Self { commands, peer_id, config, payer: None, batches: Arc::new(BatchCache::new(4096)), pipes, streams })
    }

    /// Pay for every job with `payer` (vouchers on its channels; receipts verified).
    pub fn with_payer(mut self, payer: Arc<Payer>) -> Self {
        self.payer = Some(payer);
        self
    }

    /// The payer, if the client pays.
    pub fn payer(&self) -> Option<&Arc<Payer>> {
        self.payer.as_ref()
    }

    /// The client's libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Error::ClientStopped)?;
        rx.await.map_err(|_| Error::ClientStopped)
    }

    /// Nodes known from fresh adverts.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.ask(Command::Nodes).await
    }

    /// Publish `data` on gossip `topic` (one of [`ClientConfig::topics`], or any other).
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<()> {
        self.ask(|reply| Command::Publish { topic: topic.to_owned(), data, reply }).await?.map_err(Error::Network)
    }

    /// Report the receiver's verdict on a [`GossipMessage`]: `Accept` forwards it, `Reject` penalises the peer that
    /// relayed it, `Ignore` does neither.
    pub async fn validate(&self, msg: &GossipMessage, verdict: MessageAcceptance) -> Result<()> {
        let cmd = Command::Validate { id: msg.id.clone(), relayed_by: msg.relayed_by, verdict };
        self.commands.send(cmd).await.map_err(|_| Error::ClientStopped)
    }

    /// Addresses the client listens on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.ask(Command::ListenAddrs).await
    }

    /// Wait until at least `n` nodes serving `model` are known (or `timeout` passes).
    pub async fn wait_for_nodes(&self, model: &str, n: usize, timeout: Duration) -> Result<Vec<NodeInfo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let nodes: Vec<NodeInfo> =
                self.nodes().await?.into_iter().filter(|i| i.models.iter().any(|m| m.name == model)).collect();
            if nodes.len() >= n || Instant::now() >= deadline {
                return Ok(nodes);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run `inputs` on a node serving `model` (`version` = latest when `None`), failing over on node trouble.
    pub async fn infer(&self, model: &str, version: Option<u64>, inputs: Vec<Tensor>) -> Result<InferOutcome> {
        let model_ref = ModelRef { name: model.to_owned(), version, id: None };
        let queue_ms = self.config.queue_timeout.map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32);
        let input_hash = tensors_hash(&inputs);
        let units = units_of(&inputs);
        self.with_failover(model, version, Job { input_hash, units }, move |job_id, voucher, channel| {
            Request::Infer(InferRequest {
                version: WIRE_VERSION,
                job_id,
                model: model_ref.clone(),
                inputs: inputs.clone(),
                voucher,
                channel,
                credit_key: None,
                queue_timeout_ms: queue_ms,
            })
        })
        .await
    }

    /// Classify an image (the JPEG or PNG file's bytes) with an image classifier on a node serving it: one sample,
    /// sent as it is ([`crate::protocol::image_tensor`]); [`InferOutcome::top_classes`] reads the answer.
    pub async fn classify(&self, model: &str, version: Option<u64>, image: Vec<u8>) -> Result<InferOutcome> {
        self.infer(model, version, vec![crate::protocol::image_tensor(image)]).await
    }

    /// Embed `texts` with a text-embedding model on a node serving it.
    pub async fn embed(&self, model: &str, version: Option<u64>, texts: Vec<String>) -> Result<InferOutcome> {
        let model_ref = ModelRef { name: model.to_owned(), version, id: None };
        let job = Job { input_hash: texts_hash(&texts), units: texts.len().max(1) as u64 };
        self.with_failover(model, version, job, move |job_id, voucher, channel| {
            Request::Embed(EmbedRequest {
                version: WIRE_VERSION,
                job_id,
                model: model_ref.clone(),
                texts: texts.clone(),
                voucher,
                channel,
                credit_key: None,
            })
        })
        .await
    }

    async fn with_failover(
        &self,
        model: &str,
        version: Option<u64>,
        job: Job,
        make: impl Fn(B256, Option<WireVoucher>, Option<B256>) -> Request,
    ) -> Result<InferOutcome> {
        let mut exclude = Vec::new();
        let mut last = Error::NoNodes { model: model.to_owned() };
        for attempt in 1..=self.config.attempts.max(1) {
            let picked = self
                .ask(|reply| Command::Pick { model: model.to_owned(), version, exclude: exclude.clone(), reply })
                .await?;
            let Some(picked) = picked else { break };
            let peer = picked.peer;
            // Reported when the attempt ends, or when the caller gives up on it (a dropped future).
            let mut done = DoneGuard { commands: self.commands.clone(), peer, started: Instant::now(), ok: false };
            let outcome = self.run_on(picked, random_id(), job, &make).await;
            // Only a real answer counts for the node: any error counts against it, or a node that refuses everything
            // at once would look like the fastest one and draw the traffic.
            done.ok = outcome.is_ok();
            drop(done);
            match outcome {
                Ok((response, paid)) => return Ok(InferOutcome { node: peer, response, attempts: attempt, paid }),
                Err(
                    e @ Error::Remote {
                        kind: ErrorKind::Overloaded | ErrorKind::Internal | ErrorKind::UnknownModel,
                        ..
                    },
                ) => {
                    // The node cannot serve it now, or its advert was stale: try another.
                    last = e;
                }
                // Our request (or payment) is at fault, or the node cheated: another node would not help.
                Err(e @ (Error::Remote { .. } | Error::PaymentRefused { .. } | Error::BadReceipt { .. })) => {
                    return Err(e);
                }
                // Funding failed (chain, limit, store): no node can be paid.
                Err(e @ (Error::SpendLimit { .. } | Error::Store { .. } | Error::ChannelExhausted { .. })) => {
                    return Err(e);
                }
                Err(e) => last = e,
            }
            tracing::debug!(target: "sdk::client", %peer, err = %last, "failing over to another node");
            exclude.push(peer);
        }
        Err(last)
    }

    /// One job on one node: pay (if it charges), send, check the answer and its receipt, and tell the payer how it
    /// went.
    async fn run_on(
        &self,
        picked: Picked,
        job_id: B256,
        job: Job,
        make: &impl Fn(B256, Option<WireVoucher>, Option<B256>) -> Request,
    ) -> Result<(InferResponse, Option<Payment>)> {
        let peer = picked.peer;
        // Prices are per unit (a sample, a text): the job costs units x the advertised price, known before sending.
        let price = picked
            .price
            .checked_mul(U256::from(job.units))
            .ok_or_else(|| Error::Network(format!("the price of {} units overflows", job.units)))?;
        let payer = self.payer.as_deref().filter(|_| !price.is_zero());
        let mut next: Option<Payment> = None;
        let mut tries = Tries::default();
        loop {
            let payment = attempt_payment(payer, &mut next, picked.operator, price).await?;
            // Whatever happens to this attempt (a dropped future included) is reported to the payer.
            let mut held = Held { payer, payment: payment.as_ref(), outcome: Outcome::Lost };
            let (voucher, channel) = match &payment {
                Some(p) => (p.voucher.clone(), Some(p.channel_id)),
                None => (None, None),
            };
            let mut request = make(job_id, voucher, channel);
            if let (Some(payer), Some(p)) = (payer, &payment) {
                request.set_credit_key(payer.credit_key(&p.channel_id));
            }
            let response = self.send_to(peer, request).await?;
            return match response {
                Response::Infer(r) => {
                    if let (Some(payer), Some(p)) = (payer, &payment) {
                        check_receipt(&self.batches, payer.domain(), p, &r, job_id, job, picked.operator)
                            .map_err(|reason| Error::BadReceipt { peer: peer.to_string(), reason })?;
                    }
                    held.outcome = Outcome::Answered;
                    drop(held);
                    Ok((*r, payment))
                }
                Response::Error(e) => {
                    // Every typed error is answered before the job is charged, except the node's own failures
                    // (a ledger that cannot be written after the charge): those may have cost the job.
                    held.outcome = if e.kind == ErrorKind::Internal { Outcome::Lost } else { Outcome::Refused };
                    drop(held);
                    next = after_refusal(payer, payment.as_ref(), e, peer, &mut tries).await?;
                    continue;
                }
                Response::Ack | Response::Audit(_) => {
                    Err(Error::Network(format!("node {peer} answered an inference with something else")))
                }
            };
        }
    }

    /// Send one request to one node: connect (within the connect timeout), then wait (up to the request timeout)
    /// for its answer.
    pub async fn send_to(&self, peer: PeerId, request: Request) -> Result<Response> {
        // Inference and embeddings go over the node's long-lived multiplexed stream; audits, bids and nodes that do
        // not speak it use request-response.
        let muxed = matches!(request, Request::Infer(_) | Request::Embed(_));
        if muxed && self.pipes.has(peer) {
            return self.over_pipe(peer, request).await;
        }
        let connected = self.ask(|reply| Command::Connect { peer, reply });
        match tokio::time::timeout(self.config.connect_timeout, connected).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(failure))) => return Err(Error::Network(format!("cannot connect to node {peer}: {failure}"))),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Network(format!(
                    "cannot connect to node {peer} within {:?}",
                    self.config.connect_timeout
                )));
            }
        }
        if muxed {
            return self.over_pipe(peer, request).await;
        }
        self.over_rpc(peer, request).await
    }

    /// A request over the node's multiplexed stream (request-response if the node does not speak it).
    async fn over_pipe(&self, peer: PeerId, request: Request) -> Result<Response> {
        match tokio::time::timeout(self.config.request_timeout, self.pipes.request(peer, &request)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(PipeError::Failed(failure))) => Err(Error::Network(format!("request to {peer} failed: {failure}"))),
            Ok(Err(PipeError::Unsupported)) => self.over_rpc(peer, request).await,
            Err(_) => {
                Err(Error::Network(format!("node {peer} did not answer within {:?}", self.config.request_timeout)))
            }
        }
    }

    /// A request over `/mlbridge/infer/1`, through the swarm task.
    async fn over_rpc(&self, peer: PeerId, request: Request) -> Result<Response> {
        let sent = self.ask(|reply| Command::Send { peer, request: Box::new(request), reply });
        match tokio::time::timeout(self.config.request_timeout, sent).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(failure))) => Err(Error::Network(format!("request to {peer} failed: {failure}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(Error::Network(format!("node {peer} did not answer within {:?}", self.config.request_timeout)))
            }
        }
    }

    /// The open market: gossip an offer for `model_id`, collect bids for `window`, run the job on the cheapest
    /// (then fastest) bidder.
    pub async fn offer(
        &self,
        model_id: ModelId,
        inputs: Vec<Tensor>,
        max_price_wei: U256,
        window: Duration,
    ) -> Result<OfferOutcome> {
        let mut canonical = Vec::new();
        for t in &inputs {
            t.canonical_bytes(&mut canonical);
        }
        let deadline_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                + window.as_secs()
                + 60;
        let offer = JobOffer {
            version: WIRE_VERSION,
            job_id: random_id(),
            model_id,
            input_hash: B256::from(<[u8; 32]>::from(Sha256::digest(&canonical))),
            input_bytes: canonical.len() as u64,
            max_price_wei,
            deadline_unix,
        };
        let (tx, mut rx) = mpsc::channel(64);
        let job_id = offer.job_id;
        self.ask(|reply| Command::Offer { offer, bids: tx, reply }).await?.map_err(Error::Network)?;
        let mut bids = Vec::new();
        let end = tokio::time::sleep(window);
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut end => break,
                Some(bid) = rx.recv() => bids.push(bid),
            }
        }
        let _ = self.commands.send(Command::EndOffer(job_id)).await;
        let Some((peer, bid)) = bids
            .iter()
            .filter(|(_, b)| b.price_wei <= max_price_wei)
            .min_by_key(|(_, b)| (b.price_wei, b.expected_latency_ms))
            .cloned()
        else {
            return Err(Error::NoNodes { model: model_id.to_string() });
        };
        // Pay the bid's price to the operator of the node's advert (receipt checked as for routed jobs).
        let operator = self
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.peer_id == peer)
            .map(|n| n.operator)
            .ok_or_else(|| Error::NoNodes { model: model_id.to_string() })?;
        let picked = Picked { peer, operator, price: bid.price_wei };
        let queue_ms = self.config.queue_timeout.map(|d| d.as_millis().min(u128::from(u32::MAX)) as u32);
        let job = Job { input_hash: tensors_hash(&inputs), units: units_of(&inputs) };
        let model = bid.model.clone();
        let (response, paid) = self
            .run_on(picked, job_id, job, &move |job_id, voucher, channel| {
                Request::Infer(InferRequest {
                    version: WIRE_VERSION,
                    job_id,
                    model: model.clone(),
                    inputs: inputs.clone(),
                    voucher,
                    channel,
                    credit_key: None,
                    queue_timeout_ms: queue_ms,
                })
            })
            .await?;
        Ok(OfferOutcome { bids, outcome: InferOutcome { node: peer, response, attempts: 1, paid } })
    }
}

/// Tells the client task that a picked job ended (routing's outstanding count and measurements), also when the
/// caller dropped the request.
struct DoneGuard {
    commands: mpsc::Sender<Command>,
    peer: PeerId,
    started: Instant,
    ok: bool,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let done = Command::Done { peer: self.peer, ok: self.ok, ms: self.started.elapsed().as_secs_f64() * 1000.0 };
        if let Err(mpsc::error::TrySendError::Full(done)) = self.commands.try_send(done)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let commands = self.commands.clone();
            rt.spawn(async move { commands.send(done).await });
        }
    }
}

/// How one attempt of a paid job ended, for the payer's credit window.
#[derive(Clone, Copy)]
enum Outcome {
    /// Answered with a valid receipt.
    Answered,
    /// Refused before any work.
    Refused,
    /// Anything else: the node may have charged it.
    Lost,
}

/// A payment in flight; reports its outcome to the payer when dropped (a cancelled request counts as lost).
struct Held<'a> {
    payer: Option<&'a Payer>,
    payment: Option<&'a Payment>,
    outcome: Outcome,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let (Some(payer), Some(p)) = (self.payer, self.payment) {
            match self.outcome {
                Outcome::Answered => payer.answered(p),
                Outcome::Refused => payer.refused(p),
                Outcome::Lost => payer.lost(p),
            }
        }
    }
}

/// Retries of one job on one node after payment refusals.
#[derive(Default)]
struct Tries {
    recoveries: u32,
    waits: u32,
    /// Generation streams opened again after closing before their first event.
    reopens: u32,
}

/// The payment of a job's next attempt on a node: none without a payer, the one [`after_refusal`] handed back, or
/// a new one for `price` to `operator`.
async fn attempt_payment(
    payer: Option<&Payer>,
    next: &mut Option<Payment>,
    operator: alloy::primitives::Address,
    price: U256,
) -> Result<Option<Payment>> {
    match (payer, next.take()) {
        (Some(_), Some(p)) => Ok(Some(p)),
        (Some(payer), None) => payer.pay(operator, price).await.map(Some),
        (None, _) => Ok(None),
    }
}

/// After a node refused a job with `e` (paid with `payment`): `Ok(next)` to send it to the same node again (with
/// `next`, or a new payment when `None`; after a pause when the refusal may pass), `Err` to give up.
async fn after_refusal(
    payer: Option<&Payer>,
    payment: Option<&Payment>,
    e: crate::protocol::ProtocolError,
    peer: PeerId,
    tries: &mut Tries,
) -> Result<Option<Payment>> {
    let refused = |refusal| Error::PaymentRefused { peer: peer.to_string(), refusal: Box::new(refusal) };
    match (payer, payment, e.payment) {
        // The node lacks credit this payer counted on (a voucher it never got, or credit an earlier process of ours
        // spent): first the last voucher again, which costs nothing new; then a fresh voucher for the window.
        (
            Some(payer),
            Some(p),
            Some(
                refusal @ (PaymentRefusal::NoCredit { .. }
                | PaymentRefusal::Replayed { .. }
                | PaymentRefusal::BelowAccepted { .. }),
            ),
        ) if tries.recoveries < 2 => {
            tries.recoveries += 1;
            let next = if p.voucher.is_none() { payer.resend(p) } else { None };
            // Believed once per channel; a node that keeps saying so is refused.
            if next.is_none() && !payer.forget_credit(p) {
                return Err(refused(refusal));
            }
            Ok(next)
        }
        (_, _, Some(refusal)) if refusal.is_transient() && tries.waits < 40 => {
            tries.waits += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
            Ok(None)
        }
        (_, _, Some(refusal)) => Err(refused(refusal)),
        (_, _, None) => Err(Error::Remote { peer: peer.to_string(), kind: e.kind, message: e.message }),
    }
}

/// Priced units of a tensor job: its samples (the batch dimension of the first input).
fn units_of(inputs: &[Tensor]) -> u64 {
    inputs.first().and_then(|t| t.shape().first()).map_or(1, |&b| b.max(1) as u64)
}

fn random_id() -> B256 {
    B256::from(rand_bytes())
}

fn rand_bytes() -> [u8; 32] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut h = Sha256::new();
    h.update(n.to_le_bytes());
    h.update(t.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.finalize().into()
}

struct NodeView {
    advert: Advert,
    seen: Instant,
}

struct Actor {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    nodes: HashMap<PeerId, NodeView>,
    outstanding: HashMap<PeerId, usize>,
    pending: HashMap<OutboundRequestId, (PeerId, Instant, ReplyTx)>,
    /// What we measured of each node (latency, answers, failures): routing weighs this, not what nodes claim.
    measured: HashMap<PeerId, Measured>,
    offers: HashMap<B256, mpsc::Sender<(PeerId, Bid)>>,
    dialling: HashMap<PeerId, Vec<oneshot::Sender<std::result::Result<(), String>>>>,
    router: Router,
    strategy: Strategy,
    advert_ttl: Duration,
    /// Extra topics joined, by hash.
    topics: HashMap<gossipsub::TopicHash, String>,
    gossip: Option<mpsc::Sender<GossipMessage>>,
    /// Dialled again while no peer is connected (a bootstrap peer that was not up yet, or went away).
    bootstrap: crate::net::Bootstrap,
}

/// Where a request's answer (or why it failed) goes.
type ReplyTx = oneshot::Sender<std::result::Result<Response, String>>;

/// Nodes the client keeps track of at most (a flood of adverts from fresh keys cannot grow it further).
const MAX_NODES: usize = 4096;
/// How often a client with no peer dials its bootstrap peers again.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// Advert addresses considered per node.
const MAX_ADVERT_ADDRS: usize = 8;

/// Whether an advertised address is one to dial: an IP that is not unspecified, multicast or broadcast. Names
/// (`/dns4/...`) are dialled only from our own bootstrap list: a name a peer hands us could point at an address we
/// banned, and the ban sees only the name of an outbound connection.
fn dialable(addr: &Multiaddr) -> bool {
    match crate::net::ipban::ip_of(addr) {
        Some(std::net::IpAddr::V4(ip)) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
        Some(std::net::IpAddr::V6(ip)) => !(ip.is_unspecified() || ip.is_multicast()),
        None => false,
    }
}

impl Actor {
    /// Forget nodes whose adverts stopped (after three advert lifetimes), with what we measured of them.
    fn evict_silent(&mut self) {
        let ttl = self.advert_ttl * 3;
        let before = self.nodes.len();
        self.nodes.retain(|_, v| v.seen.elapsed() < ttl);
        if self.nodes.len() != before {
            let nodes = &self.nodes;
            self.measured.retain(|p, _| nodes.contains_key(p));
            self.outstanding.retain(|p, n| *n > 0 || nodes.contains_key(p));
        }
    }

    async fn run(mut self) {
        let mut reconnect = tokio::time::interval(RECONNECT_INTERVAL);
        reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        reconnect.tick().await;
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(addr) = self.bootstrap.resolved() => self.bootstrap.dial_resolved(&mut self.swarm, addr),
                _ = reconnect.tick() => self.reconnect(),
            }
        }
    }

    /// With no peer connected, dial the bootstrap peers again: one that started after us (a validator started
    /// before the nodes) or restarted is found without restarting this client.
    fn reconnect(&mut self) {
        if self.swarm.connected_peers().next().is_some() || self.bootstrap.is_empty() {
            return;
        }
        tracing::debug!(target: "sdk::client", "no peers; dialling the bootstrap peers again");
        self.bootstrap.dial(&mut self.swarm);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Nodes(reply) => {
                let list = self
                    .nodes
                    .iter()
                    .filter(|(_, v)| v.seen.elapsed() < self.advert_ttl)
                    .map(|(p, v)| NodeInfo {
                        peer_id: *p,
                        operator: v.advert.operator,
                        models: v.advert.models.clone(),
                        capacity: v.advert.capacity,
                        outstanding: self.outstanding.get(p).copied().unwrap_or(0),
                        age: v.seen.elapsed(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Pick { model, version, exclude, reply } => {
                self.evict_silent();
                let candidates = self
                    .nodes
                    .iter()
                    .filter(|(p, v)| v.seen.elapsed() < self.advert_ttl && !exclude.contains(p))
                    .filter_map(|(p, v)| {
                        let m = v
                            .advert
                            .models
                            .iter()
                            // Text-generation models are for `generate` streams, not inference requests.
                            .filter(|m| m.name == model && version.is_none_or(|x| x == m.version))
                            .filter(|m| m.input_token_price_wei.is_none())
                            .max_by_key(|m| m.version)?;
                        Some(Candidate {
                            peer: *p,
                            outstanding: self.outstanding.get(p).copied().unwrap_or(0),
                            queue_depth: m.queue_depth,
                            measured: self.measured.get(p).copied().unwrap_or_default(),
                        })
                    })
                    .collect();
                let picked = self.router.pick(self.strategy, &model, candidates).and_then(|peer| {
                    // Outstanding from the pick until its `Done`.
                    *self.outstanding.entry(peer).or_default() += 1;
                    let advert = &self.nodes.get(&peer)?.advert;
                    let m = advert
                        .models
                        .iter()
                        .filter(|m| m.name == model && version.is_none_or(|x| x == m.version))
                        .filter(|m| m.input_token_price_wei.is_none())
                        .max_by_key(|m| m.version)?;
                    Some(Picked { peer, operator: advert.operator, price: m.price_wei })
                });
                let _ = reply.send(picked);
            }
            Command::Send { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, *request);
                self.pending.insert(id, (peer, Instant::now(), reply));
            }
            Command::Done { peer, ok, ms } => {
                self.measured.entry(peer).or_default().record(ok, ms);
                if let Some(n) = self.outstanding.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
            }
            Command::Offer { offer, bids, reply } => {
                self.offers.insert(offer.job_id, bids);
                let topic = IdentTopic::new(jobs_topic(&offer.model_id));
                let res =
                    self.swarm.behaviour_mut().gossipsub.publish(topic, encode(&offer)).map(|_| ()).map_err(|e| {
                        format!("could not gossip the offer ({e}); are nodes serving this model connected?")
                    });
                let _ = reply.send(res);
            }
            Command::EndOffer(job) => {
                self.offers.remove(&job);
            }
            Command::Connect { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                } else {
                    let first = !self.dialling.contains_key(&peer);
                    self.dialling.entry(peer).or_default().push(reply);
                    if first
                        && let Err(e) = self.swarm.dial(peer)
                        // A dial already under way (the bootstrap's, say) connects this peer too: wait for it.
                        && !matches!(e, libp2p::swarm::DialError::DialPeerConditionFalse(_))
                    {
                        for w in self.dialling.remove(&peer).unwrap_or_default() {
                            let _ = w.send(Err(e.to_string()));
                        }
                    }
                }
            }
            Command::Publish { topic, data, reply } => {
                let res = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(IdentTopic::new(topic), data)
                    .map(|_| ())
                    .map_err(|e| format!("could not gossip ({e}); is a peer on the topic connected?"));
                let _ = reply.send(res);
            }
            Command::Validate { id, relayed_by, verdict } => {
                let _ =
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &relayed_by, verdict);
            }
            Command::ListenAddrs(reply) => {
                let me = *self.swarm.local_peer_id();
                let _ =
                    reply.send(self.swarm.listeners().map(|a| a.clone().with_p2p(me).unwrap_or_else(|a| a)).collect());
            }
        }
    }

    fn finish(&mut self, id: OutboundRequestId, result: std::result::Result<Response, String>) {
        if let Some((_, _, reply)) = self.pending.remove(&id) {
            let _ = reply.send(result);
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if learn_addresses(&mut self.swarm, &event) {
            return;
        }
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for w in self.dialling.remove(&peer_id).unwrap_or_default() {
                    let _ = w.send(Ok(()));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                for w in self.dialling.remove(&peer).unwrap_or_default() {
                    let _ = w.send(Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(ev)) => match ev {
                request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                } => {
                    self.finish(request_id, Ok(response));
                }
                request_response::Event::OutboundFailure { request_id, error, .. } => {
                    self.finish(request_id, Err(error.to_string()));
                }
                request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                } => {
                    let response = match request {
                        Request::Bid(bid) => {
                            if let Some(tx) = self.offers.get(&bid.job_id) {
                                let _ = tx.try_send((peer, bid));
                            }
                            Response::Ack
                        }
                        _ => Response::Error(crate::protocol::ProtocolError::new(
                            ErrorKind::BadInput,
                            "this peer is a client; it runs no inference",
                        )),
                    };
                    let _ = self.swarm.behaviour_mut().rpc.send_response(channel, response);
                }
                _ => {}
            },
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let mut acceptance = MessageAcceptance::Ignore;
                if message.topic == IdentTopic::new(ADVERTS_TOPIC).hash() {
                    acceptance = MessageAcceptance::Reject;
                    if let (Some(source), Ok(advert)) =
                        (message.source, decode::<Advert>(&message.data, MAX_GOSSIP_BYTES))
                        && advert.verify(&source.to_bytes())
                    {
                        // Make the node directly dialable even if we only reach it through the mesh so far: only a
                        // few plausible addresses (no unspecified, multicast or broadcast ones) of a node we keep.
                        let room = self.nodes.contains_key(&source) || self.nodes.len() < MAX_NODES;
                        if room {
                            for addr in advert.addrs.iter().take(MAX_ADVERT_ADDRS) {
                                if let Ok(addr) = Multiaddr::try_from(addr.clone())
                                    && dialable(&addr)
                                {
                                    self.swarm.add_peer_address(source, addr);
                                }
                            }
                            self.nodes.insert(source, NodeView { advert, seen: Instant::now() });
                        }
                        acceptance = MessageAcceptance::Accept;
                    }
                } else if let (Some(name), Some(tx), Some(source)) =
                    (self.topics.get(&message.topic), &self.gossip, message.source)
                {
                    // The receiver judges the content and reports its verdict (Client::validate); a message it has
                    // no room for is ignored now.
                    let msg = GossipMessage {
                        topic: name.clone(),
                        source,
                        data: message.data,
                        id: message_id.clone(),
                        relayed_by: propagation_source,
                    };
                    if tx.try_send(msg).is_ok() {
                        return;
                    }
                }
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            _ => {}
        }
    }
}
