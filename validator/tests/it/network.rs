//! The validator on a live network: honest nodes earn validators their share of fees; a cheating node is caught
//! and slashed; a lying validator loses its bond; bad input never becomes a dispute.

use std::time::Duration;

use alloy::primitives::{B256, U256};
use mlbridge_sdk::chain::bindings::{Disputes, ValidatorRewards};
use mlbridge_sdk::client::{Client, ClientConfig};
use mlbridge_sdk::net::NetConfig;
use mlbridge_sdk::protocol::{
    AuditRecord, AuditRequest, ErrorKind, RECEIPTS_TOPIC, ReceiptBatchGossip, ReceiptMsg, Request, Response,
    WIRE_VERSION, encode, tensors_hash,
};
use mlbridge_sdk::{Tensor, TensorData};
use mlbridge_validator::RunningValidator;
use mlbridge_validator::reexec::{Reexecutor, Rejected};

use crate::support::*;

fn total(v: &RunningValidator, name: &str) -> f64 {
    v.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every sampled receipt has been audited and judged (or refused).
fn settled(v: &RunningValidator) -> bool {
    let done = total(v, "mlbridge_validator_jobs_checked_total")
        + total(v, "mlbridge_validator_records_rejected_total")
        + total(v, "mlbridge_validator_audit_refusals_total")
        + total(v, "mlbridge_validator_samples_dropped_total");
    done >= metric(v, "mlbridge_validator_receipts_sampled_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_network_validators_sample_attest_and_earn_pro_rata() {
    let chain = Chain::start().await;
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let fast_settle = |c: &mut mlbridge_node::config::NodeConfig| {
        c.payment.settle_interval_secs = 1.0;
        c.payment.settle_gas_multiple = 0;
    };
    // Node a also serves localhost free, with its cache on: the dashboard check below needs a cache hit.
    let a = paid_node(&chain, 1, dirs[0].path(), vec![], |c| {
        fast_settle(c);
        c.cache.enabled = true;
        c.payment.free_localhost = true;
    })
    .await;
    let b = paid_node(&chain, 2, dirs[1].path(), addrs(&a).await, fast_settle).await;
    chain.register_node(1, &a).await;
    chain.register_node(2, &b).await;
    chain.register_validator(4, 2 * ETHER).await;
    chain.register_validator(5, 6 * ETHER).await;
    let boot = [addrs(&a).await, addrs(&b).await].concat();
    let sampled = |c: &mut mlbridge_validator::config::ValidatorConfig| c.sampling.rate = 0.1;
    let v4 = validator(&chain, 4, dirs[2].path(), boot.clone(), sampled).await;
    let v5 = validator(&chain, 5, dirs[3].path(), [boot.clone(), validator_addrs(&v4).await].concat(), sampled).await;
    let client = paying_client(&chain, 3, dirs[4].path(), boot.clone()).await;
    assert_eq!(client.wait_for_nodes("mlp-tiny", 2, Duration::from_secs(20)).await.unwrap().len(), 2);
    // Validators' stake must be bonded through a whole epoch before their attestations count.
    chain.wait_blocks(2 * EPOCH).await;

    // 500 paid jobs over several epochs.
    let price = U256::from(a.engine.config("mlp-tiny", Some(2)).unwrap().price_wei);
    let mut jobs = 0u64;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for t in 0..4 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let seed = (round * 100 + t * 25 + i) as f32 / 500.0;
                    let out = c.infer("mlp-tiny", Some(2), input(seed)).await.unwrap();
                    assert!(out.response.receipt.is_some());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        jobs += 100;
        chain.wait_blocks(EPOCH / 2).await;
    }
    for n in [&a, &b] {
        n.payments.as_ref().unwrap().settler().settle_now().await.unwrap();
    }
    wait_until_async(Duration::from_secs(60), async || settled(&v4) && settled(&v5)).await;
    for v in [&v4, &v5] {
        let seen = metric(v, "mlbridge_validator_receipts_seen_total");
        let share = metric(v, "mlbridge_validator_receipts_sampled_total") / seen;
        println!("validator {}: {seen} receipts seen, {:.1}% sampled", v.address, share * 100.0);
        assert!(seen >= 0.9 * jobs as f64, "receipts reach the validators: {seen} of {jobs}");
        assert!((0.05..=0.16).contains(&share), "about the configured 10%: {share}");
        assert!(metric(v, "mlbridge_validator_jobs_checked_total{verdict=\"agree\"}") > 10.0);
        assert_eq!(metric(v, "mlbridge_validator_jobs_checked_total{verdict=\"mismatch\"}"), 0.0);
        assert_eq!(metric(v, "mlbridge_validator_disputes_opened_total"), 0.0);
        assert_eq!(total(v, "mlbridge_validator_receipts_rejected_total"), 0.0, "honest receipts are admitted");
    }

    // Every fee ends up with the two validators, pro rata to stake (2 : 6), within rounding.
    let rewards = ValidatorRewards::new(chain.deployment.validator_rewards, chain.provider());
    let (e4, e5) = (v4.address, v5.address);
    wait_until_async(Duration::from_secs(90), async || {
        let t = rewards.totals().call().await.unwrap();
        let unallocated = rewards.unallocatedFees().call().await.unwrap();
        let pending =
            rewards.pendingRewards(e4).call().await.unwrap() + rewards.pendingRewards(e5).call().await.unwrap();
        !t.received.is_zero()
            && unallocated.is_zero()
            && pending.is_zero()
            && t.received - t.claimed < U256::from(1000u64)
    })
    .await;
    let t = rewards.totals().call().await.unwrap();
    let fee = |x: U256| x * U256::from(500u64) / U256::from(10_000u64);
    // Each node redeemed the client's highest voucher on its channel (the answered jobs plus at most one credit
    // window paid ahead), one redemption per node: the fee is taken on each.
    let channels = client.payer().unwrap().store().list();
    assert_eq!(channels.len(), 2, "one channel per node");
    let redeemed: Vec<U256> = channels.iter().map(|c| c.signed).collect();
    assert!(redeemed.iter().sum::<U256>() >= price * U256::from(jobs), "every paid job was paid");
    let fees: U256 = redeemed.into_iter().map(fee).sum();
    assert_eq!(t.received, fees, "fees of every redemption reached ValidatorRewards");
    let earned4 = rewards.totalEarned(e4).call().await.unwrap();
    let earned5 = rewards.totalEarned(e5).call().await.unwrap();
    assert_eq!(earned4 + earned5, t.claimed);
    let skew = (earned4 * U256::from(3u64)).abs_diff(earned5);
    assert!(skew <= U256::from(1000u64), "pro rata to stake 2:6 within rounding: {earned4} vs {earned5}");
    assert!(metric(&v4, "mlbridge_validator_attestations_total") >= 2.0);
    assert!(metric(&v4, "mlbridge_validator_earned_wei") > 0.0 || !earned4.is_zero());
    println!("fees {} wei: validator 2 ETH earned {earned4}, validator 6 ETH earned {earned5}", t.received);

    // Every metric the Grafana dashboard and the alert rules use is one a node or a validator exports (after a
    // cache hit and a refused payment, so that every family has a sample).
    let http = reqwest::Client::new();
    let infer = format!("http://{}/v2/models/mlp-tiny/versions/2/infer", a.http_addr);
    let body = serde_json::json!({ "inputs": [{ "name": "input", "shape": [1, 256], "datatype": "FP32",
        "data": vec![0.25f32; 256] }] });
    for _ in 0..2 {
        assert_eq!(http.post(&infer).json(&body).send().await.unwrap().status().as_u16(), 200, "free for localhost");
    }
    let forwarded = http.post(&infer).header("x-forwarded-for", "203.0.113.9").json(&body).send().await.unwrap();
    assert_eq!(forwarded.status().as_u16(), 402);
    let node_metrics = http.get(format!("http://{}/metrics", a.metrics_addr)).send().await.unwrap();
    let exported = format!("{}\n{}", node_metrics.text().await.unwrap(), v4.metrics.render());
    let used = deployed_metric_names();
    assert!(used.len() > 30, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(&format!("# TYPE {m} "))).collect();
    assert!(missing.is_empty(), "used by deploy/ but not exported: {missing:?}");
    v4.stop().await;
    v5.stop().await;
}

/// The metric families `deploy/grafana/*.json` and `deploy/prometheus/*.yml` name (histogram series by family).
fn deployed_metric_names() -> std::collections::BTreeSet<String> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut names = std::collections::BTreeSet::new();
    for dir in ["grafana", "prometheus"] {
        for file in std::fs::read_dir(deploy.join(dir)).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("mlbridge_") || word.starts_with("process_") {
                    let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| word.strip_suffix(s));
                    names.insert(family.unwrap_or(word).to_owned());
                }
            }
        }
    }
    names
}

/// A dispute's id once `challenger` opened one (from the contract).
async fn first_dispute(chain: &Chain) -> Disputes::Dispute {
    let d = Disputes::new(chain.deployment.disputes, chain.provider());
    wait_until_async(Duration::from_secs(90), async || !d.disputeCount().call().await.unwrap().is_zero()).await;
    d.getDispute(U256::ZERO).call().await.unwrap()
}

/// Skip past the voting deadline, then wait for the validators to resolve and claim.
async fn resolved(chain: &Chain, voter: &RunningValidator) -> Disputes::Dispute {
    let d = Disputes::new(chain.deployment.disputes, chain.provider());
    wait_until_async(Duration::from_secs(60), async || {
        !d.voteOf(U256::ZERO, voter.address).call().await.unwrap().weight.is_zero()
    })
    .await;
    chain.skip(VOTING + 1).await;
    wait_until_async(Duration::from_secs(60), async || d.getDispute(U256::ZERO).call().await.unwrap().outcome != 0)
        .await;
    d.getDispute(U256::ZERO).call().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheating_node_is_caught_challenged_and_slashed() {
    cheat_is_slashed("mlp-tiny", 2, input(0.3), "mlbridge/disputes/1").await;
}

/// An image job's record (a 1x3x224x224 input, ~600 KB) is larger than one gossip message: the challenger sends it
/// in parts signed by its key, and the voter judges on the assembled evidence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheat_on_an_image_is_challenged_with_evidence_in_parts() {
    let pixels = (0..3 * 224 * 224).map(|i| ((i % 251) as f32 / 251.0) - 0.5).collect();
    let image = vec![Tensor::new("x", vec![1, 3, 224, 224], TensorData::Fp32(pixels)).unwrap()];
    cheat_is_slashed("orientation", 1, image, "mlbridge/disputes/parts/1").await;
}

/// A job on an encoded photo (the file as sent, a UINT8 row the node decodes and preprocesses) is checked the same
/// way: the validators run the same decoding, so a node that corrupts its answer is slashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cheat_on_an_encoded_photo_is_caught_and_slashed() {
    let lib = models_root().join("../.venv/lib");
    let photo = std::fs::read_dir(&lib)
        .unwrap()
        .map(|d| d.unwrap().path().join("site-packages/skimage/data/chelsea.png"))
        .find(|p| p.is_file())
        .expect("scikit-image's sample photos; run scripts/setup");
    let image = vec![mlbridge_sdk::protocol::image_tensor(std::fs::read(photo).unwrap())];
    cheat_is_slashed("mobilenet-v2", 1, image, "mlbridge/disputes/parts/1").await;
}

/// A node that corrupts its outputs is caught by a validator checking everything, challenged with the evidence
/// gossiped on `evidence_topic`, voted against by a validator that judges only that evidence, and slashed.
async fn cheat_is_slashed(model: &str, version: u64, inputs: Vec<Tensor>, evidence_topic: &str) {
    let chain = Chain::start().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let cheat = paid_node(&chain, 1, dirs[0].path(), vec![], |c| c.payment.testing_corrupt_outputs = 0.5).await;
    chain.register_node(1, &cheat).await;
    chain.register_validator(4, 2 * ETHER).await;
    chain.register_validator(5, 6 * ETHER).await;
    let boot = addrs(&cheat).await;
    // The challenger checks everything; the voter checks nothing itself, it only votes.
    let challenger = validator(&chain, 4, dirs[1].path(), boot.clone(), |c| c.sampling.rate = 1.0).await;
    let voter_boot = [boot.clone(), validator_addrs(&challenger).await].concat();
    // It waits for the challenger's gossiped evidence (instead of auditing the node after 2 s), so the vote below
    // shows the evidence travelled over mlbridge/disputes/1.
    let voter = validator(&chain, 5, dirs[2].path(), voter_boot, |c| {
        c.sampling.rate = 0.0;
        c.duties.evidence_wait_secs = 30.0;
    })
    .await;
    chain.wait_blocks(10).await; // stake older than MIN_STAKE_AGE_BLOCKS
    let client = paying_client(&chain, 3, dirs[3].path(), boot).await;
    client.wait_for_nodes(model, 1, Duration::from_secs(20)).await.unwrap();
    let stake_before = chain.staking().stakeOf(cheat_addr(&chain)).call().await.unwrap();
    let out = client.infer(model, Some(version), inputs).await.unwrap();
    let receipt = out.response.receipt.unwrap();

    let dispute = first_dispute(&chain).await;
    assert_eq!(dispute.node, cheat_addr(&chain));
    assert_eq!(dispute.challenger, challenger.address);
    assert_eq!(dispute.receiptLeaf, receipt.receipt().leaf());
    let done = resolved(&chain, &voter).await;
    assert_eq!(done.outcome, 1, "the node was slashed");
    assert_eq!(done.slashed, dispute.slashTarget);
    let stake_after = chain.staking().stakeOf(cheat_addr(&chain)).call().await.unwrap();
    assert_eq!(stake_before - stake_after, dispute.slashTarget, "the stake drops by SLASH_BPS of the bonded stake");
    // The challenger gets its bond and reward back, the voter its share of the pool.
    let d = Disputes::new(chain.deployment.disputes, chain.provider());
    wait_until_async(Duration::from_secs(60), async || {
        d.creditOf(challenger.address).call().await.unwrap().is_zero()
            && d.voteOf(U256::ZERO, voter.address).call().await.unwrap().claimed
            && d.owed().call().await.unwrap() <= U256::from(10u64)
    })
    .await;
    // The daemons count what they did once their transactions are confirmed.
    wait_until_async(Duration::from_secs(30), async || {
        metric(&challenger, "mlbridge_validator_disputes_resolved_total{result=\"won\"}") == 1.0
            && metric(&voter, "mlbridge_validator_claimed_wei_total") > 0.0
            && metric(&challenger, "mlbridge_validator_claimed_wei_total") > 0.0
    })
    .await;
    assert_eq!(metric(&challenger, "mlbridge_validator_jobs_checked_total{verdict=\"mismatch\"}"), 1.0);
    assert_eq!(metric(&voter, "mlbridge_validator_votes_total{side=\"node_wrong\"}"), 1.0);
    assert_eq!(metric(&voter, "mlbridge_validator_vote_records_total{source=\"gossip\"}"), 1.0, "judged on evidence");
    let parts = metric(&voter, "mlbridge_validator_gossip_messages_total{topic=\"mlbridge/disputes/parts/1\"}");
    let whole = metric(&voter, "mlbridge_validator_gossip_messages_total{topic=\"mlbridge/disputes/1\"}");
    if evidence_topic == "mlbridge/disputes/parts/1" {
        assert!(parts > 1.0 && whole == 0.0, "the evidence came in parts ({parts} parts, {whole} whole)");
    } else {
        assert!(whole >= 1.0 && parts == 0.0, "the evidence came whole ({parts} parts, {whole} whole)");
    }
    assert!(metric(&challenger, "mlbridge_validator_claimed_wei_total") > 0.0);
    assert!(metric(&voter, "mlbridge_validator_claimed_wei_total") > 0.0);
    challenger.stop().await;
    voter.stop().await;
}

fn cheat_addr(chain: &Chain) -> alloy::primitives::Address {
    address(chain, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_validator_loses_its_bond_and_the_node_keeps_its_stake() {
    let chain = Chain::start().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let node = paid_node(&chain, 1, dirs[0].path(), vec![], |_| {}).await;
    chain.register_node(1, &node).await;
    chain.register_validator(4, 2 * ETHER).await;
    chain.register_validator(5, 6 * ETHER).await;
    let boot = addrs(&node).await;
    let liar = validator(&chain, 4, dirs[1].path(), boot.clone(), |c| {
        c.sampling.rate = 1.0;
        c.testing_challenge_honest = true;
    })
    .await;
    let voter_boot = [boot.clone(), validator_addrs(&liar).await].concat();
    let voter = validator(&chain, 5, dirs[2].path(), voter_boot, |c| c.sampling.rate = 0.0).await;
    chain.wait_blocks(10).await;
    let client = paying_client(&chain, 3, dirs[3].path(), boot).await;
    client.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
    let stake_before = chain.staking().stakeOf(address(&chain, 1)).call().await.unwrap();
    client.infer("mlp-tiny", Some(2), input(0.6)).await.unwrap();

    let dispute = first_dispute(&chain).await;
    assert_eq!(dispute.challenger, liar.address);
    let done = resolved(&chain, &voter).await;
    assert_eq!(done.outcome, 2, "the challenger lost");
    assert_eq!(done.voterPool, dispute.bond, "the liar's bond goes to the node's voters");
    assert_eq!(
        chain.staking().stakeOf(address(&chain, 1)).call().await.unwrap(),
        stake_before,
        "the node keeps its stake"
    );
    let d = Disputes::new(chain.deployment.disputes, chain.provider());
    wait_until_async(Duration::from_secs(60), async || {
        d.voteOf(U256::ZERO, voter.address).call().await.unwrap().claimed
    })
    .await;
    wait_until_async(Duration::from_secs(30), async || {
        metric(&liar, "mlbridge_validator_disputes_resolved_total{result=\"lost\"}") == 1.0
            && metric(&voter, "mlbridge_validator_claimed_wei_total") > 0.0
    })
    .await;
    assert_eq!(metric(&voter, "mlbridge_validator_votes_total{side=\"node_right\"}"), 1.0);
    assert_eq!(metric(&liar, "mlbridge_validator_disputes_resolved_total{result=\"lost\"}"), 1.0);
    assert_eq!(
        metric(&voter, "mlbridge_validator_claimed_wei_total"),
        f64::from(dispute.bond),
        "the voter got the bond"
    );
    liar.stop().await;
    voter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_counted_never_disputed() {
    let chain = Chain::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let node = paid_node(&chain, 1, dirs[0].path(), vec![], |_| {}).await;
    chain.register_node(1, &node).await;
    chain.register_validator(4, 2 * ETHER).await;
    let boot = addrs(&node).await;
    // This validator holds only mlp-tiny: MiniLM receipts are for a model it does not have.
    let only_mlp = tempfile::tempdir().unwrap();
    for v in ["1", "2"] {
        let (src, dst) = (models_root().join("mlp-tiny").join(v), only_mlp.path().join("mlp-tiny").join(v));
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(src.join("config.toml"), dst.join("config.toml")).unwrap();
        std::os::unix::fs::symlink(src.join("model.onnx"), dst.join("model.onnx")).unwrap();
    }
    let repo = only_mlp.path().to_owned();
    let v = validator(&chain, 4, dirs[1].path(), boot.clone(), move |c| {
        c.sampling.rate = 1.0;
        c.model_repository = repo;
    })
    .await;
    let client = paying_client(&chain, 3, dirs[2].path(), boot.clone()).await;
    client.wait_for_nodes("mlp-tiny", 1, Duration::from_secs(20)).await.unwrap();
    let real = client.infer("mlp-tiny", Some(2), input(0.1)).await.unwrap().response.receipt.unwrap();
    client.embed("minilm-l6", Some(2), vec!["a text".into()]).await.unwrap();
    wait_until_async(Duration::from_secs(30), async || {
        metric(&v, "mlbridge_validator_receipts_rejected_total{reason=\"unknown_model\"}") == 1.0
            && metric(&v, "mlbridge_validator_jobs_checked_total{verdict=\"agree\"}") == 1.0
    })
    .await;

    // An attacker peer gossips forged receipts: signed by an unregistered key, tampered, and a real receipt
    // replayed (relaying is allowed, but a receipt already seen is never sampled or audited again).
    let bootstrap: Vec<libp2p::Multiaddr> =
        [boot.clone(), validator_addrs(&v).await].concat().iter().map(|a| a.parse().unwrap()).collect();
    let peer = || {
        let net = NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: bootstrap.clone(),
            mdns: false,
            heartbeat: std::time::Duration::from_millis(200),
            ..NetConfig::default()
        };
        Client::start(ClientConfig { net, topics: vec![RECEIPTS_TOPIC.into()], ..ClientConfig::default() }).unwrap()
    };
    let domain = chain.deployment.domain();
    let stranger = alloy::signers::local::PrivateKeySigner::random();
    let mut forged = ReceiptMsg::sign_single(&real.receipt(), stranger.address(), &stranger, &domain).unwrap();
    forged.job_id = B256::repeat_byte(1);
    let forged = ReceiptMsg::sign_single(&forged.receipt(), stranger.address(), &stranger, &domain).unwrap();
    let mut tampered = real.clone();
    tampered.price = U256::from(1u64);
    // One attacker peer per forgery: a rejected receipt costs the peer that sent it its gossip score, so the
    // validator would soon ignore a second one from the same peer.
    let sampled = metric(&v, "mlbridge_validator_receipts_sampled_total");
    // Receipts travel by batch: each as the gossip of its batch of one (the node signed `real` alone).
    assert_eq!(real.batch.count, 1, "a lone job is signed as a batch of one");
    let gossip = |r: &ReceiptMsg| ReceiptBatchGossip {
        version: WIRE_VERSION,
        batch: r.batch.clone(),
        // The tampered receipt keeps the real batch, whose leaf is the real receipt's.
        leaves: vec![if r.node() == real.node() { real.receipt().leaf() } else { r.receipt().leaf() }],
        first: 0,
        receipts: vec![r.clone()],
    };
    for (msg, reason) in [(&forged, "unregistered_node"), (&tampered, "signature"), (&real, "duplicate")] {
        let attacker = peer();
        let data = encode(&gossip(msg));
        // Published once the attacker is in the receipts mesh.
        wait_until_async(Duration::from_secs(20), async || {
            attacker.publish(RECEIPTS_TOPIC, data.clone()).await.is_ok()
        })
        .await;
        let label = format!("mlbridge_validator_receipts_rejected_total{{reason=\"{reason}\"}}");
        wait_until_async(Duration::from_secs(20), async || metric(&v, &label) >= 1.0).await;
    }
    // Each refusal above was counted before sampling (a refused receipt never reaches the draw), so the sampled
    // count read after the last refusal shows whether any of them was drawn.
    assert_eq!(metric(&v, "mlbridge_validator_receipts_sampled_total"), sampled, "no forgery or replay was sampled");
    let attacker = peer();

    // Audit records that do not hash to their receipt are refused before any re-execution.
    let rx = Reexecutor::open(&models_root(), None).await.unwrap();
    let record = AuditRecord {
        version: 1,
        receipt: real.clone(),
        model: mlbridge_sdk::protocol::ModelRef { name: "mlp-tiny".into(), version: Some(2), id: None },
        inputs: input(0.1),
        texts: vec![],
        outputs: vec![],
        generation: None,
    };
    assert_eq!(rx.check(&real, &record).await, Err(Rejected::OutputHash), "outputs missing");
    let mut other_input = record.clone();
    other_input.inputs = input(0.2);
    assert_eq!(rx.check(&real, &other_input).await, Err(Rejected::InputHash));
    let mut unknown = record.clone();
    let mut r = real.clone();
    r.model_id = B256::repeat_byte(3);
    unknown.receipt = r.clone();
    assert_eq!(rx.check(&r, &unknown).await, Err(Rejected::UnknownModel(B256::repeat_byte(3))));
    assert_eq!(rx.check(&forged, &record).await, Err(Rejected::WrongReceipt));
    assert_ne!(tensors_hash(&[]), real.output_hash);

    // An unstaked key asking the node for an audit gets a typed refusal.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let req =
        AuditRequest::signed(real.job_id, &attacker.peer_id().to_bytes(), now, &stranger, stranger.address()).unwrap();
    let node_peer = node.p2p.as_ref().unwrap().peer_id();
    match attacker.send_to(node_peer, Request::Audit(req)).await.unwrap() {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Forbidden);
            assert!(e.message.contains("not an active validator"), "{}", e.message);
        }
        other => panic!("an unstaked peer got {other:?}"),
    }
    assert_eq!(metric(&v, "mlbridge_validator_disputes_opened_total"), 0.0, "bad input never becomes a dispute");
    assert_eq!(metric(&v, "mlbridge_validator_jobs_checked_total{verdict=\"mismatch\"}"), 0.0);
    let d = Disputes::new(chain.deployment.disputes, chain.provider());
    assert!(d.disputeCount().call().await.unwrap().is_zero());
    v.stop().await;
}
