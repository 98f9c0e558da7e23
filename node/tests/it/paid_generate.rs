//! Paid text generation on real anvil, real libp2p and the real SmolLM2 decoder: per-token charging over a payment
//! channel (p2p through the SDK's payer, HTTP with a voucher header), a cancelled stream charged only for what was
//! produced, receipts that commit to the prompt, the parameters, the seed and the output, and the audit record a
//! validator checks.

use std::time::Duration;

use alloy::primitives::{B256, U256};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_node::server::RunningNode;
use mlbridge_sdk::client::Strategy;
use mlbridge_sdk::generate::{
    GenerateEvent, GeneratePrompt, GenerateRequest, GenerationParams, collect, input_hash, output_hash,
};
use mlbridge_sdk::protocol::{AuditRequest, ModelRef, Request, Response};

use crate::chain::*;
use crate::paid::{client, open_raw, voucher, wait_confirmed};
use crate::support::*;

const MODEL: &str = "smollm2-135m";
/// `[generation]` prices of both versions.
const IN: u128 = 10_000_000_000;
const OUT: u128 = 40_000_000_000;

fn request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        max_tokens: Some(max_tokens),
        seed: Some(7),
        ..GenerateRequest::new(
            ModelRef { name: MODEL.into(), version: None, id: None },
            GeneratePrompt::Text(prompt.into()),
        )
    }
}

fn charged(node: &RunningNode, channel: B256) -> (U256, U256) {
    let gate = node.payments.as_ref().unwrap().gate();
    let entry = gate.entries().unwrap().into_iter().find(|e| e.channel_id == channel);
    (entry.map_or(U256::ZERO, |e| e.charged), gate.in_flight(&channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_are_charged_per_token_over_p2p_and_http() {
    let chain = Chain::start().await;
    let (ledger, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(|c| paid(c, &chain, &chain.url(), 1, ledger.path())).await;
    // Loaded before any request: a first request would wait for the load (seconds on a busy machine) inside its
    // timeout.
    node.engine.generator(MODEL, Some(1)).await.unwrap();
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let c = client(&node, Strategy::LeastOutstanding).await.with_payer(payer.clone());
    let seen = c.wait_for_nodes(MODEL, 1, Duration::from_secs(20)).await.unwrap();
    // A node that charges sells only the version validators can check (the fp32 one), at both per-token prices.
    let sold: Vec<_> = seen[0].models.iter().filter(|m| m.name == MODEL).collect();
    assert_eq!(sold.len(), 1, "{sold:?}");
    assert_eq!(
        (sold[0].version, sold[0].price_wei, sold[0].input_token_price_wei),
        (1, U256::from(OUT), Some(U256::from(IN)))
    );

    // A whole generation: the receipt charges every prompt token and every output token, and commits to them.
    let (peer, events) = c.generate(request("The capital of France is", 8)).await.unwrap();
    let (text, done) = collect(peer, events).await.unwrap();
    assert!(text.contains("Paris"), "{text}");
    let receipt = done.receipt.clone().expect("a paid generation ends with its receipt");
    let prompt = done.prompt_tokens as u128;
    assert_eq!(done.prompt_ids.len() as u128, prompt);
    assert_eq!(done.output.len(), 8);
    assert_eq!(receipt.price, U256::from(prompt * IN + 8 * OUT));
    assert_eq!(receipt.units, U256::from(prompt as u64 + 8));
    assert_eq!(done.model.as_ref().and_then(|m| m.version), Some(1), "a plain name gets the checkable version");
    let params = GenerationParams { max_tokens: 8, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 7, stop: vec![] };
    assert_eq!(receipt.input_hash, input_hash(&done.prompt_ids, &params));
    assert_eq!(receipt.output_hash, output_hash(&done.output, "length"));
    assert!(receipt.verify(&chain.deployment.domain()));
    let channel = receipt.channel_id;
    assert_eq!(charged(&node, channel), (receipt.price, U256::ZERO), "charged what the receipt says; no hold left");
    // The payer counted only what was charged: the rest of the hold is credit again.
    let credit = payer.credit(&channel).unwrap();
    assert_eq!(credit.consumed, receipt.price);
    assert_eq!(credit.in_flight, U256::ZERO);

    // A cancelled stream: the prompt and the tokens produced before the client left, nothing more.
    let mut batches = node.payments.as_ref().unwrap().receipt_signer().batches();
    let (peer, mut events) = c.generate(request("Once upon a time, there was a", 200)).await.unwrap();
    for _ in 0..3 {
        match events.recv().await {
            Some(GenerateEvent::Text(_)) => {}
            other => panic!("the story stream sent {other:?}"),
        }
    }
    drop(events);
    // The SDK cancels the stream and still reads its end: the receipt of what was produced, checked and counted.
    let before = receipt.price;
    wait_until(Duration::from_secs(20), || payer.credit(&channel).is_some_and(|c| c.in_flight.is_zero())).await;
    let gate = node.payments.as_ref().unwrap().gate().clone();
    assert!(gate.in_flight(&channel).is_zero(), "the node holds nothing more");
    let (after, _) = charged(&node, channel);
    let spent = after - before;
    assert_eq!(payer.credit(&channel).unwrap().consumed, after, "the payer counts exactly what the node charged");
    // Its receipt went to the audit record, as `cancelled`, with exactly what was charged.
    node.p2p.as_ref().unwrap().allow_auditor(c.peer_id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let auditor = PrivateKeySigner::random();
    let mut last = None;
    while let Ok(batch) = batches.try_recv() {
        last = batch.receipts.iter().map(|(_, r)| r).find(|r| r.price == spent).map(|r| r.jobId).or(last);
    }
    let last = last.expect("the cancelled generation's receipt was signed");
    let audit = AuditRequest::signed(last, &c.peer_id().to_bytes(), now, &auditor, auditor.address()).unwrap();
    let Response::Audit(record) = c.send_to(peer, Request::Audit(audit)).await.unwrap() else { panic!("a record") };
    let g = record.generation.as_ref().expect("a generation's record");
    assert_eq!(g.finish, "cancelled");
    // The prompt and the tokens produced: at least the 3 pieces received, far fewer than the 200 held.
    assert!(g.output.len() >= 3 && g.output.len() < 60, "{} tokens charged", g.output.len());
    assert_eq!(spent, U256::from(g.prompt.len() as u128 * IN + g.output.len() as u128 * OUT));
    assert_eq!(record.receipt.price, spent);
    assert_eq!(record.receipt.units, U256::from((g.prompt.len() + g.output.len()) as u64));
    assert_eq!(record.receipt.output_hash, g.output_hash());
    assert_eq!(record.receipt.input_hash, g.input_hash());
    // A request that brings no payment is refused before any work.
    let mut unpaid = request("Hello", 4);
    unpaid.voucher = None;
    let free_client = client(&node, Strategy::LeastOutstanding).await;
    free_client.wait_for_nodes(MODEL, 1, Duration::from_secs(20)).await.unwrap();
    let err = free_client.generate(unpaid).await.unwrap_err();
    assert!(
        matches!(&err, mlbridge_sdk::Error::PaymentRefused { refusal, .. } if matches!(**refusal, mlbridge_sdk::protocol::PaymentRefusal::Required { .. })),
        "{err}"
    );
    // So is one naming a channel that cannot pay (unknown here, or one with no credit for this requester).
    let sold = node.engine.generator(MODEL, Some(1)).await.unwrap();
    let tokenized = sold.cached_prompts();
    for named in [B256::repeat_byte(0x42), channel] {
        let mut unpaid = request("A prompt nobody paid for", 4);
        unpaid.channel = Some(named);
        let err = free_client.generate(unpaid).await.unwrap_err();
        assert!(matches!(&err, mlbridge_sdk::Error::PaymentRefused { .. }), "{err}");
    }
    assert_eq!(sold.cached_prompts(), tokenized, "refused before the prompt was tokenized");

    // Over HTTP: a voucher header pays for the most the generation can cost; it is charged for what it produced.
    let http = reqwest::Client::new();
    let key = chain.key(4);
    let ch = open_raw(&chain, 4, chain.key(1).address(), ETHER / 1000).await;
    wait_confirmed(&node, ch).await;
    let body = serde_json::json!({ "model": MODEL, "prompt": "The capital of France is", "max_tokens": 8,
        "temperature": 0, "seed": 7 });
    let send = |amount: Option<u128>, body: serde_json::Value| {
        let mut req = http.post(url(&node, "/v1/completions")).json(&body);
        if let Some(a) = amount {
            req = req
                .header("x-mlbridge-voucher", mlbridge_node::api::pay::voucher_header(&voucher(&key, &chain, ch, a)));
        }
        req.send()
    };
    let resp = send(None, body.clone()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 402, "no voucher: payment required");
    let named = http
        .post(url(&node, "/v1/chat/completions"))
        .header("x-mlbridge-channel", B256::repeat_byte(0x42).to_string())
        .json(&serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": "Hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(named.status().as_u16(), 402, "a channel that cannot pay: payment required");
    let why = named.text().await.unwrap();
    assert!(why.contains("does not exist"), "says why: {why}");
    assert_eq!(sold.cached_prompts(), tokenized, "refused before the prompt was tokenized");
    // The hold is every prompt token and max_tokens output tokens: a voucher for less is refused before any work.
    let most = prompt * IN + 8 * OUT;
    let resp = send(Some(most - 1), body.clone()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 402);
    let resp = send(Some(most), body.clone()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().contains_key("x-mlbridge-receipt"));
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["choices"][0]["text"].as_str().unwrap(), text, "the same text as over p2p (same seed, greedy)");
    assert_eq!(answer["receipt"]["price"], most.to_string());
    assert_eq!(answer["receipt"]["units"], (prompt as u64 + 8).to_string());
    // A stop string ends it early: the hold was for 8 tokens, the charge is for those produced.
    let stopped = serde_json::json!({ "model": MODEL, "prompt": "The capital of France is", "max_tokens": 8,
        "temperature": 0, "seed": 7, "stop": ["."] , "stream": true });
    let resp = send(Some(2 * most), stopped).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let sse = resp.text().await.unwrap();
    let last: serde_json::Value = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .next_back()
        .unwrap();
    let produced = last["usage"]["completion_tokens"].as_u64().unwrap() as u128;
    assert!(produced < 8, "the stop string came before max_tokens ({produced} tokens)");
    assert_eq!(last["receipt"]["price"], (prompt * IN + produced * OUT).to_string(), "the stream's last chunk");
    assert_eq!(charged(&node, ch).0, U256::from(most + prompt * IN + produced * OUT));
    // The INT8 version is served free only: its generations cannot be checked by validators.
    let int8 = serde_json::json!({ "model": "smollm2-135m:2", "prompt": "Hi", "max_tokens": 4 });
    let resp = send(Some(3 * most), int8).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("version 1"));
    node.shutdown.cancel();
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_the_node_cuts_is_charged_for_what_was_delivered_or_not_at_all() {
    let chain = Chain::start().await;
    let (ledger, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(|c| {
        paid(c, &chain, &chain.url(), 1, ledger.path());
        c.http.request_timeout_secs = 4.0;
    })
    .await;
    node.engine.generator(MODEL, Some(1)).await.unwrap();

    // A whole HTTP answer that would outlive the request timeout comes back cut, with its receipt: charged for the
    // prompt and the tokens it carries, the rest of the hold released.
    let http = reqwest::Client::new();
    let key = chain.key(4);
    let ch = open_raw(&chain, 4, chain.key(1).address(), ETHER / 1000).await;
    wait_confirmed(&node, ch).await;
    let send = |amount: u128, body: serde_json::Value| {
        http.post(url(&node, "/v1/completions"))
            .header("x-mlbridge-voucher", mlbridge_node::api::pay::voucher_header(&voucher(&key, &chain, ch, amount)))
            .json(&body)
            .send()
    };
    let warm = serde_json::json!({ "model": MODEL, "prompt": "Hi", "max_tokens": 1, "temperature": 0 });
    let resp = send(ETHER / 10_000, warm).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await.unwrap());
    let (before, _) = charged(&node, ch);
    let long = serde_json::json!({ "model": MODEL, "prompt": "Once upon a time", "max_tokens": 1500,
        "temperature": 0 });
    let resp = send(ETHER / 1000, long).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "cancelled", "{answer}");
    let (prompt, produced) =
        (answer["usage"]["prompt_tokens"].as_u64().unwrap(), answer["usage"]["completion_tokens"].as_u64().unwrap());
    assert!((1..1500).contains(&produced), "{produced} tokens");
    let cost = u128::from(prompt) * IN + u128::from(produced) * OUT;
    assert_eq!(answer["receipt"]["price"], cost.to_string());
    assert_eq!(answer["receipt"]["units"], (prompt + produced).to_string());
    let (after, held) = charged(&node, ch);
    assert_eq!((after - before, held), (U256::from(cost), U256::ZERO), "charged what the answer carries, no more");

    // Over p2p, a node shutting down cuts its generations: the client is told to go elsewhere, nothing is charged,
    // and the payer counts nothing consumed.
    let payer = payer(&chain, 3, store.path(), ETHER).await;
    let c = client(&node, Strategy::LeastOutstanding).await.with_payer(payer.clone());
    c.wait_for_nodes(MODEL, 1, Duration::from_secs(20)).await.unwrap();
    let (peer, events) = c.generate(request("Hello", 4)).await.unwrap();
    let (_, done) = collect(peer, events).await.unwrap();
    let channel = done.receipt.expect("a receipt").channel_id;
    let (before, _) = charged(&node, channel);
    let consumed = payer.credit(&channel).unwrap().consumed;
    let (_, mut events) = c.generate(request("Once upon a time, there was a", 1500)).await.unwrap();
    for _ in 0..2 {
        assert!(matches!(events.recv().await, Some(GenerateEvent::Text(_))));
    }
    node.shutdown.cancel();
    let cut = loop {
        match events.recv().await {
            Some(GenerateEvent::Text(_)) => {}
            Some(GenerateEvent::Error(e)) => break e,
            other => panic!("a generation cut at shutdown ended with {other:?}"),
        }
    };
    assert_eq!(cut.kind, mlbridge_sdk::protocol::ErrorKind::Overloaded, "{}", cut.message);
    assert!(cut.message.contains("nothing was charged"), "{}", cut.message);
    assert_eq!(charged(&node, channel), (before, U256::ZERO), "nothing charged, nothing held");
    wait_until(Duration::from_secs(10), || payer.credit(&channel).is_some_and(|c| c.in_flight.is_zero())).await;
    assert_eq!(payer.credit(&channel).unwrap().consumed, consumed, "the payer counts nothing consumed either");
    node.join().await;
}
