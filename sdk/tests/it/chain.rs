//! The chain layer against real anvil: deployment, EIP-712 both ways, confirmations, reorgs, outages, bad input.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionRequest;
use alloy::rpc::types::anvil::ReorgOptions;
use alloy::signers::local::PrivateKeySigner;
use mlbridge_sdk::Error;
use mlbridge_sdk::chain::bindings::{Disputes, PaymentChannels};
use mlbridge_sdk::chain::{
    ChainMetrics, ConfirmationTracker, ContractRevert, DeployParams, Deployment, SenderConfig, TrackerConfig, TxSender,
    TxState, wait_confirmed,
};
use mlbridge_sdk::protocol::ReceiptMsg;
use mlbridge_sdk::receipt::Receipt;
use mlbridge_sdk::voucher::{SignedVoucher, Voucher};

use crate::support::*;

const ETHER: u128 = 1_000_000_000_000_000_000;

fn fast_tracker(p: DynProvider) -> ConfirmationTracker {
    let config = TrackerConfig {
        poll_interval: Duration::from_millis(50),
        resubmit_after: Duration::from_secs(2),
        max_backoff: Duration::from_millis(800),
        ..TrackerConfig::default()
    };
    ConfirmationTracker::spawn(p, config, None)
}

async fn sender(url: &str, signer: PrivateKeySigner) -> TxSender<DynProvider> {
    let config = SenderConfig { poll_interval: Duration::from_millis(50), ..SenderConfig::default() };
    TxSender::new(provider(url), signer, config, None).await.unwrap()
}

/// Open a channel from `payer` to `payee` through a TxSender; returns the channel id.
async fn open_channel(s: &TxSender<DynProvider>, d: &Deployment, payee: Address, deposit: u128) -> B256 {
    let pc = PaymentChannels::new(d.payment_channels, s.provider().clone());
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 30 * 24 * 3600;
    let tx = pc.open(payee, expiry).value(U256::from(deposit)).into_transaction_request();
    let (_, receipt) = s.send_and_wait("open", tx).await.unwrap();
    let opened = receipt.decoded_log::<PaymentChannels::ChannelOpened>().expect("ChannelOpened event");
    assert_eq!(opened.payee, payee);
    assert_eq!(opened.deposit, U256::from(deposit));
    opened.channelId
}

fn redeem_tx(d: &Deployment, p: &DynProvider, v: &SignedVoucher) -> TransactionRequest {
    PaymentChannels::new(d.payment_channels, p.clone())
        .redeem(v.channel_id, v.cumulative_amount, Bytes::copy_from_slice(&v.signature))
        .into_transaction_request()
}

#[tokio::test]
async fn deploy_open_redeem_and_read_events() {
    let anvil = spawn_anvil(None);
    let d = deploy_all(&anvil).await;
    let p = provider(&anvil.endpoint());
    d.verify(&p).await.unwrap();
    let (payer, node) = (key(&anvil, 1), key(&anvil, 2));
    let payer_tx = sender(&anvil.endpoint(), payer.clone()).await;
    let node_tx = sender(&anvil.endpoint(), node.clone()).await;
    let id = open_channel(&payer_tx, &d, node.address(), 2 * ETHER).await;

    // A voucher signed in Rust: its digest equals the contract's, and the contract accepts the signature.
    let voucher = Voucher::new(id, U256::from(ETHER / 2));
    let pc = PaymentChannels::new(d.payment_channels, p.clone());
    let onchain_digest = pc.voucherDigest(id, U256::from(ETHER / 2)).call().await.unwrap();
    assert_eq!(onchain_digest, voucher.digest(&d.domain()));
    let signed = voucher.sign(&payer, &d.domain()).unwrap();
    let before = p.get_balance(node.address()).await.unwrap();
    let (_, receipt) = node_tx.send_and_wait("redeem", redeem_tx(&d, &p, &signed)).await.unwrap();
    let ev = receipt.decoded_log::<PaymentChannels::Redeemed>().expect("Redeemed event");
    assert_eq!(ev.amount, U256::from(ETHER / 2));
    let batch = receipt.decoded_log::<PaymentChannels::BatchRedeemed>().expect("BatchRedeemed event");
    assert_eq!((batch.payee, batch.channels, batch.amount), (node.address(), U256::from(1u64), ev.amount));
    assert_eq!(batch.fee, U256::from(ETHER / 2 * 500 / 10_000));
    assert!(batch.gasUsed > U256::ZERO);
    let gas_cost = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    let after = p.get_balance(node.address()).await.unwrap();
    assert_eq!(after + gas_cost - before, ev.amount - batch.fee, "payee received amount minus fee");

    // Receipts: the Rust leaf and batch digest equal the contract's, and a node-signed batch of one verifies.
    let r = Receipt {
        jobId: B256::repeat_byte(1),
        modelId: B256::repeat_byte(2),
        inputHash: B256::repeat_byte(3),
        outputHash: B256::repeat_byte(4),
        units: U256::from(3u64),
        price: U256::from(1000u64),
        channelId: B256::repeat_byte(5),
        issuedAt: 1_700_000_000,
    };
    let disputes = Disputes::new(d.disputes, p.clone());
    assert_eq!(disputes.receiptLeaf((&r).into()).call().await.unwrap(), r.leaf());
    let msg = ReceiptMsg::sign_single(&r, node.address(), &node, &d.domain()).unwrap();
    assert!(msg.verify(&d.domain()));
    let b = msg.batch.batch();
    assert_eq!(disputes.batchDigest((&b).into()).call().await.unwrap(), b.digest(&d.domain()));
}

#[tokio::test]
async fn signature_made_by_the_node_software_verifies_in_rust() {
    // The reverse direction: anvil signs typed data (eth_signTypedData_v4) for an unlocked account; Rust recovers it.
    let anvil = spawn_anvil(None);
    let d = deploy_all(&anvil).await;
    let p = provider(&anvil.endpoint());
    let payer = anvil.addresses()[3];
    let channel = B256::repeat_byte(0x42);
    let amount = U256::from(123_456_789u64);
    let typed = serde_json::json!({
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}
            ],
            "Voucher": [{"name": "channelId", "type": "bytes32"}, {"name": "cumulativeAmount", "type": "uint256"}]
        },
        "primaryType": "Voucher",
        "domain": {"name": "MLBridge", "version": "1", "chainId": d.chain_id, "verifyingContract": d.payment_channels},
        "message": {"channelId": channel, "cumulativeAmount": amount.to_string()}
    });
    let sig: Bytes = p.raw_request("eth_signTypedData_v4".into(), (payer, typed)).await.unwrap();
    let signed =
        SignedVoucher { channel_id: channel, cumulative_amount: amount, signature: sig.as_ref().try_into().unwrap() };
    assert_eq!(signed.signer(&d.domain()).unwrap(), payer);
}

#[tokio::test]
async fn confirmed_exactly_at_the_third_block_with_manual_mining() {
    let anvil = spawn_anvil(None);
    let p = provider(&anvil.endpoint());
    p.anvil_set_auto_mine(false).await.unwrap();
    let tracker = fast_tracker(p.clone());
    let mut events = tracker.subscribe();
    let s = sender(&anvil.endpoint(), key(&anvil, 1)).await;
    let tx = TransactionRequest::default().to(anvil.addresses()[5]).value(U256::from(1u64));
    let sent = s.send("transfer", tx).await.unwrap();
    let state = tracker.track_sent(&sent).await.unwrap();

    // Two completed polls after it was tracked (so at least one whole poll saw it), no block mined: still pending.
    let mut polls = tracker.head();
    polls.borrow_and_update();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(3), polls.changed()).await.unwrap().unwrap();
    }
    assert_eq!(*state.borrow(), TxState::Pending, "not mined yet");
    p.anvil_mine(Some(1), None).await.unwrap();
    let b = head(&p).await;
    tracker.wait_head(b).await.unwrap();
    assert!(matches!(*state.borrow(), TxState::Included { block, .. } if block == b), "included in B");
    p.anvil_mine(Some(1), None).await.unwrap(); // head = B + 1: two confirmations
    tracker.wait_head(b + 1).await.unwrap();
    assert!(matches!(*state.borrow(), TxState::Included { .. }), "not confirmed at B + 1");
    p.anvil_mine(Some(1), None).await.unwrap(); // head = B + 2: three confirmations
    let mined_at = Instant::now();
    let confirmed = tokio::time::timeout(Duration::from_secs(1), wait_confirmed(state)).await.unwrap().unwrap();
    assert!(mined_at.elapsed() < Duration::from_secs(1));
    assert!(matches!(confirmed, TxState::Confirmed { block, .. } if block == b));
    // The event stream agrees: Included then Confirmed, and Confirmed only once the head is B + 2.
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        seen.push(ev);
    }
    let conf: Vec<_> = seen.iter().filter(|e| matches!(e.state, TxState::Confirmed { .. })).collect();
    assert_eq!(conf.len(), 1);
    assert_eq!(conf[0].head, b + 2);
}

#[tokio::test]
async fn confirmation_latency_with_one_second_blocks() {
    let anvil = spawn_anvil(Some(1));
    let p = provider(&anvil.endpoint());
    let tracker = fast_tracker(p.clone());
    let mut events = tracker.subscribe();
    // Record when each block first appears (10 ms resolution).
    let (appeared_tx, appeared) = tokio::sync::watch::channel(std::collections::BTreeMap::<u64, Instant>::new());
    let watcher_p = p.clone();
    let watcher = tokio::spawn(async move {
        loop {
            if let Ok(n) = watcher_p.get_block_number().await {
                appeared_tx.send_if_modified(|m| {
                    // A starved watcher may skip numbers: blocks it missed "appeared" now at the latest.
                    let from = m.keys().next_back().map_or(n, |last| last + 1);
                    let mut changed = false;
                    for k in from..=n {
                        if let std::collections::btree_map::Entry::Vacant(v) = m.entry(k) {
                            v.insert(Instant::now());
                            changed = true;
                        }
                    }
                    changed
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let s = std::sync::Arc::new(sender(&anvil.endpoint(), key(&anvil, 1)).await);
    let mut hashes = Vec::new();
    for wave in 0..4 {
        // Six concurrent sends from one key: the sender's nonce management keeps them all valid.
        let sends = (0..6).map(|i| {
            let s = s.clone();
            let to = anvil.addresses()[(wave + i) % 9 + 1];
            async move { s.send("transfer", TransactionRequest::default().to(to).value(U256::from(1u64))).await }
        });
        for sent in futures_join_all(sends).await {
            let sent = sent.unwrap();
            tracker.track_sent(&sent).await.unwrap();
            hashes.push(sent.hash);
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let mut latencies_ms = Vec::new();
    let mut confirmed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while confirmed < hashes.len() && Instant::now() < deadline {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
        if let TxState::Confirmed { block, .. } = ev.state {
            let now = ev.at;
            confirmed += 1;
            // Correctness, from the tracker's own view of the head: never confirmed before the third block.
            assert!(ev.head >= block + 2, "confirmed before the third block");
            // Timing, from the watcher (best effort: a watcher starved by a busy machine sees blocks late).
            let third = appeared.borrow().get(&(block + 2)).copied().unwrap_or(now);
            let ms = now.saturating_duration_since(third).as_secs_f64() * 1e3;
            latencies_ms.push((ev.head - (block + 2), ms));
        }
    }
    watcher.abort();
    assert_eq!(confirmed, 24);
    let mut ms: Vec<f64> = latencies_ms.iter().map(|l| l.1).collect();
    ms.sort_by(f64::total_cmp);
    let extra_blocks = latencies_ms.iter().map(|l| l.0).max().unwrap();
    let median = ms[ms.len() / 2];
    assert!(median < 1000.0, "median detection {median:.0} ms after the third block: over one block time");
    println!(
        "confirmation detection over {} txs: {} extra blocks max; ms after the 3rd block: p50 {:.0}, mean {:.0}, max {:.0}",
        ms.len(),
        extra_blocks,
        ms[ms.len() / 2],
        ms.iter().sum::<f64>() / ms.len() as f64,
        ms[ms.len() - 1]
    );
}

async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test]
async fn reorg_of_a_redemption_is_resubmitted_and_pays_once() {
    let anvil = spawn_anvil(None);
    let d = deploy_all(&anvil).await;
    let p = provider(&anvil.endpoint());
    let (payer, node, relayer) = (key(&anvil, 1), key(&anvil, 2), key(&anvil, 3));
    let id = open_channel(&sender(&anvil.endpoint(), payer.clone()).await, &d, node.address(), ETHER).await;
    p.anvil_set_auto_mine(false).await.unwrap();
    let registry = prometheus::Registry::new();
    let metrics = ChainMetrics::register(&registry).unwrap();
    let tracker = ConfirmationTracker::spawn(
        p.clone(),
        TrackerConfig { poll_interval: Duration::from_millis(50), ..TrackerConfig::default() },
        Some(metrics.clone()),
    );
    let mut events = tracker.subscribe();
    let relay = sender(&anvil.endpoint(), relayer).await;
    let signed = Voucher::new(id, U256::from(ETHER / 4)).sign(&payer, &d.domain()).unwrap();
    let node_before = p.get_balance(node.address()).await.unwrap();
    let sent = relay.send("redeem", redeem_tx(&d, &p, &signed)).await.unwrap();
    let state = tracker.track_sent(&sent).await.unwrap();
    p.anvil_mine(Some(1), None).await.unwrap();
    let b = head(&p).await;
    tracker.wait_head(b).await.unwrap();
    assert!(matches!(*state.borrow(), TxState::Included { block, .. } if block == b));

    // Replace block B with an empty one: the redemption disappears from the chain.
    p.anvil_reorg(ReorgOptions { depth: 1, tx_block_pairs: vec![] }).await.unwrap();
    let reorged = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let ev = events.recv().await.unwrap();
            if matches!(ev.state, TxState::Reorged { .. }) {
                return ev;
            }
        }
    })
    .await
    .expect("the tracker reports the reorg");
    assert_eq!(reorged.hash, sent.hash);
    // Mine until it is confirmed again.
    let confirm = tokio::spawn(wait_confirmed(state));
    for _ in 0..6 {
        // One block at a time, each seen by the tracker (which resubmits the redemption) before the next.
        p.anvil_mine(Some(1), None).await.unwrap();
        let now = head(&p).await;
        tokio::time::timeout(Duration::from_secs(3), tracker.wait_head(now)).await.unwrap().unwrap();
    }
    let final_state = tokio::time::timeout(Duration::from_secs(3), confirm).await.unwrap().unwrap().unwrap();
    assert!(matches!(final_state, TxState::Confirmed { .. }));
    let ch = PaymentChannels::new(d.payment_channels, p.clone()).getChannel(id).call().await.unwrap();
    assert_eq!(U256::from(ch.redeemed), U256::from(ETHER / 4), "redeemed exactly once");
    let fee = U256::from(ETHER / 4 * 500 / 10_000);
    let node_after = p.get_balance(node.address()).await.unwrap();
    assert_eq!(node_after - node_before, U256::from(ETHER / 4) - fee, "the node was paid exactly once");
    assert_eq!(metrics.tx_reorged.with_label_values(&["redeem"]).get(), 1);
    assert_eq!(metrics.tx_confirmed.with_label_values(&["redeem"]).get(), 1);
    assert!(metrics.gas_used.with_label_values(&["redeem"]).get() > 0);
}

#[tokio::test]
async fn rpc_outage_is_survived_without_losing_items() {
    let anvil = spawn_anvil(Some(1));
    let proxy = Proxy::start(anvil_addr(&anvil)).await;
    let registry = prometheus::Registry::new();
    let metrics = ChainMetrics::register(&registry).unwrap();
    let tracker = ConfirmationTracker::spawn(
        provider(&proxy.url()),
        TrackerConfig {
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_millis(800),
            ..TrackerConfig::default()
        },
        Some(metrics.clone()),
    );
    let s = sender(&anvil.endpoint(), key(&anvil, 1)).await;
    let sent = s
        .send("transfer", TransactionRequest::default().to(anvil.addresses()[4]).value(U256::from(7u64)))
        .await
        .unwrap();
    let state = tracker.track_sent(&sent).await.unwrap();
    proxy.set_down(true);
    // Blocks go on (enough to confirm it) while the tracker cannot see them.
    let cut_at = head(&provider(&anvil.endpoint())).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while metrics.rpc_errors.get() < 2 || head(&provider(&anvil.endpoint())).await < cut_at + 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("anvil mines on and the tracker's polls fail");
    assert!(!matches!(*state.borrow(), TxState::Confirmed { .. }));
    proxy.set_down(false);
    let confirmed = tokio::time::timeout(Duration::from_secs(5), wait_confirmed(state)).await.unwrap().unwrap();
    assert!(matches!(confirmed, TxState::Confirmed { .. }), "recovered and confirmed: {confirmed:?}");
}

#[tokio::test]
async fn bad_deployments_keys_and_vouchers_give_typed_errors() {
    let anvil = spawn_anvil(None);
    let d = deploy_all(&anvil).await;
    let p = provider(&anvil.endpoint());

    let nowhere = Deployment { staking: Address::repeat_byte(0x11), ..d };
    let err = nowhere.verify(&p).await.unwrap_err();
    assert!(matches!(err, Error::NoContractAt { name: "Staking", .. }), "{err}");
    let wrong_chain = Deployment { chain_id: 1, ..d };
    let err = wrong_chain.verify(&p).await.unwrap_err();
    assert!(matches!(err, Error::ChainIdMismatch { expected: 1, actual: 31337 }), "{err}");
    let err = Deployment::load(std::path::Path::new("/nonexistent/31337.json")).unwrap_err();
    assert!(matches!(err, Error::DeploymentFile { .. }), "{err}");

    let broke = PrivateKeySigner::random();
    let s = sender(&anvil.endpoint(), broke.clone()).await;
    let err = s
        .send("transfer", TransactionRequest::default().to(anvil.addresses()[1]).value(U256::from(1u64)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsufficientFunds { address, .. } if address == broke.address()), "{err}");
    assert!(err.to_string().contains(&broke.address().to_string()), "{err}");

    // A voucher over the deposit is refused at estimation with the decoded contract error.
    let (payer, node) = (key(&anvil, 1), key(&anvil, 2));
    let id = open_channel(&sender(&anvil.endpoint(), payer.clone()).await, &d, node.address(), ETHER / 100).await;
    let too_much = Voucher::new(id, U256::from(ETHER / 50)).sign(&payer, &d.domain()).unwrap();
    let err = sender(&anvil.endpoint(), node).await.send("redeem", redeem_tx(&d, &p, &too_much)).await.unwrap_err();
    let Error::Contract(ContractRevert::PaymentChannels(inner)) = &err else { panic!("not a contract error: {err}") };
    assert!(matches!(inner, PaymentChannels::PaymentChannelsErrors::ChannelInsufficientDeposit(_)));
    let msg = err.to_string();
    assert!(msg.contains("0.010000000000000000 ETH deposited") && msg.contains("top up"), "{msg}");
}

#[tokio::test]
async fn a_stuck_transaction_is_replaced_with_higher_fees() {
    let anvil = spawn_anvil(None);
    let p = provider(&anvil.endpoint());
    p.anvil_set_auto_mine(false).await.unwrap();
    let config = SenderConfig {
        poll_interval: Duration::from_millis(50),
        bump_after: Duration::from_millis(400),
        ..SenderConfig::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = ChainMetrics::register(&registry).unwrap();
    let s = std::sync::Arc::new(TxSender::new(p.clone(), key(&anvil, 1), config, Some(metrics.clone())).await.unwrap());
    let s2 = s.clone();
    let to = anvil.addresses()[6];
    let waiting = tokio::spawn(async move {
        s2.send_and_wait("transfer", TransactionRequest::default().to(to).value(U256::from(5u64))).await
    });
    // Nothing is mined until the sender has bumped at least once.
    tokio::time::timeout(Duration::from_secs(5), async {
        while metrics.tx_sent.with_label_values(&["transfer"]).get() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the sender bumps a transaction that is not mined");
    p.anvil_mine(Some(1), None).await.unwrap();
    let (sent, receipt) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(sent.nonce, 0);
    assert_eq!(receipt.transaction_hash, sent.hash);
    assert_eq!(alloy::primitives::keccak256(&sent.raw), sent.hash, "the raw bytes returned are the mined version's");
    // It was sent at least twice (original + bump), the mined version is a replacement paying more.
    assert!(metrics.tx_sent.with_label_values(&["transfer"]).get() >= 2, "no bump happened");
    let first_max_fee = s.provider().estimate_eip1559_fees().await.unwrap().max_fee_per_gas;
    assert!(sent.request.max_fee_per_gas.unwrap() > first_max_fee, "the mined version pays more than the market");
    // Exactly one transfer happened (same nonce, replaced), and the account's nonce moved by one.
    assert_eq!(p.get_transaction_count(key(&anvil, 1).address()).await.unwrap(), 1);
    assert!(receipt.effective_gas_price > 0);
}

#[tokio::test]
async fn a_transaction_mined_before_tracking_started_is_confirmed() {
    let anvil = spawn_anvil(None);
    let p = provider(&anvil.endpoint());
    let s = sender(&anvil.endpoint(), key(&anvil, 1)).await;
    let (sent, receipt) = s
        .send_and_wait("transfer", TransactionRequest::default().to(anvil.addresses()[2]).value(U256::from(1u64)))
        .await
        .unwrap();
    p.anvil_mine(Some(5), None).await.unwrap();
    // Someone else's transaction (no raw bytes), mined 5 blocks before the tracker ever saw the chain.
    let tracker = fast_tracker(p.clone());
    let state = tracker.track(sent.hash, None, "foreign").await.unwrap();
    let confirmed = tokio::time::timeout(Duration::from_secs(3), wait_confirmed(state)).await.unwrap().unwrap();
    assert!(matches!(confirmed, TxState::Confirmed { block, .. } if Some(block) == receipt.block_number));
}

/// The Rust Merkle tree and batch signature are what `Disputes` verifies: a node signs a 64-receipt batch in Rust,
/// a validator commits and reveals a challenge of one leaf through the bindings, and the contract opens the dispute;
/// a proof for another leaf, or a batch signed by another key, is refused on-chain as in Rust.
#[tokio::test]
async fn a_challenge_of_a_leaf_from_a_64_receipt_batch_opens_a_dispute_on_anvil() {
    use alloy::sol_types::SolCall;
    use mlbridge_sdk::chain::bindings::Staking;
    use mlbridge_sdk::protocol::BatchMsg;
    use mlbridge_sdk::receipt::{MerkleTree, ReceiptBatch};

    let anvil = spawn_anvil(None);
    // A short stake age (the default is a day of blocks; mining that many takes a minute).
    let params = DeployParams { min_stake_age_blocks: U256::from(5u64), ..DeployParams::default() };
    let d = mlbridge_sdk::chain::deploy(&wallet_provider(&anvil.endpoint(), key(&anvil, 0)), &params).await.unwrap();
    let (node, validator) = (key(&anvil, 2), key(&anvil, 4));
    let node_p = wallet_provider(&anvil.endpoint(), node.clone());
    let val_p = wallet_provider(&anvil.endpoint(), validator.clone());
    let staking_node = Staking::new(d.staking, node_p.clone());
    staking_node
        .registerNode(Bytes::from_static(b"12D3KooW"), "ipfs://n".into())
        .value(U256::from(10 * ETHER))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    Staking::new(d.staking, val_p.clone())
        .registerValidator()
        .value(U256::from(3 * ETHER))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    // Stake votes (and challenges) once it is MIN_STAKE_AGE_BLOCKS old.
    provider(&anvil.endpoint()).anvil_mine(Some(6), None).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let receipts: Vec<Receipt> = (0..64u8)
        .map(|i| Receipt {
            jobId: B256::repeat_byte(i),
            modelId: B256::repeat_byte(0xaa),
            inputHash: B256::repeat_byte(i ^ 0x55),
            outputHash: B256::repeat_byte(i ^ 0x33),
            units: U256::from(1u64),
            price: U256::from(1000u64),
            channelId: B256::repeat_byte(7),
            issuedAt: now,
        })
        .collect();
    let tree = MerkleTree::new(receipts.iter().map(Receipt::leaf).collect()).unwrap();
    let batch = ReceiptBatch { root: tree.root(), node: node.address(), count: U256::from(64u64), issuedAt: now };
    let signature = batch.sign(&node, &d.domain()).unwrap();
    let msg = ReceiptMsg::new(&receipts[41], tree.proof(41), BatchMsg::new(&batch, signature));
    assert_eq!(msg.proof.len(), 6);
    assert!(msg.verify(&d.domain()), "the SDK accepts it");

    let disputes = Disputes::new(d.disputes, val_p.clone());
    let evidence = ReceiptMsg::evidence;
    let ours = B256::repeat_byte(0xee);
    let salt = B256::repeat_byte(0x5a);
    let commitment = disputes
        .commitmentOf(validator.address(), node.address(), receipts[41].leaf(), ours, salt)
        .call()
        .await
        .unwrap();
    disputes.commit(commitment).send().await.unwrap().get_receipt().await.unwrap();
    // A reveal must come in a later block than its commitment (automine mines each transaction on its own).
    provider(&anvil.endpoint()).anvil_mine(Some(1), None).await.unwrap();
    let bond = disputes.requiredBond(node.address()).call().await.unwrap();
    assert_eq!(bond, U256::from(ETHER / 2), "10% of the 5 ether slash sought");

    // Refusals first (simulated calls): another leaf's proof, a batch signed by another key.
    let mut wrong_proof = msg.clone();
    wrong_proof.proof = tree.proof(40);
    let err = disputes.challenge(evidence(&wrong_proof), ours, salt).value(bond).call().await.unwrap_err();
    let decoded = err.as_decoded_interface_error::<Disputes::DisputesErrors>();
    assert!(matches!(decoded, Some(Disputes::DisputesErrors::DisputeInvalidProof(_))), "{err}");
    let mut forged = msg.clone();
    forged.batch.signature = batch.sign(&key(&anvil, 5), &d.domain()).unwrap();
    assert!(!forged.verify(&d.domain()), "the SDK refuses it too");
    let err = disputes.challenge(evidence(&forged), ours, salt).value(bond).call().await.unwrap_err();
    let decoded = err.as_decoded_interface_error::<Disputes::DisputesErrors>();
    assert!(matches!(decoded, Some(Disputes::DisputesErrors::DisputeInvalidReceiptSignature(_))), "{err}");

    let receipt = disputes.challenge(evidence(&msg), ours, salt).value(bond).send().await.unwrap().get_receipt().await;
    let receipt = receipt.unwrap();
    assert!(receipt.status());
    let opened = receipt.decoded_log::<Disputes::DisputeOpened>().expect("DisputeOpened");
    assert_eq!(opened.node, node.address());
    assert_eq!(opened.receiptLeaf, receipts[41].leaf());
    assert_eq!(opened.slashTarget, U256::from(5 * ETHER));
    println!(
        "challenge (64-leaf proof) gas: {} (calldata {} bytes)",
        receipt.gas_used,
        Disputes::challengeCall { evidence: evidence(&msg), challengerOutputHash: ours, salt }.abi_encode().len()
    );
    assert!(Staking::new(d.staking, node_p).isActiveNode(node.address()).call().await.unwrap());
}

/// The last of a deposit is spent on jobs, never stranded: once the deposit is all signed, the credit still pays for
/// the jobs it covers (an early top-up that the deposit cannot make is skipped), and only then does the payer stop.
#[tokio::test]
async fn the_whole_deposit_pays_for_jobs_without_an_early_top_up_past_it() {
    use mlbridge_sdk::payment::{Payer, PayerConfig, PaymentPolicy};
    let anvil = spawn_anvil(None);
    let deployment = deploy_all(&anvil).await;
    let store = tempfile::tempdir().unwrap();
    let price = U256::from(1_000u64);
    let config = PayerConfig {
        rpc_url: anvil.endpoint(),
        deployment,
        store: store.path().to_owned(),
        policy: PaymentPolicy { max_spend: U256::ZERO, ..PaymentPolicy::default() },
        confirmations: 1,
        poll_interval: std::time::Duration::from_millis(50),
    };
    let payer = Payer::connect(key(&anvil, 3), config).await.unwrap();
    let payee = key(&anvil, 1).address();
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 86_400;
    payer.open_channel(payee, price * U256::from(10u64), expiry, &mut |_| {}).await.unwrap();
    let mut vouchers = Vec::new();
    for job in 0..10 {
        let payment = payer.pay(payee, price).await.unwrap_or_else(|e| panic!("job {job} of a 10-job deposit: {e}"));
        vouchers.extend(payment.voucher.as_ref().map(|v| v.cumulative_amount));
        payer.answered(&payment);
    }
    assert_eq!(vouchers.last(), Some(&(price * U256::from(10u64))), "the whole deposit signed, nothing more");
    assert!(vouchers.windows(2).all(|w| w[0] < w[1]));
    let over = payer.pay(payee, price).await.unwrap_err();
    assert!(over.to_string().contains("spend"), "the 11th job needs more deposit: {over}");
}
