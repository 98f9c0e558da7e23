//! Paid inference end to end on real anvil, real libp2p and real ONNX Runtime: channels from the SDK, voucher
//! checks, the durable ledger, receipts, settlement with `redeemMany`, bad payments, an RPC outage and a reorg.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::anvil::ReorgOptions;
use alloy::signers::local::PrivateKeySigner;
use libp2p::PeerId;
use mlbridge_node::server::RunningNode;
use mlbridge_sdk::chain::bindings::PaymentChannels;
use mlbridge_sdk::client::{Client, Strategy};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::protocol::{
    AuditRequest, ErrorKind, InferRequest, ModelRef, PaymentRefusal, Request, Response, WIRE_VERSION, WireVoucher,
};
use mlbridge_sdk::voucher::Voucher;
use mlbridge_sdk::{Tensor, TensorData};

use crate::chain::*;
use crate::support::*;

const PRICE: u128 = 100_000_000_000; // mlp-tiny's price_wei

fn input(seed: f32) -> Vec<Tensor> {
    let data = (0..256).map(|i| seed + i as f32 / 256.0).collect();
    vec![Tensor::new("input", vec![1, 256], TensorData::Fp32(data)).unwrap()]
}

pub(crate) async fn client(boot: &RunningNode, strategy: Strategy) -> Client {
    client_with_timeout(boot, strategy, Duration::from_secs(10)).await
}

pub(crate) fn peer(node: &RunningNode) -> PeerId {
    node.p2p.as_ref().unwrap().peer_id()
}

async fn redeemed(chain: &Chain, channel: B256) -> U256 {
    let pc = PaymentChannels::new(chain.deployment.payment_channels, chain.provider());
    U256::from(pc.getChannel(channel).call().await.unwrap().redeemed)
}

/// Run `n` paid mlp-tiny jobs with `concurrency` tasks; returns jobs per node and the prices answered per channel.
async fn paid_load(c: &Client, n: usize, concurrency: usize) -> (HashMap<PeerId, usize>, HashMap<B256, U256>) {
    let seen = Arc::new(std::sync::Mutex::new((HashMap::new(), HashMap::new())));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (c, seen, next) = (c.clone(), seen.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let out = c.infer("mlp-tiny", Some(1), input(0.25)).await.unwrap();
                let p = out.paid.expect("a paid job says how it was paid");
                assert!(out.response.receipt.is_some(), "a paid answer carries the receipt");
                let mut s = seen.lock().unwrap();
                *s.0.entry(out.node).or_default() += 1;
                *s.1.entry(p.channel_id).or_insert(U256::ZERO) += p.price;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_paid_jobs_on_two_nodes_are_settled_on_chain() {
    let chain = Chain::start().await;
    let (la, lb, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_node(|c| paid(c, &chain, &chain.url(), 1, la.path())).await;
    let boot: Vec<String> = addrs(&a).await.iter().map(ToString::to_string).collect();
    let b = start_node(|c| {
        paid(c, &chain, &chain.url(), 2, lb.path());
        c.p2p.bootstrap = boot;
    })
    .await;
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let c = client(&a, Strategy::RoundRobin).await.with_payer(payer.clone());
    assert_eq!(c.wait_for_nodes("mlp-tiny", 2, Duration::from_secs(20)).await.unwrap().len(), 2);
    let (op_a, op_b) = (chain.key(1).address(), chain.key(2).address());
    let receipts = listen_for_receipts(addrs(&a).await.remove(0));
    // The node knows the listener subscribed (it publishes receipts only while someone listens).
    wait_metric(&a, "mlbridge_p2p_receipt_listeners", Duration::from_secs(20), |n| n >= 1.0).await;
    let rewards = chain.deployment.validator_rewards;
    let before = [chain.balance(op_a).await, chain.balance(op_b).await, chain.balance(rewards).await];

    // The payer opens one channel to each operator by itself (policy: up to 1 ETH), then pays every job.
    let (per_node, answered) = paid_load(&c, 1000, 8).await;
    assert_eq!(per_node.values().sum::<usize>(), 1000);
    assert!(per_node[&peer(&a)] >= 300 && per_node[&peer(&b)] >= 300, "round robin spreads: {per_node:?}");
    assert_eq!(payer.store().list().len(), 2, "one channel per node");
    let heard = receipts.lock().unwrap().clone();
    assert!(!heard.is_empty(), "receipts are gossiped to validators");
    assert!(heard.iter().all(|r| r.verify(&chain.deployment.domain()) && (r.node() == op_a || r.node() == op_b)));
    assert!(heard.iter().any(|r| r.batch.count > 1), "receipts are signed and gossiped by batch");
    let text = metrics_text(&a).await;
    let (vouchers, paid_jobs) =
        (metric(&text, "mlbridge_vouchers_accepted_total"), metric(&text, "mlbridge_paid_jobs_total"));
    assert!(vouchers * 10.0 < paid_jobs, "most jobs drew on credit paid ahead: {vouchers} vouchers, {paid_jobs} jobs");
    let signatures = metric(&text, "mlbridge_receipt_batches_total");
    assert!(signatures < paid_jobs, "receipts share signatures: {signatures} batches for {paid_jobs} jobs");

    let mut gas = 0u64;
    let mut gas_cost = [U256::ZERO; 2];
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let report = node.payments.as_ref().unwrap().settler().settle_now().await.unwrap();
        assert_eq!(report.transactions.len(), 1, "one redeemMany per node");
        let tx = &report.transactions[0];
        assert_eq!(tx.jobs as usize, per_node[&peer(node)], "every answered job is paid");
        gas += tx.gas_used;
        gas_cost[i] = tx.gas_cost;
    }
    let fee = |x: U256| x * U256::from(500u64) / U256::from(10_000u64);
    let mut fees = U256::ZERO;
    for (i, (node, op)) in [(&a, op_a), (&b, op_b)].into_iter().enumerate() {
        let channel = payer.store().list().into_iter().find(|c| c.payee == op).unwrap().channel_id;
        let due = U256::from(PRICE) * U256::from(per_node[&peer(node)] as u64);
        assert_eq!(answered[&channel], due);
        let paid = redeemed(&chain, channel).await;
        let signed = payer.store().get(&channel).unwrap().signed;
        assert_eq!(paid, signed, "on chain: the client's highest voucher");
        // Paid ahead by at most one credit window (256 jobs at this price, the default cap).
        assert!(paid >= due && paid - due <= U256::from(256 * PRICE), "{paid} for {due} answered");
        let received = chain.balance(op).await + gas_cost[i] - before[i];
        assert_eq!(received, paid - fee(paid), "the operator got the redeemed total minus the protocol fee");
        fees += fee(paid);
    }
    assert_eq!(chain.balance(rewards).await - before[2], fees, "ValidatorRewards received the fees");
    println!(
        "settled 1000 paid jobs on 2 nodes with 2 redeemMany transactions: {gas} gas, {:.1} gas per job",
        gas as f64 / 1000.0
    );

    // Validators can fetch a recent job's inputs and outputs over the audit protocol.
    let job = b.payments.as_ref().unwrap().gate().ledger().job_count();
    assert!(job > 0);
    let last = c.infer("mlp-tiny", Some(1), input(0.75)).await.unwrap();
    let receipt = last.response.receipt.clone().unwrap();
    // Nobody may read a client's inputs and outputs but an active validator (or a peer the operator lists): a
    // request signed by an unstaked key, or by nobody, is refused.
    let unstaked = PrivateKeySigner::random();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let me = c.peer_id().to_bytes();
    let signed = AuditRequest::signed(receipt.job_id, &me, now, &unstaked, unstaked.address()).unwrap();
    let mut unsigned = signed.clone();
    unsigned.signature.clear();
    for req in [signed.clone(), unsigned] {
        match c.send_to(last.node, Request::Audit(req)).await.unwrap() {
            Response::Error(e) => assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}"),
            other => panic!("an unstaked peer got {other:?}"),
        }
    }
    let audit = Request::Audit(signed);
    for n in [&a, &b] {
        n.p2p.as_ref().unwrap().allow_auditor(c.peer_id());
    }
    let Response::Audit(record) = c.send_to(last.node, audit.clone()).await.unwrap() else { panic!("an audit record") };
    assert_eq!(record.receipt, receipt);
    assert_eq!(record.inputs, input(0.75));
    assert_eq!(record.outputs, last.response.outputs);
    // Rate-limited (10 per second, burst 20): a flood is turned away.
    let mut refused = 0;
    for _ in 0..40 {
        if let Response::Error(e) = c.send_to(last.node, audit.clone()).await.unwrap() {
            assert_eq!(e.kind, ErrorKind::Overloaded);
            refused += 1;
        }
    }
    assert!(refused > 0, "40 audits in a burst: some are refused");
    // Prices are per unit through the SDK too: 3 samples cost 3 prices, 2 texts 2 of MiniLM's.
    let data: Vec<f32> = (0..3 * 256).map(|i| i as f32 / 768.0).collect();
    let three = vec![Tensor::new("input", vec![3, 256], TensorData::Fp32(data)).unwrap()];
    let out = c.infer("mlp-tiny", Some(1), three).await.unwrap();
    let r = out.response.receipt.unwrap();
    assert_eq!((r.units, r.price), (U256::from(3u64), U256::from(3 * PRICE)));
    let texts = vec!["one sentence".to_owned(), "another sentence".to_owned()];
    let out = c.embed("minilm-l6", Some(2), texts).await.unwrap();
    let r = out.response.receipt.unwrap();
    assert_eq!((r.units, r.price), (U256::from(2u64), U256::from(2 * 20_000_000_000_000u128)));
    // The open market pays too: the winning bid's price goes to its node's operator, with a verified receipt.
    let model_id = a.engine.config("mlp-tiny", Some(1)).unwrap().sha256;
    let market = c.offer(model_id, input(0.9), U256::from(PRICE), Duration::from_millis(1500)).await.unwrap();
    assert!(market.outcome.paid.is_some() && market.outcome.response.receipt.is_some());
    let unknown =
        Request::Audit(AuditRequest::signed(B256::repeat_byte(9), &me, now, &unstaked, unstaked.address()).unwrap());
    let Response::Error(e) = c.send_to(last.node, unknown).await.unwrap() else { panic!("not found") };
    assert_eq!(e.kind, ErrorKind::NotFound);
}

/// A validator-like peer subscribed to the receipts topic; returns what it hears.
fn listen_for_receipts(node: libp2p::Multiaddr) -> Arc<std::sync::Mutex<Vec<mlbridge_sdk::protocol::ReceiptMsg>>> {
    use futures::StreamExt;
    use libp2p::gossipsub::{self, IdentTopic};
    use mlbridge_sdk::net::{BehaviourEvent, build_swarm};
    use mlbridge_sdk::protocol::{MAX_GOSSIP_BYTES, RECEIPTS_TOPIC, ReceiptBatchGossip, decode};
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let net = NetConfig { listen: vec![], mdns: false, heartbeat: Duration::from_millis(100), ..NetConfig::default() };
    let mut swarm = build_swarm(libp2p::identity::Keypair::generate_ed25519(), &net).unwrap();
    swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(RECEIPTS_TOPIC)).unwrap();
    swarm.dial(node).unwrap();
    let out = heard.clone();
    tokio::spawn(async move {
        loop {
            if let libp2p::swarm::SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                message_id,
                propagation_source,
            })) = swarm.select_next_some().await
            {
                // Receipts travel by batch: every receipt of the message, with its proof.
                if let Ok(g) = decode::<ReceiptBatchGossip>(&message.data, MAX_GOSSIP_BYTES) {
                    out.lock().unwrap().extend(g.receipts().expect("the leaves build the signed root"));
                }
                let accept = gossipsub::MessageAcceptance::Accept;
                let _ = swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    accept,
                );
            }
        }
    });
    heard
}

fn next_job_id() -> B256 {
    static N: AtomicUsize = AtomicUsize::new(1);
    B256::left_padding_from(&N.fetch_add(1, Ordering::SeqCst).to_be_bytes())
}

fn request(voucher: Option<WireVoucher>) -> Request {
    request_on(voucher, None)
}

/// A job paid by `voucher`, or drawing on the credit of `channel`.
fn request_on(voucher: Option<WireVoucher>, channel: Option<B256>) -> Request {
    Request::Infer(InferRequest {
        version: WIRE_VERSION,
        job_id: next_job_id(),
        model: ModelRef { name: "mlp-tiny".into(), version: Some(1), id: None },
        inputs: input(0.5),
        voucher,
        channel,
        credit_key: None,
        queue_timeout_ms: None,
    })
}

pub(crate) fn voucher(signer: &PrivateKeySigner, chain: &Chain, channel: B256, amount: u128) -> WireVoucher {
    let v = Voucher::new(channel, U256::from(amount)).sign(signer, &chain.deployment.domain()).unwrap();
    WireVoucher { channel_id: v.channel_id, cumulative_amount: v.cumulative_amount, signature: v.signature }
}

/// Open a channel from key `from` to `payee` straight through the contract (no waiting for confirmations).
pub(crate) async fn open_raw(chain: &Chain, from: usize, payee: Address, deposit: u128) -> B256 {
    let pc = PaymentChannels::new(chain.deployment.payment_channels, chain.wallet(from));
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 86_400 * 7;
    let receipt = pc.open(payee, expiry).value(U256::from(deposit)).send().await.unwrap().get_receipt().await.unwrap();
    receipt.decoded_log::<PaymentChannels::ChannelOpened>().unwrap().channelId
}

/// Wait until the node's chain view holds `channel` as confirmed (instead of sleeping a guessed time).
pub(crate) async fn wait_confirmed(node: &RunningNode, channel: B256) {
    let gate = node.payments.as_ref().unwrap().gate().clone();
    wait_until(Duration::from_secs(20), || {
        matches!(gate.watcher().lookup(&channel), mlbridge_node::payment::watcher::Lookup::Confirmed(_))
    })
    .await;
}

async fn refusal(c: &Client, node: &RunningNode, v: Option<WireVoucher>) -> PaymentRefusal {
    refusal_of(c, node, request(v)).await
}

async fn refusal_of(c: &Client, node: &RunningNode, request: Request) -> PaymentRefusal {
    match c.send_to(peer(node), request).await.unwrap() {
        Response::Error(e) if e.kind == ErrorKind::Payment => e.payment.expect("a typed payment refusal"),
        other => panic!("expected a payment refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payments_are_refused_with_typed_errors_and_nothing_runs() {
    let chain = Chain::start().await;
    let ledger = tempfile::tempdir().unwrap();
    let node = start_node(|c| paid(c, &chain, &chain.url(), 1, ledger.path())).await;
    let c = client(&node, Strategy::RoundRobin).await;
    let (payer, op) = (chain.key(3), chain.key(1).address());
    let ours = open_raw(&chain, 3, op, 10 * PRICE).await;
    let others = open_raw(&chain, 3, chain.key(2).address(), 10 * PRICE).await;
    wait_confirmed(&node, ours).await;
    let gate = node.payments.as_ref().unwrap().gate().clone();
    wait_until(Duration::from_secs(20), || {
        matches!(gate.watcher().lookup(&others), mlbridge_node::payment::watcher::Lookup::Foreign { .. })
    })
    .await;
    let inferences = || node.engine.metrics().inferences.with_label_values(&["mlp-tiny/1"]).get();

    assert!(
        matches!(refusal(&c, &node, None).await, PaymentRefusal::Required { price, payee } if price == U256::from(PRICE) && payee == op)
    );
    let forged = voucher(&PrivateKeySigner::random(), &chain, ours, PRICE);
    assert!(matches!(refusal(&c, &node, Some(forged)).await, PaymentRefusal::BadSignature { .. }));
    // The payer's own signature with v as 0/1: plain secp256k1 recovers the payer, the contract would revert.
    let mut v0 = voucher(&payer, &chain, ours, PRICE);
    v0.signature[64] -= 27;
    assert!(matches!(refusal(&c, &node, Some(v0)).await, PaymentRefusal::BadSignature { .. }));
    let over = voucher(&payer, &chain, ours, 10 * PRICE + 1);
    assert!(matches!(refusal(&c, &node, Some(over)).await, PaymentRefusal::OverDeposit { .. }));
    let foreign = voucher(&payer, &chain, others, PRICE);
    assert!(matches!(refusal(&c, &node, Some(foreign)).await, PaymentRefusal::WrongPayee { .. }));
    let unknown = voucher(&payer, &chain, B256::repeat_byte(7), PRICE);
    assert!(matches!(refusal(&c, &node, Some(unknown)).await, PaymentRefusal::UnknownChannel { .. }));
    chain.mining(false);
    let fresh = open_raw(&chain, 3, op, 10 * PRICE).await;
    wait_until(Duration::from_secs(10), || {
        matches!(gate.watcher().lookup(&fresh), mlbridge_node::payment::watcher::Lookup::Unconfirmed { .. })
    })
    .await;
    let early = voucher(&payer, &chain, fresh, PRICE);
    assert!(matches!(refusal(&c, &node, Some(early)).await, PaymentRefusal::Unconfirmed { have: 1, need: 3, .. }));
    chain.mining(true);
    assert_eq!(inferences(), 0, "no refused job ran");
    assert_eq!(node.payments.as_ref().unwrap().gate().ledger().job_count(), 0, "nothing recorded");

    // Two good vouchers (both requests with the same client job id: the node assigns its own, so neither record
    // overwrites the other), then a replay of the second and a lower one.
    let mut receipts = Vec::new();
    for k in 1..=2 {
        let mut req = request(Some(voucher(&payer, &chain, ours, k * PRICE)));
        if let Request::Infer(r) = &mut req {
            r.job_id = B256::repeat_byte(0x77);
        }
        let ok = c.send_to(peer(&node), req).await.unwrap();
        let Response::Infer(r) = ok else { panic!("{ok:?}") };
        assert_eq!(r.job_id, B256::repeat_byte(0x77), "the answer echoes the client's id");
        receipts.push(r.receipt.expect("a receipt").job_id);
    }
    assert_ne!(receipts[0], receipts[1], "receipts carry the node's own, unique job ids");
    let replay = voucher(&payer, &chain, ours, 2 * PRICE);
    assert!(
        matches!(refusal(&c, &node, Some(replay)).await, PaymentRefusal::Replayed { needed, .. } if needed == U256::from(3 * PRICE))
    );
    let lower = voucher(&payer, &chain, ours, PRICE);
    assert!(matches!(refusal(&c, &node, Some(lower)).await, PaymentRefusal::BelowAccepted { .. }));
    assert_eq!(inferences(), 2, "only the two paid jobs ran");
    let gate = node.payments.as_ref().unwrap().gate();
    assert_eq!(gate.ledger().job_count(), 2);
    let entry = gate.ledger().channel(&ours).unwrap().unwrap();
    assert_eq!((entry.jobs, entry.best_amount, entry.charged), (2, U256::from(2 * PRICE), U256::from(2 * PRICE)));
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_payments_refused_total{reason=\"replayed\"}"), 1.0);
    assert_eq!(metric(&text, "mlbridge_paid_jobs_total"), 2.0);

    // Payment intervals: a voucher paying ahead for 3 jobs (5 x the price, 2 charged), then jobs with no voucher
    // drawing on its credit — only from the peer that brought it.
    let ok = |r: Response| matches!(r, Response::Infer(ref a) if a.receipt.is_some());
    let ahead = voucher(&payer, &chain, ours, 5 * PRICE);
    assert!(ok(c.send_to(peer(&node), request(Some(ahead.clone()))).await.unwrap()));
    let stranger = client(&node, Strategy::RoundRobin).await;
    let credit_only = || request_on(None, Some(ours));
    assert!(
        matches!(refusal_of(&stranger, &node, credit_only()).await, PaymentRefusal::NoCredit { .. }),
        "another peer cannot spend the credit"
    );
    assert!(
        matches!(refusal_of(&stranger, &node, request(Some(ahead))).await, PaymentRefusal::Replayed { .. }),
        "nor by showing the voucher that paid it (it may have been seen on chain)"
    );
    for _ in 0..2 {
        assert!(ok(c.send_to(peer(&node), credit_only()).await.unwrap()), "credit paid ahead covers the job");
    }
    assert!(
        matches!(refusal_of(&c, &node, credit_only()).await, PaymentRefusal::NoCredit { needed, .. } if needed == U256::from(6 * PRICE)),
        "the credit is used up after 3 jobs"
    );
    let entry = gate.ledger().channel(&ours).unwrap().unwrap();
    assert_eq!((entry.jobs, entry.best_amount, entry.charged), (5, U256::from(5 * PRICE), U256::from(5 * PRICE)));
    // A new voucher brought by the stranger moves the credit to it (only the payer can sign one).
    let moved = voucher(&payer, &chain, ours, 7 * PRICE);
    assert!(ok(stranger.send_to(peer(&node), request(Some(moved))).await.unwrap()));
    assert!(ok(stranger.send_to(peer(&node), credit_only()).await.unwrap()));
    assert!(matches!(refusal_of(&c, &node, credit_only()).await, PaymentRefusal::NoCredit { .. }));
    assert_eq!(inferences(), 7, "only paid jobs ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_goes_on_through_an_rpc_outage_and_settlement_catches_up() {
    let chain = Chain::start().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", chain.anvil.port()).parse().unwrap()).await;
    let (ledger, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(|c| paid(c, &chain, &proxy.url(), 1, ledger.path())).await;
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let c = client(&node, Strategy::RoundRobin).await.with_payer(payer.clone());
    c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
    paid_load(&c, 50, 4).await;

    proxy.set_down(true);
    let (_, answered) = paid_load(&c, 100, 4).await; // the node only sees a dead RPC now
    let settle = node.payments.as_ref().unwrap().settler();
    assert!(settle.settle_now().await.is_err(), "no settlement without the chain");
    proxy.set_down(false);
    let report = settle.settle_now().await.unwrap();
    let channel = *answered.keys().next().unwrap();
    assert_eq!(report.transactions.iter().map(|t| t.jobs).sum::<u64>(), 150);
    let paid = redeemed(&chain, channel).await;
    assert_eq!(paid, payer.store().get(&channel).unwrap().signed, "the highest voucher, redeemed");
    assert!(paid >= U256::from(150 * PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorged_redemption_ends_confirmed_once() {
    let chain = Chain::start().await;
    let (ledger, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(|c| paid(c, &chain, &chain.url(), 1, ledger.path())).await;
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let c = client(&node, Strategy::RoundRobin).await.with_payer(payer.clone());
    c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
    let (_, answered) = paid_load(&c, 20, 2).await;
    let channel = *answered.keys().next().unwrap();
    let signed = payer.store().get(&channel).unwrap().signed;

    chain.mining(false);
    let settler = node.payments.as_ref().unwrap().settler().clone();
    let settling = tokio::spawn(async move { settler.settle_now().await });
    // Wait until the redemption is mined, then replace its block.
    let p = chain.provider();
    for _ in 0..200 {
        if redeemed(&chain, channel).await > U256::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(redeemed(&chain, channel).await, signed, "mined once");
    // The tracker has processed the block holding the redemption (recorded the inclusion) before it is replaced.
    let mined = p.get_block_number().await.unwrap();
    node.payments.as_ref().unwrap().tracker().wait_head(mined).await.unwrap();
    p.anvil_reorg(ReorgOptions { depth: 1, tx_block_pairs: vec![] }).await.unwrap();
    chain.mining(true);
    let report = tokio::time::timeout(Duration::from_secs(30), settling).await.unwrap().unwrap().unwrap();
    assert_eq!(report.transactions.len(), 1, "one confirmed redemption");
    assert_eq!(redeemed(&chain, channel).await, signed, "paid exactly once after the reorg");
    let text = metrics_text(&node).await;
    assert!(metric(&text, "mlbridge_chain_tx_reorged_total{kind=\"redeem\"}") >= 1.0, "the tracker saw the reorg");
    assert_eq!(metric(&text, "mlbridge_chain_tx_confirmed_total{kind=\"redeem\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_clients_pay_with_a_voucher_header_and_operators_can_be_free() {
    use mlbridge_node::api::pay::{RECEIPT_HEADER, VOUCHER_HEADER, voucher_header};
    let chain = Chain::start().await;
    let (l1, l2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(|c| paid(c, &chain, &chain.url(), 1, l1.path())).await;
    let channel = open_raw(&chain, 3, chain.key(1).address(), 1_000 * PRICE).await;
    wait_confirmed(&node, channel).await;
    let payer = chain.key(3);
    let http = reqwest::Client::new();
    let post = |path: &str, v: Option<WireVoucher>, body: serde_json::Value| {
        let mut req = http.post(url(&node, path)).json(&body);
        if let Some(v) = v {
            req = req.header(VOUCHER_HEADER, voucher_header(&v));
        }
        req.send()
    };

    let resp = post("/v2/models/mlp-tiny/versions/1/infer", None, mlp_request(1, 0.5)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 402, "no voucher: payment required");
    assert!(resp.text().await.unwrap().contains("voucher"));
    let mut v0 = voucher(&payer, &chain, channel, PRICE);
    v0.signature[64] -= 27;
    let resp = post("/v2/models/mlp-tiny/versions/1/infer", Some(v0), mlp_request(1, 0.5)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 402, "a voucher whose v is 0/1 is refused");
    let v1 = voucher(&payer, &chain, channel, PRICE);
    let resp = post("/v2/models/mlp-tiny/versions/1/infer", Some(v1.clone()), mlp_request(1, 0.5)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().contains_key(RECEIPT_HEADER));
    let body: serde_json::Value = resp.json().await.unwrap();
    let receipt = &body["parameters"]["receipt"];
    assert_eq!(receipt["price"], PRICE.to_string());
    assert_eq!(
        receipt["batch"]["node"].as_str().unwrap().to_lowercase(),
        chain.key(1).address().to_string().to_lowercase()
    );
    let replay = post("/v2/models/mlp-tiny/versions/1/infer", Some(v1), mlp_request(1, 0.5)).await.unwrap();
    assert_eq!(replay.status().as_u16(), 402, "a replayed voucher is refused");
    // Embeddings: minilm-l6 v2 costs 2e13 wei.
    let v2 = voucher(&payer, &chain, channel, PRICE + 20_000_000_000_000);
    let body = serde_json::json!({ "model": "minilm-l6:2", "input": "A man is eating food." });
    let resp = post("/v1/embeddings", Some(v2), body).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["receipt"]["price"], "20000000000000");
    assert_eq!(node.payments.as_ref().unwrap().gate().ledger().job_count(), 2);

    // Prices are per unit: 3 samples cost 3 prices, and a voucher for one is refused before any work.
    let paid_so_far = PRICE + 20_000_000_000_000;
    let short = voucher(&payer, &chain, channel, paid_so_far + PRICE);
    let resp = post("/v2/models/mlp-tiny/versions/1/infer", Some(short), mlp_request(3, 0.5)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 402, "one price does not buy three samples");
    let full = voucher(&payer, &chain, channel, paid_so_far + 3 * PRICE);
    let resp = post("/v2/models/mlp-tiny/versions/1/infer", Some(full), mlp_request(3, 0.5)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["parameters"]["receipt"]["units"], "3");
    assert_eq!(body["parameters"]["receipt"]["price"], (3 * PRICE).to_string());
    // Two texts cost two; more texts than the node's limit are refused (4xx) before payment.
    let paid_so_far = paid_so_far + 3 * PRICE;
    let two = voucher(&payer, &chain, channel, paid_so_far + 40_000_000_000_000);
    let body = serde_json::json!({ "model": "minilm-l6:2", "input": ["one text", "another text"] });
    let resp = post("/v1/embeddings", Some(two), body).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["receipt"]["units"], "2");
    let many: Vec<String> = (0..257).map(|i| format!("text {i}")).collect();
    let huge = voucher(&payer, &chain, channel, 1_000 * PRICE);
    let resp = post("/v1/embeddings", Some(huge), serde_json::json!({ "model": "minilm-l6:2", "input": many })).await;
    let resp = resp.unwrap();
    assert_eq!(resp.status().as_u16(), 400, "257 texts: over the limit of 256");
    assert!(resp.text().await.unwrap().contains("max_texts_per_request"));
    assert_eq!(node.payments.as_ref().unwrap().gate().ledger().job_count(), 4, "the refused request cost nothing");

    // Pay ahead over HTTP: a voucher for 4 more jobs, brought with a secret credit key; then requests with no
    // voucher naming the channel and the key draw on the credit, and nothing else does.
    // Token ids cost one price per sequence; the receipt and the audit record name the model's input tensors.
    let paid_so_far = paid_so_far + 40_000_000_000_000;
    let ids = voucher(&payer, &chain, channel, paid_so_far + 20_000_000_000_000);
    let body = serde_json::json!({ "model": "minilm-l6:2", "input": [[101, 2028, 3793, 102]] });
    let resp = post("/v1/embeddings", Some(ids), body).await.unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["receipt"]["units"], "1");
    let job: alloy::primitives::B256 = body["receipt"]["job_id"].as_str().unwrap().parse().unwrap();
    let record = node.payments.as_ref().unwrap().audit(&job).expect("kept for audits");
    let names: Vec<&str> = record.inputs.iter().map(|t| t.name()).collect();
    assert_eq!((names, record.texts.len()), (vec!["input_ids", "attention_mask"], 0));
    assert_eq!(
        mlbridge_sdk::protocol::tensors_hash(&record.inputs).to_string(),
        body["receipt"]["input_hash"].as_str().unwrap()
    );

    use mlbridge_node::api::pay::{CHANNEL_HEADER, CREDIT_KEY_HEADER};
    let paid_so_far = paid_so_far + 20_000_000_000_000;
    let key = hex::encode([0x5a; 32]);
    let credit = |key: Option<&str>| {
        let mut req = http
            .post(url(&node, "/v2/models/mlp-tiny/versions/1/infer"))
            .header(CHANNEL_HEADER, channel.to_string())
            .json(&mlp_request(1, 0.5));
        if let Some(k) = key {
            req = req.header(CREDIT_KEY_HEADER, k);
        }
        req.send()
    };
    let ahead = voucher(&payer, &chain, channel, paid_so_far + 4 * PRICE);
    let resp = http
        .post(url(&node, "/v2/models/mlp-tiny/versions/1/infer"))
        .header(VOUCHER_HEADER, voucher_header(&ahead))
        .header(CREDIT_KEY_HEADER, &key)
        .json(&mlp_request(1, 0.5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(credit(None).await.unwrap().status().as_u16(), 402, "no credit key: no credit");
    assert_eq!(credit(Some(&hex::encode([0x5b; 32]))).await.unwrap().status().as_u16(), 402, "another key: none");
    for _ in 0..3 {
        let resp = credit(Some(&key)).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "the credit paid ahead covers it");
        let receipt: serde_json::Value =
            serde_json::from_str(resp.headers()[RECEIPT_HEADER].to_str().unwrap()).unwrap();
        assert_eq!(receipt["channel_id"], channel.to_string(), "charged to the channel");
    }
    let resp = credit(Some(&key)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 402, "the credit is used up after 4 jobs");
    assert!(resp.text().await.unwrap().contains("attach a voucher"));
    assert_eq!(node.payments.as_ref().unwrap().gate().ledger().job_count(), 9);

    // The operator's own use: a node configured free for localhost serves without a voucher.
    let free = start_node(|c| {
        paid(c, &chain, &chain.url(), 2, l2.path());
        c.payment.free_localhost = true;
    })
    .await;
    let (status, _) = crate::support::post(&free, "/v2/models/mlp-tiny/infer", &mlp_request(1, 0.5)).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics_text(&free).await, "mlbridge_free_jobs_total"), 1.0);
    // Through a local reverse proxy every client arrives from 127.0.0.1: a forwarded request is never free.
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let resp = http
            .post(url(&free, "/v2/models/mlp-tiny/infer"))
            .header(header, "203.0.113.9")
            .json(&mlp_request(1, 0.5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 402, "{header}: a proxied client pays");
    }
    // The admin endpoints answer only with the node's token (the metrics port is often open to a scraper).
    let admin = format!("http://{}/admin/redeem", free.metrics_addr);
    assert_eq!(http.post(&admin).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(http.post(&admin).bearer_auth("0".repeat(64)).send().await.unwrap().status().as_u16(), 401);
    let token = std::fs::read_to_string(mlbridge_node::api::admin::token_path(&l2.path().join("ledger"))).unwrap();
    assert_eq!(token.len(), 64);
    assert!(http.post(&admin).bearer_auth(&token).send().await.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_its_payer_closes_is_redeemed_before_the_close_window_ends() {
    let chain = Chain::start().await;
    let (ledger, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(|c| {
        paid(c, &chain, &chain.url(), 1, ledger.path());
        // Jobs are accepted on 7-day channels, but a 24 h close window is "near" (within 2 x 2 days).
        c.payment.expiry_margin_secs = 2 * 86_400;
        c.payment.settle_interval_secs = 0.2;
        c.payment.settle_gas_multiple = 1_000_000_000; // never because of the value
    })
    .await;
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let c = client(&node, Strategy::RoundRobin).await.with_payer(payer.clone());
    c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
    let (_, best) = paid_load(&c, 10, 2).await;
    let channel = *best.keys().next().unwrap();
    // Three whole settlement rounds after the load redeem nothing: the value is not due yet.
    let rounds = metric(&metrics_text(&node).await, "mlbridge_settle_rounds_total");
    wait_metric(&node, "mlbridge_settle_rounds_total", Duration::from_secs(20), |r| r >= rounds + 3.0).await;
    assert_eq!(redeemed(&chain, channel).await, U256::ZERO, "not due yet");

    payer.close(channel, &mut |_| {}).await.unwrap();
    for _ in 0..100 {
        if redeemed(&chain, channel).await > U256::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The highest voucher: the 10 answered jobs and what the payer signed ahead of them.
    let signed = payer.store().get(&channel).unwrap().signed;
    assert!(signed >= U256::from(10 * PRICE));
    assert_eq!(redeemed(&chain, channel).await, signed, "redeemed once the close started");
}

/// A voucher the contract refuses (here a `v` of 0 that an older node accepted) must not stop settlement: the bad
/// channel is named by the refusal, marked and refused new work, and every other channel is redeemed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_the_contract_refuses_does_not_stop_settlement() {
    let chain = Chain::start().await;
    let ledger = tempfile::tempdir().unwrap();
    let node = start_node(|c| paid(c, &chain, &chain.url(), 1, ledger.path())).await;
    let c = client(&node, Strategy::RoundRobin).await;
    let (payer, op) = (chain.key(3), chain.key(1).address());
    let bad = open_raw(&chain, 3, op, 10 * PRICE).await;
    let good = open_raw(&chain, 3, op, 10 * PRICE).await;
    wait_confirmed(&node, good).await;
    // What an older node would have stored for `bad`: the payer's signature with v = 0.
    let mut v0 = voucher(&payer, &chain, bad, 2 * PRICE);
    v0.signature[64] -= 27;
    let gate = node.payments.as_ref().unwrap().gate();
    gate.ledger()
        .put_channel(&mlbridge_node::payment::ledger::ChannelEntry {
            channel_id: bad,
            payer: payer.address(),
            best_amount: U256::from(2 * PRICE),
            best_signature: v0.signature.to_vec(),
            charged: U256::from(2 * PRICE),
            jobs: 2,
            ..Default::default()
        })
        .unwrap();
    for k in 1..=3 {
        let ok = c.send_to(peer(&node), request(Some(voucher(&payer, &chain, good, k * PRICE)))).await.unwrap();
        assert!(matches!(ok, Response::Infer(_)), "{ok:?}");
    }
    let report = node.payments.as_ref().unwrap().settler().settle_now().await.unwrap();
    assert_eq!(report.transactions.len(), 1, "{report:?}");
    assert_eq!(redeemed(&chain, good).await, U256::from(3 * PRICE), "the good channel is paid");
    assert_eq!(redeemed(&chain, bad).await, U256::ZERO);
    let entry = gate.ledger().channel(&bad).unwrap().unwrap();
    assert!(entry.failed.as_deref().is_some_and(|r| r.contains("signed by")), "{entry:?}");
    assert!(!entry.failed_permanently, "retried every round");
    let refused = refusal(&c, &node, Some(voucher(&payer, &chain, bad, 3 * PRICE))).await;
    assert!(matches!(refused, PaymentRefusal::Unsettleable { .. }), "no more work on it: {refused}");
    // The next round still settles (nothing new on the good channel, the bad one refused again).
    let again = node.payments.as_ref().unwrap().settler().settle_now().await.unwrap();
    assert!(again.transactions.is_empty(), "{again:?}");
}

/// A deployment file that does not match the chain fails the start, naming what differs: another chain id, an
/// address without code, or contracts that are not wired to each other as the file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_file_that_does_not_match_the_chain_fails_the_start() {
    let chain = Chain::start().await;
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn Fn(&mut mlbridge_sdk::chain::Deployment)>;
    let cases: [(&str, Edit); 3] = [
        ("chain id", Box::new(|d| d.chain_id = 1)),
        ("no contract code", Box::new(|d| d.disputes = Address::repeat_byte(0x42))),
        ("does not match the contracts", Box::new(|d| std::mem::swap(&mut d.validator_rewards, &mut d.disputes))),
    ];
    for (i, (expected, edit)) in cases.iter().enumerate() {
        let mut d = chain.deployment;
        edit(&mut d);
        let file = dir.path().join(format!("deployment-{i}.json"));
        d.save(&file).unwrap();
        let ledger = dir.path().join(format!("ledger-{i}"));
        let mut config = mlbridge_node::config::NodeConfig { model_repository: models_root(), ..Default::default() };
        config.http.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics.listen = "127.0.0.1:0".parse().unwrap();
        config.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        config.p2p.mdns = false;
        paid(&mut config, &chain, &chain.url(), 1, &ledger);
        config.payment.deployment = Some(file);
        let err = match mlbridge_node::server::start(config).await {
            Ok(_) => panic!("{expected}: the node started on a wrong deployment file"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

/// A reorg deeper than the confirmation depth after a redemption was confirmed: the watcher rebuilds its view, the
/// ledger is taken back to what the chain holds, and the voucher is redeemed again (exactly its amount in the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redemption_undone_by_a_deep_reorg_is_redeemed_again() {
    let chain = Chain::start().await;
    let ledger = tempfile::tempdir().unwrap();
    let node = start_node(|c| paid(c, &chain, &chain.url(), 1, ledger.path())).await;
    let c = client(&node, Strategy::RoundRobin).await;
    let payer = chain.key(3);
    let channel = open_raw(&chain, 3, chain.key(1).address(), 10 * PRICE).await;
    let gate = node.payments.as_ref().unwrap().gate().clone();
    let confirmed = |g: &std::sync::Arc<mlbridge_node::payment::gate::Gate>| {
        matches!(g.watcher().lookup(&channel), mlbridge_node::payment::watcher::Lookup::Confirmed(_))
    };
    wait_until(Duration::from_secs(10), || confirmed(&gate)).await;
    for k in 1..=4 {
        let ok = c.send_to(peer(&node), request(Some(voucher(&payer, &chain, channel, k * PRICE)))).await.unwrap();
        assert!(matches!(ok, Response::Infer(_)), "{ok:?}");
    }
    let settler = node.payments.as_ref().unwrap().settler().clone();
    let report = settler.settle_now().await.unwrap();
    let block = report.transactions[0].block;
    assert_eq!(redeemed(&chain, channel).await, U256::from(4 * PRICE));
    // Let the confirmed view apply the redemption's block, then replace it and the blocks after it (no replay).
    wait_until(Duration::from_secs(10), || gate.watcher().synced() >= block).await;
    let p = chain.provider();
    let depth = p.get_block_number().await.unwrap() - block + 1;
    assert!(depth >= 3, "deeper than the confirmation depth: {depth}");
    p.anvil_reorg(ReorgOptions { depth, tx_block_pairs: vec![] }).await.unwrap();
    assert_eq!(redeemed(&chain, channel).await, U256::ZERO, "the chain forgot the redemption");
    // The watcher notices the replaced block and rebuilds; settlement takes the ledger back and redeems again.
    wait_until(Duration::from_secs(20), || {
        gate.watcher().synced() >= block
            && matches!(gate.watcher().lookup(&channel), mlbridge_node::payment::watcher::Lookup::Confirmed(v) if v.redeemed.is_zero())
    })
    .await;
    let again = settler.settle_now().await.unwrap();
    assert_eq!(again.transactions.len(), 1, "{again:?}");
    assert_eq!(redeemed(&chain, channel).await, U256::from(4 * PRICE), "paid again, exactly the best voucher");
    let text = metrics_text(&node).await;
    assert_eq!(metric(&text, "mlbridge_redemptions_undone_total"), 1.0);
}

/// At shutdown the node still sends the answers it is computing (a paid one is what the client paid for) and turns
/// new requests away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_flight_are_sent_at_shutdown() {
    let node = start_node(|c| c.p2p.simulated_latency_ms = 600).await;
    let c = client(&node, Strategy::RoundRobin).await;
    c.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
    let target = peer(&node);
    let in_flight = {
        let c = c.clone();
        tokio::spawn(async move { c.send_to(target, request(None)).await })
    };
    // Received, still "computing" (the node's simulated latency is 600 ms).
    wait_metric(&node, "mlbridge_p2p_inflight", Duration::from_secs(20), |n| n == 1.0).await;
    node.shutdown.cancel();
    let answer = in_flight.await.unwrap().unwrap();
    assert!(matches!(answer, Response::Infer(_)), "the answer in flight was sent: {answer:?}");
}

/// A paid HTTP job cut off by the request timeout (408) holds nothing afterwards: the client is not charged for a
/// job it got no answer to, and its voucher's credit stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_paid_http_job_costs_nothing() {
    use mlbridge_node::api::pay::{VOUCHER_HEADER, voucher_header};
    let chain = Chain::start().await;
    let ledger = tempfile::tempdir().unwrap();
    let node = start_node(|c| {
        paid(c, &chain, &chain.url(), 1, ledger.path());
        c.http.request_timeout_secs = 0.05;
    })
    .await;
    let channel = open_raw(&chain, 3, chain.key(1).address(), 100_000 * PRICE).await;
    wait_confirmed(&node, channel).await;
    let price: u128 = node.engine.config("minilm-l6", Some(1)).unwrap().price_wei.into();
    // 32 sequences of 256 tokens through the fp32 model: far more than 50 ms on these cores.
    let ids: Vec<i64> = (0..32 * 256).map(|i| 1000 + (i % 5000) as i64).collect();
    let body = serde_json::json!({ "inputs": [
        { "name": "input_ids", "shape": [32, 256], "datatype": "INT64", "data": ids },
        { "name": "attention_mask", "shape": [32, 256], "datatype": "INT64", "data": vec![1; 32 * 256] },
    ]});
    let v = voucher(&chain.key(3), &chain, channel, 32 * price);
    let resp = reqwest::Client::new()
        .post(url(&node, "/v2/models/minilm-l6/versions/1/infer"))
        .header(VOUCHER_HEADER, voucher_header(&v))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 408);
    let gate = node.payments.as_ref().unwrap().gate().clone();
    wait_until(Duration::from_secs(10), || gate.in_flight(&channel).is_zero()).await;
    assert_eq!(gate.ledger().job_count(), 0, "no job recorded");
    let entry = gate.entries().unwrap().into_iter().find(|e| e.channel_id == channel);
    assert!(entry.is_none_or(|e| e.charged.is_zero()), "nothing charged");
}
