//! Text generation on the real SmolLM2 INT8 decoder with the real ONNX Runtime: the scheduler against a plain
//! recompute-everything loop, continuous batching, seeds, cancellation, KV-full admission, and the OpenAI endpoints'
//! answers and SSE streams.

use std::sync::Arc;
use std::time::Duration;

use mlbridge_node::generate::decoder::Row;
use mlbridge_node::generate::{Completion, Event, FinishReason, GenerateRequest, Generator, KvCache, Sampling};
use mlbridge_node::inference::{Engine, EngineOptions, ModelRepository, OnnxRuntime};
use mlbridge_node::metrics::NodeMetrics;
use serde_json::{Value, json};

use crate::support::{repo_with, start_node, url};

const MODEL: &str = "smollm2-135m";

/// The fp32 decoder: its incremental decoding matches a whole-sequence pass to about 1e-5 in the logits. The INT8
/// one (version 2) does not once sequences grow: fp32 attention sums that differ in the last bit flip some per-token
/// INT8 roundings, and the flips cascade through the blocks (measured: logits apart by 1-5 after 7 steps), so tests
/// that compare token sequences across batch shapes use version 1.
const EXACT: u64 = 1;

async fn generator(
    edit: impl Fn(&str) -> String,
    queue_capacity: usize,
) -> (tempfile::TempDir, Engine, Arc<Generator>) {
    generator_version(2, edit, queue_capacity).await
}

async fn generator_version(
    version: u64,
    edit: impl Fn(&str) -> String,
    queue_capacity: usize,
) -> (tempfile::TempDir, Engine, Arc<Generator>) {
    let repo = repo_with(&[(MODEL, version)], edit);
    let runtime = OnnxRuntime::init(None).expect("ONNX Runtime (run scripts/setup)");
    let options = EngineOptions { queue_capacity, ..EngineOptions::default() };
    let engine =
        Engine::start(runtime, ModelRepository::open(repo.path()).unwrap(), None, NodeMetrics::new().unwrap(), options)
            .await
            .unwrap();
    let generator = engine.generator(MODEL, None).await.unwrap();
    (repo, engine, generator)
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt, max_tokens, sampling: Sampling::GREEDY, stop: Vec::new() }
}

async fn finish(mut rx: tokio::sync::mpsc::Receiver<Event>) -> (String, Completion) {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { text: t, .. } => text.push_str(&t),
            Event::Done(c) => return (text, c),
        }
    }
    panic!("the generation ended without its completion");
}

/// The reference: greedy decoding that recomputes the whole sequence each step (no KV cache reuse, batch 1).
fn plain_greedy(g: &Generator, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut cache = KvCache::new(g.decoder().shape(), seq.len());
        let logits = g.decoder().step(&mut [Row { tokens: &seq, cache: &mut cache, logits_at: vec![seq.len() - 1] }]);
        let t = mlbridge_node::generate::sampling::argmax(&logits.unwrap()[0]);
        out.push(t);
        seq.push(t);
        if g.generation().stop_token_ids.contains(&t) {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_generation_equals_a_plain_loop_and_names_paris() {
    let (_repo, _engine, g) = generator_version(EXACT, str::to_owned, 16).await;
    let prompt = g.tokenizer().encode("The capital of France is").unwrap();
    let (text, done) = finish(g.submit(greedy(prompt.clone(), 12)).unwrap()).await;
    let g2 = g.clone();
    let reference = tokio::task::spawn_blocking(move || plain_greedy(&g2, &prompt, 12)).await.unwrap();
    assert_eq!(done.output, reference, "scheduler vs recompute-everything loop");
    assert_eq!(done.finish, FinishReason::Length);
    assert_eq!(done.prompt_tokens, 5);
    assert!(text.starts_with(" Paris"), "{text:?}");
    assert_eq!(text, g.tokenizer().decode(&done.output), "streamed pieces add up to the decoded output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_batching_gives_every_sequence_the_tokens_it_gets_alone() {
    let (_repo, engine, g) = generator_version(EXACT, str::to_owned, 16).await;
    let prompts =
        ["Once upon a time", "The three primary colors are red, blue and", "def add(a, b):", "Paris is the capital of"];
    let sampled = Sampling { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 1234 };
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerateRequest {
            prompt: g.tokenizer().encode(p).unwrap(),
            max_tokens: 6 + 3 * i,
            sampling: if i == 1 { sampled } else { Sampling::GREEDY },
            stop: Vec::new(),
        })
        .collect();
    let mut alone = Vec::new();
    for r in &requests {
        alone.push(finish(g.submit(r.clone()).unwrap()).await.1.output);
    }
    // All at once: they share decoding steps, join at different lengths and leave at different times.
    let before = decode_calls(&engine);
    let receivers: Vec<_> = requests.iter().map(|r| g.submit(r.clone()).unwrap()).collect();
    let mut together = Vec::new();
    for rx in receivers {
        together.push(finish(rx).await.1.output);
    }
    assert_eq!(together, alone);
    let one_group = decode_calls(&engine) - before;
    drop((g, engine));
    // With KV room for 96 tokens the four (at most 24 tokens each, a step pads each to 33) fit one call only two at
    // a time: they are stepped in groups that take turns, each with its own gathering buffers, and still get the
    // same tokens.
    let tight = |c: &str| {
        c.replace("kv_budget_tokens = 16384", "kv_budget_tokens = 96").replace("max_context = 2048", "max_context = 96")
    };
    let (_repo, engine, g) = generator_version(EXACT, tight, 16).await;
    let receivers: Vec<_> = requests.iter().map(|r| g.submit(r.clone()).unwrap()).collect();
    let mut grouped = Vec::new();
    for rx in receivers {
        grouped.push(finish(rx).await.1.output);
    }
    assert_eq!(grouped, alone);
    // The longest takes 14 decoding steps; in groups, the steps while three or four run take two calls each.
    let calls = decode_calls(&engine);
    assert!(calls >= one_group + 4, "{calls} decoding calls in groups vs {one_group} in one");
}

/// Decoding calls the engine's SmolLM2 (version 1) has made.
fn decode_calls(engine: &Engine) -> u64 {
    engine
        .metrics()
        .generation_step_seconds
        .with_label_values(&[&format!("{MODEL}/{EXACT}"), "decode"])
        .get_sample_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_reproduces_a_sampled_generation_and_stop_strings_end_it() {
    let (_repo, _engine, g) = generator(str::to_owned, 16).await;
    let prompt = g.tokenizer().encode("My favourite animal is").unwrap();
    let req = |seed| GenerateRequest {
        prompt: prompt.clone(),
        max_tokens: 16,
        sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed },
        stop: Vec::new(),
    };
    let a = finish(g.submit(req(42)).unwrap()).await;
    let b = finish(g.submit(req(42)).unwrap()).await;
    let c = finish(g.submit(req(43)).unwrap()).await;
    assert_eq!(a.1.output, b.1.output);
    assert_eq!(a.0, b.0);
    assert_ne!(a.1.output, c.1.output, "another seed, another text");
    // A stop string taken from the greedy text ends the generation just before it.
    let full = finish(g.submit(greedy(prompt.clone(), 16)).unwrap()).await.0;
    let cut = full.char_indices().nth(full.chars().count() / 2).map_or(0, |(i, _)| i);
    let stop: String = full[cut..].chars().take(3).collect();
    let before = &full[..full.find(&stop).unwrap()];
    let stopped = finish(g.submit(GenerateRequest { stop: vec![stop.clone()], ..greedy(prompt, 16) }).unwrap()).await;
    assert_eq!(stopped.0, before, "text up to the stop string {stop:?}");
    assert_eq!(stopped.1.finish, FinishReason::Stop);
}

/// KV room for 256 tokens (one long sequence at a time), and at most 256 per request.
fn small_kv(config: &str) -> String {
    config
        .replace("kv_budget_tokens = 16384", "kv_budget_tokens = 256")
        .replace("max_context = 2048", "max_context = 256")
}

/// A generator with [`small_kv`] whose memory a 240-token story holds (it is running: it sent its first token), the
/// story's prompt and its events.
async fn story_holding_the_memory()
-> (tempfile::TempDir, Engine, Arc<Generator>, Vec<u32>, tokio::sync::mpsc::Receiver<Event>) {
    let (repo, engine, g) = generator(small_kv, 16).await;
    let prompt = g.tokenizer().encode("Tell me a long story about a dragon.").unwrap();
    let mut first = g.submit(greedy(prompt.clone(), 240)).unwrap();
    assert!(matches!(first.recv().await, Some(Event::Token { .. })));
    (repo, engine, g, prompt, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sequence_frees_its_memory_for_the_next() {
    let (_repo, engine, g, prompt, first) = story_holding_the_memory().await;
    let second = g.submit(greedy(prompt.clone(), 8)).unwrap();
    // It waits: the first holds the memory.
    let waited = tokio::time::timeout(Duration::from_millis(500), finish(second)).await;
    assert!(waited.is_err(), "the second ran while the first held all the KV memory");
    drop(waited);
    let second = g.submit(greedy(prompt, 8)).unwrap();
    drop(first); // the client goes away
    let (_, done) = finish(second).await;
    assert_eq!(done.output.len(), 8);
    // The first stopped when its client left: without the cancel it would have made all 240 tokens before the
    // second could start.
    let generated = engine.metrics().generated_tokens.with_label_values(&["smollm2-135m/2"]).get();
    assert!(generated < 240, "{generated} tokens generated: the cancelled sequence ran on");
}

/// Events until the end: the tokens' ids and the completion.
async fn drain(rx: &mut tokio::sync::mpsc::Receiver<Event>) -> (Vec<u32>, Completion) {
    let mut ids = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.expect("the end came in time") {
            Some(Event::Token { id, .. }) => ids.push(id),
            Some(Event::Done(c)) => return (ids, c),
            None => panic!("the generation ended without its completion"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_the_sequence_with_everything_it_produced() {
    let (_repo, _engine, g, prompt, first) = story_holding_the_memory().await;
    // Cancelled while it waits for memory: it ends at once, with nothing produced (and nothing to charge).
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut waiting = g.submit_cancellable(greedy(prompt.clone(), 8), cancel.clone()).unwrap();
    cancel.cancel();
    let (ids, done) = drain(&mut waiting).await;
    assert_eq!(done.finish, FinishReason::Cancelled);
    assert!(ids.is_empty() && done.output.is_empty(), "a sequence that never ran produced {:?}", done.output);
    drop(first);

    // Cancelled mid-stream: the end still comes and holds every token sent, the one being made included.
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut story = g.submit_cancellable(greedy(prompt.clone(), 200), cancel.clone()).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match story.recv().await {
            Some(Event::Token { id, .. }) => seen.push(id),
            other => panic!("the story sent {other:?}"),
        }
    }
    cancel.cancel();
    let (more, done) = drain(&mut story).await;
    seen.extend(more);
    assert_eq!(done.finish, FinishReason::Cancelled);
    assert_eq!(done.output, seen, "the end counts exactly the tokens sent");
    assert!(seen.len() < 20, "{} tokens after the cancel: it ran on", seen.len());

    // Cancelled once its prefill began: the prompt's work is not free, its first token is in the end.
    let long: Vec<u32> = prompt.iter().copied().cycle().take(240).collect();
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut prefilled = g.submit_watched(greedy(long, 8), cancel.clone(), started.clone()).unwrap();
    let polled = tokio::time::timeout(Duration::from_secs(30), async {
        while !started.load(std::sync::atomic::Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    polled.await.expect("the sequence's prefill began");
    cancel.cancel();
    let (ids, done) = drain(&mut prefilled).await;
    // (Cancelled, or ended on its own first: either way with what it produced.)
    assert!(!done.output.is_empty(), "a sequence cancelled once its prefill began ended with no token");
    assert_eq!(done.output, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_context_or_the_queue_are_refused() {
    let (_repo, _engine, g) = generator(small_kv, 1).await;
    let prompt = g.tokenizer().encode("Hello there").unwrap();
    let err = g.submit(greedy(prompt.clone(), 300)).unwrap_err().to_string();
    assert!(err.contains("context of 256"), "{err}");
    assert!(g.submit(greedy(vec![60_000], 4)).unwrap_err().to_string().contains("outside the vocabulary"));
    let _running = g.submit(greedy(prompt.clone(), 240)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _waiting = g.submit(greedy(prompt.clone(), 200)).unwrap();
    let full = g.submit(greedy(prompt, 200)).unwrap_err();
    assert!(matches!(full, mlbridge_node::Error::GenerationFull { .. }), "{full}");
}

/// Parse a server-sent event stream: the JSON of every `data:` line, and whether it ended with `[DONE]`.
fn parse_sse(body: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        assert!(!done, "an event after [DONE]: {block:?}");
        let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        if block.lines().all(|l| l.starts_with(':')) {
            continue; // keep-alive comment
        }
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad event {block:?}: {e}")));
        }
    }
    (events, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_answer_that_would_outlive_the_request_timeout_comes_back_cut() {
    let repo = repo_with(&[(MODEL, 2)], str::to_owned);
    let node = start_node(|c| {
        c.model_repository = repo.path().to_owned();
        c.http.request_timeout_secs = 3.0;
    })
    .await;
    node.engine.generator(MODEL, Some(2)).await.unwrap();
    // Far more tokens than 3 s make: the answer is cut before the timeout would drop it (a 408, and text a paying
    // client would be charged for without ever seeing it), and comes with what was produced.
    let http = reqwest::Client::new();
    // (A first request warms the session up.)
    let warm = json!({ "model": MODEL, "prompt": "Hi", "max_tokens": 1 });
    assert_eq!(http.post(url(&node, "/v1/completions")).json(&warm).send().await.unwrap().status(), 200);
    let body = json!({ "model": MODEL, "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0 });
    let resp = http.post(url(&node, "/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "cancelled", "{answer}");
    let produced = answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..1500).contains(&produced), "{produced} tokens");
    assert!(!answer["choices"][0]["text"].as_str().unwrap().is_empty());
    // A request whose body takes more than half the timeout to arrive is refused before any work (its cut would
    // come too soon for its prefill): the clock starts when the request's head arrives.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({ "model": MODEL, "prompt": "Once upon a time", "max_tokens": 8 }).to_string();
    let mut s = tokio::net::TcpStream::connect(node.http_addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    s.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_800)).await;
    s.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("half the request timeout"), "{answer}");
    node.shutdown.cancel();
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_endpoints_answer_and_stream_the_same_text() {
    let repo = repo_with(&[(MODEL, 2), ("mlp-tiny", 2)], str::to_owned);
    let node = start_node(|c| c.model_repository = repo.path().to_owned()).await;
    let http = reqwest::Client::new();
    let chat = json!({
        "model": MODEL, "temperature": 0, "max_tokens": 24,
        "messages": [{ "role": "user", "content": "What is the capital of France?" }],
    });
    let whole: Value =
        http.post(url(&node, "/v1/chat/completions")).json(&chat).send().await.unwrap().json().await.unwrap();
    assert_eq!(whole["object"], "chat.completion");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(text.contains("Paris"), "{whole}");
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let resp = http.post(url(&node, "/v1/chat/completions")).json(&streamed).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (events, done) = parse_sse(&resp.text().await.unwrap());
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let id = events[0]["id"].clone();
    assert!(events.iter().all(|e| e["id"] == id && e["object"] == "chat.completion.chunk"));
    let joined: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(joined, text, "streamed pieces equal the whole answer");
    let last = events.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
    assert_eq!(last["usage"], whole["usage"]);

    let completion = json!({ "model": format!("{MODEL}:2"), "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0 });
    let (status, body) = crate::support::post(&node, "/v1/completions", &completion).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["choices"][0]["text"].as_str().unwrap().starts_with(" Paris"), "{body}");

    // Refusals: another kind of model, unknown parameters' values, a prompt beyond the context.
    let (status, body) =
        crate::support::post(&node, "/v1/completions", &json!({ "model": "mlp-tiny", "prompt": "x" })).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) =
        crate::support::post(&node, "/v1/completions", &json!({ "model": MODEL, "prompt": "x", "n": 2 })).await;
    assert_eq!(status, 400);
    let (status, _) =
        crate::support::post(&node, "/v1/completions", &json!({ "model": MODEL, "prompt": "x", "temperature": 3 }))
            .await;
    assert_eq!(status, 400);
    let (status, _) =
        crate::support::post(&node, "/v1/completions", &json!({ "model": MODEL, "prompt": "x", "max_tokens": 4096 }))
            .await;
    assert_eq!(status, 400);
    // The largest max_tokens a client can write must not wrap around the context check.
    let huge = json!({ "model": MODEL, "prompt": "x", "max_tokens": u64::MAX });
    let (status, _) = crate::support::post(&node, "/v1/completions", &huge).await;
    assert_eq!(status, 400);
    let small = json!({ "model": MODEL, "prompt": "x", "max_tokens": 2 });
    let (status, _) = crate::support::post(&node, "/v1/completions", &small).await;
    assert_eq!(status, 200, "the node still generates");
    let (status, _) = crate::support::post(&node, "/v2/models/smollm2-135m/infer", &json!({ "inputs": [] })).await;
    assert_eq!(status, 400, "tensor inference on a decoder is refused with a pointer to the right endpoint");
    let (_, models) = crate::support::get(&node, "/v1/models").await;
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == MODEL && m["task"] == "text-generation"));
    node.shutdown.cancel();
    node.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_streams_over_libp2p_and_a_closed_stream_cancels_and_counts_against_the_peer() {
    use mlbridge_sdk::generate::{GenerateEvent, GeneratePrompt, GenerateRequest as Wire, collect};
    use mlbridge_sdk::protocol::ModelRef;
    // KV room for 256 tokens: the dragon story (about 210 reserved) and the second request (61) cannot run together.
    let repo = repo_with(&[(MODEL, 2)], small_kv);
    // Two requests in flight per peer: a generation is one from its stream's opening to its end.
    let node = start_node(|c| {
        c.model_repository = repo.path().to_owned();
        c.p2p.max_inbound_per_peer = 2;
    })
    .await;
    let client = crate::support::client_with_timeout(
        &node,
        mlbridge_sdk::client::Strategy::LeastOutstanding,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(client.wait_for_nodes(MODEL, 1, Duration::from_secs(20)).await.unwrap().len(), 1, "advertised");
    let wire = |prompt: &str, max_tokens: u32| Wire {
        max_tokens: Some(max_tokens),
        ..Wire::new(ModelRef { name: MODEL.into(), version: None, id: None }, GeneratePrompt::Text(prompt.into()))
    };
    let (peer, events) = client.generate(wire("The capital of France is", 8)).await.unwrap();
    let (text, done) = collect(peer, events).await.unwrap();
    let http = json!({ "model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0 });
    let (_, body) = crate::support::post(&node, "/v1/completions", &http).await;
    assert_eq!(text, body["choices"][0]["text"], "the same greedy text over p2p and HTTP");
    assert_eq!(done.output.len(), 8);
    assert_eq!(done.finish, "length");

    // A refusal arrives as a typed error (a bad request is not tried on another node).
    let mut bad = wire("x", 8);
    bad.temperature = 5.0;
    let err = client.generate(bad).await.unwrap_err();
    assert!(
        matches!(&err, mlbridge_sdk::Error::Remote { kind: mlbridge_sdk::protocol::ErrorKind::BadInput, message, .. } if message.contains("temperature")),
        "{err}"
    );

    // Closing the stream (dropping the receiver) stops the generation. (Two in flight at most: the refused one's
    // admission goes just after its answer.)
    let metrics = node.engine.metrics().clone();
    crate::support::wait_until(Duration::from_secs(10), || metrics.p2p_inflight.get() == 0).await;
    let (_, mut events) = client.generate(wire("Tell me a long story about a dragon.", 200)).await.unwrap();
    assert!(matches!(events.recv().await, Some(GenerateEvent::Text(_))));
    drop(events);
    // This one waits for the story's memory: without the cancel it would start only after all 200 tokens.
    let (peer, events) = client.generate(wire("Hello", 60)).await.unwrap();
    let (_, done) = collect(peer, events).await.unwrap();
    let generated = node.engine.metrics().generated_tokens.with_label_values(&["smollm2-135m/2"]).get();
    let story = generated - 8 - done.output.len() as u64;
    assert!(story < 40, "the closed stream's story made {story} tokens: its generation ran on");

    // A third generation while two run (both fit the KV budget) is turned away as overload, not queued behind them
    // (once the streams above have let go of their admissions, which they do just after their ends).
    crate::support::wait_until(Duration::from_secs(10), || metrics.p2p_inflight.get() == 0).await;
    let (_, mut a) = client.generate(wire("Hello", 100)).await.unwrap();
    let (_, mut b) = client.generate(wire("Hi", 100)).await.unwrap();
    assert!(
        matches!(a.recv().await, Some(GenerateEvent::Text(_)))
            && matches!(b.recv().await, Some(GenerateEvent::Text(_)))
    );
    let err = client.generate(wire("Hey", 4)).await.unwrap_err();
    assert!(
        matches!(&err, mlbridge_sdk::Error::Remote { kind: mlbridge_sdk::protocol::ErrorKind::Overloaded, message, .. } if message.contains("in flight")),
        "{err}"
    );
    drop((a, b));
    node.shutdown.cancel();
    node.join().await;
}
