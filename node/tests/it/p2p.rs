//! Three real nodes and a client over TCP on 127.0.0.1: discovery, adverts, inference, routing, failover, the open
//! market, and misbehaving peers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy::primitives::U256;
use futures::StreamExt;
use libp2p::gossipsub::IdentTopic;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, StreamProtocol};
use mlbridge_node::config::NodeConfig;
use mlbridge_node::server::RunningNode;
use mlbridge_sdk::client::{Client, ClientConfig, Strategy};
use mlbridge_sdk::net::mux::{MUX_PROTOCOL, read_frame, write_frame};
use mlbridge_sdk::net::{NetConfig, build_swarm};
use mlbridge_sdk::protocol::{
    ADVERTS_TOPIC, Advert, ErrorKind, INFER_PROTOCOL, InferRequest, MAX_REQUEST_BYTES, ModelRef, Request, Response,
    WIRE_VERSION, encode,
};
use mlbridge_sdk::{Tensor, TensorData};

use crate::support::*;

fn p2p_fast(c: &mut NodeConfig) {
    c.p2p.advert_interval_secs = 0.3;
    c.cache.enabled = false;
}

/// Node A, then B and C bootstrapping to A; `edit(i, config)` adjusts each.
async fn network(edit: impl Fn(usize, &mut NodeConfig)) -> Vec<RunningNode> {
    let a = start_node(|c| {
        p2p_fast(c);
        edit(0, c);
    })
    .await;
    let boot: Vec<String> = addrs(&a).await.iter().map(ToString::to_string).collect();
    let mut nodes = vec![a];
    for i in 1..3 {
        let boot = boot.clone();
        nodes.push(
            start_node(|c| {
                p2p_fast(c);
                c.p2p.bootstrap = boot;
                edit(i, c);
            })
            .await,
        );
    }
    nodes
}

async fn client(boot: &RunningNode, strategy: Strategy) -> Client {
    client_with_timeout(boot, strategy, Duration::from_secs(5)).await
}

fn mlp_input(seed: f32) -> Vec<Tensor> {
    vec![
        Tensor::new("input", vec![1, 256], TensorData::Fp32((0..256).map(|i| seed + i as f32 / 256.0).collect()))
            .unwrap(),
    ]
}

fn peer(node: &RunningNode) -> PeerId {
    node.p2p.as_ref().unwrap().peer_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_adverts_and_inference_over_p2p() {
    let nodes = network(|_, _| {}).await;
    let c = client(&nodes[0], Strategy::RoundRobin).await;
    // The client only knows A; B's and C's adverts reach it through the gossip mesh.
    let known = c.wait_for_nodes("mlp-tiny", 3, Duration::from_secs(20)).await.unwrap();
    assert_eq!(known.len(), 3, "{known:?}");
    for n in &nodes {
        let info = known.iter().find(|i| i.peer_id == peer(n)).expect("every node advertised");
        assert!(info.models.iter().any(|m| m.name == "minilm-l6" && m.version == 2 && m.price_wei > U256::ZERO));
    }
    let out = c.infer("mlp-tiny", Some(1), mlp_input(0.5)).await.unwrap();
    let local = nodes[0].engine.infer("mlp-tiny", Some(1), mlp_input(0.5)).await.unwrap();
    assert_eq!(out.response.outputs, *local.outputs, "p2p answer equals the local engine's");
    assert_eq!(out.response.model_id, nodes[0].engine.config("mlp-tiny", Some(1)).unwrap().sha256);
    let texts = vec!["A man is eating food.".to_string(), "A man is eating a piece of bread.".to_string()];
    let emb = c.embed("minilm-l6", None, texts.clone()).await.unwrap();
    let local = nodes[0].engine.embed("minilm-l6", None, &texts).await.unwrap();
    let TensorData::Fp32(v) = emb.response.outputs[0].data() else { panic!("fp32") };
    assert_eq!(emb.response.outputs[0].shape(), &[2, 384]);
    assert_eq!(v[..384], local.vectors[0][..]);
    // Bad input is a typed answer, not a dropped stream, and is not retried elsewhere.
    let err = c
        .infer("mlp-tiny", Some(1), vec![Tensor::new("input", vec![1, 3], TensorData::Fp32(vec![0.0; 3])).unwrap()])
        .await
        .unwrap_err();
    assert!(matches!(err, mlbridge_sdk::Error::Remote { kind: ErrorKind::BadInput, .. }), "{err}");
    let text = metrics_text(&nodes[0]).await;
    assert!(metric(&text, "mlbridge_p2p_peers") >= 2.0, "A sees B, C and the client");
    assert!(metric(&text, "mlbridge_p2p_gossip_messages_total{direction=\"out\"}") > 0.0);
    // Bandwidth per protocol: adverts went out as gossip; the jobs came in over the multiplexed stream (to
    // whichever nodes the client picked), request and answer counted both ways.
    let bytes = |t: &str, dir: &str, proto: &str| {
        metric(t, &format!("mlbridge_p2p_bytes_total{{direction=\"{dir}\",protocol=\"{proto}\"}}"))
    };
    assert!(bytes(&text, "out", "gossipsub") > 0.0, "{text}");
    let mut mux = (0.0, 0.0);
    for n in &nodes {
        let t = metrics_text(n).await;
        mux.0 += bytes(&t, "in", "/mlbridge/infer-mux/1");
        mux.1 += bytes(&t, "out", "/mlbridge/infer-mux/1");
    }
    assert!(mux.0 > 1_000.0 && mux.1 > 1_000.0, "mux bytes in/out: {mux:?}");
}

async fn spread(c: &Client, n: usize, concurrency: usize) -> HashMap<PeerId, usize> {
    let counts = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, counts, next) = (c.clone(), counts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let out = c.infer("mlp-tiny", Some(1), mlp_input(1.0)).await.unwrap();
                *counts.lock().unwrap().entry(out.node).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_strategies_distribute_as_they_should() {
    // C answers 150 ms late: least-outstanding must avoid it, round-robin must not.
    let nodes = network(|i, c| {
        if i == 2 {
            c.p2p.simulated_latency_ms = 150;
        }
    })
    .await;
    let rr = client(&nodes[0], Strategy::RoundRobin).await;
    assert_eq!(rr.wait_for_nodes("mlp-tiny", 3, Duration::from_secs(20)).await.unwrap().len(), 3);
    let counts = spread(&rr, 300, 1).await;
    for n in &nodes {
        let got = counts.get(&peer(n)).copied().unwrap_or(0);
        assert!((99..=101).contains(&got), "round-robin gave {got} of 300 to one of 3 nodes: {counts:?}");
    }
    let lo = client(&nodes[0], Strategy::LeastOutstanding).await;
    assert_eq!(lo.wait_for_nodes("mlp-tiny", 3, Duration::from_secs(20)).await.unwrap().len(), 3);
    let counts = spread(&lo, 120, 6).await;
    let slow = counts.get(&peer(&nodes[2])).copied().unwrap_or(0);
    assert!(slow <= 20, "least-outstanding sent {slow} of 120 to the slow node: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_mid_load_loses_no_request() {
    let nodes = network(|_, _| {}).await;
    let c = client(&nodes[0], Strategy::RoundRobin).await;
    assert_eq!(c.wait_for_nodes("mlp-tiny", 3, Duration::from_secs(20)).await.unwrap().len(), 3);
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, done, next, answers) = (c.clone(), done.clone(), next.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= 300 {
                    break;
                }
                let out = c.infer("mlp-tiny", Some(1), mlp_input(i as f32)).await.expect("every request is answered");
                answers.lock().unwrap().push((i, out.node, out.attempts));
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    while done.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[1].shutdown.cancel(); // B leaves the network mid-load
    for t in tasks {
        t.await.unwrap();
    }
    let answers = answers.lock().unwrap();
    let mut ids: Vec<usize> = answers.iter().map(|a| a.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..300).collect::<Vec<_>>(), "each request answered exactly once");
    let on_b = answers.iter().filter(|a| a.1 == peer(&nodes[1])).count();
    assert!(on_b < 150, "B served {on_b} after dying at 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossiped_jobs_get_bids_only_from_nodes_serving_the_model() {
    let only_orientation = repo_with(&[("orientation", 1)], str::to_owned);
    let path = only_orientation.path().to_owned();
    let nodes = network(move |i, c| {
        if i == 2 {
            c.model_repository = path.clone();
        }
    })
    .await;
    let c = client(&nodes[0], Strategy::RoundRobin).await;
    assert_eq!(c.wait_for_nodes("mlp-tiny", 2, Duration::from_secs(20)).await.unwrap().len(), 2);
    let model_id = nodes[0].engine.config("mlp-tiny", Some(1)).unwrap().sha256;
    let (a, b, only_other) = (peer(&nodes[0]), peer(&nodes[1]), peer(&nodes[2]));
    // Topic subscriptions spread with the heartbeat: offer again until both serving nodes bid (bounded). No offer
    // may ever draw a bid from the node that does not serve the model.
    let mut offers = 0;
    let (got, bidders) = loop {
        offers += 1;
        let one_eth = U256::from(10u64).pow(U256::from(18u64));
        if let Ok(got) = c.offer(model_id, mlp_input(2.0), one_eth, Duration::from_millis(1500)).await {
            let bidders: Vec<PeerId> = got.bids.iter().map(|b| b.0).collect();
            assert!(!bidders.contains(&only_other), "C does not serve mlp-tiny and must not bid");
            if bidders.contains(&a) && bidders.contains(&b) {
                break (got, bidders);
            }
        }
        assert!(offers < 20, "both serving nodes never bid on the same offer in {offers} offers");
    };
    assert!(bidders.contains(&got.outcome.node));
    let local = nodes[0].engine.infer("mlp-tiny", Some(1), mlp_input(2.0)).await.unwrap();
    assert_eq!(got.outcome.response.outputs, *local.outputs);
}

/// A codec that writes raw bytes on the inference protocol (to play a broken or hostile peer).
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut v).await?;
        Ok(v)
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> std::io::Result<()> {
        futures::AsyncWriteExt::write_all(io, &r).await?;
        futures::AsyncWriteExt::close(io).await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(p, io, r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_and_banned_while_others_are_served() {
    let node = start_node(p2p_fast).await;
    let target = addrs(&node).await[0].clone();
    let good = client(&node, Strategy::RoundRobin).await;
    assert_eq!(good.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap().len(), 1);

    // Unknown wire version: a typed refusal.
    let req = Request::Infer(InferRequest {
        version: WIRE_VERSION + 1,
        job_id: Default::default(),
        model: ModelRef { name: "mlp-tiny".into(), version: None, id: None },
        inputs: mlp_input(0.0),
        voucher: None,
        channel: None,
        credit_key: None,
        queue_timeout_ms: None,
    });
    match good.send_to(peer(&node), req).await.unwrap() {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::UnsupportedVersion),
        other => panic!("expected a version error, got {other:?}"),
    }

    // A hostile peer sends garbage CBOR until it is banned.
    let mut bad = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(StreamProtocol::new(INFER_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(3)),
            )
        })
        .unwrap()
        .build();
    bad.dial(target.clone()).unwrap();
    let node_peer = peer(&node);
    // An oversize frame (one byte over the 16 MiB limit, otherwise harmless): refused by its size, unread.
    bad.behaviour_mut().send_request(&node_peer, vec![0u8; mlbridge_sdk::protocol::MAX_REQUEST_BYTES + 1]);
    let oversize = loop {
        match tokio::time::timeout(Duration::from_secs(20), bad.select_next_some()).await.expect("an answer") {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => break mlbridge_sdk::protocol::decode::<Response>(&response, 1 << 20).unwrap(),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => panic!("{error}"),
            _ => {}
        }
    };
    assert!(
        matches!(&oversize, Response::Error(e) if e.kind == ErrorKind::Malformed && e.message.contains("limit")),
        "{oversize:?}"
    );
    let mut failures = 0;
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while failures < 8 && tokio::time::Instant::now() < deadline {
        if sent == failures {
            bad.behaviour_mut().send_request(&node_peer, vec![0xff, 0x00, 0x13, 0x37, 0x99]);
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(5), bad.select_next_some()).await {
            Ok(SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. })) => failures += 1,
            // The node answers garbage with a typed "malformed" error (until it bans the sender).
            Ok(SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) => {
                if !response.is_empty() {
                    let decoded: Response = mlbridge_sdk::protocol::decode(&response, 1 << 20).unwrap();
                    assert!(matches!(decoded, Response::Error(ref e) if e.kind == ErrorKind::Malformed), "{decoded:?}");
                }
                failures += 1;
            }
            Ok(SwarmEvent::OutgoingConnectionError { .. }) => failures += 1,
            _ => {}
        }
    }
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_p2p_banned_peers_total"), 1.0, "the garbage sender is banned");

    // A peer flooding forged adverts is rejected and banned too.
    let mut flooder = build_swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        &NetConfig { listen: vec![], mdns: false, heartbeat: Duration::from_millis(100), ..NetConfig::default() },
    )
    .unwrap();
    flooder.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(ADVERTS_TOPIC)).unwrap();
    flooder.dial(target).unwrap();
    let forged = Advert {
        version: WIRE_VERSION,
        peer_id: flooder.local_peer_id().to_bytes(),
        operator: alloy::primitives::Address::repeat_byte(9),
        models: vec![],
        capacity: 1_000_000,
        addrs: vec![],
        issued_at_ms: 0,
        signature: vec![0; 65],
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let mut a = forged.clone();
                a.issued_at_ms = n;
                let _ = flooder.behaviour_mut().gossipsub.publish(IdentTopic::new(ADVERTS_TOPIC), encode(&a));
                if metric(&metrics_text(&node).await, "mlbridge_p2p_banned_peers_total") >= 2.0 {
                    break;
                }
            }
            _ = flooder.select_next_some() => {}
        }
    }
    let text = metrics_text(&node).await;
    assert!(metric(&text, "mlbridge_p2p_gossip_messages_total{direction=\"rejected\"}") >= 5.0);
    assert_eq!(metric(&text, "mlbridge_p2p_banned_peers_total"), 2.0, "the flooder is banned");
    // The honest client is still served.
    assert!(good.infer("mlp-tiny", Some(1), mlp_input(3.0)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rate_is_bounded_per_peer() {
    let node = start_node(|c| {
        p2p_fast(c);
        c.p2p.max_requests_per_sec_per_peer = 5.0;
    })
    .await;
    let c = client(&node, Strategy::RoundRobin).await;
    assert_eq!(c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap().len(), 1);
    let request = || {
        Request::Infer(InferRequest {
            version: WIRE_VERSION,
            job_id: Default::default(),
            model: ModelRef { name: "mlp-tiny".into(), version: Some(1), id: None },
            inputs: mlp_input(0.0),
            voucher: None,
            channel: None,
            credit_key: None,
            queue_timeout_ms: None,
        })
    };
    let mut kinds = Vec::new();
    let burst_started = std::time::Instant::now();
    for _ in 0..30 {
        kinds.push(match c.send_to(peer(&node), request()).await.unwrap() {
            Response::Infer(_) => None,
            Response::Error(e) => Some(e.kind),
            Response::Ack | Response::Audit(_) => panic!("not an inference answer"),
        });
    }
    let refused = kinds.iter().filter(|k| **k == Some(ErrorKind::Overloaded)).count();
    assert!(kinds.iter().take(10).all(Option::is_none), "the burst allowance (2 x rate) is served: {kinds:?}");
    // At most the burst plus what the elapsed time refilled is served, however slow this machine is today.
    let allowed = 10 + (burst_started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(30 - refused <= allowed, "served {} of 30, allowed {allowed}: {kinds:?}", 30 - refused);
    assert!(refused > 0, "a burst of 30 at 5/s is partly refused: {kinds:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(c.send_to(peer(&node), request()).await.unwrap(), Response::Infer(_)), "served again later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_fails_in_the_connect_phase() {
    let net = NetConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], mdns: false, ..NetConfig::default() };
    let c = Client::start(ClientConfig {
        net,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    })
    .unwrap();
    let started = std::time::Instant::now();
    let req = Request::Infer(InferRequest {
        version: WIRE_VERSION,
        job_id: Default::default(),
        model: ModelRef { name: "mlp-tiny".into(), version: None, id: None },
        inputs: mlp_input(0.0),
        voucher: None,
        channel: None,
        credit_key: None,
        queue_timeout_ms: None,
    });
    let err = c.send_to(PeerId::random(), req).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "the connect phase, not the 30 s request timeout, ended it");
}

/// Per-peer state is forgotten when a peer's last connection closes (a stream of short-lived peers cannot grow the
/// node's maps), and the node accepts no more connections than configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_state_is_pruned_and_connections_are_limited() {
    let node = start_node(|c| {
        p2p_fast(c);
        c.p2p.max_incoming_connections = 2;
    })
    .await;
    let tracked = || async { metric(&metrics_text(&node).await, "mlbridge_p2p_tracked_peers") };
    for _ in 0..3 {
        let c = client(&node, Strategy::RoundRobin).await;
        c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
        c.infer("mlp-tiny", Some(1), mlp_input(0.5)).await.unwrap();
        assert!(tracked().await >= 1.0);
        drop(c); // its swarm stops and the connection closes
        let start = std::time::Instant::now();
        while tracked().await > 0.0 {
            assert!(start.elapsed() < Duration::from_secs(10), "the peer's state was never forgotten");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Two clients hold the two incoming slots; a third cannot connect.
    let a = client(&node, Strategy::RoundRobin).await;
    let b = client(&node, Strategy::RoundRobin).await;
    for c in [&a, &b] {
        c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
        c.infer("mlp-tiny", Some(1), mlp_input(0.5)).await.unwrap();
    }
    let third = client(&node, Strategy::RoundRobin).await;
    // It may still hear the node's adverts through the other clients, but it cannot reach the node itself.
    let _ = third.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(2)).await;
    assert!(third.infer("mlp-tiny", Some(1), mlp_input(0.5)).await.is_err(), "a third connection is refused");
    assert!(a.infer("mlp-tiny", Some(1), mlp_input(0.25)).await.is_ok(), "the others are still served");
}

/// A raw peer on the multiplexed protocol: its own swarm (polled in the background) and a stream opened to `node`.
async fn raw_mux_stream(node: &RunningNode) -> libp2p::Stream {
    let net = NetConfig { listen: vec![], mdns: false, ..NetConfig::default() };
    let mut swarm = build_swarm(libp2p::identity::Keypair::generate_ed25519(), &net).unwrap();
    let mut control = swarm.behaviour().stream.new_control();
    swarm.dial(addrs(node).await[0].clone()).unwrap();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    control.open_stream(peer(node), StreamProtocol::new(MUX_PROTOCOL)).await.unwrap()
}

async fn answer(r: &mut (impl futures::AsyncRead + Unpin)) -> (u64, Response) {
    let f = tokio::time::timeout(Duration::from_secs(20), read_frame(r, 1 << 24, None)).await.unwrap().unwrap();
    let f = f.expect("an answer, not the end of the stream");
    (f.id, mlbridge_sdk::protocol::decode(&f.body, 1 << 24).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplexed_stream_pairs_answers_by_id_and_refuses_hostile_frames() {
    use futures::{AsyncReadExt, AsyncWriteExt};
    let node = start_node(p2p_fast).await;
    let (mut r, mut w) = raw_mux_stream(&node).await.split();
    let infer = |seed: f32| {
        encode(&Request::Infer(InferRequest {
            version: WIRE_VERSION,
            job_id: Default::default(),
            model: ModelRef { name: "mlp-tiny".into(), version: Some(1), id: None },
            inputs: mlp_input(seed),
            voucher: None,
            channel: None,
            credit_key: None,
            queue_timeout_ms: None,
        }))
    };
    // Three requests in one burst, ids chosen by the client: three answers, each under its own id.
    for id in [7u64, 3, 11] {
        write_frame(&mut w, id, &infer(id as f32)).await.unwrap();
    }
    w.flush().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (id, resp) = answer(&mut r).await;
        let Response::Infer(a) = resp else { panic!("{resp:?}") };
        let expected = node.engine.infer("mlp-tiny", Some(1), mlp_input(id as f32)).await.unwrap();
        assert_eq!(a.outputs, *expected.outputs, "answer {id} is for request {id}");
        seen.push(id);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![3, 7, 11]);
    // Garbage in a frame: a typed "malformed" answer under its id, and the stream goes on.
    write_frame(&mut w, 5, &[0xff, 0x00, 0x13]).await.unwrap();
    w.flush().await.unwrap();
    assert!(matches!(answer(&mut r).await, (5, Response::Error(e)) if e.kind == ErrorKind::Malformed));
    // Audits belong on /mlbridge/infer/1.
    let audit = Request::Audit(mlbridge_sdk::protocol::AuditRequest {
        version: WIRE_VERSION,
        job_id: Default::default(),
        requester: vec![],
        issued_at: 0,
        validator: Default::default(),
        signature: vec![],
    });
    write_frame(&mut w, 6, &encode(&audit)).await.unwrap();
    w.flush().await.unwrap();
    assert!(matches!(answer(&mut r).await, (6, Response::Error(e)) if e.kind == ErrorKind::BadInput));
    // A frame announcing one byte over the limit: answered by its size (the body never read), then closed.
    let len = (8 + MAX_REQUEST_BYTES + 1) as u32;
    w.write_all(&len.to_be_bytes()).await.unwrap();
    w.write_all(&9u64.to_be_bytes()).await.unwrap();
    w.flush().await.unwrap();
    let (id, resp) = answer(&mut r).await;
    assert!(
        id == 9 && matches!(&resp, Response::Error(e) if e.kind == ErrorKind::Malformed && e.message.contains("limit")),
        "{resp:?}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut rest)).await.unwrap();
    assert!(closed.is_ok() && rest.is_empty(), "the stream is closed after an oversize frame");
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_p2p_requests_total{outcome=\"malformed\"}"), 2.0);
    assert_eq!(metric(&text, "mlbridge_p2p_requests_total{outcome=\"ok\"}"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_its_bootstrap_node_finds_it_by_dns_name() {
    // The cluster case: a validator's client starts before the node pods and knows them only by a stable DNS name
    // (no /p2p/ id). It keeps dialling while it has no peer.
    // The port is held until the node takes it (another test could otherwise bind it first).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let net = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![format!("/dns4/localhost/tcp/{port}").parse().unwrap()],
        mdns: false,
        heartbeat: Duration::from_millis(200),
        ..NetConfig::default()
    };
    let c = Client::start(ClientConfig { net, ..ClientConfig::default() }).unwrap();
    // Its first dial goes to a listener that never answers the handshake and fails when it closes; the client must
    // resolve the name and dial again by itself. (The resolver here is the system's, through `localhost`.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(holder);
    let node = start_node(|cfg| {
        p2p_fast(cfg);
        cfg.p2p.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
    })
    .await;
    let found = c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(found.first().map(|n| n.peer_id), Some(peer(&node)), "the client never reached the node");
    c.infer("mlp-tiny", Some(1), mlp_input(0.5)).await.unwrap();
}
