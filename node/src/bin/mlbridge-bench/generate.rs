//! `scripts/bench generate`: text generation over the node's OpenAI HTTP API against a plain greedy loop over the
//! same ONNX file (batch 1, no server), in one run: time to first token for prompts of 32 and 256 tokens, decoding
//! speed of one stream, aggregate tokens per second at 8 and 32 concurrent streams, INT8 against fp32.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mlbridge_node::generate::decoder::{Logits, Row};
use mlbridge_node::generate::sampling::argmax;
use mlbridge_node::generate::{Decoder, KvCache};
use mlbridge_node::inference::{ModelRepository, OnnxRuntime};
use serde_json::{Value, json};

use crate::scenarios::node;

const MODEL: &str = "smollm2-135m";
/// Output tokens per stream in the decoding measurements.
const DECODE_TOKENS: usize = 64;
/// Requests per time-to-first-token row.
const TTFT_REQUESTS: usize = 12;

/// Token ids of a prompt of `n` tokens (ordinary words of the vocabulary; the same every run).
fn prompt_ids(n: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| 300 + ((i * 7919 + salt * 104_729) % 20_000) as u32).collect()
}

/// Decode tokens per second of a plain greedy loop (prefill excluded) after a `prompt`-token prompt, batch 1 (the
/// prompt the one-stream runs send).
fn reference(decoder: &Decoder, prompt: usize, tokens: usize) -> Result<f64> {
    Ok(plain_loop(decoder, &[0], prompt, tokens)?.0)
}

/// A plain greedy loop over one sequence per prompt salt in `salts`, decoded together (one step per token for all
/// of them): decode tokens/s of all of them and the average step in ms. What the decoder does with no server.
fn plain_loop(decoder: &Decoder, salts: &[usize], prompt: usize, tokens: usize) -> Result<(f64, f64)> {
    let prompts: Vec<Vec<u32>> = salts.iter().map(|&salt| prompt_ids(prompt, salt)).collect();
    let mut caches: Vec<KvCache> = salts.iter().map(|_| KvCache::new(decoder.shape(), prompt + tokens + 1)).collect();
    let mut logits = Logits::default();
    let mut batch: Vec<Row<'_>> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(ids, cache)| Row { tokens: ids, cache, logits_at: vec![prompt - 1] })
        .collect();
    decoder.step_into(&mut batch, &mut logits)?;
    drop(batch);
    let mut next: Vec<[u32; 1]> = (0..salts.len()).map(|i| [argmax(logits.row(i))]).collect();
    let started = Instant::now();
    for _ in 0..tokens {
        let mut batch: Vec<Row<'_>> =
            next.iter().zip(caches.iter_mut()).map(|(t, cache)| Row { tokens: t, cache, logits_at: vec![0] }).collect();
        decoder.step_into(&mut batch, &mut logits)?;
        next = (0..salts.len()).map(|i| [argmax(logits.row(i))]).collect();
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(((salts.len() * tokens) as f64 / secs, 1e3 * secs / tokens as f64))
}

/// What one streamed request saw.
struct Streamed {
    first: Duration,
    last: Duration,
    tokens: usize,
}

/// How requests reach the node.
enum Via {
    /// The OpenAI HTTP API (`/v1/completions`, SSE).
    Http(reqwest::Client, String),
    /// `/mlbridge/generate/1` through the SDK client.
    P2p(Box<mlbridge_sdk::client::Client>),
}

impl Via {
    fn name(&self) -> &'static str {
        match self {
            Self::Http(..) => "HTTP",
            Self::P2p(_) => "p2p",
        }
    }
}

/// Stream one completion (sampled at temperature 0.8, so that streams rarely end early); times are from sending.
async fn stream(via: &Via, prompt: Vec<u32>, max_tokens: usize, seed: u64) -> Result<Streamed> {
    match via {
        Via::Http(http, url) => stream_http(http, url, prompt, max_tokens, seed).await,
        Via::P2p(client) => {
            use mlbridge_sdk::generate::{GenerateEvent, GeneratePrompt, GenerateRequest};
            let model = mlbridge_sdk::protocol::ModelRef { name: MODEL.into(), version: Some(2), id: None };
            let request = GenerateRequest {
                max_tokens: Some(max_tokens as u32),
                temperature: 0.8,
                seed: Some(seed),
                ..GenerateRequest::new(model, GeneratePrompt::Ids(prompt))
            };
            let started = Instant::now();
            let (_, mut events) = client.generate(request).await?;
            let (mut first, mut last) = (None, Duration::ZERO);
            while let Some(event) = events.recv().await {
                match event {
                    GenerateEvent::Text(t) if !t.is_empty() => {
                        first.get_or_insert(started.elapsed());
                        last = started.elapsed();
                    }
                    GenerateEvent::Text(_) => {}
                    GenerateEvent::Done(d) => {
                        let first = first.context("the stream sent no text")?;
                        return Ok(Streamed { first, last, tokens: d.output.len() });
                    }
                    GenerateEvent::Error(e) => bail!("the node refused: {}", e.message),
                }
            }
            bail!("the generation stream ended early")
        }
    }
}

async fn stream_http(
    http: &reqwest::Client,
    url: &str,
    prompt: Vec<u32>,
    max_tokens: usize,
    seed: u64,
) -> Result<Streamed> {
    let body = json!({
        "model": format!("{MODEL}:2"), "prompt": prompt, "max_tokens": max_tokens, "stream": true,
        "temperature": 0.8, "seed": seed, "stream_options": { "include_usage": true },
    });
    let started = Instant::now();
    let mut resp = http.post(url).json(&body).send().await?;
    if !resp.status().is_success() {
        bail!("HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    let (mut first, mut last, mut tokens) = (None, Duration::ZERO, 0);
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).context("an SSE event that is not JSON")?;
            if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                first.get_or_insert(started.elapsed());
                last = started.elapsed();
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            }
        }
    }
    let first = first.context("the stream sent no text")?;
    Ok(Streamed { first, last, tokens })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) async fn generate(repo: &Path) -> Result<()> {
    println!("## Text generation ({MODEL}, 2 cores, load generator in the same process)\n");
    // The reference: a plain greedy loop over the same files, batch 1, no server.
    let runtime = OnnxRuntime::init(None)?;
    let repository = ModelRepository::open(repo)?;
    let mut decoders = Vec::new();
    for version in [2u64, 1] {
        let config = repository.config(MODEL, Some(version))?.clone();
        let bytes = repository.read_verified(&config)?;
        let rt = runtime.clone();
        let decoder = tokio::task::spawn_blocking(move || -> Result<Decoder> {
            let decoder = Decoder::from_bytes(&rt, &config, &bytes)?;
            reference(&decoder, 32, DECODE_TOKENS)?; // warm-up (ONNX Runtime sizes its buffers on the first runs)
            Ok(decoder)
        })
        .await??;
        decoders.push(std::sync::Arc::new(decoder));
    }
    // The machine's speed drifts by 10-20% within a run: the reference and one stream through the node are measured
    // alternately, three times each, and their medians compared (the fp32 reference likewise against the INT8 one).
    let measure = |decoder: &std::sync::Arc<Decoder>| {
        let decoder = decoder.clone();
        async move { tokio::task::spawn_blocking(move || reference(&decoder, 32, DECODE_TOKENS)).await? }
    };
    let (mut int8_refs, mut fp32_refs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        int8_refs.push(measure(&decoders[0]).await?);
        fp32_refs.push(measure(&decoders[1]).await?);
    }
    let (int8_ref, fp32_ref) = (percentile(&mut int8_refs, 0.5), percentile(&mut fp32_refs, 0.5));
    println!("| reference (plain greedy loop, batch 1; median of 3) | tokens/s |");
    println!("|---|---|");
    println!("| INT8 (version 2), after a 32-token prompt | {int8_ref:.1} |");
    println!("| fp32 (version 1), after a 32-token prompt | {fp32_ref:.1} |");
    println!("| INT8 / fp32 | {:.2}x |\n", int8_ref / fp32_ref);
    // The batching ceiling: the same loop over 32 sequences at once (greedy: no sampling, which the node's streams
    // add), after a short warm-up run at that batch; median of 3.
    let batched = decoders[0].clone();
    let runs = tokio::task::spawn_blocking(move || -> Result<Vec<(f64, f64)>> {
        let salts: Vec<usize> = (100..132).collect();
        plain_loop(&batched, &salts, 32, 4)?;
        (0..3).map(|_| plain_loop(&batched, &salts, 32, DECODE_TOKENS)).collect()
    })
    .await??;
    let (mut tps, mut steps): (Vec<f64>, Vec<f64>) = runs.into_iter().unzip();
    let (batch_tps, batch_step) = (percentile(&mut tps, 0.5), percentile(&mut steps, 0.5));
    println!("| plain greedy loop, 32 sequences decoded together (median of 3) | tokens/s | |");
    println!("|---|---|---|");
    println!(
        "| INT8, {DECODE_TOKENS} tokens each after 32-token prompts | {batch_tps:.1} | steps of {batch_step:.0} ms; {:.1}x the batch-1 reference |\n",
        batch_tps / int8_ref
    );

    let running = node(repo, |c| c.inference.queue_capacity = 256).await?;
    let url = format!("http://{}/v1/completions", running.http_addr);
    let http = Via::Http(reqwest::Client::new(), url);
    stream(&http, prompt_ids(8, 9), 4, 0).await.context("warm-up (loads the model)")?;
    let p2p = Via::P2p(Box::new(crate::scenarios::client_for(&running).await?));
    if let Via::P2p(c) = &p2p {
        c.wait_for_nodes(MODEL, 1, Duration::from_secs(30)).await?;
    }

    println!("| INT8 (version 2) | path | p50 | p99 | |");
    println!("|---|---|---|---|---|");
    for via in [&http, &p2p] {
        let path = via.name();
        for prompt in [32, 256] {
            let mut ttft = Vec::new();
            for i in 0..TTFT_REQUESTS {
                ttft.push(stream(via, prompt_ids(prompt, i + 1), 2, i as u64).await?.first.as_secs_f64() * 1e3);
            }
            let (p50, p99) = (percentile(&mut ttft, 0.5), percentile(&mut ttft, 0.99));
            println!(
                "| time to first token, {prompt}-token prompt (ms, {TTFT_REQUESTS} requests) | {path} | {p50:.1} | {p99:.1} | |"
            );
        }
        let steps =
            running.engine.metrics().generation_step_seconds.with_label_values(&[&format!("{MODEL}/2"), "decode"]);
        // Alternating with the reference run just before it: medians of five each (one run is about a second, and
        // the machine's speed drifts between runs).
        let (mut rates, mut refs, mut tokens) = (Vec::new(), Vec::new(), 0);
        let (sum, count) = (steps.get_sample_sum(), steps.get_sample_count());
        for seed in 1..=5 {
            refs.push(measure(&decoders[0]).await?);
            let one = stream(via, prompt_ids(32, 0), DECODE_TOKENS, seed).await?;
            rates.push((one.tokens.saturating_sub(1)) as f64 / (one.last - one.first).as_secs_f64().max(1e-9));
            tokens = one.tokens;
        }
        let step_ms = 1e3 * (steps.get_sample_sum() - sum) / ((steps.get_sample_count() - count).max(1) as f64);
        let (decode, reference) = (percentile(&mut rates, 0.5), percentile(&mut refs, 0.5));
        println!(
            "| decoding, 1 stream (tokens/s after the first; {tokens} tokens, median of 5) | {path} | {decode:.1} | | {:.1}% of the reference alongside ({reference:.1}); decode steps of {step_ms:.1} ms avg (the reference's, from its rate: {:.1}) |",
            100.0 * decode / reference,
            1e3 / reference
        );
        for streams in [8usize, 32] {
            let (sum, count) = (steps.get_sample_sum(), steps.get_sample_count());
            let started = Instant::now();
            let runs = (0..streams).map(|i| stream(via, prompt_ids(32, 100 + i), DECODE_TOKENS, i as u64));
            let mut tokens = 0;
            for r in futures::future::join_all(runs).await {
                tokens += r?.tokens;
            }
            let tps = tokens as f64 / started.elapsed().as_secs_f64();
            // The node's own decoding steps meanwhile: how much of the time is the decoder's.
            let (n, secs) = (steps.get_sample_count() - count, steps.get_sample_sum() - sum);
            let step_ms = 1e3 * secs / (n.max(1) as f64);
            let busy = 100.0 * secs / started.elapsed().as_secs_f64();
            println!(
                "| aggregate, {streams} streams of {DECODE_TOKENS} tokens (tokens/s, prefill included) | {path} | {tps:.1} | | {:.1}x one stream; {n} decode steps of {step_ms:.0} ms avg, {busy:.0}% of the time |",
                tps / decode
            );
        }
    }
    let metrics = running.engine.metrics().render();
    let ttft_count =
        metrics.lines().find(|l| l.starts_with("mlbridge_time_to_first_token_seconds_count")).unwrap_or("");
    println!("\n(node metric: {ttft_count})");
    running.shutdown.cancel();
    running.join().await;
    Ok(())
}
